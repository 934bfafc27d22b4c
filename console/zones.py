"""Zone outlines for the console's map, as GeoJSON in WGS-84 lon/lat.

The browser projects them itself (local equirectangular, metres), so the server sends
lon/lat outlines simplified to a tolerance in metres: a county boundary of tens of
thousands of vertices becomes a few hundred, and nothing needs map tiles or the internet.

Zones are personal data too (an exclusion circle is drawn around a victim's home), so a
user gets only the zones of their regions. A zone belongs to

* the region of every subject whose inclusion, exclusion or leave zones name it (from
  the engine's registry, when the console has one), and
* the region its ``region`` (or ``adcode``) property names, or its id when that is a
  6-digit county code (county inclusion zones are named by their code).

A zone that belongs to no region is shown to admins only.
"""

from __future__ import annotations

from typing import Any

import shapely
from shapely.geometry import mapping

from console.auth import Principal

# Metres per degree of latitude (and of longitude at the equator), WGS-84 mean.
_M_PER_DEG = 111_320.0
# When zones are used in several ways, the most restrictive use names them.
_KIND_RANK = {"inclusion": 0, "leave": 1, "exclusion": 2}


def zone_usage(registry: Any) -> dict[str, tuple[set[str], str]]:
    """zone_id -> (regions of the subjects using it, how it is used) from a Registry."""
    usage: dict[str, tuple[set[str], str]] = {}
    for subject in getattr(registry, "subjects", None) or []:
        uses = [(z, "inclusion") for z in subject.inclusion]
        uses += [(z, "exclusion") for z in subject.exclusion]
        uses += [(z, "leave") for leave in subject.leaves for z in leave[2]]
        for zone_id, kind in uses:
            regions, known = usage.get(zone_id, (set(), kind))
            regions.add(subject.region)
            usage[zone_id] = (regions, max(kind, known, key=_KIND_RANK.__getitem__))
    return usage


def own_region(zone: Any) -> str | None:
    """The region a zone names itself: ``region``/``adcode`` property or a county-code id."""
    props = zone.properties or {}
    for key in ("region", "adcode"):
        if props.get(key) not in (None, ""):
            return str(props[key])
    zid = str(zone.zone_id)
    return zid if len(zid) == 6 and zid.isdigit() else None


def simplify_m(geometry: Any, tolerance_m: float) -> Any:
    """``geometry`` (lon/lat degrees) simplified so no point moves more than ``tolerance_m``.

    One degree of latitude is ``_M_PER_DEG`` metres and one of longitude is that times
    cos(lat), never more; so a tolerance of ``tolerance_m / _M_PER_DEG`` degrees is at most
    ``tolerance_m`` metres in every direction.
    """
    if tolerance_m <= 0 or geometry.is_empty:
        return geometry
    return shapely.simplify(geometry, tolerance_m / _M_PER_DEG, preserve_topology=True)


def zones_geojson(compiled: Any, principal: Principal, *, tolerance_m: float,
                  registry: Any = None) -> dict[str, Any]:
    """A FeatureCollection of the zones ``principal`` may see, simplified to ``tolerance_m``.

    ``compiled`` is a ``geofence.CompiledZones`` (or None: an empty collection). Each
    feature's properties: ``zone_id``, ``regions`` (sorted), ``kind`` (inclusion /
    exclusion / leave) and, for a circle, ``circle`` = ``[lon, lat, radius_m]`` so the
    page can draw it exactly.
    """
    usage = zone_usage(registry)
    features: list[dict[str, Any]] = []
    for zone in list(getattr(compiled, "zones", None) or []):
        regions, kind = usage.get(zone.zone_id, (set(), None))
        regions = set(regions)
        if own_region(zone) is not None:
            regions.add(own_region(zone))
        if not (principal.is_admin or regions & principal.regions):
            continue
        if kind is None:
            declared = (zone.properties or {}).get("kind")
            kind = declared if declared in _KIND_RANK else (
                "exclusion" if zone.circle is not None else "inclusion")
        features.append({
            "type": "Feature",
            "id": zone.zone_id,
            "properties": {
                "zone_id": zone.zone_id,
                "regions": sorted(regions),
                "kind": kind,
                "circle": list(zone.circle) if zone.circle is not None else None,
            },
            "geometry": mapping(simplify_m(zone.geometry, tolerance_m)),
        })
    return {"type": "FeatureCollection", "features": features}
