"""Leave (请假): a subject's request to be outside their inclusion zone for a while, and
its way through the register (docs/console-api.md, "Leave").

An officer requests it (zones, start, end, reason; at most ``register.leave_max_days``);
a supervisor or admin who did not request it approves or refuses it (an operator
approving answers 403, and so does the requester); an officer registers the return
(销假), which ends the window early. ``GET /api/leaves?state=requested`` is the approval
queue.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import OVERSEERS, Caller, signed_in
from console.http import ApiError, json_response, read_json
from console.register import (
    change,
    leave_max_days,
    only_keys,
    optional_json,
    query_text,
    scope,
    text,
    time_field,
)

# The states of a leave as the register sees it at a moment (alarms.register).
LEAVE_STATES = ("requested", "refused", "approved", "active", "returned", "ended",
                "overdue", "cancelled")
MAX_LEAVE_ZONES = 50


def _zones(data: dict[str, Any]) -> list[str]:
    """The ``zones`` of a leave request: a non-empty list of zone ids."""
    zones = data.get("zones")
    if not isinstance(zones, list) or not zones:
        raise ApiError(400, "bad_field", "field 'zones' must be a non-empty list of zone ids",
                       field="zones")
    if len(zones) > MAX_LEAVE_ZONES:
        raise ApiError(400, "bad_field", f"field 'zones' names more than {MAX_LEAVE_ZONES}",
                       field="zones")
    for i, zone_id in enumerate(zones):
        if not isinstance(zone_id, str) or not zone_id.strip():
            raise ApiError(400, "bad_field", f"zones[{i}] must be a zone id",
                           field=f"zones[{i}]")
    return zones


async def request_leave(request: Request) -> Response:
    caller = await signed_in(request)
    data = await read_json(request)
    only_keys(data, ("zones", "start", "end", "reason"))
    zones = _zones(data)
    start_ms = time_field(data, "start", required=True)
    end_ms = time_field(data, "end", required=True)
    reason = text(data, "reason")
    leave = await change(caller, "request_leave", request.path_params["subject_id"],
                         zones=zones, start_ms=start_ms, end_ms=end_ms, reason=reason,
                         regions=scope(caller), max_days=leave_max_days(caller))
    return json_response(leave, 201)


def _decider(caller: Caller, verb: str) -> None:
    caller.require_role(OVERSEERS, f"only a supervisor or admin may {verb} leave")


async def approve(request: Request) -> Response:
    caller = await signed_in(request)
    _decider(caller, "approve")
    await optional_json(request)
    leave = await change(caller, "approve_leave", request.path_params["leave_id"],
                         role=caller.principal.role, regions=scope(caller))
    return json_response(leave)


async def refuse(request: Request) -> Response:
    caller = await signed_in(request)
    _decider(caller, "refuse")
    data = await optional_json(request)
    only_keys(data, ("reason",))
    leave = await change(caller, "refuse_leave", request.path_params["leave_id"],
                         role=caller.principal.role, reason=text(data, "reason"),
                         regions=scope(caller))
    return json_response(leave)


async def return_leave(request: Request) -> Response:
    caller = await signed_in(request)
    await optional_json(request)
    leave = await change(caller, "return_leave", request.path_params["leave_id"],
                         regions=scope(caller))
    return json_response(leave)


async def list_leaves(request: Request) -> Response:
    caller = await signed_in(request)
    state = request.query_params.get("state") or None
    if state is not None and state not in LEAVE_STATES:
        raise ApiError(400, "bad_param",
                       f"query parameter 'state' must be one of {', '.join(LEAVE_STATES)}",
                       field="state")
    subject_id = query_text(request, "subject_id", max_chars=64)
    regions = scope(caller, narrowed=True)
    leaves = await caller.gateway.register("list_leaves", state=state, regions=regions,
                                           subject_id=subject_id,
                                           now_ms=caller.console.clock_ms())
    await caller.audit("leaves.view", subject_id,
                       {"regions": None if regions is None else sorted(regions),
                        "state": state, "leaves": len(leaves)})
    return json_response({"leaves": leaves})


ROUTES = [
    Route("/api/subjects/{subject_id:str}/leaves", request_leave, methods=["POST"]),
    Route("/api/leaves", list_leaves, methods=["GET"]),
    Route("/api/leaves/{leave_id:str}/approve", approve, methods=["POST"]),
    Route("/api/leaves/{leave_id:str}/refuse", refuse, methods=["POST"]),
    Route("/api/leaves/{leave_id:str}/return", return_leave, methods=["POST"]),
]
