"""Load zone files (GeoJSON) into :class:`Zone` objects normalised to WGS-84 lon/lat.

The format is documented in docs/zones.md. In short: a FeatureCollection whose
features are Polygon / MultiPolygon zones (holes and several parts allowed) or circles
(a Point with ``properties.radius_m``). A zone's id is ``properties.zone_id``, else the
feature's ``id``. Its coordinate system is ``properties.coord_sys``, else the
collection's top-level ``coord_sys``, else WGS-84; ``wgs84``, ``gcj02`` and any CRS
pyproj knows (``EPSG:4490``, ``EPSG:4547`` ...) are accepted.

Every problem raises :class:`ZoneError` naming the source, the zone and the reason.
Safe repairs (closing rings, ring orientation, self-intersections via ``make_valid``)
are made silently or with a :class:`ZoneWarning`.
"""

from __future__ import annotations

import gzip
import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import shapely
from shapely.geometry.base import BaseGeometry

from contract.errors import EmfenceError
from geofence.gcj02 import gcj02_to_wgs84

__all__ = ["CIRCLE_DRAW_VERTICES", "Zone", "ZoneError", "ZoneWarning", "load_zones"]

# Polygon edges are straight lines in lon/lat (RFC 7946). Distances are measured in a
# transverse Mercator frame where such a line bows away from the straight chord by up to
# L^2 tan(lat) / (8 R): edges longer than this many degrees are split at load (inserting
# collinear lon/lat points, which changes no containment answer) so the bow stays below
# ~3 cm up to 55 N. Real county boundaries rarely have edges this long.
MAX_EDGE_DEG = 0.01

# Vertices of the polygon drawn for a circle zone (drawing only: the kernels use the
# exact centre and radius).
CIRCLE_DRAW_VERTICES = 64

# China's extent, degrees: a GCJ-02 zone (GCJ-02 exists only for China) whose
# coordinates fall in here once lon and lat are exchanged has them swapped.
_CHINA_LON = (70.0, 140.0)
_CHINA_LAT = (0.0, 60.0)

# How far (degrees) a zone may reach beyond its CRS's published area of use.
_AREA_SLACK_DEG = 1.0

_WGS84_NAMES = {"wgs84", "wgs-84", "wgs 84", "epsg:4326", "crs84", "ogc:crs84",
                "urn:ogc:def:crs:ogc:1.3:crs84"}
_GCJ02_NAMES = {"gcj02", "gcj-02", "gcj"}


class ZoneError(EmfenceError, ValueError):
    """A zone file or zone is wrong. ``zone_id`` (or None), ``reason``, ``source`` (file)."""

    def __init__(self, reason: str, *, zone_id: str | None = None, source: str | None = None):
        self.zone_id = zone_id
        self.reason = reason
        self.source = source
        parts = []
        if source:
            parts.append(f"{source}:")
        if zone_id is not None:
            parts.append(f"zone {zone_id!r}:")
        parts.append(reason)
        super().__init__(" ".join(parts))


class ZoneWarning(UserWarning):
    """A zone was repaired (e.g. a self-intersecting ring fixed with make_valid)."""


@dataclass(frozen=True, eq=False)
class Zone:
    """One zone in WGS-84 lon/lat degrees.

    ``geometry`` is a shapely Polygon or MultiPolygon (for a circle: a polygon
    approximation for drawing only). ``circle`` is ``(lon, lat, radius_m)`` for circle
    zones, else None. ``properties`` are the feature's properties; ``source_crs`` names
    the coordinate system the zone was given in.
    """

    zone_id: str
    geometry: BaseGeometry
    circle: tuple[float, float, float] | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    source_crs: str = "wgs84"

    @property
    def is_circle(self) -> bool:
        return self.circle is not None


class _Crs:
    """A resolved coordinate system: ``label``, ``kind`` and a function to WGS-84."""

    def __init__(self, label: str, kind: str, transformer=None, area=None):
        self.label = label
        self.kind = kind  # "wgs84" | "gcj02" | "geographic" | "projected"
        self.transformer = transformer
        # (west, south, east, north) degrees where the CRS is meant to be used, or None.
        self.area = area

    def to_wgs84(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "wgs84":
            return x, y
        if self.kind == "gcj02":
            return gcj02_to_wgs84(x, y)
        lon, lat = self.transformer.transform(x, y)
        return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


@lru_cache(maxsize=64)
def _resolve_crs(name: str) -> _Crs:
    """Resolve a coord_sys string; raises ValueError with the reason when unknown."""
    key = name.strip().lower()
    if key in _WGS84_NAMES:
        return _Crs("wgs84", "wgs84")
    if key in _GCJ02_NAMES:
        return _Crs("gcj02", "gcj02")
    import pyproj
    from pyproj.exceptions import CRSError

    try:
        crs = pyproj.CRS.from_user_input(name.strip())
    except CRSError as exc:
        raise ValueError(f"unknown coordinate system {name!r} (use wgs84, gcj02 or a CRS such as "
                         f"EPSG:4490): {exc}") from None
    transformer = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    aou = crs.area_of_use
    area = None if aou is None else (aou.west, aou.south, aou.east, aou.north)
    return _Crs(name.strip(), "geographic" if crs.is_geographic else "projected", transformer, area)


def _read_source(source: Any) -> tuple[Any, str]:
    if isinstance(source, dict):
        return source, "<dict>"
    if not isinstance(source, (str, Path)):
        raise ZoneError(f"zones must come from a path or a GeoJSON dict, got "
                        f"{type(source).__name__}")
    path = Path(source)
    label = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ZoneError(f"cannot read: {exc.strerror or exc}", source=label) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ZoneError(f"not a valid gzip file: {exc}", source=label) from None
    try:
        return orjson.loads(raw), label
    except orjson.JSONDecodeError as exc:
        raise ZoneError(f"not valid JSON: {exc}", source=label) from None


def _zone_id(feature: dict, i: int, source: str) -> str:
    props = feature.get("properties") or {}
    zid = props.get("zone_id") if isinstance(props, dict) else None
    if zid is None:
        zid = feature.get("id")
    if (isinstance(zid, bool) or not isinstance(zid, (str, int))
            or (isinstance(zid, str) and not zid.strip())):
        raise ZoneError(
            f"feature #{i} has no zone id (set properties.zone_id or the feature's id)"
            + ("" if zid is None else f"; got {zid!r}"),
            source=source,
        )
    return str(zid).strip()


def _ring_array(ring: Any, where: str) -> np.ndarray:
    """One GeoJSON ring as a (n, 2) float array, closed; ValueError naming ``where``."""
    try:
        a = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: coordinates must be [lon, lat] number pairs") from None
    if a.size == 0:
        raise ValueError(f"empty geometry ({where} has no points)")
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"{where}: coordinates must be a list of [lon, lat] pairs, got shape "
                         f"{a.shape}")
    a = a[:, :2]
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: coordinates must be finite numbers")
    if not np.array_equal(a[0], a[-1]):
        a = np.vstack([a, a[:1]])  # unclosed ring: close it (RFC 7946 wants it closed)
    if len(np.unique(a[:-1], axis=0)) < 3:
        distinct = len(np.unique(a[:-1], axis=0))
        raise ValueError(f"{where}: a ring needs at least 3 distinct points, got {distinct}")
    return a


def _polygons(geom: dict) -> list[list[np.ndarray]]:
    """The geometry's polygons as lists of rings (shell first); ValueError on bad shape."""
    gtype = geom.get("type")
    coords = geom.get("coordinates")
    if not isinstance(coords, (list, tuple)) or not coords:
        raise ValueError("empty geometry (no coordinates)")
    parts = [coords] if gtype == "Polygon" else coords
    polys = []
    for pi, part in enumerate(parts):
        if not isinstance(part, (list, tuple)) or not part:
            raise ValueError(f"empty geometry (polygon #{pi} has no rings)")
        where = f"polygon #{pi}" if gtype == "MultiPolygon" else "polygon"
        polys.append([_ring_array(r, f"{where} ring #{ri}") for ri, r in enumerate(part)])
    return polys


def _check_geographic(xs: np.ndarray, ys: np.ndarray, crs: _Crs) -> None:
    """Range and lon/lat-swap checks on raw geographic coordinates (degrees)."""
    lon_bad = (np.abs(xs) > 180.0).any()
    lat_bad = (np.abs(ys) > 90.0).any()
    if crs.kind == "gcj02":
        # GCJ-02 exists only for China: lon < 70 or lat > 90 there means [lat, lon].
        looks_swapped = (xs.min() < _CHINA_LON[0] or ys.max() > 90.0) and (
            _CHINA_LON[0] <= ys.min() and ys.max() <= _CHINA_LON[1]
            and _CHINA_LAT[0] <= xs.min() and xs.max() <= _CHINA_LAT[1]
        )
    else:
        looks_swapped = lat_bad and not lon_bad and (np.abs(xs) <= 90.0).all()
    if looks_swapped:
        raise ValueError(
            f"coordinates look like [lat, lon] (first point {xs[0]:g}, {ys[0]:g}); "
            "GeoJSON order is [lon, lat]"
        )
    if lon_bad or lat_bad:
        i = int(np.flatnonzero((np.abs(xs) > 180.0) | (np.abs(ys) > 90.0))[0])
        raise ValueError(
            f"coordinate [{xs[i]:g}, {ys[i]:g}] is out of range for {crs.label} "
            "(lon must be in [-180, 180], lat in [-90, 90])"
        )


def _to_wgs84(xs: np.ndarray, ys: np.ndarray, crs: _Crs) -> tuple[np.ndarray, np.ndarray]:
    if crs.kind != "projected":
        _check_geographic(xs, ys, crs)
    lon, lat = crs.to_wgs84(xs, ys)
    bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180.0) & (np.abs(lat) <= 90.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"coordinate [{xs[i]:g}, {ys[i]:g}] cannot be transformed from {crs.label} "
            "to WGS-84 (outside the coordinate system's area, or in the wrong units?)"
        )
    if crs.area is not None and crs.area[0] <= crs.area[2]:
        # A zone far outside its CRS's area of use is almost always a unit or CRS mix-up
        # (degrees given as metres, or the wrong Gauss-Kruger zone).
        w, s, e, n = crs.area
        slack = _AREA_SLACK_DEG
        out = (lon < w - slack) | (lon > e + slack) | (lat < s - slack) | (lat > n + slack)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise ValueError(
                f"coordinate [{xs[i]:g}, {ys[i]:g}] lands at lon {lon[i]:.4f}, lat {lat[i]:.4f}, "
                f"outside {crs.label}'s area of use (lon {w:g}..{e:g}, lat {s:g}..{n:g}): "
                "wrong units or coordinate system?"
            )
    return lon, lat


def _polygon_zone(geom: dict, crs: _Crs, zone_id: str) -> BaseGeometry:
    polys = _polygons(geom)
    flat = np.concatenate([r for p in polys for r in p])
    lon, lat = _to_wgs84(flat[:, 0], flat[:, 1], crs)
    k = 0
    shapes = []
    for p in polys:
        rings = []
        for r in p:
            rings.append(np.column_stack([lon[k:k + len(r)], lat[k:k + len(r)]]))
            k += len(r)
        shapes.append(shapely.Polygon(rings[0], rings[1:]))
    out = shapes[0] if geom["type"] == "Polygon" else shapely.MultiPolygon(shapes)
    if not shapely.is_valid(out):
        reason = shapely.is_valid_reason(out)
        # "structure": parts are unioned and holes subtracted, which is what an author of
        # overlapping parts or a hole poking out of its shell meant (the default
        # "linework" method would keep only the symmetric difference of the parts).
        fixed = shapely.make_valid(out, method="structure", keep_collapsed=False)
        polys_only = [g for g in shapely.get_parts(fixed)
                      if g.geom_type in ("Polygon", "MultiPolygon")]
        parts = [q for g in polys_only for q in shapely.get_parts(g)]
        parts = [q for q in parts if q.area > 0.0]
        if not parts:
            raise ValueError(f"geometry has no area after repairing it ({reason})")
        out = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
        warnings.warn(
            f"zone {zone_id!r}: invalid geometry ({reason}) repaired with make_valid",
            ZoneWarning,
            stacklevel=4,
        )
    if out.is_empty or out.area <= 0.0:
        raise ValueError("empty geometry (no area)")
    # RFC 7946 orientation: exteriors counter-clockwise, holes clockwise.
    return shapely.orient_polygons(shapely.segmentize(out, MAX_EDGE_DEG))


def _circle_zone(geom: dict, props: dict, crs: _Crs
                 ) -> tuple[BaseGeometry, tuple[float, float, float]]:
    radius = props.get("radius_m")
    if radius is None:
        raise ValueError("a Point zone is a circle and needs properties.radius_m (metres)")
    if (isinstance(radius, bool) or not isinstance(radius, (int, float))
            or not math.isfinite(radius)):
        raise ValueError(f"properties.radius_m must be a finite number of metres, got {radius!r}")
    if radius <= 0:
        raise ValueError(f"properties.radius_m must be > 0, got {radius!r}")
    coords = geom.get("coordinates")
    if not isinstance(coords, (list, tuple)) or not coords:
        raise ValueError("empty geometry (no coordinates)")
    try:
        c = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("Point coordinates must be [lon, lat]") from None
    if c.ndim != 1 or c.shape[0] < 2 or not np.isfinite(c[:2]).all():
        raise ValueError(f"Point coordinates must be [lon, lat], got {coords!r}")
    lon, lat = _to_wgs84(c[:1], c[1:2], crs)
    lon0, lat0 = float(lon[0]), float(lat[0])
    from pyproj import Geod

    az = np.linspace(0.0, 360.0, CIRCLE_DRAW_VERTICES, endpoint=False)
    plon, plat, _ = Geod(ellps="WGS84").fwd(np.full_like(az, lon0), np.full_like(az, lat0), az,
                                            np.full_like(az, float(radius)))
    drawing = shapely.orient_polygons(shapely.Polygon(np.column_stack([plon, plat])))
    return drawing, (lon0, lat0, float(radius))


def load_zones(source: str | Path | dict) -> list[Zone]:
    """Load a GeoJSON zone file (path, optionally gzip) or parsed dict into Zones.

    All geometry is returned in WGS-84 lon/lat. Raises :class:`ZoneError` naming the
    source, zone and problem; warns :class:`ZoneWarning` for repaired geometries.
    """
    data, label = _read_source(source)
    features = _features(data, label)
    _check_coord_sys_declared(data, features, label)
    default_crs = data.get("coord_sys", "wgs84")
    zones: list[Zone] = []
    first_seen: dict[str, int] = {}
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise ZoneError(f"feature #{i} is not a GeoJSON Feature object", source=label)
        zone_id = _zone_id(feature, i, label)
        if zone_id in first_seen:
            raise ZoneError(
                f"duplicate zone id (features #{first_seen[zone_id]} and #{i})", zone_id=zone_id,
                source=label,
            )
        first_seen[zone_id] = i
        zones.append(_feature_zone(feature, zone_id, default_crs, label))
    return zones


def _features(data, label: str) -> list:
    """The features of a parsed GeoJSON object: a FeatureCollection's, or one Feature."""
    if not isinstance(data, dict):
        raise ZoneError(f"expected a GeoJSON FeatureCollection object, got {type(data).__name__}",
                        source=label)
    if data.get("type") == "Feature":
        return [data]
    if data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise ZoneError("FeatureCollection has no 'features' list", source=label)
        return features
    raise ZoneError(f"expected a GeoJSON FeatureCollection, got type {data.get('type')!r}",
                    source=label)


def _check_coord_sys_declared(data: dict, features: list, label: str) -> None:
    """A file that mixes coordinate systems says each feature's.

    A feature added by hand to a file with a collection-wide coord_sys (gcj02) must not
    silently inherit it (a GPS-surveyed point would land 500-600 m off), so once any
    feature there names its own, every feature must. Without a collection default, a
    feature is WGS-84 as in RFC 7946.
    """
    declared = [f for f in features
                if isinstance(f, dict) and isinstance(f.get("properties"), dict)
                and "coord_sys" in f["properties"]]
    if "coord_sys" in data and declared and len(declared) != len(features):
        missing = [_zone_id(f, i, label) if isinstance(f, dict) else f"#{i}"
                   for i, f in enumerate(features) if not any(f is d for d in declared)]
        raise ZoneError(
            f"features {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} have no "
            "properties.coord_sys while others have one: in a file that mixes coordinate "
            "systems every feature says its own (wgs84 for GPS surveys, gcj02 for Chinese "
            "map services)", source=label)


def _feature_zone(feature: dict, zone_id: str, default_crs, label: str) -> Zone:
    """One Feature (already known to be one, with a unique id) as a WGS-84 Zone."""
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise ZoneError("properties must be an object", zone_id=zone_id, source=label)
    coord_sys = props.get("coord_sys", default_crs)
    if not isinstance(coord_sys, str):
        raise ZoneError(f"coord_sys must be a string, got {coord_sys!r}", zone_id=zone_id,
                        source=label)
    try:
        crs = _resolve_crs(coord_sys)
        geometry, circle = _feature_geometry(feature.get("geometry"), props, crs, zone_id)
    except ValueError as exc:
        raise ZoneError(str(exc), zone_id=zone_id, source=label) from None
    # coord_sys described the input coordinates; the Zone is WGS-84 (source_crs keeps
    # what it was), so it is not carried over where it could be applied twice.
    kept = {k: v for k, v in props.items() if k != "coord_sys"}
    return Zone(zone_id=zone_id, geometry=geometry, circle=circle, properties=kept,
                source_crs=crs.label)


def _feature_geometry(geom, props: dict, crs: _Crs, zone_id: str
                      ) -> tuple[BaseGeometry, tuple[float, float, float] | None]:
    """A feature's geometry in WGS-84, and its circle (lon, lat, radius_m) when a Point.

    Raises ValueError for anything that is not a zone."""
    if not isinstance(geom, dict):
        # ValueError, not TypeError: it is the user's file, reported by the caller as a
        # ZoneError (a ValueError) like every other bad geometry.
        raise ValueError("empty geometry (geometry is null)")  # noqa: TRY004
    gtype = geom.get("type")
    if gtype in ("Polygon", "MultiPolygon"):
        return _polygon_zone(geom, crs, zone_id), None
    if gtype == "Point":
        return _circle_zone(geom, props, crs)
    raise ValueError(f"geometry type {gtype!r} is not a zone (use Polygon, "
                     "MultiPolygon, or a Point with radius_m)")
