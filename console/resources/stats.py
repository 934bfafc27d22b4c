"""``/api/stats``: the supervisor's numbers (alarms by region, type and day; response
times; false-alarm share) over a period."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alarms.schema import FALSE_ALARM_DISPOSITIONS
from console.access import OVERSEERS, signed_in
from console.http import ApiError, int_param, json_response
from console.settings import utc_offset_ms

DAY_MS = 86_400_000


async def stats(request: Request) -> Response:
    caller = await signed_in(request)
    caller.require_role(OVERSEERS, "statistics are for supervisors and admins")
    regions = caller.regions()
    now = caller.console.clock_ms()
    to_ms = int_param(request, "to_ms", now, lo=0)
    assert to_ms is not None
    from_ms = int_param(request, "from_ms", to_ms - 30 * DAY_MS, lo=0)
    assert from_ms is not None
    if from_ms > to_ms:
        raise ApiError(400, "bad_param", "'from_ms' must not be after 'to_ms'")
    # Days start at midnight in the command centre's zone (console.timezone), at its
    # offset when the period starts; ?tz_offset_min= asks for another fixed offset.
    tz = int_param(request, "tz_offset_min", None, lo=-14 * 60, hi=14 * 60)
    zone = caller.console.settings.timezone if tz is None else None
    day_offset_ms = utc_offset_ms(zone, from_ms) if zone else tz * 60_000
    body = await caller.gateway.stats(regions, from_ms, to_ms, day_offset_ms=day_offset_ms)
    body["timezone"] = zone
    body["false_alarm_dispositions"] = list(FALSE_ALARM_DISPOSITIONS)
    # Notification delivery in these regions now (not per period): failures to chase.
    body["notifications"] = await caller.gateway.notification_counts(regions)
    return json_response(body)


ROUTES = [
    Route("/api/stats", stats, methods=["GET"]),
]
