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
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alarms.store import StoreError
from console.auth import (
    Principal,
    Session,
    SessionTable,
    credential_digest,
    csrf_ok,
    principal_from_user,
    user_disabled,
    user_password_hash,
)
from console.gateway import StoreGateway
from console.settings import ConsoleSettings, console_settings

log = logging.getLogger("emfence.console")

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "emfence_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A refused Origin header is kept in the audit trail up to this many characters.
MAX_AUDIT_ORIGIN = 200

# The page loads nothing from elsewhere (no CDN, no tiles), so the policy can be tight.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")
_SECURITY_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"geolocation=(), camera=(), microphone=()"),
]


class ApiError(HTTPException):
    """An HTTP error with a stable machine-readable ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson-encoded JSON; never cached (the bodies carry personal data)."""
    h = {"cache-control": "no-store"}
    h.update(headers or {})
    return Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status_code=status,
                    media_type="application/json", headers=h)


class SecurityHeaders:
    """Adds the security headers above to every HTTP response (pure ASGI, so streaming
    responses such as the live feed pass through untouched)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Console:
    """What every handler needs: the store door, settings, sessions and the clock."""

    def __init__(self, *, store: Any, config: Any, zones: Any, registry: Any,
                 secure_cookies: bool, clock_ms: Callable[[], int]):
        self.store = store
        self.config = config
        self.settings: ConsoleSettings = console_settings(config)
        self.zones = zones
        self.registry = registry
        self.secure_cookies = secure_cookies
        self.clock_ms = clock_ms
        self.gateway = StoreGateway(store, threads=self.settings.store_threads)
        # Set by shutdown(): open live feeds end within one poll, so the HTTP server can
        # stop (a server waits for streaming responses to finish before it exits).
        self.closing = False
        alarms_cfg = getattr(config, "alarms", None)
        self.escalate_after_s = getattr(alarms_cfg, "escalate_after_s", None)
        s = self.settings
        self.sessions = SessionTable(idle_ms=int(s.session_idle_s * 1000),
                                     max_ms=int(s.session_max_s * 1000))

    def set_model(self, zones: Any, registry: Any) -> None:
        """Draw these zones and place them with this registry from now on (after the
        engine reloads its zones and subjects, e.g. on SIGHUP)."""
        self.zones, self.registry = zones, registry

    def shutdown(self) -> None:
        """End every open live feed (within ``feed_poll_s``); call before stopping the
        HTTP server. :func:`serve` does it when cancelled."""
        self.closing = True

    # --- who is asking ---------------------------------------------------------------

    async def authenticate(self, request: Request) -> tuple[Session, Principal]:
        """The caller's session and principal, or 401; state-changing methods also need
        a same-site ``Origin`` (if any) and the session's CSRF token (403 otherwise,
        audited as ``origin.rejected`` / ``csrf.rejected``)."""
        now = self.clock_ms()
        session = self.sessions.get(request.cookies.get(COOKIE), now)
        if request.method not in SAFE_METHODS:
            # Judged before the session: a cross-site attempt is a security event whether
            # or not the browser sent a live cookie along.
            await self.check_origin(request, session.user if session else None)
        if session is None:
            raise ApiError(401, "not_logged_in", "log in first")
        # The account is read on every request so that disabling it or changing its
        # regions takes effect at once, not at the next login.
        user = await self.gateway.call("get_user", session.user)
        if (user is None or user_disabled(user)
                or credential_digest(user_password_hash(user)) != session.credential):
            # Gone, disabled, or its password changed since this login.
            self.sessions.drop(session.token)
            raise ApiError(401, "not_logged_in", "log in first")
        principal = principal_from_user(user)
        if request.method not in SAFE_METHODS and not csrf_ok(session,
                                                               request.headers.get(CSRF_HEADER)):
            await self.audit(request, principal.name, "csrf.rejected", request.url.path,
                             {"method": request.method})
            raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header")
        return session, principal

    async def check_origin(self, request: Request, who: str | None = None) -> None:
        """Reject (403, audited as ``origin.rejected`` by ``who`` if known) a
        state-changing request whose Origin is another site (defence in depth behind
        SameSite cookies and the CSRF token)."""
        origin = request.headers.get("origin")
        if origin is None:
            return
        host = request.headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc != host:
            await self.audit(request, who, "origin.rejected", request.url.path,
                             {"method": request.method, "origin": origin[:MAX_AUDIT_ORIGIN]})
            raise ApiError(403, "origin", f"cross-origin request from {origin!r} refused")

    async def audit(self, request: Request, who: str | None, action: str,
                    target: str | None, detail: Any) -> None:
        """One audit row for ``request``: the console's clock, the client's address.

        ``detail`` says what was done or read (a query, an alarm id, a count), never
        coordinates."""
        await self.gateway.call("audit", who, action, target, detail, self.clock_ms(),
                                self.client_ip(request))

    def client_ip(self, request: Request) -> str:
        # The direct peer; behind a reverse proxy, run uvicorn with --proxy-headers so
        # this is the real client (see docs/console-api.md).
        return request.client.host if request.client else "unknown"

    def set_session_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(COOKIE, session.token, max_age=int(self.settings.session_max_s),
                            path="/", secure=self.secure_cookies, httponly=True,
                            samesite="strict")

    def clear_session_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", secure=self.secure_cookies, httponly=True,
                               samesite="strict")


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


async def _api_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return json_response({"error": exc.code, "message": exc.detail}, exc.status_code,
                             headers=exc.headers)
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return json_response({"error": code, "message": exc.detail}, exc.status_code,
                         headers=exc.headers)


async def _store_error(request: Request, exc: Exception) -> Response:
    # The database is down or refused: say so plainly; the details go to the log only
    # (they may name hosts and tables).
    log.error("store error on %s %s: %s", request.method, request.url.path, exc)
    return json_response({"error": "store_unavailable",
                          "message": "the alarm store is not answering; try again shortly"},
                         503, headers={"retry-after": "5"})


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
    from console import api, feed

    console = Console(store=store, config=config, zones=zones, registry=registry,
                      secure_cookies=secure_cookies, clock_ms=clock_ms or _wall_clock_ms)

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
        *api.routes(console),
        Route("/api/feed", feed.endpoint(console)),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)],
                    exception_handlers={HTTPException: _api_error, StoreError: _store_error}, lifespan=lifespan)
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
