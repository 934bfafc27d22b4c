"""``/api/alarms/{alarm_id}/track``, ``/api/subjects/{subject_id}/track`` and
``/api/positions``: stored fixes, the subject's locations. Every answer is a read of
personal data and is audited."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import alarm_in_scope, signed_in
from console.http import ApiError, int_param, json_response
from console.register import scope


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


async def subject_track(request: Request) -> Response:
    """The subject's fixes of any window (track playback): ``from_ms`` <= ts <= ``to_ms``,
    at most twice ``console.track_window_max_ms`` wide. Each fix carries ``delay_ms``
    (received minus its own ts: a fix sent late, from the device's buffer, shows as
    such). A subject outside the caller's regions answers 404, as the register does."""
    caller = await signed_in(request)
    widest = 2 * caller.settings.track_window_max_ms
    from_ms = int_param(request, "from_ms", None, lo=0)
    to_ms = int_param(request, "to_ms", None, lo=0)
    for key, value in (("from_ms", from_ms), ("to_ms", to_ms)):
        if value is None:
            raise ApiError(400, "missing_param",
                           f"query parameter {key!r} (epoch ms) is required", field=key)
    assert from_ms is not None and to_ms is not None
    if not 0 <= to_ms - from_ms <= widest:
        raise ApiError(400, "bad_param", f"query parameter 'to_ms' must be from 'from_ms' to "
                       f"'from_ms' + {widest} (the widest window, ms)", field="to_ms")
    subject = await caller.gateway.register("get_subject", request.path_params["subject_id"],
                                            regions=scope(caller))
    sid = subject["subject_id"]
    fixes = await caller.gateway.track(from_ms, to_ms, subject_id=sid)
    for f in fixes:
        f["delay_ms"] = None if f.get("received_at") is None else f["received_at"] - f["ts"]
    # Location data is personal data: every view of a track is on the record.
    await caller.audit("track.view", sid, {"subject_id": sid, "from_ms": from_ms,
                                           "to_ms": to_ms, "fixes": len(fixes),
                                           "region": subject["region"]})
    return json_response({"subject_id": sid, "region": subject["region"],
                          "from_ms": from_ms, "to_ms": to_ms, "fixes": fixes})


async def positions(request: Request) -> Response:
    caller = await signed_in(request)
    regions = caller.regions()
    rows = await caller.gateway.last_positions(regions)
    await caller.audit("positions.view", None, {"regions": regions, "devices": len(rows)})
    return json_response({"positions": rows})


ROUTES = [
    Route("/api/alarms/{alarm_id:str}/track", track, methods=["GET"]),
    Route("/api/subjects/{subject_id:str}/track", subject_track, methods=["GET"]),
    Route("/api/positions", positions, methods=["GET"]),
]
