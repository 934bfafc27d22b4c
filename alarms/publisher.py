"""Delivery of the store's outbox over MQTT, and the escalation loop.

Every alarm event is written to the store (the event log doubles as the outbox) before
anything is published. :class:`OutboxPublisher` then publishes the undelivered events,
oldest first, with QoS 1 on ``emfence/v1/{region}/alarms/{type}`` and marks an event
delivered only once the broker has acknowledged it:

- aiomqtt 2.x ``await client.publish(..., qos=1)`` returns only when paho's
  ``on_publish`` fires for the message id, which for QoS 1 is the broker's PUBACK; a
  connection loss or the timeout raises ``aiomqtt.MqttError`` instead. So "returned"
  means "the broker has it" (for MQTT 5 aiomqtt does not expose a PUBACK failure reason
  code, so a broker that acknowledges and drops a message it may not accept counts as
  delivered: the deployed ACL must let the engine write its alarm topics).
- The engine hands each stored event to :meth:`OutboxPublisher.offer`, which publishes
  it at once, without reading it back; PUBACKs are marked in the store in the background.
- Whatever is not acknowledged stays in the outbox and is published again every
  ``alarms.outbox_retry_s``, on :meth:`OutboxPublisher.notify`, and as soon as
  :meth:`OutboxPublisher.run` starts on a new connection (after a reconnect or a restart).

Consumers therefore may see an event twice (it was acknowledged but the mark did not
reach the store, or the broker went away after the PUBACK was sent), never miss one;
``alarm_id`` + ``event`` identifies a duplicate.

Both loops read the wall clock (they are adapters; the store and the rules take time as
a parameter) and call the synchronous store through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import aiomqtt

from alarms.roster_schema import TOP_LEVEL
from alarms.store import AlarmStore, StoreError
from emfence.config import AlarmsConfig

log = logging.getLogger("emfence.alarms.publisher")

# A retry period below this would spin; a config value of 0 means "as fast as sensible".
_MIN_RETRY_S = 0.05
# How many recently acknowledged seqs the publisher remembers (see OutboxPublisher._recent).
_RECENT_SEQS = 10_000


def wall_clock_ms() -> int:
    """Now, in epoch milliseconds (UTC)."""
    return time.time_ns() // 1_000_000


class OutboxPublisher:
    """Publishes a store's outbox with QoS 1 and marks events delivered on PUBACK.

    Keyword-only options: ``config`` (``alarms.outbox_retry_s``), ``regions`` (publish only
    these regions' events: a worker of a region-split deployment; None = all),
    ``batch_size`` (events read from the store at a time), ``window`` (publishes in flight
    at once; paho queues beyond its own in-flight limit), ``publish_timeout_s`` (how long
    to wait for one PUBACK), ``clock_ms`` (the delivery timestamp source).

    ``counters``: ``published`` (PUBACKs received), ``failed`` (publishes that raised),
    ``reads`` (reads of the outbox by :meth:`run`), ``rounds`` (reads, or :meth:`flush`
    pages, that found something to send), ``store_errors``,
    ``errors`` (anything unexpected; logged with its traceback).
    """

    def __init__(self, store: AlarmStore, *, config: AlarmsConfig | None = None,
                 regions: Iterable[str] | None = None, batch_size: int = 500,
                 window: int = 64, publish_timeout_s: float = 10.0,
                 clock_ms: Callable[[], int] = wall_clock_ms):
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be at least 1, got {batch_size}, "
                             f"{window}")
        if publish_timeout_s <= 0:
            raise ValueError(f"publish_timeout_s must be positive, got {publish_timeout_s}")
        self.store = store
        self.config = config or AlarmsConfig()
        self.regions = None if regions is None else sorted(set(regions))
        self.batch_size = batch_size
        self.window = window
        self.publish_timeout_s = publish_timeout_s
        self.clock_ms = clock_ms
        self.counters = {"published": 0, "failed": 0, "reads": 0, "rounds": 0,
                         "store_errors": 0, "errors": 0}
        self._wake: asyncio.Event | None = None
        # run()'s pipeline: rows handed over by offer(), seqs being published or waiting to
        # be marked (never sent twice at once), PUBACKed seqs not yet marked.
        self._handed: deque[tuple[int, str, bytes]] = deque()
        self._busy: set[int] = set()
        self._acked: list[int] = []
        self._read_store = True
        self._marked_during_read: set[int] | None = None
        self._mark_wake_ev: asyncio.Event | None = None
        # The last _RECENT_SEQS seqs this publisher had acknowledged: a row handed over
        # just after a read of the store published it is not sent a second time.
        self._recent: set[int] = set()
        self._recent_order: deque[int] = deque()

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    @property
    def _mark_wake(self) -> asyncio.Event:
        if self._mark_wake_ev is None:
            self._mark_wake_ev = asyncio.Event()
        return self._mark_wake_ev

    def notify(self) -> None:
        """New events are in the store: read it and publish now rather than at the next
        retry (escalations, another process's events). The engine's own events go
        through :meth:`offer` instead, which needs no read.

        Call from the event loop's thread (e.g. right after ``await
        asyncio.to_thread(store.record_events, ...)``).
        """
        self._read_store = True
        self._event().set()

    async def flush(self, client: aiomqtt.Client) -> int:
        """Publish everything undelivered now; return how many the broker acknowledged.

        Raises ``aiomqtt.MqttError`` when a publish fails (events acknowledged before that
        are still marked delivered) and :class:`~alarms.store.StoreError` when the store
        cannot be read.
        """
        total = 0
        while True:
            rows = await asyncio.to_thread(self.store.pending, self.batch_size, self.regions)
            if not rows:
                return total
            self.counters["rounds"] += 1
            acked: list[int] = []
            try:
                for i in range(0, len(rows), self.window):
                    chunk = rows[i:i + self.window]
                    # Sent in seq order on one connection; PUBACKs complete them.
                    results = await asyncio.gather(
                        *(client.publish(topic, payload, qos=1, timeout=self.publish_timeout_s)
                          for _, topic, payload in chunk),
                        return_exceptions=True)
                    failure: BaseException | None = None
                    for (seq, _, _), result in zip(chunk, results):
                        if isinstance(result, BaseException):
                            self.counters["failed"] += 1
                            failure = failure or result
                        else:
                            acked.append(seq)
                    if failure is not None:
                        raise failure
            finally:
                # Record what the broker acknowledged even when a later publish failed or
                # the task is being cancelled: those need not be sent again.
                if acked:
                    self.counters["published"] += len(acked)
                    total += len(acked)
                    await self._mark(acked)
            if len(rows) < self.batch_size:
                return total

    async def _mark(self, seqs: list[int]) -> None:
        try:
            await asyncio.to_thread(self.store.mark_delivered, seqs, self.clock_ms())
        except StoreError as exc:
            # They will be published again: a duplicate, never a loss.
            self.counters["store_errors"] += 1
            log.warning("could not mark %d published alarm events delivered (they will be "
                        "sent again): %s", len(seqs), exc)
        finally:
            self._busy.difference_update(seqs)
            if self._marked_during_read is not None:
                self._marked_during_read.update(seqs)

    async def run(self, client: aiomqtt.Client) -> None:
        """Publish the outbox on ``client`` until cancelled.

        A pipeline, so that no alarm waits for another's round trip:

        - rows given to :meth:`offer` are published at once, without reading them back;
        - the store is read (:meth:`~alarms.store.AlarmStore.pending`) when the run starts
          (so a new connection resends what the last one left), on :meth:`notify`, and
          every ``alarms.outbox_retry_s`` (what failed, what another process recorded);
        - up to ``window`` publishes wait for their PUBACK at once, each on its own;
        - a PUBACK queues the event for :meth:`~alarms.store.AlarmStore.mark_delivered`,
          which a separate task writes in batches while publishing goes on.

        An event is never published twice by one run while it is in flight or waiting to
        be marked. A failed publish or an unreachable store is logged and retried at the
        next read of the store; the connection's owner cancels this task when the
        connection is gone and starts it again on the next one. On cancellation the
        acknowledged events are still marked delivered.
        """
        retry_s = max(self.config.outbox_retry_s, _MIN_RETRY_S)
        wake = self._event()
        self._handed.clear()  # stored, so the first read of the store finds them
        self._read_store = True
        slots = asyncio.Semaphore(self.window)
        sends: set[asyncio.Task] = set()
        marker = asyncio.create_task(self._marker(), name="outbox-marker")
        try:
            while True:
                wake.clear()
                await self._start_sends(client, slots, sends)
                if self._read_store or self._handed:
                    continue  # a full page was read, or more arrived while sending
                # Not asyncio.wait_for: on Python 3.11 it returns the wake-up and drops a
                # cancellation that arrives as the event fires, and the connection's owner,
                # waiting for this task to end, would wait for ever.
                try:
                    async with asyncio.timeout(retry_s):
                        await wake.wait()
                except TimeoutError:
                    self._read_store = True
        finally:
            await self._wind_down(sends, marker)

    async def _start_sends(self, client: aiomqtt.Client, slots: asyncio.Semaphore,
                           sends: set[asyncio.Task]) -> None:
        """One round of :meth:`run`: read the store if due, take the rows :meth:`offer`
        handed over, and start publishing each one not already in flight (waiting for a
        free slot of the window)."""
        rows: list[tuple[int, str, bytes]] = []
        if self._read_store:
            self._read_store = False
            rows = await self._read_pending()
        while self._handed:
            row = self._handed.popleft()
            if row[0] not in self._recent:  # a read of the store may have sent it
                rows.append(row)
        for row in rows:
            if row[0] in self._busy:
                continue
            await slots.acquire()
            self._busy.add(row[0])
            task = asyncio.create_task(self._send(client, row, slots))
            sends.add(task)
            task.add_done_callback(sends.discard)

    async def _wind_down(self, sends: set[asyncio.Task], marker: asyncio.Task) -> None:
        """The end of :meth:`run`: stop publishing, mark what the broker acknowledged."""
        for task in list(sends):
            task.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        marker.cancel()
        await asyncio.gather(marker, return_exceptions=True)
        # What the broker acknowledged need not be sent again, even now.
        acked, self._acked = self._acked, []
        if acked:
            await self._mark(acked)
        # A mark still running in a thread may complete after this: such an event is
        # at worst published once more by the next run (a duplicate, never a loss).
        self._busy.clear()

    def offer(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Publish these just-stored outbox rows ``(seq, topic, payload)`` now
        (:meth:`~alarms.store.AlarmStore.record_events_for_delivery` returns them).

        Call from the event loop's thread. Without a running :meth:`run` they wait for the
        next one, which reads the store anyway.
        """
        self._handed.extend(rows)
        self._event().set()

    async def _read_pending(self) -> list[tuple[int, str, bytes]]:
        """One page of undelivered events from the store, minus those this run is
        publishing or marking (and those marked while the page was read)."""
        self._marked_during_read = set()
        try:
            rows = await asyncio.to_thread(self.store.pending, self.batch_size, self.regions)
        except StoreError as exc:
            self.counters["store_errors"] += 1
            log.error("alarm store unreadable; retrying in %.1f s: %s",
                      max(self.config.outbox_retry_s, _MIN_RETRY_S), exc)
            return []
        except Exception:
            # A bug, but alarms must keep flowing: log it and read again next time.
            self.counters["errors"] += 1
            log.exception("unexpected error reading the outbox")
            return []
        finally:
            skip, self._marked_during_read = self._marked_during_read, None
        self.counters["reads"] += 1
        if len(rows) == self.batch_size:
            self._read_store = True  # there may be more
        rows = [r for r in rows if r[0] not in self._busy and r[0] not in skip]
        if rows:
            self.counters["rounds"] += 1
        return rows

    async def _send(self, client: aiomqtt.Client, row: tuple[int, str, bytes],
                    slots: asyncio.Semaphore) -> None:
        seq, topic, payload = row
        try:
            await client.publish(topic, payload, qos=1, timeout=self.publish_timeout_s)
        except asyncio.CancelledError:
            self._busy.discard(seq)
            raise
        except Exception as exc:  # noqa: BLE001 - it stays in the outbox: retried
            self.counters["failed"] += 1
            self._busy.discard(seq)
            log.warning("alarm publish failed; the event stays in the outbox and is retried "
                        "in %.1f s: %s", max(self.config.outbox_retry_s, _MIN_RETRY_S), exc)
        else:
            self.counters["published"] += 1
            self._acked.append(seq)
            self._recent.add(seq)
            self._recent_order.append(seq)
            if len(self._recent_order) > _RECENT_SEQS:
                self._recent.discard(self._recent_order.popleft())
            self._mark_wake.set()
        finally:
            slots.release()

    async def _marker(self) -> None:
        """Mark acknowledged events delivered, in batches, while publishing goes on."""
        while True:
            await self._mark_wake.wait()
            self._mark_wake.clear()
            seqs, self._acked = self._acked, []
            if seqs:
                await self._mark(seqs)

async def run_escalation(store: AlarmStore, *, config: AlarmsConfig | None = None,
                         publisher: OutboxPublisher | None = None,
                         regions: Iterable[str] | None = None, interval_s: float = 1.0,
                         clock_ms: Callable[[], int] = wall_clock_ms,
                         counters: dict[str, Any] | None = None) -> None:
    """Every ``interval_s``, climb the escalation ladder: an alarm unacknowledged for
    ``alarms.escalate_after_s`` goes to level 2, and as long again later to level 3.

    Each escalation is recorded with its outbox row in one transaction
    (:meth:`AlarmStore.escalate_due`, exactly once across workers); ``publisher`` is
    notified so the ``escalated`` events go out at once. A store error is logged and the
    loop goes on. ``counters`` (optional dict) gets ``escalated`` and ``store_errors``.
    Runs until cancelled.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    cfg = config or AlarmsConfig()
    after_ms = round(cfg.escalate_after_s * 1000)
    region_list = None if regions is None else sorted(set(regions))
    counts = counters if counters is not None else {}
    counts.setdefault("escalated", 0)
    counts.setdefault("store_errors", 0)
    while True:
        try:
            events = await asyncio.to_thread(store.escalate_due, clock_ms(), after_ms,
                                             region_list, top_level=TOP_LEVEL)
        except StoreError as exc:
            counts["store_errors"] += 1
            log.error("escalation check failed; retrying in %.1f s: %s", interval_s, exc)
        else:
            if events:
                counts["escalated"] += len(events)
                log.warning("escalated %d alarm(s) unacknowledged for %.0f s: %s", len(events),
                            cfg.escalate_after_s, ", ".join(e["alarm_id"] for e in events[:10]))
                if publisher is not None:
                    publisher.notify()
        await asyncio.sleep(interval_s)
