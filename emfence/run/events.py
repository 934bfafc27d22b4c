"""Alarm events on their way to the store: one writer, in order, group-committed; each
stored row is handed to the outbox publisher at once."""

from __future__ import annotations

import asyncio
from collections import Counter

from emfence.run.options import wall_ms


class EventWriter:
    """Owns the events waiting for the store and the marks a closing acknowledgement
    window waits on (``queued``: events handed over since start; ``stored``: how many of
    them the store has committed)."""

    def __init__(self, store, outbox, counters: Counter, outages,
                 backoff_s: tuple[float, float]):
        self.store = store
        self.outbox = outbox
        self.counters = counters
        self.outages = outages  # failed writes are outages, retried
        self.backoff_s = backoff_s
        self.unstored: list[dict] = []
        self.storing = False
        self.queued = 0
        self.stored = 0
        self.change = asyncio.Condition()

    async def record(self, events: list[dict]) -> None:
        """Queue events for the store (in order). They are published only once stored,
        and nothing they came from is acknowledged before they are stored."""
        async with self.change:
            self.queued += len(events)
            self.unstored.extend(events)
            self.change.notify_all()

    async def stored_through(self, mark: int) -> None:
        """Until the first ``mark`` events ever queued are in the store (later ones may
        still be on their way: a window waits only for its own events)."""
        async with self.change:
            await self.change.wait_for(lambda: self.stored >= mark)

    async def run(self) -> None:
        """The one writer of alarm events: whatever queued while the last transaction ran
        goes into the next one (group commit: one fsync for many batches, so the
        processor never waits for the disk). Retries until the store takes them."""
        while True:
            async with self.change:
                await self.change.wait_for(lambda: bool(self.unstored))
                events, self.unstored = self.unstored, []
                self.storing = True
            rows = await self._write(events)
            self.counters["events"] += len(events)
            self.outbox.offer(rows)  # published now, not read back from the store
            async with self.change:
                self.stored += len(events)
                self.storing = False
                self.change.notify_all()

    async def _write(self, events: list[dict]) -> list:
        delay, max_delay = self.backoff_s
        while True:
            try:
                rows = await asyncio.to_thread(self.store.record_events_for_delivery,
                                               events, wall_ms())
            except Exception as exc:  # noqa: BLE001 - a store outage must not lose events
                self.counters["store_errors"] += 1
                self.outages.failed("events", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
            else:
                self.outages.ok("events")
                return rows
