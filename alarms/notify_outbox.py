"""Delivery of the notifications outbox, one loop per channel.

The store writes each notification in the transaction of the alarm event that causes it
(:mod:`alarms.notify`); a :class:`ChannelOutbox` sends its channel's pending rows through
the channel's sender (:mod:`alarms.notify_senders`: webhook, e-mail, SMS) and marks each
sent only once the receiver has taken it (a 2xx, the relay's acceptance, the gateway's
success condition). Anything else (a refusal, a timeout, a refused connection) schedules
the next attempt after a capped, jittered backoff, and the notification is tried again
until it is delivered. A restart or a kill -9 loses nothing (the rows are in the store)
and a receiver sees a notification again only when the mark did not reach the store
after it took it: it drops that duplicate by the delivery id (``X-Emfence-Delivery``,
the e-mail's ``Message-ID``).

The people channels (e-mail, SMS) are rate limited per recipient
(:mod:`alarms.notify_storm`): a storm becomes one summary message. Like
:mod:`alarms.publisher` this is an adapter: it reads the wall clock and calls the
synchronous store through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from alarms.db import StoreError
from alarms.notify_senders import WebhookSender
from alarms.notify_store import NotificationStore
from alarms.notify_storm import StormLimit
from emfence.config import WebhookConfig

log = logging.getLogger("emfence.alarms.notify")

# Longest sleep between two reads of the outbox, s: how late a new notification can be
# found without notify() (the engine writes through the store; a read is one indexed query).
_POLL_S = 0.25


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def backoff_s(attempts: int, min_s: float, max_s: float,
              rand: Callable[[], float] = random.random) -> float:
    """The delay before attempt ``attempts + 1``: the bound doubles from ``min_s`` per
    failed attempt up to ``max_s``, and the delay is drawn from its upper half (jitter
    that spreads a crowd of retries without ever retrying at once)."""
    bound = min(max_s, min_s * 2 ** min(attempts, 40))
    return bound / 2 + rand() * bound / 2


class Sender(Protocol):
    channel: str
    retry_min_s: float
    retry_max_s: float

    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def send(self, row: dict[str, Any]) -> str | None: ...


class ChannelOutbox:
    """Sends the store's pending notifications of ``sender.channel`` until each is taken.

    ``counters``: ``sent`` (taken), ``failed_attempts`` (anything else), ``summarized``
    (rows folded into a storm summary), ``store_errors``, ``errors`` (unexpected; logged
    with the traceback). ``storm``: the per-recipient limit (None: none, the webhook).
    """

    def __init__(self, store: NotificationStore, sender: Sender, *,
                 regions: Iterable[str] | None = None, batch_size: int = 100,
                 concurrency: int = 16, clock_ms: Callable[[], int] = wall_clock_ms,
                 storm: StormLimit | None = None):
        self.store = store
        self.sender = sender
        self.channel = sender.channel
        self.regions = None if regions is None else sorted(set(regions))
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.clock_ms = clock_ms
        self.storm = storm
        self.counters = {"sent": 0, "failed_attempts": 0, "summarized": 0,
                         "store_errors": 0, "errors": 0}
        self._wake: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def notify(self) -> None:
        """New notifications are in the store: deliver now (call from the loop's thread)."""
        self._event().set()

    async def _due(self) -> list[dict[str, Any]]:
        if self.storm is None:
            return await asyncio.to_thread(self.store.notifications_due, self.clock_ms(),
                                           self.batch_size, self.regions, [self.channel])
        rows, folded = await asyncio.to_thread(self.store.due_within_limits, self.channel,
                                               self.clock_ms(), self.batch_size,
                                               self.regions, self.storm)
        if folded:
            self.counters["summarized"] += folded
            log.warning("%s: %d notifications folded into storm summaries", self.channel,
                        folded)
        return rows

    async def deliver_due(self) -> int:
        """One round: send every due notification (``concurrency`` at once), each marked
        as soon as its answer is in (so a kill leaves as few taken-but-unmarked as can
        be); returns how many were delivered. Store errors propagate (the caller logs and
        retries)."""
        rows = await self._due()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(row: dict[str, Any]) -> bool:
            async with gate:
                err = await self.sender.send(row)
            if err is None:
                await asyncio.to_thread(self.store.mark_notification_sent, [row["id"]],
                                        self.clock_ms())
                self.counters["sent"] += 1
                return True
            self.counters["failed_attempts"] += 1
            delay_s = backoff_s(row["attempts"], self.sender.retry_min_s,
                                self.sender.retry_max_s)
            log.warning("%s notification %s failed (attempt %d), retrying in %.1f s: %s",
                        self.channel, row["delivery_id"], row["attempts"] + 1, delay_s, err)
            await asyncio.to_thread(self.store.mark_notification_retry, row["id"],
                                    self.clock_ms() + round(delay_s * 1000), err)
            return False

        return sum(await asyncio.gather(*(one(r) for r in rows)))

    async def _sleep(self) -> None:
        """Until woken, the next pending notification is due, or _POLL_S."""
        wait_s = _POLL_S
        nxt = await asyncio.to_thread(self.store.next_notification_at, self.regions,
                                      [self.channel])
        if nxt is not None:
            wait_s = min(wait_s, max(0.0, (nxt - self.clock_ms()) / 1000))
        wake = self._event()
        try:
            await asyncio.wait_for(wake.wait(), wait_s)
        except TimeoutError:
            pass
        wake.clear()

    async def run(self) -> None:
        """Deliver until cancelled; a store error or a surprise is logged and retried."""
        async with self.sender:
            while True:
                try:
                    if await self.deliver_due() >= self.batch_size:
                        continue  # more may be due at once
                    await self._sleep()
                except StoreError as exc:
                    self.counters["store_errors"] += 1
                    log.error("%s outbox: store unavailable, retrying: %s", self.channel, exc)
                    await asyncio.sleep(_POLL_S)
                except Exception:
                    self.counters["errors"] += 1
                    log.exception("%s outbox: unexpected error, retrying", self.channel)
                    await asyncio.sleep(_POLL_S)


class WebhookOutbox(ChannelOutbox):
    """POSTs the store's pending webhook notifications until each gets a 2xx (the
    channel of docs/notifications.md, "The webhook")."""

    def __init__(self, store: NotificationStore, config: WebhookConfig, **kwargs: Any):
        super().__init__(store, WebhookSender(config), **kwargs)
        self.config = config
