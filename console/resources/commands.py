"""``/api/devices/{id}/commands``: commands to a device and its replies (issue #16, the
downlink; docs/console-api.md, "Device commands").

An operator of the device's region asks for ``vibrate`` (warn the subject), ``locate``
(report a fix now) or ``interval`` (report every ``interval_s`` for ``duration_s``).
The console only writes the command, ``pending``, into the store (it holds no broker
connection); the ``emfence run`` worker of the region publishes it and records the
reply (alarms.commands). Both the request and every read are audited; a device outside
the caller's regions answers 403 (audited as ``device.denied``), an unknown one 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import Caller, signed_in
from console.http import ApiError, int_param, json_response, read_json
from console.register import only_keys
from contract.commands import CommandError, command_args

COMMAND_KEYS = ("cmd", "interval_s", "duration_s")


async def _device_region(caller: Caller, action: str) -> tuple[str, str]:
    """(device id, region) of the device in the path; 404 unknown, 403 not the caller's."""
    device_id = caller.request.path_params["device_id"]
    region = await caller.gateway.device_region(device_id)
    registry = caller.console.registry
    if region is None and registry is not None:  # a deployment on subject files
        idx = registry.device_index(device_id)
        region = registry.device_region(idx) if idx >= 0 else None
    if region is None:
        raise ApiError(404, "not_found", f"no device {device_id!r} is issued to a subject")
    if not caller.principal.can_see(region):
        await caller.audit("device.denied", device_id, {"action": action, "region": region})
        raise ApiError(403, "forbidden", f"device {device_id!r} is in region {region}, "
                                         "not one of yours")
    return device_id, region


async def send_command(request: Request) -> Response:
    caller = await signed_in(request)
    data = await read_json(request)
    only_keys(data, COMMAND_KEYS)
    try:
        args = command_args(data.get("cmd"), data.get("interval_s"), data.get("duration_s"))
    except CommandError as exc:
        missing = "required" in str(exc) or (exc.field == "cmd" and "cmd" not in data)
        raise ApiError(400, "missing_field" if missing else "bad_field", str(exc),
                       field=exc.field) from None
    device_id, region = await _device_region(caller, "command")
    row = await caller.gateway.add_command(device_id, region, data["cmd"], args,
                                           actor=caller.name, now_ms=caller.console.clock_ms())
    await caller.audit("device.command", device_id,
                       {"cmd_id": row["cmd_id"], "cmd": row["cmd"], "region": region, **args})
    return json_response(row, 201)


async def list_commands(request: Request) -> Response:
    caller = await signed_in(request)
    limit = int_param(request, "limit", 50, lo=1, hi=500)
    device_id, region = await _device_region(caller, "commands.view")
    rows = await caller.gateway.device_commands(device_id, limit)
    await caller.audit("device.commands.view", device_id,
                       {"region": region, "commands": len(rows)})
    return json_response({"device_id": device_id, "region": region, "commands": rows})


ROUTES = [
    Route("/api/devices/{device_id:str}/commands", list_commands, methods=["GET"]),
    Route("/api/devices/{device_id:str}/commands", send_command, methods=["POST"]),
]
