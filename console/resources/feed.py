"""``/api/feed``: the live alarm feed: server-sent events.

Each open feed asks the store for events after the last sequence number it sent
(``events_since(seq, regions)``, limited to the caller's regions) every
``feed_poll_s``, and writes each as one SSE message whose ``id`` is the event's ``seq``.
A browser's ``EventSource`` sends that id back as ``Last-Event-ID`` when it reconnects,
so a dropped connection resumes exactly where it stopped: no gap, at worst a repeat
(``alarm_id`` + ``event`` identify duplicates). A client without an id starts at
``?since=SEQ`` (the ``seq`` that ``GET /api/alarms`` returned with its list), or else at
the newest event.

The feed re-reads the account before it sends events and at least every
``feed_keepalive_s``: a session that ends, or an account that is disabled, changes role
or regions, or gets a new password, ends the stream with an ``event: logout`` message
(and no event the account may no longer see is sent).

Every feed is audited per connection: ``feed.open`` (regions, start seq) when it opens,
``feed.close`` (how many events it carried, up to which seq, for how long) when it ends. When the
console shuts down the stream simply ends; the browser reconnects once it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from alarms.store import StoreError
from console.access import Caller, signed_in
from console.auth import (
    credential_digest,
    principal_from_user,
    user_disabled,
    user_password_hash,
)
from console.http import COOKIE, ApiError
from console.resources.events import feed_item

log = logging.getLogger("emfence.console")

# Ask the browser to wait this long before reconnecting a dropped feed, ms.
RECONNECT_MS = 2000
# While the store is not answering, a feed asks again every this many poll periods.
STORE_RETRY_POLLS = 4
LOGOUT = b"event: logout\ndata: {}\n\n"


def _start_seq(request: Request) -> int | None:
    for raw in (request.headers.get("last-event-id"), request.query_params.get("since")):
        if raw not in (None, ""):
            try:
                value = int(raw)
            except ValueError:
                raise ApiError(400, "bad_param", f"event id {raw!r} is not an integer") from None
            if value < 0:
                raise ApiError(400, "bad_param", f"event id {value} is negative")
            return value
    return None


def sse_message(seq: int, event: dict) -> bytes:
    """One SSE message: ``id`` = the event's seq, ``event: alarm``, JSON data on one line."""
    return b"id: %d\nevent: alarm\ndata: %s\n\n" % (seq, orjson.dumps(event))


async def feed(request: Request) -> Response:
    caller = await signed_in(request)
    since = _start_seq(request)
    if since is None:
        since = await caller.gateway.last_seq()
    stream = FeedStream(caller, since)
    # A feed streams alarm positions for as long as it is open: it is audited per
    # connection (one row as it opens, one as it ends saying how many events it
    # carried), not per poll, which would write a row a second per screen.
    await caller.audit("feed.open", None, {"regions": stream.regions, "since": since})
    return StreamingResponse(stream.run(), media_type="text/event-stream",
                             headers={"cache-control": "no-store",
                                      "x-accel-buffering": "no"})


class FeedStream:
    """One open feed: where it is (``seq``), what it sent, and when it last looked at
    the account and last wrote something (event-loop seconds)."""

    def __init__(self, caller: Caller, since: int):
        self.console = caller.console
        self.gateway = caller.gateway
        self.principal = caller.principal
        self.regions = caller.principal.scope
        self.token = caller.request.cookies.get(COOKIE)
        self.credential = caller.session.credential
        self.ip = caller.console.client_ip(caller.request)
        self.since = self.seq = since
        self.sent = 0
        self.last_check = self.last_send = 0.0
        self.store_down = False

    async def run(self) -> AsyncIterator[bytes]:
        """The SSE byte stream, until the console closes or the account must log in."""
        s = self.console.settings
        opened_ms = self.console.clock_ms()
        try:
            yield b"retry: %d\n: feed from seq %d\n\n" % (RECONNECT_MS, self.seq)
            loop = asyncio.get_running_loop()
            self.last_check = self.last_send = loop.time()
            while not self.console.closing:
                if self.console.sessions.get(self.token, self.console.clock_ms()) is None:
                    yield LOGOUT
                    return
                now = loop.time()
                try:
                    rows = await self._rows(now)
                except StoreError as exc:
                    yield self._store_unavailable(exc)
                    await asyncio.sleep(s.feed_poll_s * STORE_RETRY_POLLS)
                    continue
                if rows is None:
                    yield LOGOUT
                    return
                self.store_down = False
                for row in rows:
                    self.seq = max(self.seq, int(row["seq"]))
                    self.sent += 1
                    yield sse_message(int(row["seq"]), feed_item(row))
                if self._keepalive_due(bool(rows), now):
                    yield b": keepalive\n\n"
                await asyncio.sleep(s.feed_poll_s)
        finally:
            self._audit_close(opened_ms)

    async def _rows(self, now: float) -> list[dict[str, Any]] | None:
        """The events after ``seq`` in the feed's regions, or None when the account
        changed (the page must log in again)."""
        rows = await self.gateway.events_since(self.seq, self.regions)
        # The account is re-read before anything is sent and at least every keepalive
        # period: disabled, or role/regions changed, and the page must log in again, so
        # that the feed never sends an event the account may no longer see.
        if rows or now - self.last_check >= self.console.settings.feed_keepalive_s:
            self.last_check = now
            if not await self._account_unchanged():
                return None
        return rows

    async def _account_unchanged(self) -> bool:
        user = await self.gateway.get_user(self.principal.name)
        return not (user is None or user_disabled(user)
                    or principal_from_user(user) != self.principal
                    or credential_digest(user_password_hash(user)) != self.credential)

    def _store_unavailable(self, exc: StoreError) -> bytes:
        # The database is away: keep the stream open and try again; the page keeps what
        # it has and catches up from `seq` when it is back. Logged once per outage.
        if not self.store_down:
            log.error("live feed: store error, retrying: %s", exc)
        self.store_down = True
        return b": store unavailable, retrying\n\n"

    def _keepalive_due(self, sent_rows: bool, now: float) -> bool:
        """After a poll: is a keepalive comment due (nothing written for a while)?"""
        if sent_rows:
            self.last_send = now
            return False
        if now - self.last_send >= self.console.settings.feed_keepalive_s:
            self.last_send = now
            return True
        return False

    def _audit_close(self, opened_ms: int) -> None:
        # The stream may be torn down by a disconnect, where nothing can be awaited any
        # more: the row is written without waiting for it.
        now_ms = self.console.clock_ms()
        self.gateway.submit_audit(self.principal.name, "feed.close", None,
                                  {"regions": self.regions, "since": self.since,
                                   "last_seq": self.seq, "events": self.sent,
                                   "open_ms": now_ms - opened_ms},
                                  now_ms, self.ip)


ROUTES = [
    Route("/api/feed", feed),
]
