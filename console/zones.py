"""Zone outlines for the console's map, as GeoJSON in WGS-84 lon/lat.

The browser projects them itself (local equirectangular, metres), so the server sends
lon/lat simplified to a tolerance in metres: a county boundary of tens of thousands of
vertices becomes a few hundred, and nothing needs map tiles or the internet.

Zones are personal data too (an exclusion circle is drawn around a victim's home), so a
user gets only the zones of their regions: a zone's region is its ``region`` (or
``adcode``) property, or its id when that is a region code (county inclusion zones are
named by their code).
"""

from __future__ import annotations

import math
from typing import Any

import shapely
from shapely.geometry import mapping

from console.auth import Principal

_M_PER_DEG_LAT = 111_320.0


def zone_region(zone: Any) -> str | None:
    """The region a zone belongs to, or None when it names none."""
    props = getattr(zone, "properties", None) or {}
    for key in ("region", "adcode"):
        if props.get(key) not in (None, ""):
            return str(props[key])
    zid = str(getattr(zone, "zone_id", ""))
    return zid if len(zid) == 6 and zid.isdigit() else None


def zone_kind(zone: Any) -> str:
    """``inclusion`` / ``exclusion`` / ``leave`` from the zone's ``kind`` property, if any."""
    props = getattr(zone, "properties", None) or {}
    kind = props.get("kind") or props.get("type")
    if kind in ("inclusion", "exclusion", "leave"):
        return kind
    return "exclusion" if getattr(zone, "circle", None) else "inclusion"


def zones_geojson(compiled: Any, principal: Principal, *, tolerance_m: float) -> dict[str, Any]:
    """A FeatureCollection of the zones ``principal`` may see, simplified to ``tolerance_m``.

    ``compiled`` is a ``geofence.CompiledZones`` (or None: an empty collection). Each
    feature's properties: ``zone_id``, ``region``, ``kind``, and for a circle ``circle``
    = ``[lon, lat, radius_m]`` so the page can draw it exactly.
    """
    features: list[dict[str, Any]] = []
    for zone in list(getattr(compiled, "zones", None) or []):
        region = zone_region(zone)
        if not principal.can_see(region):
            continue
        geom = zone.geometry
        if tolerance_m > 0 and not geom.is_empty:
            lat0 = (geom.bounds[1] + geom.bounds[3]) / 2.0
            # Degrees of longitude shrink with latitude; take the smaller degree so the
            # tolerance is at most tolerance_m in every direction.
            deg = tolerance_m / (_M_PER_DEG_LAT * max(math.cos(math.radians(lat0)), 1e-6))
            deg = min(deg, tolerance_m / _M_PER_DEG_LAT)
            geom = shapely.simplify(geom, deg, preserve_topology=True)
        circle = getattr(zone, "circle", None)
        features.append({
            "type": "Feature",
            "id": zone.zone_id,
            "properties": {
                "zone_id": zone.zone_id,
                "region": region,
                "kind": zone_kind(zone),
                "circle": list(circle) if circle else None,
            },
            "geometry": mapping(geom),
        })
    return {"type": "FeatureCollection", "features": features}
