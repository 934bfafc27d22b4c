"""``/api/subjects`` and ``/api/devices``: the supervision register's subjects, their
devices, curfews and alert suspensions (docs/console-api.md, "The register").

Operators enrol and change subjects of their own regions; a subject elsewhere answers
404 like one that does not exist (the register's rule). Suspending alarms is for
supervisors and admins. Every change is audited by the register with before and after;
reads of a subject (its zones, its devices) are audited here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import OVERSEERS, signed_in
from console.http import ApiError, json_response, read_json
from console.register import (
    change,
    only_keys,
    optional_json,
    query_text,
    require_region,
    scope,
    text,
    time_field,
)
from contract.alarms import ALARM_TYPES, SUBJECT_DEVICE_KINDS

SUBJECT_STATES = ("active", "ended")
# What PATCH may change (devices, leave and curfews have endpoints of their own).
PATCHABLE = ("name", "officer", "note", "level", "region", "inclusion", "exclusion")
CURFEW_KEYS = ("curfew_id", "start", "end", "zone", "days", "from", "to")


def _subject_id(request: Request) -> str:
    return request.path_params["subject_id"]


async def list_subjects(request: Request) -> Response:
    caller = await signed_in(request)
    q = query_text(request, "q")
    state = request.query_params.get("state") or None
    if state is not None and state not in SUBJECT_STATES:
        raise ApiError(400, "bad_param", "query parameter 'state' is active or ended",
                       field="state")
    regions = scope(caller, narrowed=True)
    subjects = await caller.gateway.register("list_subjects", regions=regions, q=q,
                                             state=state)
    await caller.audit("subjects.view", None,
                       {"regions": None if regions is None else sorted(regions), "q": q,
                        "state": state, "subjects": len(subjects)})
    return json_response({"subjects": subjects})


async def create_subject(request: Request) -> Response:
    caller = await signed_in(request)
    doc = await read_json(request)
    require_region(caller, doc.get("region"))
    if doc.get("officer") is None:
        # The enrolling account is in charge until someone else is named.
        doc = {**doc, "officer": caller.name}
    subject = await change(caller, "create_subject", doc, regions=scope(caller))
    return json_response(subject, 201)


async def get_subject(request: Request) -> Response:
    caller = await signed_in(request)
    at = request.query_params.get("at") or None
    # A query string carries epoch ms as digits.
    at_ms = time_field({"at": int(at) if at and at.isdigit() else at}, "at", required=False)
    subject = await caller.gateway.register("get_subject", _subject_id(request),
                                            regions=scope(caller), at_ms=at_ms)
    await caller.audit("subject.view", subject["subject_id"],
                       {"region": subject.get("region"), "at_ms": at_ms})
    return json_response(subject)


async def patch_subject(request: Request) -> Response:
    caller = await signed_in(request)
    changes = await read_json(request)
    only_keys(changes, PATCHABLE)
    if not changes:
        raise ApiError(400, "missing_field",
                       f"send at least one of {', '.join(PATCHABLE)}")
    require_region(caller, changes.get("region"))
    subject = await change(caller, "patch_subject", _subject_id(request), changes,
                           regions=scope(caller))
    return json_response(subject)


async def end_subject(request: Request) -> Response:
    caller = await signed_in(request)
    data = await optional_json(request)
    reason = text(data, "reason")
    subject = await change(caller, "end_subject", _subject_id(request), reason=reason,
                           regions=scope(caller))
    return json_response(subject)


async def issue_device(request: Request) -> Response:
    caller = await signed_in(request)
    data = await read_json(request)
    only_keys(data, ("device_id", "kind"))
    device_id = text(data, "device_id", required=True, max_chars=64)
    kind = text(data, "kind") or "bracelet"
    if kind not in SUBJECT_DEVICE_KINDS:
        raise ApiError(400, "bad_field",
                       f"field 'kind' must be one of {', '.join(SUBJECT_DEVICE_KINDS)}",
                       field="kind")
    device = await change(caller, "issue_device", _subject_id(request), device_id, kind,
                          regions=scope(caller))
    return json_response(device, 201)


async def return_device(request: Request) -> Response:
    caller = await signed_in(request)
    await optional_json(request)
    device = await change(caller, "return_device", request.path_params["device_id"],
                          regions=scope(caller))
    return json_response(device)


def _curfew(data: dict[str, Any]) -> dict[str, Any]:
    """A curfew body in the register's terms: its effective period in epoch ms."""
    only_keys(data, CURFEW_KEYS)
    curfew = dict(data)
    for key in ("from", "to"):
        if curfew.get(key) is not None:
            curfew[key] = time_field(data, key, required=False)
    return curfew


async def add_curfew(request: Request) -> Response:
    caller = await signed_in(request)
    curfew = _curfew(await read_json(request))
    result = await change(caller, "add_curfew", _subject_id(request), curfew,
                          regions=scope(caller))
    return json_response(result, 201)


async def add_suspension(request: Request) -> Response:
    caller = await signed_in(request)
    caller.require_role(OVERSEERS, "only a supervisor or admin suspends alarms")
    data = await read_json(request)
    only_keys(data, ("type", "start", "end", "reason"))
    kind = text(data, "type", required=True, max_chars=64)
    if kind not in ALARM_TYPES:
        raise ApiError(400, "bad_field", f"field 'type' must be one of {', '.join(ALARM_TYPES)}",
                       field="type")
    suspension = {"type": kind, "start": time_field(data, "start", required=True),
                  "end": time_field(data, "end", required=True),
                  "reason": text(data, "reason", required=True)}
    result = await change(caller, "add_suspension", _subject_id(request), suspension,
                          role=caller.principal.role, regions=scope(caller))
    return json_response(result, 201)


ROUTES = [
    Route("/api/subjects", list_subjects, methods=["GET"]),
    Route("/api/subjects", create_subject, methods=["POST"]),
    Route("/api/subjects/{subject_id:str}", get_subject, methods=["GET"]),
    Route("/api/subjects/{subject_id:str}", patch_subject, methods=["PATCH"]),
    Route("/api/subjects/{subject_id:str}/end", end_subject, methods=["POST"]),
    Route("/api/subjects/{subject_id:str}/devices", issue_device, methods=["POST"]),
    Route("/api/subjects/{subject_id:str}/curfews", add_curfew, methods=["POST"]),
    Route("/api/subjects/{subject_id:str}/suspensions", add_suspension, methods=["POST"]),
    Route("/api/devices/{device_id:str}/return", return_device, methods=["POST"]),
]
