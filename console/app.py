"""The command-centre console: a Starlette app serving the JSON API, the live feed and
the operator page.

``emfence run --http HOST:PORT`` builds it with :func:`create_app` and serves it with
:func:`serve` in its own event loop. The JSON API is documented in
``docs/console-api.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from alarms.register import RegisterError
from alarms.store import StoreError
from console.context import Console, wall_clock_ms
from console.http import COOKIE, SecurityHeaders, api_error, store_error
from console.register import register_error
from console.resources import (
    alarms,
    audit,
    board,
    commands,
    events,
    evidence,
    feed,
    leaves,
    protected,
    reports,
    roster,
    session,
    stats,
    subject_report,
    subjects,
    tracks,
    zones,
)

__all__ = ["COOKIE", "Console", "create_app", "serve"]

STATIC = Path(__file__).resolve().parent / "static"
# gzip for answers of at least GZIP_MIN_BYTES; level 1: the board of 10 000 subjects goes
# from 3.9 MB to 0.5 MB in ~40 ms (level 6: 0.42 MB in 120 ms, 9: 0.41 MB in 390 ms).
GZIP_MIN_BYTES = 4096
GZIP_LEVEL = 1

# The JSON API, resource by resource (docs/console-api.md): the one place routes are listed.
API_ROUTES = [*session.ROUTES, *alarms.ROUTES, *tracks.ROUTES, *events.ROUTES,
              *zones.ROUTES, *stats.ROUTES, *audit.ROUTES, *feed.ROUTES,
              *subjects.ROUTES, *leaves.ROUTES, *roster.ROUTES, *protected.ROUTES,
              *reports.ROUTES, *commands.ROUTES, *evidence.ROUTES,
              *subject_report.ROUTES, *board.ROUTES]


def create_app(*, store: Any, config: Any, zones: Any = None, registry: Any = None,
               secure_cookies: bool = True,
               clock_ms: Callable[[], int] | None = None) -> Starlette:
    """The console as an ASGI app.

    ``store``: an ``alarms.store.AlarmStore`` (alarms, events, tracks, users, audit).
    ``config``: the ``emfence.config.Config`` (its ``console`` table when present, else
    the defaults in :mod:`console.settings`). ``zones``: the ``CompiledZones`` to draw
    (optional; without it the map shows devices and tracks only). ``registry``: the
    engine ``Registry`` (optional; used to place zones in regions).
    ``secure_cookies``: set the cookie's ``Secure`` flag; keep it on whenever the
    console is reached over TLS, turn it off only for plain-HTTP on localhost.
    ``clock_ms``: epoch-milliseconds clock (tests move it; defaults to the wall clock).

    A program that runs the app with its own uvicorn server instead of :func:`serve` must
    call ``app.state.console.shutdown()`` before telling the server to exit: live feeds
    are endless responses, and uvicorn waits for them.
    """
    console = Console(store=store, config=config, zones=zones, registry=registry,
                      secure_cookies=secure_cookies, clock_ms=clock_ms or wall_clock_ms)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            yield
        finally:
            console.gateway.close()

    routes = [
        Route("/", index),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        *API_ROUTES,
    ]
    # Large answers compressed for a client that asks; never the live feed (starlette
    # leaves text/event-stream alone).
    app = Starlette(routes=routes, middleware=[
                        Middleware(SecurityHeaders,
                                   img_origins=console.settings.tiles.origins()),
                        Middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES,
                                   compresslevel=GZIP_LEVEL)],
                    exception_handlers={HTTPException: api_error, StoreError: store_error,
                                        RegisterError: register_error},
                    lifespan=lifespan)
    app.state.console = console
    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the embedding program owns shutdown."""

    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


async def serve(app: Starlette, host: str, port: int, *,
                ready: Callable[[int], Awaitable[None] | None] | None = None) -> None:
    """Serve ``app`` with uvicorn on ``host:port`` until cancelled.

    Runs in the caller's event loop and installs no signal handlers: the caller (e.g.
    ``emfence run``) owns shutdown and stops the console by cancelling this coroutine's
    task; open live feeds are then closed within a second. ``port`` 0 picks a free
    port; ``ready(port)`` (plain or async) is called with the bound port once the server
    is listening. A bind failure raises ``OSError``.
    """
    # Binding here, not inside uvicorn, turns "address in use" into a plain OSError for
    # the caller instead of uvicorn's sys.exit.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                    access_log=False, lifespan="on", proxy_headers=False,
                                    timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="console-http")
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raises a startup failure
                raise RuntimeError("console server stopped during startup")
            await asyncio.sleep(0.01)
        if ready is not None:
            result = ready(sock.getsockname()[1])
            if inspect.isawaitable(result):
                await result
        await asyncio.shield(task)
    except asyncio.CancelledError:
        console = getattr(app.state, "console", None)
        if console is not None:
            console.shutdown()
        server.should_exit = True
        await task
        raise
    finally:
        sock.close()
