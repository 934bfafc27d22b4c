"""``/api/zones``: the zone outlines of the caller's regions, for the map (built by
:mod:`console.zones`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import signed_in
from console.http import json_response
from console.zones import zones_geojson


async def zones(request: Request) -> Response:
    caller = await signed_in(request)
    body = zones_geojson(caller.console.zones, caller.principal,
                         tolerance_m=caller.settings.zone_simplify_m,
                         registry=caller.console.registry)
    # Exclusion zones locate victims' homes: looking at them is on the record too.
    await caller.audit("zones.view", None, {"zones": len(body["features"])})
    return json_response(body)


ROUTES = [
    Route("/api/zones", zones, methods=["GET"]),
]
