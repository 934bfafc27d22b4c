"""The live alarm feed: server-sent events (``GET /api/feed``).

Each open feed asks the store for events after the last sequence number it sent
(``events_since(seq, regions)``, limited to the caller's regions) every
``feed_poll_s``, and writes each as one SSE message whose ``id`` is the event's ``seq``.
A browser's ``EventSource`` sends that id back as ``Last-Event-ID`` when it reconnects,
so a dropped connection resumes exactly where it stopped: no gap, at worst a repeat
(``alarm_id`` + ``event`` identify duplicates). A client without an id starts at
``?since=SEQ`` (the ``seq`` that ``GET /api/alarms`` returned with its list), or else at
the newest event.

The feed re-reads the account every ``feed_keepalive_s``: a session that ends, or an
account that is disabled, changes role or regions, or gets a new password, ends the
stream with an ``event: logout`` message. When the
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
from console.api import feed_item
from console.app import COOKIE, ApiError
from console.auth import (
    credential_digest,
    principal_from_user,
    user_disabled,
    user_password_hash,
)

if TYPE_CHECKING:
    from console.app import Console

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
    call = console.gateway.call
    s = console.settings

    async def feed(request: Request) -> Response:
        session, principal = await console.authenticate(request)
        since = _start_seq(request)
        if since is None:
            since = await call("last_seq")
        regions = principal.scope
        token = request.cookies.get(COOKIE)
        credential = session.credential

        async def stream() -> AsyncIterator[bytes]:
            seq = since
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
                    if now - last_check >= s.feed_keepalive_s:
                        last_check = now
                        user = await call("get_user", principal.name)
                        if user is None or user_disabled(user) or \
                                principal_from_user(user) != principal or \
                                credential_digest(user_password_hash(user)) != credential:
                            # Disabled, or role/regions changed: the page must log in
                            # again so that the feed follows the account as it is now.
                            yield b"event: logout\ndata: {}\n\n"
                            return
                    rows = await call("events_since", seq, regions)
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
                    yield sse_message(int(row["seq"]), feed_item(row))
                if rows:
                    last_send = now
                elif now - last_send >= s.feed_keepalive_s:
                    last_send = now
                    yield b": keepalive\n\n"
                await asyncio.sleep(s.feed_poll_s)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})

    return feed
