"""A plain-Python reference of the engine's rules, written from the issue text, not from
the kernels: shapely for containment, a transverse Mercator per zone (pyproj) for metres,
pyproj's geodesic for circles, its own GCJ-02 inversion. Slow and obvious on purpose.

It also reports how close each decision came to a threshold (``margins``) so generated
scenarios can drop fixes whose answer depends on sub-metre differences between two
correct distance computations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from pyproj import Geod, Transformer

GEOD = Geod(ellps="WGS84")

# --- GCJ-02, from the published formula (forward), inverted by fixed-point iteration ---
_A = 6378245.0
_EE = 0.00669342162296594323


def _out_of_china(lon: float, lat: float) -> bool:
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _dlat(x: float, y: float) -> float:
    r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    r += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return r


def _dlon(x: float, y: float) -> float:
    r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    r += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return r


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    if _out_of_china(lon, lat):
        return lon, lat
    dlat = _dlat(lon - 105.0, lat - 35.0)
    dlon = _dlon(lon - 105.0, lat - 35.0)
    radlat = lat / 180.0 * math.pi
    magic = 1 - _EE * math.sin(radlat) ** 2
    sqrtmagic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sqrtmagic) * math.pi)
    dlon = (dlon * 180.0) / (_A / sqrtmagic * math.cos(radlat) * math.pi)
    return lon + dlon, lat + dlat


def gcj02_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """Invert the forward formula to ~1e-10 degrees (a few tenths of a millimetre)."""
    x, y = lon, lat
    for _ in range(30):
        fx, fy = wgs84_to_gcj02(x, y)
        dx, dy = fx - lon, fy - lat
        x, y = x - dx, y - dy
        if abs(dx) < 1e-11 and abs(dy) < 1e-11:
            break
    return x, y


# --- zones in metres -------------------------------------------------------------------
class RefZone:
    """One zone: shapely geometry (WGS-84) or a geodesic circle; distances in metres."""

    def __init__(self, zone_id: str, geometry, circle=None):
        self.zone_id = zone_id
        self.circle = circle
        self.geometry = geometry
        if circle is None:
            shapely.prepare(geometry)
            lon0 = geometry.centroid.x
            lat0 = geometry.centroid.y
            self._to_m = Transformer.from_crs(
                "EPSG:4326", f"+proj=tmerc +lon_0={lon0} +lat_0={lat0} +k=1 +ellps=WGS84",
                always_xy=True)
            self._metric = shapely.transform(
                geometry, lambda xy: np.column_stack(self._to_m.transform(xy[:, 0], xy[:, 1])))
            shapely.prepare(self._metric)

    def contains(self, lon: float, lat: float) -> bool:
        if self.circle is not None:
            return self.distance_to_centre_m(lon, lat) <= self.circle[2]
        return bool(shapely.covers(self.geometry, shapely.Point(lon, lat)))

    def distance_to_centre_m(self, lon: float, lat: float) -> float:
        _, _, d = GEOD.inv(self.circle[0], self.circle[1], lon, lat)
        return d

    def distance_m(self, lon: float, lat: float) -> float:
        """0 inside, else metres to the zone."""
        if self.circle is not None:
            return max(0.0, self.distance_to_centre_m(lon, lat) - self.circle[2])
        if self.contains(lon, lat):
            return 0.0
        x, y = self._to_m.transform(lon, lat)
        return float(shapely.distance(self._metric, shapely.Point(x, y)))

    def boundary_m(self, lon: float, lat: float) -> float:
        """Metres to the boundary (how close a containment answer came to flipping)."""
        if self.circle is not None:
            return abs(self.distance_to_centre_m(lon, lat) - self.circle[2])
        x, y = self._to_m.transform(lon, lat)
        return float(shapely.distance(self._metric.boundary, shapely.Point(x, y)))


# --- the rules ------------------------------------------------------------------------
LEVEL_OFFLINE_S = {"strict": 600, "ordinary": 1800, "lenient": 3600}


@dataclass
class RefDevice:
    device_id: str
    subject: dict
    last_rx: int | None = None
    last_fix_ts: int | None = None
    last_status_ts: int | None = None
    out_run: int = 0
    outbound: tuple[int, str] | None = None  # (raised at, zone id)
    offline: int | None = None
    tamper: int | None = None
    battery: int | None = None
    exclusion: dict = field(default_factory=dict)  # zone id -> raised at


class Reference:
    """The rules as the issue states them, one record at a time.

    Events are tuples ``(event, type, device_id, zone_id, at, late)``. Order inside one
    record: offline sweep at the clock advance (devices in registry order), offline
    cleared by the message, exclusion per zone in the subject's order, then outbound.
    """

    def __init__(self, zones: dict[str, RefZone], subjects: dict, *, buffer_m=50.0,
                 confirm=2, offline_s=None, battery_low=15.0, battery_clear=20.0):
        self.zones = zones
        self.buffer_m = buffer_m
        self.confirm = confirm
        self.offline_ms = {k: int(v * 1000) for k, v in (offline_s or LEVEL_OFFLINE_S).items()}
        self.battery_low = battery_low
        self.battery_clear = battery_clear
        self.devices: dict[str, RefDevice] = {}
        for s in subjects["subjects"]:
            for dev in s["devices"]:
                self.devices[dev["device_id"]] = RefDevice(dev["device_id"], s)

    def clear_fix(self, device_id: str, ts: int, rx: int, lon: float, lat: float, acc: float,
                  coord_sys: str, tolerance_m: float) -> dict | None:
        """A replay record of this fix (given in WGS-84; sent in ``coord_sys``), or None
        when it comes within ``tolerance_m`` of a threshold: two correct implementations
        may then decide it differently, so scenarios leave it out."""
        if coord_sys == "gcj02":
            lon, lat = wgs84_to_gcj02(lon, lat)
        if self.ambiguity_m(device_id, ts, lat, lon, acc, coord_sys) < tolerance_m:
            return None
        return {"device_id": device_id, "ts": ts, "rx": rx, "lat": lat, "lon": lon,
                "acc": acc, "coord_sys": coord_sys}

    def ambiguity_m(self, device_id: str, ts: int, lat: float, lon: float, acc: float,
                    coord_sys: str = "wgs84") -> float:
        """How close (metres) any decision this fix could take comes to its threshold:
        boundaries of every zone that matters at ts, |distance - margin| for exclusion
        and the allowed region, and the gap between the two nearest inclusion zones. It
        does not depend on state, so scenarios can drop fixes below a tolerance before
        either implementation sees them."""
        if coord_sys == "gcj02":
            lon, lat = gcj02_to_wgs84(lon, lat)
        s = self.devices[device_id].subject
        margin = max(self.buffer_m, acc)
        gaps = []
        for zid in s.get("exclusion", []):
            z = self.zones[zid]
            gaps.append(z.boundary_m(lon, lat))
            gaps.append(z.distance_m(lon, lat) - margin)
        inclusion = s.get("inclusion", [])
        if inclusion:
            allowed = list(inclusion)
            for lv in s.get("leaves", []):
                if lv["start"] <= ts <= lv["end"]:
                    allowed += lv["zones"]
            dists = [self.zones[z].distance_m(lon, lat) for z in allowed]
            gaps += [self.zones[z].boundary_m(lon, lat) for z in allowed]
            gaps.append(min(dists) - margin)
            incl = sorted(dists[: len(inclusion)])
            if len(incl) > 1:
                gaps.append(incl[1] - incl[0])
        return min((abs(g) for g in gaps), default=math.inf)

    # offline
    def sweep(self, now: int) -> list[tuple]:
        out = []
        for dev in self.devices.values():
            if dev.last_rx is None or dev.offline is not None:
                continue
            off = self.offline_ms[dev.subject["level"]]
            if now - dev.last_rx > off:
                dev.offline = dev.last_rx + off
                out.append(("raised", "offline", dev.device_id, None, dev.offline, False))
        return out

    def _received(self, dev: RefDevice, rx: int) -> list[tuple]:
        out = []
        if dev.offline is not None:
            out.append(("cleared", "offline", dev.device_id, None, max(rx, dev.offline), False))
            dev.offline = None
        dev.last_rx = rx if dev.last_rx is None else max(dev.last_rx, rx)
        return out

    def fix(self, device_id: str, ts: int, rx: int, lat: float, lon: float, acc: float,
            coord_sys: str = "wgs84") -> list[tuple]:
        dev = self.devices[device_id]
        out = self._received(dev, rx)
        if dev.last_fix_ts is not None and ts == dev.last_fix_ts:
            return out  # duplicate
        late = dev.last_fix_ts is not None and ts < dev.last_fix_ts
        if coord_sys == "gcj02":
            lon, lat = gcj02_to_wgs84(lon, lat)
        margin = max(self.buffer_m, acc)
        out += self._exclusion(dev, ts, lat, lon, margin, late)
        if late:
            return out
        dev.last_fix_ts = ts
        return out + self._outbound(dev, ts, lat, lon, margin)

    def _exclusion(self, dev: RefDevice, ts: int, lat: float, lon: float, margin: float,
                   late: bool) -> list[tuple]:
        """Exclusion events of one fix (WGS-84); a late fix inside raises and clears at once."""
        out = []
        device_id = dev.device_id
        for zid in dev.subject.get("exclusion", []):
            z = self.zones[zid]
            inside = z.contains(lon, lat)
            if late:
                if inside:
                    out.append(("raised", "exclusion", device_id, zid, ts, True))
                    out.append(("cleared", "exclusion", device_id, zid, ts, True))
                continue
            if zid not in dev.exclusion:
                if inside:
                    dev.exclusion[zid] = ts
                    out.append(("raised", "exclusion", device_id, zid, ts, False))
            else:
                dz = z.distance_m(lon, lat)
                if dz > margin:
                    del dev.exclusion[zid]
                    out.append(("cleared", "exclusion", device_id, zid, ts, False))
        return out

    def _outbound(self, dev: RefDevice, ts: int, lat: float, lon: float,
                  margin: float) -> list[tuple]:
        """Outbound events of one in-order fix (WGS-84)."""
        out = []
        device_id = dev.device_id
        s = dev.subject
        inclusion = s.get("inclusion", [])
        if not inclusion:
            return out
        allowed = list(inclusion)
        for lv in s.get("leaves", []):
            if lv["start"] <= ts <= lv["end"]:
                allowed += lv["zones"]
        dists = {zid: self.zones[zid].distance_m(lon, lat) for zid in allowed}
        d = min(dists.values())
        if d == 0.0:
            dev.out_run = 0
            if dev.outbound is not None:
                out.append(("cleared", "outbound", device_id, dev.outbound[1], ts, False))
                dev.outbound = None
            return out
        if d <= margin:
            return out  # uncertain
        dev.out_run += 1
        if dev.out_run >= self.confirm and dev.outbound is None:
            incl_d = [(dists[z], i, z) for i, z in enumerate(inclusion)]
            nearest = min(incl_d)[2]
            dev.outbound = (ts, nearest)
            out.append(("raised", "outbound", device_id, nearest, ts, False))
        return out

    def status(self, device_id: str, ts: int, rx: int, battery: float | None = None,
               strap: str | None = None) -> list[tuple]:
        dev = self.devices[device_id]
        out = self._received(dev, rx)
        if dev.last_status_ts is not None and ts <= dev.last_status_ts:
            return out  # duplicate or late: an old status says nothing about now
        dev.last_status_ts = ts
        if strap == "open" and dev.tamper is None:
            dev.tamper = ts
            out.append(("raised", "tamper", device_id, None, ts, False))
        elif strap == "ok" and dev.tamper is not None:
            dev.tamper = None
            out.append(("cleared", "tamper", device_id, None, ts, False))
        if battery is not None:
            if dev.battery is None and battery <= self.battery_low:
                dev.battery = ts
                out.append(("raised", "low_battery", device_id, None, ts, False))
            elif dev.battery is not None and battery >= self.battery_clear:
                dev.battery = None
                out.append(("cleared", "low_battery", device_id, None, ts, False))
        return out

    def replay(self, records: list[dict], until: int | None = None) -> list[tuple]:
        """Records as replay lines (dicts with device_id, ts, optional rx, ...)."""
        out: list[tuple] = []
        now = None
        for r in records:
            rx = r.get("rx", r["ts"])
            if now is None:
                now = rx
            elif rx > now:
                now = rx
                out += self.sweep(now)
            if "lat" in r:
                out += self.fix(r["device_id"], r["ts"], rx, r["lat"], r["lon"],
                                r.get("acc", 50.0), r.get("coord_sys", "wgs84"))
            else:
                out += self.status(r["device_id"], r["ts"], rx, r.get("battery"), r.get("strap"))
        end = until if until is not None else now
        if end is not None:
            out += self.sweep(end)
        return out
