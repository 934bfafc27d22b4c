"""The live alarm feed: server-sent events (``GET /api/feed``).

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
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from alarms.store import StoreError
from console.auth import (
    credential_digest,
    principal_from_user,
    user_disabled,
    user_password_hash,
)
from console.http import COOKIE, ApiError
from console.resources.events import feed_item

if TYPE_CHECKING:
    from console.context import Console

log = logging.getLogger("emfence.console")

# Ask the browser to wait this long before reconnecting a dropped feed, ms.
RECONNECT_MS = 2000
# While the store is not answering, a feed asks again every this many poll periods.
STORE_RETRY_POLLS = 4


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


def endpoint(console: Console) -> Callable:
    store = console.gateway
    s = console.settings

    async def feed(request: Request) -> Response:
        session, principal = await console.authenticate(request)
        since = _start_seq(request)
        if since is None:
            since = await store.last_seq()
        regions = principal.scope
        token = request.cookies.get(COOKIE)
        credential = session.credential
        ip = console.client_ip(request)
        # A feed streams alarm positions for as long as it is open: it is audited per
        # connection (one row as it opens, one as it ends saying how many events it
        # carried), not per poll, which would write a row a second per screen.
        await console.audit(request, principal.name, "feed.open", None,
                            {"regions": regions, "since": since})

        async def account_unchanged() -> bool:
            user = await store.get_user(principal.name)
            return not (user is None or user_disabled(user)
                        or principal_from_user(user) != principal
                        or credential_digest(user_password_hash(user)) != credential)

        async def stream() -> AsyncIterator[bytes]:
            seq = since
            sent = 0
            opened_ms = console.clock_ms()
            try:
                yield b"retry: %d\n: feed from seq %d\n\n" % (RECONNECT_MS, seq)
                loop = asyncio.get_running_loop()
                last_check = last_send = loop.time()
                store_down = False
                while not console.closing:
                    if console.sessions.get(token, console.clock_ms()) is None:
                        yield b"event: logout\ndata: {}\n\n"
                        return
                    now = loop.time()
                    try:
                        rows = await store.events_since(seq, regions)
                        # The account is re-read before anything is sent and at least
                        # every keepalive period: disabled, or role/regions changed, and
                        # the page must log in again, so that the feed never sends an
                        # event the account may no longer see.
                        if rows or now - last_check >= s.feed_keepalive_s:
                            last_check = now
                            if not await account_unchanged():
                                yield b"event: logout\ndata: {}\n\n"
                                return
                    except StoreError as exc:
                        # The database is away: keep the stream open and try again; the
                        # page keeps what it has and catches up from `seq` when it is back.
                        if not store_down:
                            log.error("live feed: store error, retrying: %s", exc)
                        store_down = True
                        yield b": store unavailable, retrying\n\n"
                        await asyncio.sleep(s.feed_poll_s * STORE_RETRY_POLLS)
                        continue
                    store_down = False
                    for row in rows:
                        seq = max(seq, int(row["seq"]))
                        sent += 1
                        yield sse_message(int(row["seq"]), feed_item(row))
                    if rows:
                        last_send = now
                    elif now - last_send >= s.feed_keepalive_s:
                        last_send = now
                        yield b": keepalive\n\n"
                    await asyncio.sleep(s.feed_poll_s)
            finally:
                # The stream may be torn down by a disconnect, where nothing can be
                # awaited any more: the row is written without waiting for it.
                now_ms = console.clock_ms()
                console.gateway.submit_audit(principal.name, "feed.close", None,
                                       {"regions": regions, "since": since, "last_seq": seq,
                                        "events": sent, "open_ms": now_ms - opened_ms},
                                       now_ms, ip)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})

    return feed
