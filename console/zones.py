"""Zone outlines for the console's map, as GeoJSON in WGS-84 lon/lat.

The browser projects them itself (local equirectangular, metres), so the server sends
lon/lat outlines simplified within a tolerance in metres: a county boundary of tens of
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

import functools
import math
from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping

from console.auth import Principal

# Metres per degree of latitude (and of longitude at the equator), WGS-84 mean.
_M_PER_DEG = 111_320.0
# Halvings of the tolerance tried before an outline is sent unsimplified.
_SIMPLIFY_ROUNDS = 6
# When zones are used in several ways, the most restrictive use names them.
_KIND_RANK = {"inclusion": 0, "leave": 1, "exclusion": 2}


def zone_users(registry: Any) -> dict[str, set[str]]:
    """zone_id -> the subjects whose inclusion, exclusion or leave zones name it."""
    users: dict[str, set[str]] = {}
    for subject in getattr(registry, "subjects", None) or []:
        zone_ids = list(subject.inclusion) + list(subject.exclusion)
        zone_ids += [z for leave in subject.leaves for z in leave[2]]
        for zone_id in zone_ids:
            users.setdefault(zone_id, set()).add(subject.subject_id)
    return users


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
    """``geometry`` (lon/lat degrees) simplified so that no point of either outline is more
    than ``tolerance_m`` from the other, measured in the local equirectangular projection
    the page draws with.

    Douglas-Peucker alone does not promise that for rings (GEOS keeps a ring's start
    point and can cut corners near it, by 30 % of the tolerance on real county lines), so
    the result is checked and the tolerance halved until it holds; after a few rounds
    the original is sent as it is.
    """
    if tolerance_m <= 0 or geometry.is_empty:
        return geometry
    lat0 = (geometry.bounds[1] + geometry.bounds[3]) / 2.0
    scale = np.array([_M_PER_DEG * math.cos(math.radians(lat0)), _M_PER_DEG])
    metric = shapely.transform(geometry, lambda xy: xy * scale)
    tolerance = tolerance_m
    for _ in range(_SIMPLIFY_ROUNDS):
        simple = shapely.simplify(metric, tolerance, preserve_topology=True)
        if (simple.is_valid and not simple.is_empty
                and _max_deviation_m(metric, simple) <= tolerance_m):
            return shapely.transform(simple, lambda xy: xy / scale)
        tolerance /= 2.0
    return geometry


def _max_deviation_m(original: Any, simple: Any) -> float:
    """Largest distance from a vertex of ``original`` to the outline of ``simple`` (both
    in metres). ``simple`` keeps a subset of ``original``'s vertices, so this is the
    deviation that matters; a tree of its edges keeps it O(n log n) on 10 000-vertex
    county lines."""
    edges = []
    for ring in shapely.get_rings(shapely.get_parts(simple)):
        c = shapely.get_coordinates(ring)
        edges.append(np.stack([c[:-1], c[1:]], axis=1))
    tree = shapely.STRtree(shapely.linestrings(np.concatenate(edges)))
    points = shapely.points(shapely.get_coordinates(original))
    _, dist = tree.query_nearest(points, return_distance=True, all_matches=False)
    return float(dist.max())


@functools.lru_cache(maxsize=4096)
def _simplified(zone: Any, tolerance_m: float) -> dict[str, Any]:
    # Zones are immutable and hash by identity, and a reload brings new Zone objects, so
    # the cache cannot serve a stale outline.
    return mapping(simplify_m(zone.geometry, tolerance_m))


def zones_geojson(compiled: Any, principal: Principal, *, tolerance_m: float,
                  registry: Any = None) -> dict[str, Any]:
    """A FeatureCollection of the zones ``principal`` may see, simplified to ``tolerance_m``.

    ``compiled`` is a ``geofence.CompiledZones`` (or None: an empty collection). Each
    feature's properties: ``zone_id``, ``regions`` (sorted), ``kind`` (inclusion /
    exclusion / leave), ``subjects`` (sorted ids of the subjects using it, so the page
    can draw one subject's zones), ``name`` (the zone's ``name`` property, or None) and,
    for a circle, ``circle`` = ``[lon, lat, radius_m]`` so the page can draw it exactly.
    """
    usage = zone_usage(registry)
    users = zone_users(registry)
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
                "name": (zone.properties or {}).get("name"),
                "subjects": sorted(users.get(zone.zone_id, ())),
                "circle": list(zone.circle) if zone.circle is not None else None,
            },
            "geometry": _simplified(zone, float(tolerance_m)),
        })
    return {"type": "FeatureCollection", "features": features}
