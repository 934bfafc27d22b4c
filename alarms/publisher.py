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
from collections.abc import Callable, Iterable
from typing import Any

import aiomqtt

from alarms.store import AlarmStore, StoreError
from emfence.config import AlarmsConfig

log = logging.getLogger("emfence.alarms.publisher")

# A retry period below this would spin; a config value of 0 means "as fast as sensible".
_MIN_RETRY_S = 0.05


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
    ``rounds`` (flushes that found something to send), ``store_errors``, ``errors``
    (anything unexpected; logged with its traceback).
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
        self.counters = {"published": 0, "failed": 0, "rounds": 0, "store_errors": 0,
                         "errors": 0}
        self._wake: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def notify(self) -> None:
        """New events are in the store: publish now rather than at the next retry.

        Call from the event loop's thread (e.g. right after ``await
        asyncio.to_thread(store.record_events, ...)``).
        """
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

    async def run(self, client: aiomqtt.Client) -> None:
        """Publish the outbox on ``client`` until cancelled.

        Starts with a flush (so a new connection resends what the last one left), then
        flushes on :meth:`notify` or every ``alarms.outbox_retry_s``. A failed publish or
        an unreachable store is logged and retried at the next round; the connection's
        owner cancels this task when the connection is gone and starts it again on the
        next one.
        """
        retry_s = max(self.config.outbox_retry_s, _MIN_RETRY_S)
        wake = self._event()
        while True:
            wake.clear()
            try:
                await self.flush(client)
            except aiomqtt.MqttError as exc:
                log.warning("alarm publish failed; undelivered events stay in the outbox and "
                            "are retried in %.1f s: %s", retry_s, exc)
            except StoreError as exc:
                self.counters["store_errors"] += 1
                log.error("alarm store unreadable; retrying in %.1f s: %s", retry_s, exc)
            except Exception:
                # Anything else is a bug, but alarms must keep flowing: log it with its
                # traceback and try again next round rather than stop delivery for good.
                self.counters["errors"] += 1
                log.exception("unexpected error delivering alarms; retrying in %.1f s", retry_s)
            try:
                await asyncio.wait_for(wake.wait(), timeout=retry_s)
            except TimeoutError:
                pass


async def run_escalation(store: AlarmStore, *, config: AlarmsConfig | None = None,
                         publisher: OutboxPublisher | None = None,
                         regions: Iterable[str] | None = None, interval_s: float = 1.0,
                         clock_ms: Callable[[], int] = wall_clock_ms,
                         counters: dict[str, Any] | None = None) -> None:
    """Every ``interval_s``, escalate alarms unacknowledged for ``alarms.escalate_after_s``.

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
                                             region_list)
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
