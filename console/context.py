"""What every resource needs: the :class:`Console` of one app (store gateway, settings,
sessions, clock, the zones to draw) and its checks of who is asking.

``create_app`` builds one and keeps it as ``app.state.console``; a handler reaches it
with :func:`console_of`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

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
from console.feed_hub import FeedHub
from console.gateway import StoreGateway
from console.http import COOKIE, CSRF_HEADER, SAFE_METHODS, ApiError
from console.register_model import RegisterMap
from console.settings import ConsoleSettings, console_settings

# A refused Origin header is kept in the audit trail up to this many characters.
MAX_AUDIT_ORIGIN = 200


def wall_clock_ms() -> int:
    """Now, in epoch milliseconds: the console's default clock."""
    return time.time_ns() // 1_000_000


class Console:
    """What every handler needs: the store door, settings, sessions, the clock and the
    live feeds' shared poll."""

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
        # The register's zones and subjects for the map, rebuilt when the register changes.
        self.register_map = RegisterMap()
        # Set by shutdown(): open live feeds end within one poll, so the HTTP server can
        # stop (a server waits for streaming responses to finish before it exits).
        self.closing = False
        # The one poll of the event log that wakes every open live feed: it runs while
        # at least one feed is open (console/feed_hub.py).
        self.feed_hub = FeedHub(self.gateway, self.settings.feed_poll_s,
                                lambda: self.closing)
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
        HTTP server. :func:`console.app.serve` does it when cancelled. Safe to call from
        any thread."""
        self.closing = True
        self.feed_hub.wake()

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
        user = await self.gateway.get_user(session.user)
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
        await self.gateway.audit(who, action, target, detail, self.clock_ms(),
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


def console_of(request: Request) -> Console:
    """The :class:`Console` of the app serving ``request``."""
    return request.app.state.console
