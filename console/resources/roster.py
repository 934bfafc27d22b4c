"""``/api/roster``: the duty roster, who an alarm's notifications reach at each level of
the escalation ladder (docs/console-api.md, "The duty roster"; docs/notifications.md).

Supervisors and admins only, within their regions: a person of another region answers
404 like one that does not exist. Every change is audited by the store with before and
after (``roster.put``, ``roster.delete``); reads are audited here (``roster.view``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alarms.roster_schema import ROLE_LEVELS
from console.access import OVERSEERS, Caller, signed_in
from console.http import ApiError, json_response, read_json
from console.register import optional_json, scope, time_field

FOR_OVERSEERS = "only a supervisor or admin sees and changes the duty roster"


async def _overseer(request: Request) -> Caller:
    caller = await signed_in(request)
    caller.require_role(OVERSEERS, FOR_OVERSEERS)
    return caller


def _timezone(caller: Caller) -> str:
    """``register.timezone`` of the console's config (shifts are in it)."""
    register = getattr(caller.console.config, "register", None)
    return str(getattr(register, "timezone", "Asia/Shanghai"))


async def list_people(request: Request) -> Response:
    caller = await _overseer(request)
    regions = scope(caller, narrowed=True)
    people = await caller.gateway.roster("people", regions)
    await caller.audit("roster.view", None,
                       {"regions": None if regions is None else sorted(regions),
                        "people": len(people)})
    return json_response({"people": people, "roles": ROLE_LEVELS,
                          "timezone": _timezone(caller)})


async def put_person(request: Request) -> Response:
    caller = await _overseer(request)
    doc = await read_json(request)
    person_id = request.path_params["person_id"]
    if doc.get("person_id", person_id) != person_id:
        raise ApiError(400, "bad_field", "field 'person_id' must be the one in the path",
                       field="person_id")
    person, created = await caller.gateway.roster(
        "put_person", {**doc, "person_id": person_id}, actor=caller.name,
        role=caller.principal.role, now_ms=caller.console.clock_ms(), regions=scope(caller),
        ip=caller.console.client_ip(request))
    return json_response(person, 201 if created else 200)


async def delete_person(request: Request) -> Response:
    caller = await _overseer(request)
    await optional_json(request)
    person = await caller.gateway.roster(
        "delete_person", request.path_params["person_id"], actor=caller.name,
        role=caller.principal.role, now_ms=caller.console.clock_ms(), regions=scope(caller),
        ip=caller.console.client_ip(request))
    return json_response(person)


async def told(request: Request) -> Response:
    """Who an alarm of ``region`` at ``at`` (default now) would reach, level by level."""
    caller = await _overseer(request)
    region = request.query_params.get("region")
    if not region:
        raise ApiError(400, "missing_param", "query parameter 'region' is required",
                       field="region")
    allowed = scope(caller)
    if allowed is not None and region not in allowed:
        raise ApiError(403, "forbidden", f"region {region!r} is not one of yours",
                       field="region")
    at = request.query_params.get("at") or None
    at_ms = time_field({"at": int(at) if at and at.isdigit() else at}, "at", required=False)
    at_ms = caller.console.clock_ms() if at_ms is None else at_ms
    subject_id = request.query_params.get("subject_id") or None
    levels: dict[int, Any] = await caller.gateway.roster(
        "told_at", region, at_ms, timezone=_timezone(caller), subject_id=subject_id)
    await caller.audit("roster.view", None, {"region": region, "at_ms": at_ms,
                                              "subject_id": subject_id})
    return json_response({"region": region, "at": at_ms, "timezone": _timezone(caller),
                          "levels": {str(k): v for k, v in levels.items()}})


ROUTES = [
    Route("/api/roster", list_people, methods=["GET"]),
    Route("/api/roster/told", told, methods=["GET"]),
    Route("/api/roster/{person_id:str}", put_person, methods=["PUT"]),
    Route("/api/roster/{person_id:str}", delete_person, methods=["DELETE"]),
]
