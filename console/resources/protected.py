"""``/api/subjects/{id}/contacts`` and ``/api/protected``: the register's relations
(issue #14; docs/console-api.md, "Relations").

A subject's prohibited contacts are read and set by the operators of the subject's
region (the others may be supervised anywhere). Protected persons are victims: their
records (name, devices, whom they are protected from) are for supervisors and admins
only, an operator gets 403; every read is audited like a location read. A protected
person's position (the newest fix of each device) is answered to those alone
(``/api/protected/{id}/position``); everywhere else, e.g. a ``proximity`` alarm, the
console gives the distance and the person's id.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import OVERSEERS, Caller, signed_in
from console.http import json_response, read_json
from console.register import change, only_keys, require_region, scope, text

PROTECTED_KEYS = ("person_id", "name", "region", "devices", "protected_from", "note")
ONLY_OVERSEERS = "protected persons are for supervisors and admins only"


async def get_contacts(request: Request) -> Response:
    caller = await signed_in(request)
    sid = request.path_params["subject_id"]
    contacts = await caller.gateway.register("contacts", sid, regions=scope(caller))
    await caller.audit("subject.contacts.view", sid, {"contacts": contacts})
    return json_response({"subject_id": sid, "contacts": contacts})


async def set_contacts(request: Request) -> Response:
    caller = await signed_in(request)
    data = await read_json(request)
    only_keys(data, ("contacts", "reason"))
    sid = request.path_params["subject_id"]
    contacts = await change(caller, "set_contacts", sid, data.get("contacts"),
                            reason=text(data, "reason"), regions=scope(caller))
    return json_response({"subject_id": sid, "contacts": contacts})


async def _overseer(request: Request) -> Caller:
    caller = await signed_in(request)
    caller.require_role(OVERSEERS, ONLY_OVERSEERS)
    return caller


async def list_protected(request: Request) -> Response:
    caller = await _overseer(request)
    regions = scope(caller, narrowed=True)
    persons = await caller.gateway.register("list_protected", regions=regions)
    await caller.audit("protected.view", None,
                       {"regions": None if regions is None else sorted(regions),
                        "persons": len(persons)})
    return json_response({"protected": persons})


async def get_protected(request: Request) -> Response:
    caller = await _overseer(request)
    pid = request.path_params["person_id"]
    person = await caller.gateway.register("get_protected", pid, regions=scope(caller))
    await caller.audit("protected.view", pid, {"region": person["region"]})
    return json_response(person)


async def protected_position(request: Request) -> Response:
    """The newest position of each of the person's devices (supervisors and admins of
    the person's region), audited as a location read."""
    caller = await _overseer(request)
    pid = request.path_params["person_id"]
    person = await caller.gateway.register("get_protected", pid, regions=scope(caller))
    positions = await caller.gateway.protected_positions(pid)
    await caller.audit("protected.position.view", pid,
                       {"region": person["region"], "devices": [p["device_id"]
                                                                for p in positions]})
    return json_response({"person_id": pid, "positions": positions})


async def add_protected(request: Request) -> Response:
    caller = await _overseer(request)
    doc = await read_json(request)
    only_keys(doc, PROTECTED_KEYS)
    require_region(caller, doc.get("region"))
    person = await change(caller, "add_protected", doc, regions=scope(caller))
    return json_response(person, 201)


async def update_protected(request: Request) -> Response:
    caller = await _overseer(request)
    doc = await read_json(request)
    only_keys(doc, PROTECTED_KEYS)
    require_region(caller, doc.get("region"))
    person = await change(caller, "update_protected", request.path_params["person_id"], doc,
                          regions=scope(caller))
    return json_response(person)


async def end_protected(request: Request) -> Response:
    caller = await _overseer(request)
    data = await read_json(request)
    only_keys(data, ("reason",))
    pid = request.path_params["person_id"]
    await change(caller, "end_protected", pid, reason=text(data, "reason", required=True),
                 regions=scope(caller))
    return json_response({"person_id": pid, "ended": True})


ROUTES = [
    Route("/api/subjects/{subject_id:str}/contacts", get_contacts, methods=["GET"]),
    Route("/api/subjects/{subject_id:str}/contacts", set_contacts, methods=["PUT"]),
    Route("/api/protected", list_protected, methods=["GET"]),
    Route("/api/protected", add_protected, methods=["POST"]),
    Route("/api/protected/{person_id:str}", get_protected, methods=["GET"]),
    Route("/api/protected/{person_id:str}", update_protected, methods=["PUT"]),
    Route("/api/protected/{person_id:str}/end", end_protected, methods=["POST"]),
    Route("/api/protected/{person_id:str}/position", protected_position, methods=["GET"]),
]
