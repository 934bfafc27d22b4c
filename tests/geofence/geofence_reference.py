"""Plain references the geofence kernels are held against (no numba, no grid).

- ``ray_cast_contains``: the textbook crossing-number test over every edge of every ring,
  with the half-open rule ``(ay > y) != (by > y)``, in degrees.
- ``tm_transformer``: pyproj's transverse Mercator for a zone's frame, so shapely can
  measure distances in the same projection as the kernels.
- ``naive_boundary_distance_m``: point-to-segment distances over every edge, in that frame.
- ``real_counties``: the county boundaries under tests/data/cnmaps as WGS-84 zones.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyproj
import shapely

CNMAPS = Path(__file__).resolve().parent.parent / "data" / "cnmaps"


def rings_of(geom) -> list[list[tuple[float, float]]]:
    parts = geom.geoms if geom.geom_type == "MultiPolygon" else [geom]
    out = []
    for p in parts:
        out.append(list(p.exterior.coords))
        out.extend(list(r.coords) for r in p.interiors)
    return out


def ray_cast_contains(rings: list[list[tuple[float, float]]], x: float, y: float) -> bool:
    """Even-odd crossing number of the ray from (x, y) towards +x, over all closed rings."""
    inside = False
    for ring in rings:
        for (ax, ay), (bx, by) in itertools.pairwise(ring):
            if (ay > y) != (by > y) and x < (bx - ax) * (y - ay) / (by - ay) + ax:
                inside = not inside
    return inside


def tm_transformer(lon0: float, lat0: float) -> pyproj.Transformer:
    """WGS-84 lon/lat -> transverse Mercator (scale 1) centred on (lon0, lat0), metres."""
    return pyproj.Transformer.from_crs(
        "EPSG:4326",
        f"+proj=tmerc +lat_0={float(lat0)!r} +lon_0={float(lon0)!r} "
        "+k=1 +x_0=0 +y_0=0 +ellps=WGS84",
        always_xy=True,
    )


def project(geom, tr: pyproj.Transformer):
    return shapely.transform(geom, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))


def shapely_distances_m(zone, lon0: float, lat0: float, lon, lat):
    """(distance_m to the zone (0 inside), distance_m to its boundary) by shapely in TM."""
    tr = tm_transformer(lon0, lat0)
    g = project(zone.geometry, tr)
    px, py = tr.transform(np.asarray(lon, dtype=float), np.asarray(lat, dtype=float))
    pts = shapely.points(px, py)
    return shapely.distance(g, pts), shapely.distance(g.boundary, pts)


def naive_boundary_distance_m(rings_xy: list[np.ndarray], x: float, y: float) -> float:
    """Smallest point-to-segment distance over every edge (planar metres)."""
    best = math.inf
    for ring in rings_xy:
        for (ax, ay), (bx, by) in itertools.pairwise(ring):
            dx, dy = bx - ax, by - ay
            dd = dx * dx + dy * dy
            t = 0.0 if dd == 0 else min(1.0, max(0.0, ((x - ax) * dx + (y - ay) * dy) / dd))
            best = min(best, math.hypot(x - ax - t * dx, y - ay - t * dy))
    return best


def county_names() -> dict[str, dict]:
    return json.loads((CNMAPS / "index.json").read_text(encoding="utf-8"))


def county_collection(adcodes: list[str]) -> dict:
    """A GCJ-02 FeatureCollection of the given test counties (as import-adcode writes)."""
    feats = []
    for code in adcodes:
        geom = json.loads((CNMAPS / f"{code}.geojson").read_text(encoding="utf-8"))
        feats.append({"type": "Feature", "id": code, "properties": {"zone_id": code},
                      "geometry": geom})
    return {"type": "FeatureCollection", "coord_sys": "gcj02", "features": feats}


def all_adcodes() -> list[str]:
    return sorted(p.stem for p in CNMAPS.glob("*.geojson"))


def edge_arrays(rings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ax, ay, bx, by) of every edge of every closed ring."""
    a = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings]
    starts = np.concatenate([r[:-1] for r in a])
    ends = np.concatenate([r[1:] for r in a])
    return starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]


def ray_cast_contains_np(edges, x: float, y: float) -> bool:
    """``ray_cast_contains`` vectorised over edges: the same IEEE operations per edge."""
    ax, ay, bx, by = edges
    straddle = (ay > y) != (by > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = (bx - ax) * (y - ay) / (by - ay) + ax
    return bool(np.count_nonzero(straddle & (x < xs)) % 2)
