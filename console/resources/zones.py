"""``/api/zones``: the zone outlines of the caller's regions for the map (built by
:mod:`console.zones`) from the engine's zones and the register's zone library, and the
library's changes: a zone drawn or uploaded as GeoJSON, a county imported by adcode."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import signed_in
from console.http import ApiError, json_response, read_json
from console.register import MAX_ZONE_BODY_BYTES, change, only_keys, text
from console.zones import zones_geojson

# The keys of a zone body that is not itself a GeoJSON Feature.
ZONE_KEYS = ("zone_id", "name", "geometry", "coord_sys", "radius_m", "kind", "region")


async def zones(request: Request) -> Response:
    caller = await signed_in(request)
    tolerance_m = caller.settings.zone_simplify_m
    body = zones_geojson(caller.console.zones, caller.principal, tolerance_m=tolerance_m,
                         registry=caller.console.registry)
    reg_zones, reg_subjects, library = await caller.gateway.register_map(
        caller.console.register_map)
    ours = zones_geojson(reg_zones, caller.principal, tolerance_m=tolerance_m,
                         registry=reg_subjects)
    # The register's outline of a zone is the newer one (and it carries the name).
    mine = {f["id"] for f in ours["features"]}
    body["features"] = ([f for f in body["features"] if f["id"] not in mine]
                        + ours["features"])
    # The library's names and kinds (no coordinates), for choosing zones by name.
    body["library"] = library
    # Exclusion zones locate victims' homes: looking at them is on the record too.
    await caller.audit("zones.view", None, {"zones": len(body["features"])})
    return json_response(body)


def _feature(data: dict[str, Any]) -> dict[str, Any]:
    """A zone body as a GeoJSON Feature: either a Feature, or the geometry with the
    properties beside it (``zone_id``, ``name``, ``coord_sys``, ``radius_m``)."""
    if data.get("type") == "Feature":
        props = data.get("properties")
        if not isinstance(props, dict):
            raise ApiError(400, "bad_field", "a Feature needs 'properties' with zone_id and name",
                           field="properties")
        if props.get("zone_id") is None and data.get("id") is not None:
            data = {**data, "properties": {**props, "zone_id": data["id"]}}
        return data
    only_keys(data, ZONE_KEYS)
    if not isinstance(data.get("geometry"), dict):
        raise ApiError(400, "missing_field", "field 'geometry' (GeoJSON) is required",
                       field="geometry")
    props = {k: v for k, v in data.items() if k != "geometry" and v is not None}
    return {"type": "Feature", "geometry": data["geometry"], "properties": props}


async def create_zone(request: Request) -> Response:
    caller = await signed_in(request)
    feature = _feature(await read_json(request, MAX_ZONE_BODY_BYTES))
    zone = await change(caller, "create_zone", feature)
    return json_response(zone, 201)


async def import_adcode(request: Request) -> Response:
    caller = await signed_in(request)
    data = await read_json(request)
    only_keys(data, ("adcode",))
    adcode = data.get("adcode")
    if isinstance(adcode, int) and not isinstance(adcode, bool):
        adcode = str(adcode)
    adcode = text({"adcode": adcode}, "adcode", required=True, max_chars=12)
    zone = await change(caller, "import_adcode", adcode)
    return json_response(zone, 201)


ROUTES = [
    Route("/api/zones", zones, methods=["GET"]),
    Route("/api/zones", create_zone, methods=["POST"]),
    Route("/api/zones/import-adcode", import_adcode, methods=["POST"]),
]
