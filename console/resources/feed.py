"""``/api/feed``: the live alarm feed: server-sent events.

Every open feed is woken by the console's one :class:`console.feed_hub.FeedHub`, which
asks the store for new events of every region once per ``feed_poll_s`` (one query per
poll period however many screens are open) and keeps the most recent ones in memory.
The feed takes from there the events after the last sequence number it sent that fall
in the caller's regions, and writes each as one SSE message whose ``id`` is the event's
``seq``. A feed that starts behind the hub's window (an old ``Last-Event-ID``) first
reads the store itself, a page at a time and only its regions, until it reaches the
window; a feed ahead of the hub waits for it.

A browser's ``EventSource`` sends that id back as ``Last-Event-ID`` when it reconnects,
so a dropped connection resumes exactly where it stopped: no gap, at worst a repeat
(``alarm_id`` + ``event`` identify duplicates). A client without an id starts at
``?since=SEQ`` (the ``seq`` that ``GET /api/alarms`` returned with its list), or else at
the newest event.

The feed re-reads the account before it sends events and at least every
``feed_keepalive_s``: a session that ends, or an account that is disabled, changes role
or regions, or gets a new password, ends the stream with an ``event: logout`` message
(and no event the account may no longer see is sent). An idle feed writes a keepalive
comment as often. While the store does not answer, the stream stays open and says so in
a comment (``: store unavailable, retrying``; the hub retries and logs the outage once),
then catches up from where it stopped.

Every feed is audited per connection: ``feed.open`` (regions, start seq) when it opens,
``feed.close`` (how many events it carried, up to which seq, for how long) when it ends. When the
console shuts down the stream simply ends (within one poll); the browser reconnects once
it is back.
"""

from __future__ import annotations

import asyncio
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
from console.feed_hub import STORE_RETRY_POLLS, FeedHub, position_after_page
from console.http import COOKIE, ApiError
from console.resources.events import feed_item

# Ask the browser to wait this long before reconnecting a dropped feed, ms.
RECONNECT_MS = 2000
LOGOUT = b"event: logout\ndata: {}\n\n"
STORE_DOWN = b": store unavailable, retrying\n\n"


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
    """One open feed: where it is (``seq``: the last event sent; ``pos``: how far it has
    looked), what it sent, and when it last looked at the account and last wrote
    something (event-loop seconds)."""

    def __init__(self, caller: Caller, since: int):
        self.console = caller.console
        self.gateway = caller.gateway
        self.principal = caller.principal
        self.regions = caller.principal.scope
        # The same filter the store applies to `regions`: None is every region.
        self.scope = None if self.regions is None else frozenset(self.regions)
        self.token = caller.request.cookies.get(COOKIE)
        self.credential = caller.session.credential
        self.ip = caller.console.client_ip(caller.request)
        self.since = self.seq = self.pos = since
        self.sent = 0
        self.last_check = self.last_send = 0.0
        self.failures = 0

    async def run(self) -> AsyncIterator[bytes]:
        """The SSE byte stream, until the console closes or the account must log in."""
        hub = self.console.feed_hub
        poll = hub.join()
        self.failures = hub.failures
        opened_ms = self.console.clock_ms()
        try:
            yield b"retry: %d\n: feed from seq %d\n\n" % (RECONNECT_MS, self.seq)
            loop = asyncio.get_running_loop()
            self.last_check = self.last_send = loop.time()
            while not self.console.closing:
                if self.console.sessions.get(self.token, self.console.clock_ms()) is None:
                    yield LOGOUT
                    return
                tick, now = hub.tick, loop.time()
                try:
                    rows, pos, behind = await self._next_rows(hub)
                    allowed = await self._allowed(bool(rows), now)
                except StoreError as exc:
                    hub.report_outage(exc)
                    yield STORE_DOWN
                    await self._back_off(hub)
                    continue
                if hub.failures != self.failures:  # the hub's polls failed meanwhile
                    self.failures = hub.failures
                    yield STORE_DOWN
                if not allowed:
                    yield LOGOUT
                    return
                for row in rows:
                    self.seq = max(self.seq, int(row["seq"]))
                    self.sent += 1
                    yield sse_message(int(row["seq"]), feed_item(row))
                self.pos = pos
                if self._keepalive_due(bool(rows), now):
                    yield b": keepalive\n\n"
                if not behind:
                    await hub.wait(tick)
        finally:
            hub.leave(poll)
            self._audit_close(opened_ms)

    async def _next_rows(self, hub: FeedHub) -> tuple[list[dict[str, Any]], int, bool]:
        """The feed's next events, where it stands once they are sent, and whether they
        came from its own store read (it was behind the hub's window: read on at once)."""
        rows = hub.after(self.pos, self.scope)
        if rows is not None:
            return rows, max(self.pos, hub.seq or 0), False
        hub_seq = hub.seq or 0
        rows = await self.gateway.events_since(self.pos, self.regions, hub.page)
        return rows, position_after_page(self.pos, rows, hub.page, hub_seq), True

    async def _allowed(self, sending: bool, now: float) -> bool:
        """May the account still see this feed? The account is re-read before anything
        is sent and at least every keepalive period: disabled, or role/regions changed,
        and the page must log in again, so that the feed never sends an event the
        account may no longer see."""
        if sending or now - self.last_check >= self.console.settings.feed_keepalive_s:
            self.last_check = now
            return await self._account_unchanged()
        return True

    async def _back_off(self, hub: FeedHub) -> None:
        # The feed's own read failed: ask again after as many polls as the hub would.
        for _ in range(STORE_RETRY_POLLS):
            if self.console.closing:
                return
            await hub.wait(hub.tick)

    async def _account_unchanged(self) -> bool:
        user = await self.gateway.get_user(self.principal.name)
        return not (user is None or user_disabled(user)
                    or principal_from_user(user) != self.principal
                    or credential_digest(user_password_hash(user)) != self.credential)

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
