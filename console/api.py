"""The JSON API handlers (documented in ``docs/console-api.md``).

Every handler authenticates first (``Console.authenticate``: the session cookie, and the
CSRF token for anything that changes state), then checks the caller's region scope
against what is asked for. An alarm outside the caller's regions answers 404, exactly as
an alarm that does not exist, and the attempt is audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alarms.schema import (
    ALARM_TYPES,
    CONDITION_STATES,
    DISPOSITIONS,
    FALSE_ALARM_DISPOSITIONS,
    WORKFLOW_STATES,
)
from alarms.store import AlarmActionError
from console.auth import (
    AuthError,
    Principal,
    credential_digest,
    principal_from_user,
    user_disabled,
    user_password_hash,
    verify_password,
)
from console.http import (
    COOKIE,
    ApiError,
    int_param,
    json_response,
    list_param,
    read_json,
    text_field,
)
from console.zones import zones_geojson

if TYPE_CHECKING:
    from console.context import Console

STATES = WORKFLOW_STATES + CONDITION_STATES
MAX_NOTE_CHARS = 2000
MAX_NAME_CHARS = 64
MAX_PASSWORD_CHARS = 1024
DAY_MS = 86_400_000
# The audit view scans at most this many pages of this many rows per request.
AUDIT_SCAN_PAGES = 20
AUDIT_SCAN_ROWS = 500


def region_param(request: Request, principal: Principal) -> list[str] | None:
    """The caller's region scope narrowed by ``?region=``; None means every region."""
    try:
        return principal.narrow(request.query_params.get("region"))
    except AuthError as exc:
        raise ApiError(400, "bad_param", f"query parameter 'region': {exc}") from None


def session_body(principal: Principal, csrf: str, console: Console) -> dict[str, Any]:
    return {"user": principal.name, "role": principal.role,
            "regions": sorted(principal.regions), "all_regions": principal.is_admin,
            "csrf_token": csrf, "dispositions": list(DISPOSITIONS),
            "false_alarm_dispositions": list(FALSE_ALARM_DISPOSITIONS),
            "escalate_after_s": console.escalate_after_s}


def alarm_body(alarm: dict[str, Any], actions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"alarm": alarm, "actions": actions}


def feed_item(row: dict[str, Any]) -> dict[str, Any]:
    """An event-log row as the feed and the API show it."""
    return {"seq": row["seq"], "event": row["event"], "alarm_id": row["alarm_id"],
            "type": row["type"], "region": row["region"], "created_at": row["created_at"],
            "data": row["data"]}


def routes(console: Console) -> list[Route]:
    """The API's routes, bound to ``console``."""
    store = console.gateway
    s = console.settings

    async def login(request: Request) -> Response:
        # Login changes state too: only JSON from this origin is accepted (a cross-site
        # form cannot send application/json, and SameSite keeps the cookie home).
        await console.check_origin(request)
        data = await read_json(request)
        name = text_field(data, "name", required=True, max_chars=MAX_NAME_CHARS)
        password = data.get("password")
        if not isinstance(password, str) or not password:
            raise ApiError(400, "missing_field", "field 'password' is required")
        if len(password) > MAX_PASSWORD_CHARS:
            raise ApiError(400, "bad_field", "field 'password' is too long")
        assert name is not None
        ip = console.client_ip(request)
        now = console.clock_ms()
        # The attempt is counted in the store *before* the password is checked, in one
        # transaction that parallel attempts for this name or address wait for: a storm
        # of parallel guesses gets at most the limit checked, and a blocked guesser
        # learns nothing more.
        attempt = await store.begin_login(name, ip, now,
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
        user = await store.get_user(name)
        # argon2 is deliberately slow (tens of ms of CPU): off the event loop, so logins
        # never stall the live feeds.
        good = await asyncio.to_thread(verify_password,
                                       user_password_hash(user) if user else None, password)
        ok = good and user is not None and not user_disabled(user)
        await store.finish_login(attempt.attempt_id, name, ok, now, ip)
        if not ok:
            # One answer for an unknown name, a wrong password and a disabled account.
            raise ApiError(401, "login_failed", "wrong name or password")
        # A new login always gets a new session; one this browser still held is ended
        # (no session fixation, no orphaned sessions).
        console.sessions.drop(request.cookies.get(COOKIE))
        principal = principal_from_user(user)
        session = console.sessions.create(principal.name, now,
                                          credential_digest(user_password_hash(user)))
        response = json_response(session_body(principal, session.csrf, console))
        console.set_session_cookie(response, session)
        return response

    async def logout(request: Request) -> Response:
        session, principal = await console.authenticate(request)
        console.sessions.drop(session.token)
        await console.audit(request, principal.name, "logout", principal.name, None)
        response = Response(status_code=204)
        console.clear_session_cookie(response)
        return response

    async def whoami(request: Request) -> Response:
        session, principal = await console.authenticate(request)
        return json_response(session_body(principal, session.csrf, console))

    async def list_alarms(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        regions = region_param(request, principal)
        limit = int_param(request, "limit", 200, lo=1, hi=s.list_limit_max)
        before_ms = int_param(request, "before_ms", None, lo=0)
        before_id = request.query_params.get("before_id")
        if (before_ms is None) != (before_id is None):
            raise ApiError(400, "bad_param", "'before_ms' and 'before_id' go together")
        types = list_param(request, "type", ALARM_TYPES)
        states = list_param(request, "state", STATES)
        escalated = request.query_params.get("escalated")
        if escalated not in (None, "", "true", "false"):
            raise ApiError(400, "bad_param", "query parameter 'escalated' is true or false")
        # The feed position is read *before* the list: a page that opens the feed from it
        # misses nothing raised in between (it may see an alarm twice, and dedups by id).
        seq = await store.last_seq()
        alarms = await store.list_alarms(regions, types, states,
                            escalated=None if not escalated else escalated == "true",
                            before=None if before_ms is None else (before_ms, before_id),
                            limit=limit)
        if alarms:
            # Alarms carry the subject's position (evidence): a read on the record, one
            # row per request naming the query and how many came back.
            await console.audit(request, principal.name, "alarms.view", None,
                                {"regions": regions, "type": types, "state": states,
                                 "escalated": escalated or None, "before_ms": before_ms,
                                 "before_id": before_id, "limit": limit,
                                 "alarms": len(alarms)})
        return json_response({"alarms": alarms, "seq": seq})

    async def alarm_in_scope(request: Request, principal: Principal, action: str) -> dict:
        """The alarm named in the path if the caller may see it; 404 (audited) otherwise."""
        alarm_id = request.path_params["alarm_id"]
        alarm = await store.get_alarm(alarm_id)
        if alarm is None:
            raise ApiError(404, "not_found", f"no alarm {alarm_id!r}")
        if not principal.can_see(alarm["region"]):
            await console.audit(request, principal.name, "alarm.denied", alarm_id,
                                {"action": action, "region": alarm["region"]})
            raise ApiError(404, "not_found", f"no alarm {alarm_id!r}")
        return alarm

    async def get_alarm(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        alarm = await alarm_in_scope(request, principal, "view")
        actions = await store.actions(alarm["alarm_id"])
        await console.audit(request, principal.name, "alarm.view", alarm["alarm_id"],
                            {"region": alarm["region"]})
        return json_response(alarm_body(alarm, actions))

    async def act(request: Request, principal: Any, alarm: dict,
                  action: Callable[..., Awaitable[Any]], *args: Any) -> Response:
        """Run an operator action, a gateway method ``action(alarm_id, user, *args,
        now_ms, ip=)``; a refused action is 409 with the store's reason; answers the
        alarm with its actions."""
        alarm_id = alarm["alarm_id"]
        try:
            await action(alarm_id, principal.name, *args, console.clock_ms(),
                         ip=console.client_ip(request))
        except AlarmActionError as exc:
            raise ApiError(409, "conflict", exc.reason) from None
        return json_response(alarm_body(await store.get_alarm(alarm_id),
                                        await store.actions(alarm_id)))

    async def acknowledge(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        data = await read_json(request)
        note = text_field(data, "note", required=False, max_chars=MAX_NOTE_CHARS)
        alarm = await alarm_in_scope(request, principal, "acknowledge")
        # The store writes the action, the `acknowledged` event and the audit row in one
        # transaction; of two operators racing, exactly one wins.
        return await act(request, principal, alarm, store.acknowledge, note)

    async def close(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        data = await read_json(request)
        disposition = text_field(data, "disposition", required=True, max_chars=64)
        note = text_field(data, "note", required=False, max_chars=MAX_NOTE_CHARS)
        if disposition not in DISPOSITIONS:
            raise ApiError(400, "bad_field",
                           f"field 'disposition' must be one of {', '.join(DISPOSITIONS)}")
        if disposition == "other" and note is None:
            raise ApiError(400, "missing_field", "disposition 'other' needs a note saying what it was")
        alarm = await alarm_in_scope(request, principal, "close")
        return await act(request, principal, alarm, store.close_alarm, disposition, note)

    async def note(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        data = await read_json(request)
        text = text_field(data, "note", required=True, max_chars=MAX_NOTE_CHARS)
        alarm = await alarm_in_scope(request, principal, "note")
        return await act(request, principal, alarm, store.add_note, text)

    async def track(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        alarm = await alarm_in_scope(request, principal, "track")
        before = int_param(request, "before_ms", s.track_window_ms, lo=0, hi=s.track_window_max_ms)
        after = int_param(request, "after_ms", s.track_window_ms, lo=0, hi=s.track_window_max_ms)
        assert before is not None and after is not None
        at = int(alarm["raised_at"])
        from_ms, to_ms = at - before, at + after
        fixes = await store.track(from_ms, to_ms, subject_id=alarm["subject_id"])
        # Location data is personal data: every view of a track is on the record.
        await console.audit(request, principal.name, "track.view", alarm["alarm_id"],
                            {"subject_id": alarm["subject_id"], "from_ms": from_ms,
                             "to_ms": to_ms, "fixes": len(fixes), "region": alarm["region"]})
        return json_response({"alarm_id": alarm["alarm_id"], "subject_id": alarm["subject_id"],
                              "device_id": alarm["device_id"], "at": at,
                              "from_ms": from_ms, "to_ms": to_ms, "fixes": fixes})

    async def zones(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        body = zones_geojson(console.zones, principal, tolerance_m=s.zone_simplify_m,
                             registry=console.registry)
        # Exclusion zones locate victims' homes: looking at them is on the record too.
        await console.audit(request, principal.name, "zones.view", None,
                            {"zones": len(body["features"])})
        return json_response(body)

    async def positions(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        regions = region_param(request, principal)
        rows = await store.last_positions(regions)
        await console.audit(request, principal.name, "positions.view", None,
                            {"regions": regions, "devices": len(rows)})
        return json_response({"positions": rows})

    async def events(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        since = int_param(request, "since", 0, lo=0)
        limit = int_param(request, "limit", 500, lo=1, hi=s.list_limit_max)
        rows = await store.events_since(since, principal.scope, limit)
        if rows:
            # Events carry the evidence of raised alarms; an empty poll shows nothing and
            # is not written, so a system polling often does not flood the trail.
            await console.audit(request, principal.name, "events.view", None,
                                {"regions": principal.scope, "since": since, "limit": limit,
                                 "events": len(rows), "last_seq": rows[-1]["seq"]})
        return json_response({"events": [feed_item(r) for r in rows],
                              "seq": rows[-1]["seq"] if rows else since})

    async def stats(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        if principal.role not in ("supervisor", "admin"):
            raise ApiError(403, "forbidden", "statistics are for supervisors and admins")
        regions = region_param(request, principal)
        now = console.clock_ms()
        to_ms = int_param(request, "to_ms", now, lo=0)
        assert to_ms is not None
        from_ms = int_param(request, "from_ms", to_ms - 30 * DAY_MS, lo=0)
        assert from_ms is not None
        if from_ms > to_ms:
            raise ApiError(400, "bad_param", "'from_ms' must not be after 'to_ms'")
        tz = int_param(request, "tz_offset_min", 0, lo=-14 * 60, hi=14 * 60) or 0
        body = await store.stats(regions, from_ms, to_ms, day_offset_ms=tz * 60_000)
        body["false_alarm_dispositions"] = list(FALSE_ALARM_DISPOSITIONS)
        return json_response(body)

    async def audit(request: Request) -> Response:
        _, principal = await console.authenticate(request)
        if principal.role not in ("supervisor", "admin"):
            raise ApiError(403, "forbidden", "the audit trail is for supervisors and admins")
        limit = int_param(request, "limit", 100, lo=1, hi=s.list_limit_max)
        before_id = int_param(request, "before_id", None, lo=1)
        who = request.query_params.get("who") or None
        action = request.query_params.get("action") or None
        assert limit is not None
        visible = await audit_scope(principal)
        rows: list[dict[str, Any]] = []
        cursor = before_id
        exhausted = False
        # A supervisor sees part of the log: scan it newest first, page by page, keeping
        # the rows in scope; the page bound keeps one request's work finite.
        for _ in range(AUDIT_SCAN_PAGES):
            page = await store.audit_log(who=who, action=action, before_id=cursor,
                              limit=AUDIT_SCAN_ROWS)
            for row in page:
                cursor = row["id"]
                if visible(row):
                    rows.append(row)
                    if len(rows) == limit:
                        break
            if len(rows) == limit:
                break
            if len(page) < AUDIT_SCAN_ROWS:
                exhausted = True
                break
        return json_response({"rows": rows, "next_before_id": None if exhausted else cursor})

    async def audit_scope(principal: Principal):
        """A predicate: may ``principal`` see this audit row?"""
        if principal.is_admin:
            return lambda row: True
        # Rows about their regions, and the rows about no region of accounts that share a
        # region with them (logins, logouts, refusals of their own operators). A
        # colleague's row about another region (a note on its alarm, a look at its
        # subject's track) is that region's business, not theirs.
        colleagues = {u["name"] for u in await store.list_users()
                      if set(u["regions"]) & principal.regions}

        def visible(row: dict[str, Any]) -> bool:
            detail = row.get("detail") if isinstance(row.get("detail"), dict) else {}
            about: set[str] = set()
            if detail.get("region") is not None:
                about.add(str(detail["region"]))
            if isinstance(detail.get("regions"), list):
                about |= set(map(str, detail["regions"]))
            if about:
                return bool(about & principal.regions)
            return row.get("who") in colleagues

        return visible

    return [
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/session", whoami, methods=["GET"]),
        Route("/api/alarms", list_alarms, methods=["GET"]),
        Route("/api/alarms/{alarm_id:str}", get_alarm, methods=["GET"]),
        Route("/api/alarms/{alarm_id:str}/acknowledge", acknowledge, methods=["POST"]),
        Route("/api/alarms/{alarm_id:str}/close", close, methods=["POST"]),
        Route("/api/alarms/{alarm_id:str}/note", note, methods=["POST"]),
        Route("/api/alarms/{alarm_id:str}/track", track, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/zones", zones, methods=["GET"]),
        Route("/api/positions", positions, methods=["GET"]),
        Route("/api/stats", stats, methods=["GET"]),
        Route("/api/audit", audit, methods=["GET"]),
    ]
