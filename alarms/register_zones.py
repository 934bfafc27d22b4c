"""The register's zone library: counties imported by adcode, polygons and circles drawn
or uploaded as GeoJSON, each with a human name. Geometry is checked here for what an
operator gets wrong (self-intersecting rings, clockwise exteriors, lat/lon swapped),
then loaded by ``geofence.load_zones``, the one zone loader the engine uses too."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import orjson
import shapely

from alarms.db import Cursor
from alarms.register_base import RegisterBase
from alarms.register_check import RegisterError, check_text, check_zone_id, not_found
from alarms.register_read import valid_at
from geofence.cli import ImportFailure, import_adcodes
from geofence.zones import ZoneError, ZoneWarning, load_zones

COORD_SYSTEMS = ("wgs84", "gcj02")
# China, degrees: a zone whose [x, y] reads as a place in China only once exchanged has
# its coordinates swapped.
_CHINA_LON = (73.0, 136.0)
_CHINA_LAT = (3.0, 54.0)
_ZONE_COLUMNS = ("zone_id, name, kind, coord_sys, radius_m, source, created_by, "
                 "valid_from_ms AS created_at")


def _rings(geom: dict[str, Any]) -> list[list[np.ndarray]] | None:
    """The polygons' rings as arrays (shell first), or None when the shape is not even
    that (``load_zones`` then says what is wrong)."""
    coords = geom.get("coordinates")
    parts = [coords] if geom.get("type") == "Polygon" else coords
    try:
        out = [[np.asarray(r, dtype=np.float64)[:, :2] for r in part] for part in parts]
    except (TypeError, ValueError, IndexError):
        return None
    if any(r.ndim != 2 or len(r) < 4 or not np.isfinite(r).all() for p in out for r in p):
        return None
    return out


def _inside(v: np.ndarray, lo_hi: tuple[float, float]) -> bool:
    return bool(((v >= lo_hi[0]) & (v <= lo_hi[1])).all())


def _check_swapped(xy: np.ndarray) -> None:
    xs, ys = xy[:, 0], xy[:, 1]
    if (_inside(xs, _CHINA_LAT) and _inside(ys, _CHINA_LON)
            and not (_inside(xs, _CHINA_LON) and _inside(ys, _CHINA_LAT))):
        raise RegisterError(f"lat/lon swapped: the first point [{xs[0]:g}, {ys[0]:g}] reads "
                            "as a place in China only as [lat, lon]; GeoJSON order is "
                            "[lon, lat]", field="geometry.coordinates")


def _check_rings(polys: list[list[np.ndarray]]) -> None:
    """Self-intersecting rings, then ring order (RFC 7946: exteriors counter-clockwise,
    holes clockwise)."""
    for pi, rings in enumerate(polys):
        for ri, r in enumerate(rings):
            where = f"polygon #{pi} ring #{ri}"
            ring = shapely.LinearRing(r)
            if not ring.is_simple:
                raise RegisterError(f"self-intersecting: {where} crosses itself",
                                    field="geometry.coordinates")
            if ring.is_ccw != (ri == 0):
                want = "counter-clockwise" if ri == 0 else "clockwise"
                what = "exterior" if ri == 0 else "hole"
                raise RegisterError(f"ring order: {where} ({what}) must be {want} (RFC 7946)",
                                    field="geometry.coordinates")


def _load_one(feature: dict[str, Any], *, strict: bool) -> Any:
    """The feature through ``load_zones``: 400 naming ``geometry`` for what it refuses;
    ``strict``: a geometry it would have to repair is refused too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error" if strict else "ignore", ZoneWarning)
        try:
            return load_zones({"type": "FeatureCollection", "features": [feature]})[0]
        except ZoneError as exc:
            raise RegisterError(exc.reason, field="geometry") from None
        except ZoneWarning as exc:
            raise RegisterError(f"invalid geometry: {exc}", field="geometry") from None


def check_feature(feature: Any, *, strict: bool = True, require_name: bool = True
                  ) -> dict[str, Any]:
    """A zone Feature checked: ``{zone_id, name, kind, coord_sys, radius_m, feature}``
    with the stored feature (``id`` and ``properties.zone_id``/``name``/``coord_sys``
    set). ``strict`` (drawn or uploaded zones): self-intersections, ring order and
    swapped coordinates are refused rather than repaired."""
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise RegisterError("must be a GeoJSON Feature", field="feature")
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise RegisterError("must be an object", field="properties")
    zone_id = check_zone_id(props.get("zone_id", feature.get("id")), "properties.zone_id")
    if len(zone_id) > 128:
        raise RegisterError("at most 128 characters", field="properties.zone_id")
    name = check_text(props.get("name"), "properties.name", required=require_name) or zone_id
    coord_sys = props.get("coord_sys", "wgs84")
    if coord_sys not in COORD_SYSTEMS:
        raise RegisterError(f"{coord_sys!r} is not one of {', '.join(COORD_SYSTEMS)}",
                            field="properties.coord_sys")
    geom = feature.get("geometry")
    if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon",
                                                              "Point"):
        raise RegisterError("must be a Polygon, a MultiPolygon or a Point with radius_m",
                            field="geometry")
    stored = {"type": "Feature", "id": zone_id,
              "properties": {**props, "zone_id": zone_id, "name": name, "coord_sys": coord_sys},
              "geometry": geom}
    polys = None if geom["type"] == "Point" else _rings(geom)
    if strict and geom["type"] == "Point":
        try:
            point = np.asarray([geom.get("coordinates")], dtype=np.float64)[:, :2]
        except (TypeError, ValueError, IndexError):
            point = None  # not a point at all: load_zones names it
        if point is not None and point.shape == (1, 2):
            _check_swapped(point)
    if strict and polys is not None:
        _check_swapped(np.concatenate([r for p in polys for r in p]))
        _check_rings(polys)
    zone = _load_one(stored, strict=strict)
    radius = zone.circle[2] if zone.circle else None
    return {"zone_id": zone_id, "name": name, "coord_sys": coord_sys, "radius_m": radius,
            "kind": "circle" if zone.circle else "polygon", "feature": stored}


def _zone_row(row: dict[str, Any]) -> dict[str, Any]:
    if row["radius_m"] is None:
        row.pop("radius_m")
    return row


class RegisterZones(RegisterBase):
    """The zone library of :class:`alarms.register.Register`."""

    @staticmethod
    def _insert_zone(cur: Cursor, z: dict[str, Any], source: str, actor: str,
                     now_ms: int) -> None:
        if cur.execute("SELECT 1 FROM reg_zones WHERE zone_id = ?", (z["zone_id"],)).one():
            raise RegisterError(f"zone {z['zone_id']!r} already exists",
                                field="properties.zone_id", status=409)
        cur.execute("INSERT INTO reg_zones (zone_id, name, kind, coord_sys, radius_m, source, "
                    "feature, created_by, valid_from_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (z["zone_id"], z["name"], z["kind"], z["coord_sys"], z["radius_m"], source,
                     orjson.dumps(z["feature"]).decode(), actor, now_ms))

    def list_zones(self, *, at_ms: int | None = None) -> list[dict[str, Any]]:
        """Zones (now, or at ``at_ms``) by id: ``{zone_id, name, kind, coord_sys, source,
        created_by, created_at}`` and ``radius_m`` for a circle."""
        cond, params = valid_at(at_ms)
        with self._db.tx("list zones", write=False) as cur:
            rows = cur.execute(f"SELECT {_ZONE_COLUMNS} FROM reg_zones WHERE {cond} "
                               "ORDER BY zone_id", params).all()
        return [_zone_row(r) for r in rows]

    def get_zone(self, zone_id: str) -> dict[str, Any]:
        """One zone with its GeoJSON ``feature``; 404 when unknown."""
        with self._db.tx("get zone", write=False) as cur:
            row = cur.execute(f"SELECT {_ZONE_COLUMNS}, feature FROM reg_zones "
                              "WHERE zone_id = ?", (zone_id,)).one()
        if row is None:
            raise not_found("zone", str(zone_id), "zone_id")
        row["feature"] = orjson.loads(row["feature"])
        return _zone_row(row)

    def create_zone(self, feature: dict[str, Any], *, actor: str, now_ms: int,
                    source: str = "drawn") -> dict[str, Any]:
        """Add a zone from a GeoJSON Feature (``properties``: ``zone_id``, ``name``,
        ``coord_sys`` wgs84|gcj02, ``radius_m`` for a Point circle). 400 naming the field
        (self-intersecting, ring order, lat/lon swapped, ...); 409 when the id exists.
        ``source``: drawn or upload."""
        if source not in ("drawn", "upload"):
            raise RegisterError(f"{source!r} is not drawn or upload", field="source")
        z = check_feature(feature)
        with self._change("create zone", actor=actor, now_ms=now_ms,
                          target=z["zone_id"]) as ch:
            self._insert_zone(ch.cur, z, source, ch.actor, ch.now_ms)
            ch.audit("zone.create", z["zone_id"], None, {k: v for k, v in z.items()
                                                         if k != "feature"})
        return self.get_zone(z["zone_id"])

    def import_adcode(self, adcode: str, *, actor: str, now_ms: int) -> dict[str, Any]:
        """Add a county's boundary (GCJ-02, as ``emfence zones import-adcode`` writes it):
        zone id = the adcode, name = the county's name. 400 naming ``adcode`` for a
        province or city code or an unknown one; 409 when the zone exists."""
        if not isinstance(adcode, str):
            raise RegisterError(f"{adcode!r} is not a 6-digit adcode", field="adcode")
        try:
            collection = import_adcodes([adcode], self.adcode_dir)
        except ImportFailure as exc:
            raise RegisterError(str(exc), field="adcode") from None
        z = check_feature(collection["features"][0], strict=False, require_name=False)
        with self._change("import adcode", actor=actor, now_ms=now_ms, target=adcode) as ch:
            self._insert_zone(ch.cur, z, "adcode", ch.actor, ch.now_ms)
            ch.audit("zone.import_adcode", adcode, None, {k: v for k, v in z.items()
                                                          if k != "feature"})
        return self.get_zone(adcode)
