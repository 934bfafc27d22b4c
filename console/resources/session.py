"""``/api/login``, ``/api/logout`` and ``/api/session``: logging in and out, and the
signed-in user's console language (``/api/session/lang``)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alarms.schema import DISPOSITIONS, FALSE_ALARM_DISPOSITIONS, LANGS
from console.access import signed_in
from console.auth import (
    Principal,
    credential_digest,
    principal_from_user,
    user_disabled,
    user_password_hash,
    verify_password,
)
from console.context import Console, console_of
from console.http import COOKIE, ApiError, json_response, read_json, text_field
from console.regions import region_names
from contract.alarms import ALARM_TYPES, WARNING_TYPES

MAX_NAME_CHARS = 64
MAX_PASSWORD_CHARS = 1024


def session_body(principal: Principal, csrf: str, console: Console,
                 user: dict[str, Any] | None) -> dict[str, Any]:
    """Who is logged in, their CSRF token and what the page needs to know at start
    (``user``: their account row, for the language they chose)."""
    return {"user": principal.name, "role": principal.role,
            # The page's language for this account (None: not chosen, the browser's).
            "lang": (user or {}).get("lang"),
            "regions": sorted(principal.regions), "all_regions": principal.is_admin,
            "csrf_token": csrf, "dispositions": list(DISPOSITIONS),
            "false_alarm_dispositions": list(FALSE_ALARM_DISPOSITIONS),
            "escalate_after_s": console.escalate_after_s,
            # The page shows every time in the command centre's zone, with its offset.
            "timezone": console.settings.timezone,
            # The base map (console.tiles), null for the boundary-only view.
            "tiles": console.settings.tiles.page(),
            # Names for codes: the page shows 卧龙区, not 411303.
            "region_names": region_names(console.zones),
            # Every alarm type, and those that are warnings (shown as such, no alarm sound).
            "alarm_types": list(ALARM_TYPES), "warning_types": list(WARNING_TYPES)}


def _credentials(data: dict[str, Any]) -> tuple[str, str]:
    """The name and password of a login body; 400 naming the field otherwise."""
    name = text_field(data, "name", required=True, max_chars=MAX_NAME_CHARS)
    password = data.get("password")
    if not isinstance(password, str) or not password:
        raise ApiError(400, "missing_field", "field 'password' is required")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ApiError(400, "bad_field", "field 'password' is too long")
    assert name is not None
    return name, password


async def login(request: Request) -> Response:
    console = console_of(request)
    s = console.settings
    # Login changes state too: only JSON from this origin is accepted (a cross-site
    # form cannot send application/json, and SameSite keeps the cookie home).
    await console.check_origin(request)
    name, password = _credentials(await read_json(request))
    ip = console.client_ip(request)
    now = console.clock_ms()
    # The attempt is counted in the store *before* the password is checked, in one
    # transaction that parallel attempts for this name or address wait for: a storm
    # of parallel guesses gets at most the limit checked, and a blocked guesser
    # learns nothing more.
    attempt = await console.gateway.begin_login(name, ip, now,
                                                window_ms=int(s.login_window_s * 1000),
                                                max_failed_per_name=s.login_fail_per_user,
                                                max_failed_per_ip=s.login_fail_per_ip)
    if not attempt.allowed:
        # The block lifts when the oldest counted failure leaves the window; the
        # whole window is the safe upper bound to tell the client.
        retry_s = int(s.login_window_s)
        raise ApiError(429, "rate_limited",
                       "too many failed logins; try again in at most "
                       f"{max(1, retry_s // 60)} minutes",
                       headers={"retry-after": str(retry_s)})
    user = await console.gateway.get_user(name)
    # argon2 is deliberately slow (tens of ms of CPU): off the event loop, so logins
    # never stall the live feeds.
    good = await asyncio.to_thread(verify_password,
                                   user_password_hash(user) if user else None, password)
    ok = good and user is not None and not user_disabled(user)
    assert attempt.attempt_id is not None
    await console.gateway.finish_login(attempt.attempt_id, name, ok, now, ip)
    if not ok:
        # One answer for an unknown name, a wrong password and a disabled account.
        raise ApiError(401, "login_failed", "wrong name or password")
    # A new login always gets a new session; one this browser still held is ended
    # (no session fixation, no orphaned sessions).
    console.sessions.drop(request.cookies.get(COOKIE))
    principal = principal_from_user(user)
    session = console.sessions.create(principal.name, now,
                                      credential_digest(user_password_hash(user)))
    response = json_response(session_body(principal, session.csrf, console, user))
    console.set_session_cookie(response, session)
    return response


async def logout(request: Request) -> Response:
    caller = await signed_in(request)
    caller.console.sessions.drop(caller.session.token)
    await caller.audit("logout", caller.name, None)
    response = Response(status_code=204)
    caller.console.clear_session_cookie(response)
    return response


async def whoami(request: Request) -> Response:
    caller = await signed_in(request)
    user = await caller.gateway.get_user(caller.name)
    return json_response(session_body(caller.principal, caller.session.csrf, caller.console,
                                      user))


async def set_lang(request: Request) -> Response:
    """``PUT /api/session/lang`` ``{"lang": "zh-CN" | "en"}``: the signed-in user's console
    language, kept with the account (audited as ``session.lang``)."""
    caller = await signed_in(request)  # 401; a write: same origin and the CSRF token
    lang = (await read_json(request)).get("lang")
    if not isinstance(lang, str) or lang not in LANGS:
        raise ApiError(400, "bad_field", f"field 'lang' must be one of {', '.join(LANGS)}, "
                       f"got {repr(lang)[:MAX_NAME_CHARS]}", field="lang")
    console = caller.console
    await caller.gateway.set_user_lang(caller.name, lang, console.clock_ms(), by=caller.name,
                                       ip=console.client_ip(request), action="session.lang")
    return json_response({"lang": lang})


ROUTES = [
    Route("/api/login", login, methods=["POST"]),
    Route("/api/logout", logout, methods=["POST"]),
    Route("/api/session", whoami, methods=["GET"]),
    Route("/api/session/lang", set_lang, methods=["PUT"]),
]
