"""``/api/alarms``: the alarm list, one alarm with its history, and the operator's
actions on it (acknowledge, close, note)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alarms.schema import CONDITION_STATES, DISPOSITIONS, WORKFLOW_STATES
from alarms.store import AlarmActionError
from console.access import Caller, alarm_in_scope, signed_in
from console.http import ApiError, int_param, json_response, list_param, read_json, text_field
from contract.alarms import ALARM_TYPES
from geofence.gcj02 import wgs84_to_gcj02

STATES = WORKFLOW_STATES + CONDITION_STATES
MAX_NOTE_CHARS = 2000


def position_gcj02(alarm: dict[str, Any]) -> dict[str, float] | None:
    """The alarm's evidence position (WGS-84) in GCJ-02, the datum of Chinese map
    services, for an operator to paste there; None without a position."""
    evidence = alarm.get("evidence") or {}
    lat, lon = evidence.get("lat"), evidence.get("lon")
    if lat is None or lon is None:
        return None
    glon, glat = wgs84_to_gcj02(np.array([float(lon)]), np.array([float(lat)]))
    return {"lat": round(float(glat[0]), 6), "lon": round(float(glon[0]), 6)}


def alarm_body(alarm: dict[str, Any], actions: list[dict[str, Any]],
               notifications: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One alarm, its actions in time order, its position in GCJ-02, and the
    notifications it caused (who was told, over which channel, and whether it arrived)."""
    actions = sorted(actions, key=lambda a: a.get("at") or 0)
    return {"alarm": alarm, "actions": actions, "position_gcj02": position_gcj02(alarm),
            "notifications": notifications or []}


async def list_alarms(request: Request) -> Response:
    caller = await signed_in(request)
    regions = caller.regions()
    limit = int_param(request, "limit", 200, lo=1, hi=caller.settings.list_limit_max)
    before_ms = int_param(request, "before_ms", None, lo=0)
    before_id = request.query_params.get("before_id")
    if (before_ms is None) != (before_id is None):
        raise ApiError(400, "bad_param", "'before_ms' and 'before_id' go together")
    types = list_param(request, "type", ALARM_TYPES)
    states = list_param(request, "state", STATES)
    subject_id = request.query_params.get("subject_id") or None
    escalated = request.query_params.get("escalated")
    if escalated not in (None, "", "true", "false"):
        raise ApiError(400, "bad_param", "query parameter 'escalated' is true or false")
    assert limit is not None
    # The feed position is read *before* the list: a page that opens the feed from it
    # misses nothing raised in between (it may see an alarm twice, and dedups by id).
    seq = await caller.gateway.last_seq()
    alarms = await caller.gateway.list_alarms(
        regions, types, states, escalated=None if not escalated else escalated == "true",
        before=None if before_ms is None else (before_ms, before_id), limit=limit,
        subject_id=subject_id)
    if alarms:
        # Alarms carry the subject's position (evidence): a read on the record, one
        # row per request naming the query and how many came back.
        await caller.audit("alarms.view", None,
                           {"regions": regions, "type": types, "state": states,
                            "escalated": escalated or None, "subject_id": subject_id,
                            "before_ms": before_ms,
                            "before_id": before_id, "limit": limit, "alarms": len(alarms)})
    return json_response({"alarms": alarms, "seq": seq})


async def get_alarm(request: Request) -> Response:
    caller = await signed_in(request)
    alarm = await alarm_in_scope(caller, "view")
    actions = await caller.gateway.actions(alarm["alarm_id"])
    notifications = await caller.gateway.notifications(alarm["alarm_id"])
    await caller.audit("alarm.view", alarm["alarm_id"], {"region": alarm["region"]})
    return json_response(alarm_body(alarm, actions, notifications))


async def _act(caller: Caller, alarm: dict[str, Any],
               action: Callable[..., Awaitable[Any]], *args: Any) -> Response:
    """Run an operator action, a gateway method ``action(alarm_id, user, *args, now_ms,
    ip=)``; a refused action is 409 with the store's reason; answers the alarm with its
    actions."""
    alarm_id = alarm["alarm_id"]
    try:
        await action(alarm_id, caller.name, *args, caller.console.clock_ms(),
                     ip=caller.console.client_ip(caller.request))
    except AlarmActionError as exc:
        raise ApiError(409, "conflict", exc.reason) from None
    return json_response(alarm_body(await caller.gateway.get_alarm(alarm_id),
                                    await caller.gateway.actions(alarm_id),
                                    await caller.gateway.notifications(alarm_id)))


async def acknowledge(request: Request) -> Response:
    caller = await signed_in(request)
    data = await read_json(request)
    note = text_field(data, "note", required=False, max_chars=MAX_NOTE_CHARS)
    alarm = await alarm_in_scope(caller, "acknowledge")
    # The store writes the action, the `acknowledged` event and the audit row in one
    # transaction; of two operators racing, exactly one wins.
    return await _act(caller, alarm, caller.gateway.acknowledge, note)


async def close(request: Request) -> Response:
    caller = await signed_in(request)
    data = await read_json(request)
    disposition = text_field(data, "disposition", required=True, max_chars=64)
    note = text_field(data, "note", required=False, max_chars=MAX_NOTE_CHARS)
    if disposition not in DISPOSITIONS:
        raise ApiError(400, "bad_field",
                       f"field 'disposition' must be one of {', '.join(DISPOSITIONS)}")
    if disposition == "other" and note is None:
        raise ApiError(400, "missing_field",
                       "disposition 'other' needs a note saying what it was")
    alarm = await alarm_in_scope(caller, "close")
    return await _act(caller, alarm, caller.gateway.close_alarm, disposition, note)


async def note(request: Request) -> Response:
    caller = await signed_in(request)
    data = await read_json(request)
    text = text_field(data, "note", required=True, max_chars=MAX_NOTE_CHARS)
    alarm = await alarm_in_scope(caller, "note")
    return await _act(caller, alarm, caller.gateway.add_note, text)


ROUTES = [
    Route("/api/alarms", list_alarms, methods=["GET"]),
    Route("/api/alarms/{alarm_id:str}", get_alarm, methods=["GET"]),
    Route("/api/alarms/{alarm_id:str}/acknowledge", acknowledge, methods=["POST"]),
    Route("/api/alarms/{alarm_id:str}/close", close, methods=["POST"]),
    Route("/api/alarms/{alarm_id:str}/note", note, methods=["POST"]),
]
