"""``/api/alarms/{alarm_id}/track`` and ``/api/positions``: stored fixes, the subject's
locations. Every answer is a read of personal data and is audited."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import alarm_in_scope, signed_in
from console.http import int_param, json_response


async def track(request: Request) -> Response:
    caller = await signed_in(request)
    s = caller.settings
    alarm = await alarm_in_scope(caller, "track")
    before = int_param(request, "before_ms", s.track_window_ms, lo=0, hi=s.track_window_max_ms)
    after = int_param(request, "after_ms", s.track_window_ms, lo=0, hi=s.track_window_max_ms)
    assert before is not None and after is not None
    at = int(alarm["raised_at"])
    from_ms, to_ms = at - before, at + after
    fixes = await caller.gateway.track(from_ms, to_ms, subject_id=alarm["subject_id"])
    # Location data is personal data: every view of a track is on the record.
    await caller.audit("track.view", alarm["alarm_id"],
                       {"subject_id": alarm["subject_id"], "from_ms": from_ms,
                        "to_ms": to_ms, "fixes": len(fixes), "region": alarm["region"]})
    return json_response({"alarm_id": alarm["alarm_id"], "subject_id": alarm["subject_id"],
                          "device_id": alarm["device_id"], "at": at,
                          "from_ms": from_ms, "to_ms": to_ms, "fixes": fixes})


async def positions(request: Request) -> Response:
    caller = await signed_in(request)
    regions = caller.regions()
    rows = await caller.gateway.last_positions(regions)
    await caller.audit("positions.view", None, {"regions": regions, "devices": len(rows)})
    return json_response({"positions": rows})


ROUTES = [
    Route("/api/alarms/{alarm_id:str}/track", track, methods=["GET"]),
    Route("/api/positions", positions, methods=["GET"]),
]
