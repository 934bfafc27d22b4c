"""Delivery of the notifications outbox: the webhook channel.

The store writes each notification in the transaction of the alarm event that causes it
(:mod:`alarms.notify`); :class:`WebhookOutbox` POSTs the pending ones and marks each
sent only once the receiver has answered 2xx. Anything else (another status, a timeout,
a refused connection) schedules the next attempt after a capped, jittered backoff, and
the notification is tried again until it is delivered. A restart or a kill -9 loses
nothing (the rows are in the store) and a receiver sees a notification again only when
the mark did not reach the store after a 2xx: it drops that duplicate by its
``X-Emfence-Delivery`` id.

Each request carries ``Content-Type: application/json``, ``X-Emfence-Delivery`` and
``X-Emfence-Signature: sha256=<hex HMAC-SHA256 of the body>`` keyed by the secret
file's content (stripped). Like :mod:`alarms.publisher` this is an adapter: it reads the
wall clock and calls the synchronous store through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from alarms.db import StoreError
from alarms.notify import signature
from alarms.notify_store import NotificationStore
from emfence.config import WebhookConfig, read_secret

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


class WebhookOutbox:
    """POSTs the store's pending webhook notifications until each gets a 2xx.

    ``counters``: ``sent`` (2xx answers), ``failed_attempts`` (anything else),
    ``store_errors``, ``errors`` (unexpected; logged with the traceback).
    """

    def __init__(self, store: NotificationStore, config: WebhookConfig, *,
                 regions: Iterable[str] | None = None, batch_size: int = 100,
                 concurrency: int = 16, clock_ms: Callable[[], int] = wall_clock_ms):
        if not config.url:
            raise ValueError("notify.webhook.url is not set")
        self.store = store
        self.config = config
        self.secret = read_secret(config.secret_file, "notify.webhook.secret_file")
        self.regions = None if regions is None else sorted(set(regions))
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.clock_ms = clock_ms
        self.counters = {"sent": 0, "failed_attempts": 0, "store_errors": 0, "errors": 0}
        self._wake: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def notify(self) -> None:
        """New notifications are in the store: deliver now (call from the loop's thread)."""
        self._event().set()

    def headers(self, row: dict[str, Any]) -> dict[str, str]:
        return {"Content-Type": "application/json",
                "X-Emfence-Delivery": row["delivery_id"],
                "X-Emfence-Signature": signature(row["body"], self.secret)}

    async def _attempt(self, client: httpx.AsyncClient, row: dict[str, Any]) -> str | None:
        """POST one notification; None when delivered, else why not."""
        try:
            resp = await client.post(self.config.url, content=row["body"],
                                     headers=self.headers(row))
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= resp.status_code < 300:
            return None
        return f"HTTP {resp.status_code}"

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """One round: send every due notification (``concurrency`` at once); returns how
        many were delivered. Store errors propagate (the caller logs and retries)."""
        rows = await asyncio.to_thread(self.store.notifications_due, self.clock_ms(),
                                       self.batch_size, self.regions, ["webhook"])
        gate = asyncio.Semaphore(self.concurrency)

        async def one(row: dict[str, Any]) -> str | None:
            async with gate:
                return await self._attempt(client, row)

        results = await asyncio.gather(*(one(r) for r in rows))
        sent = [r["id"] for r, err in zip(rows, results) if err is None]
        if sent:
            await asyncio.to_thread(self.store.mark_notification_sent, sent, self.clock_ms())
            self.counters["sent"] += len(sent)
        for row, err in zip(rows, results):
            if err is None:
                continue
            self.counters["failed_attempts"] += 1
            delay_s = backoff_s(row["attempts"], self.config.retry_min_s,
                                self.config.retry_max_s)
            log.warning("webhook notification %s failed (attempt %d), retrying in %.1f s: %s",
                        row["delivery_id"], row["attempts"] + 1, delay_s, err)
            await asyncio.to_thread(self.store.mark_notification_retry, row["id"],
                                    self.clock_ms() + round(delay_s * 1000), err)
        return len(sent)

    async def _sleep(self) -> None:
        """Until woken, the next pending notification is due, or _POLL_S."""
        wait_s = _POLL_S
        nxt = await asyncio.to_thread(self.store.next_notification_at, self.regions,
                                      ["webhook"])
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
        timeout = httpx.Timeout(self.config.timeout_s)
        async with httpx.AsyncClient(timeout=timeout) as client:
            while True:
                try:
                    if await self.deliver_due(client) >= self.batch_size:
                        continue  # more may be due at once
                    await self._sleep()
                except StoreError as exc:
                    self.counters["store_errors"] += 1
                    log.error("notification outbox: store unavailable, retrying: %s", exc)
                    await asyncio.sleep(_POLL_S)
                except Exception:
                    self.counters["errors"] += 1
                    log.exception("notification outbox: unexpected error, retrying")
                    await asyncio.sleep(_POLL_S)
