"""One poller of the event log for all of a console's live feeds.

The :class:`FeedHub` asks the store once per ``feed_poll_s`` for the events after its
own ``seq`` in every region (``events_since(seq)`` without a region filter), keeps the
most recent :data:`WINDOW_EVENTS` of them in memory, and wakes every open feed after
each poll. A feed then takes from the window the events after its own position that
fall in its caller's regions: the store is asked once per poll period however many
screens are open, not once per screen.

The window holds every event with ``floor < seq <= self.seq``. A feed at a position
older than ``floor`` (it resumed from an old ``Last-Event-ID``, or the window moved on)
reads the store itself, a page at a time, until it reaches the window
(:func:`position_after_page` says where such a page leaves it). A feed ahead of the hub
simply waits for it.

The console owns one hub (:attr:`console.context.Console.feed_hub`): it starts when the
first feed joins, stops when the last one leaves, and ends at once when the console
shuts down, waking every feed so that each sees ``console.closing`` within one poll.
While the store does not answer, the hub logs the outage once, counts each failed poll
in ``failures`` (each feed reports them as a comment) and asks again every
:data:`STORE_RETRY_POLLS` poll periods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_right
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from alarms.store import StoreError

if TYPE_CHECKING:
    from console.gateway import StoreGateway

log = logging.getLogger("emfence.console")

Row = dict[str, Any]

# Events kept in memory for the feeds (a few minutes of a busy country's alarm traffic,
# a few MB); a feed further behind reads the store until it reaches them.
WINDOW_EVENTS = 4096
# Events per store read, for the hub's poll and for a feed catching up.
PAGE_EVENTS = 500
# While the store is not answering, the hub asks again every this many poll periods.
STORE_RETRY_POLLS = 4


def position_after_page(pos: int, rows: list[Row], page: int, hub_seq: int) -> int:
    """Where a feed stands after reading ``rows`` = ``events_since(pos, its regions,
    page)`` from the store, ``hub_seq`` being the hub's seq read *before* that read.

    A full page may have more after it: the feed stands at its last row. A short page
    is everything in its regions up to the moment of the read, and the event log grows in
    commit order, so everything up to ``hub_seq`` had committed by then: the feed stands
    at ``hub_seq`` (or its last row, if later) and has skipped only other regions."""
    last = int(rows[-1]["seq"]) if rows else pos
    if len(rows) >= page:
        return last
    return max(last, hub_seq, pos)


class FeedHub:
    """The shared poll: ``seq`` (read up to), the window of recent events, ``failures``
    (failed polls so far), and the event the feeds wait on."""

    def __init__(self, gateway: StoreGateway, poll_s: float, closing: Callable[[], bool],
                 *, window: int = WINDOW_EVENTS, page: int = PAGE_EVENTS):
        self.gateway = gateway
        self.poll_s = poll_s
        self.closing = closing
        self.window = window
        self.page = page
        self.failures = 0
        self.store_down = False
        self.streams = 0
        self._reset()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.tick: asyncio.Event | None = None

    def _reset(self) -> None:
        # None until the first poll: the hub then starts at the newest event.
        self.seq: int | None = None
        self.floor = 0
        self._rows: list[Row] = []
        self._seqs: list[int] = []

    @property
    def running(self) -> bool:
        """Is the poll running (some feed is open)?"""
        return self._task is not None and not self._task.done()

    # --- the feeds' side -------------------------------------------------------------

    def join(self) -> asyncio.Task:
        """A feed opens: start polling if it is the first (in this event loop). Returns
        the poll task to hand back to :meth:`leave`."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._reset()
            self.streams = 0
            self._loop = loop
            self._wake = asyncio.Event()
            self.tick = asyncio.Event()
            self._task = loop.create_task(self._run(), name="console-feed-hub")
        self.streams += 1
        return self._task

    def leave(self, task: asyncio.Task) -> None:
        """A feed that joined ``task`` ends: stop polling when it was the last."""
        if task is not self._task:  # a poll that has already stopped
            return
        self.streams -= 1
        if self.streams <= 0:
            with contextlib.suppress(RuntimeError):  # its event loop has already closed
                self._task.cancel()
            self._task = None

    def after(self, pos: int, regions: Collection[str] | None) -> list[Row] | None:
        """The window's events after ``pos`` in ``regions`` (None: every region), oldest
        first; None when ``pos`` is older than the window (read the store instead)."""
        if self.seq is None:
            return []
        if pos < self.floor:
            return None
        rows = self._rows[bisect_right(self._seqs, pos):]
        if regions is None:
            return rows
        return [r for r in rows if r["region"] in regions]

    async def wait(self, tick: asyncio.Event) -> None:
        """Until the poll after ``tick`` was taken (at most two poll periods, should
        the hub be held up)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * self.poll_s):
                await tick.wait()

    def report_outage(self, exc: Exception) -> None:
        """The store failed a read (the hub's or a feed's own): logged once per outage."""
        if not self.store_down:
            log.error("live feed: store error, retrying: %s", exc)
        self.store_down = True

    def wake(self) -> None:
        """Wake the hub now (e.g. the console is closing); safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    # --- the poll --------------------------------------------------------------------

    async def _run(self) -> None:
        skip = 0  # poll periods left before a store that failed is asked again
        try:
            while not self.closing():
                if skip:
                    skip -= 1
                elif not await self._poll_once():
                    skip = STORE_RETRY_POLLS - 1
                self._post()
                await self._sleep()
        finally:
            self._post()

    async def _poll_once(self) -> bool:
        """One poll; False (counted, the outage logged once) when it failed."""
        try:
            await self._poll()
        except Exception as exc:  # the feeds outlive a failed poll, whatever failed
            if not isinstance(exc, StoreError):
                log.exception("live feed: poll failed")
            self.failures += 1
            self.report_outage(exc)
            return False
        self.store_down = False
        return True

    async def _poll(self) -> None:
        if self.seq is None:
            self.seq = self.floor = await self.gateway.last_seq()
        # A burst is read in pages, at most a window's worth per poll.
        for _ in range(max(1, self.window // self.page)):
            rows = await self.gateway.events_since(self.seq, None, self.page)
            self._add(rows)
            if len(rows) < self.page:
                return

    def _add(self, rows: list[Row]) -> None:
        if not rows:
            return
        self._rows.extend(rows)
        self._seqs.extend(int(r["seq"]) for r in rows)
        self.seq = self._seqs[-1]
        excess = len(self._rows) - self.window
        if excess > 0:
            self.floor = self._seqs[excess - 1]
            del self._rows[:excess], self._seqs[:excess]

    def _post(self) -> None:
        """Wake every feed waiting on the current tick, and hand out a new one."""
        tick, self.tick = self.tick, asyncio.Event()
        if tick is not None:
            tick.set()

    async def _sleep(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_s):
                await self._wake.wait()
        self._wake.clear()
