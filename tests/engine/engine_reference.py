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
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import shapely
from pyproj import Geod, Transformer
from relation_reference import RelationReference

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
LEVEL_NO_FIX_S = {"strict": 900, "ordinary": 1800, "lenient": 3600}


class Ev(tuple):
    """An event ``(event, type, device_id, zone_id, at, late)`` that equals the plain
    tuple; ``extra`` holds the evidence of the device alarms (offline, tamper,
    low_battery, no_fix, power_off) as docs/rules.md lists it, ``{}`` for other types."""

    extra: dict

    def __new__(cls, fields: tuple, extra: dict | None = None):
        ev = super().__new__(cls, fields)
        ev.extra = extra or {}
        return ev


@dataclass
class RefDevice:
    device_id: str
    subject: dict
    last_rx: int | None = None
    last_fix_ts: int | None = None
    last_status_ts: int | None = None
    out_run: int = 0
    outbound: tuple[int, str] | None = None  # (raised at, zone id)
    outbound_type: str = "outbound"  # or "leave_overdue": what the open episode is
    prev_ts: int | None = None  # ts of the previous in-order fix
    owe: int | None = None  # end of a leave the device has not been seen in since
    lv_run: int = 0  # run of out fixes against the inclusion zones alone
    curfew: tuple[int, int, str] | None = None  # (raised at, window end, zone id)
    curfew_run: int = 0
    offline: int | None = None
    tamper: int | None = None
    battery: int | None = None
    exclusion: dict = field(default_factory=dict)  # zone id -> raised at
    power_off: int | None = None  # raised at (the power-off status's ts)
    no_fix: int | None = None  # raised at (receive clock)
    no_fix_from: int | None = None  # receive time the count of "no fix" was started
    last_fix_rx: int | None = None  # latest receive time of an in-order fix
    position: tuple | None = None  # (lat, lon, acc) of that fix, WGS-84
    approach: dict = field(default_factory=dict)  # exclusion zone id -> warning raised at
    border: tuple[int, str] | None = None  # (raised at, inclusion zone id)
    # The late run (late fixes judged on their own ts): its previous late fix's ts, the
    # newest in-order ts then, the outbound run and the curfew run with its window start
    # (a run is None once its late pair was written, until an in late fix).
    late_prev: int | None = None
    late_newest: int | None = None
    late_run: int | None = 0
    late_curfew_run: int | None = 0
    late_curfew_start: int | None = None
    late_status: int | None = None  # the previous late status's ts's low 31 bits

    def where(self) -> dict:
        """The last known position as evidence keys (none if never fixed)."""
        if self.position is None:
            return {}
        return dict(zip(("lat", "lon", "acc"), self.position, strict=True))


def leave_end(lv: dict) -> int:
    """A leave's window ends at its end, or earlier at its registered return."""
    return lv["end"] if lv.get("returned") is None else min(lv["end"], lv["returned"])


def leave_open(lv: dict, ts: int) -> bool:
    return lv["start"] <= ts <= leave_end(lv)


DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def curfew_window_at(curfews: list[dict], ts: int, tz: str) -> tuple[int, int, str] | None:
    """(start, end, zone) of the curfew window containing ts ([start, end)), the earliest
    starting (then the first listed) of several; None outside every window."""
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(ts / 1000, zone)
    found = []
    for k, cf in enumerate(curfews):
        h0, m0 = map(int, cf["start"].split(":"))
        h1, m1 = map(int, cf["end"].split(":"))
        for back in (2, 1, 0):
            day = local.date() - timedelta(days=back)
            if DAY_NAMES[day.weekday()] not in cf.get("days", DAY_NAMES):
                continue
            start = datetime(day.year, day.month, day.day, h0, m0, tzinfo=zone)
            end_day = day + timedelta(days=1) if (h1, m1) <= (h0, m0) else day
            end = datetime(end_day.year, end_day.month, end_day.day, h1, m1, tzinfo=zone)
            a, b = round(start.timestamp() * 1000), round(end.timestamp() * 1000)
            if cf.get("from") is not None:
                a = max(a, cf["from"])
            if cf.get("to") is not None:
                b = min(b, cf["to"])
            if a <= ts < b:
                found.append((a, k, b, cf["zone"]))
    if not found:
        return None
    a, _, b, z = min(found)
    return a, b, z


class Reference:
    """The rules as the issue states them, one record at a time.

    Events are tuples ``(event, type, device_id, zone_id, at, late)``. Order inside one
    record: offline sweep at the clock advance (devices in registry order), offline
    cleared by the message, exclusion per zone in the subject's order, then outbound.
    """

    def __init__(self, zones: dict[str, RefZone], subjects: dict, *, buffer_m=50.0,
                 confirm=2, offline_s=None, battery_low=15.0, battery_clear=20.0,
                 timezone="Asia/Shanghai", no_fix_s=None, approach_m=200.0,
                 border_warn_m=0.0, alarm_per="subject", relations: dict | None = None):
        self.zones = zones
        self.approach_m = approach_m
        self.border_warn_m = border_warn_m
        self.alarm_per = alarm_per
        self.folded = SubjectFold()
        self.devices_lists: list = []  # per event replay returned: its ``devices`` or None
        self.timezone = timezone
        self.buffer_m = buffer_m
        self.confirm = confirm
        self.offline_ms = {k: int(v * 1000) for k, v in (offline_s or LEVEL_OFFLINE_S).items()}
        self.no_fix_ms = {k: int(v * 1000) for k, v in (no_fix_s or LEVEL_NO_FIX_S).items()}
        self.battery_low = battery_low
        self.battery_clear = battery_clear
        self.devices: dict[str, RefDevice] = {}
        # The relation rules (relation_reference.py); a second one notes the fixes that
        # clear_fix keeps, for their ambiguity.
        rel_numbers = {"buffer_m": buffer_m, **(relations or {})}
        self.rel = RelationReference(subjects, **rel_numbers)
        self._gen_rel = RelationReference(subjects, **rel_numbers)
        self._gen_last_ts: dict[str, int] = {}
        for s in subjects["subjects"]:
            for dev in s["devices"]:
                self.devices[dev["device_id"]] = RefDevice(dev["device_id"], s)
        for p in subjects.get("protected", []):  # a victim device raises nothing of its own
            person = {"subject_id": p["person_id"], "victim": True, "devices": p["devices"]}
            for dev in p["devices"]:
                self.devices[dev["device_id"]] = RefDevice(dev["device_id"], person)

    def clear_fix(self, device_id: str, ts: int, rx: int, lon: float, lat: float, acc: float,
                  coord_sys: str, tolerance_m: float) -> dict | None:
        """A replay record of this fix (given in WGS-84; sent in ``coord_sys``), or None
        when it comes within ``tolerance_m`` of a threshold: two correct implementations
        may then decide it differently, so scenarios leave it out."""
        in_order = ts > self._gen_last_ts.get(device_id, -(2**63))
        if in_order and self._gen_rel.ambiguity_m(device_id, ts, lon, lat, acc) < tolerance_m:
            return None
        wgs = (lon, lat)
        if coord_sys == "gcj02":
            lon, lat = wgs84_to_gcj02(lon, lat)
        if self.ambiguity_m(device_id, ts, lat, lon, acc, coord_sys) < tolerance_m:
            return None
        if in_order:
            self._gen_last_ts[device_id] = ts
            self._gen_rel.fix(device_id, ts, *wgs, acc)
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
            if self.approach_m > 0:
                gaps.append(z.distance_m(lon, lat) - self.approach_m)
                gaps.append(z.distance_m(lon, lat) - self.approach_m - margin)
        inclusion = s.get("inclusion", [])
        if inclusion and self.border_warn_m > 0:
            for zid in inclusion:
                b = self.zones[zid].boundary_m(lon, lat)
                gaps += [b - margin, b - self.border_warn_m, b - self.border_warn_m - margin]
        if inclusion:
            allowed = list(inclusion)
            for lv in s.get("leaves", []):
                if leave_open(lv, ts):
                    allowed += lv["zones"]
            dists = [self.zones[z].distance_m(lon, lat) for z in allowed]
            gaps += [self.zones[z].boundary_m(lon, lat) for z in allowed]
            gaps.append(min(dists) - margin)
            incl = sorted(dists[: len(inclusion)])
            if len(incl) > 1:
                gaps.append(incl[1] - incl[0])
            gaps.append(incl[0] - margin)  # the run against the inclusion zones alone
        for cf in s.get("curfews", []):
            z = self.zones[cf["zone"]]
            gaps += [z.boundary_m(lon, lat), z.distance_m(lon, lat) - margin]
        return min((abs(g) for g in gaps), default=math.inf)

    # no_fix, offline (receive clock); neither while the device said it powered off
    def sweep(self, now: int) -> list[tuple]:
        """no_fix of every device (registry order), then offline of every device."""
        out = []
        for dev in self.devices.values():
            if (dev.last_rx is None or dev.offline is not None or dev.no_fix_from is None
                    or dev.subject.get("victim")):
                continue
            level = dev.subject["level"]
            # The count runs from its start, or from the newest fix received since.
            start = max(dev.no_fix_from, dev.last_fix_rx or dev.no_fix_from)
            crossed = start + self.no_fix_ms[level]
            if now > crossed:
                dev.no_fix_from = None
                silent_from = dev.last_rx + self.offline_ms[level]
                # It kept sending (heard after the count started, not silent at the
                # threshold) and did not say it was switching off.
                if crossed < silent_from and dev.last_rx > start and dev.power_off is None:
                    dev.no_fix = crossed
                    out.append(Ev(("raised", "no_fix", dev.device_id, None, crossed, False),
                                  {**dev.where(), **self._last_fix_rx(dev)}))
        for dev in self.devices.values():
            if dev.last_rx is None or dev.offline is not None or dev.subject.get("victim"):
                continue
            off = self.offline_ms[dev.subject["level"]]
            if now - dev.last_rx > off:
                dev.no_fix_from = None  # silence stops the count
                if dev.power_off is None:
                    dev.offline = dev.last_rx + off
                    out.append(Ev(("raised", "offline", dev.device_id, None, dev.offline,
                                   False), {**dev.where(), "last_rx_ms": dev.last_rx}))
        return out

    @staticmethod
    def _last_fix_rx(dev: RefDevice) -> dict:
        return {} if dev.last_fix_rx is None else {"last_fix_rx_ms": dev.last_fix_rx}

    def _received(self, dev: RefDevice, rx: int, ts: int = 0,
                  power_off_status: bool = False) -> list[tuple]:
        """A message arrived: it ends an offline episode (at its receive time) and an
        open power_off (at its ts, if newer than the power-off status and not itself
        one)."""
        out = []
        if dev.offline is not None:
            out.append(Ev(("cleared", "offline", dev.device_id, None, max(rx, dev.offline),
                           False), {**dev.where(), "last_rx_ms": dev.last_rx}))
            dev.offline = None
        dev.last_rx = rx if dev.last_rx is None else max(dev.last_rx, rx)
        if dev.power_off is not None and ts > dev.power_off and not power_off_status:
            out.append(Ev(("cleared", "power_off", dev.device_id, None, ts, False),
                          dev.where()))
            dev.power_off = None
        return out

    def _fresh_fix(self, dev: RefDevice, rx: int, lat: float, lon: float,
                   acc: float) -> list[tuple]:
        """An in-order fix: no_fix ends (receive time), the count starts again from it,
        and it is the last known position."""
        out = []
        if dev.no_fix is not None:
            out.append(Ev(("cleared", "no_fix", dev.device_id, None, max(rx, dev.no_fix),
                           False), {**dev.where(), **self._last_fix_rx(dev)}))
            dev.no_fix = None
        dev.last_fix_rx = rx if dev.last_fix_rx is None else max(dev.last_fix_rx, rx)
        dev.position = (lat, lon, acc)
        if dev.no_fix_from is None:
            dev.no_fix_from = rx
        return out

    def fix(self, device_id: str, ts: int, rx: int, lat: float, lon: float, acc: float,
            coord_sys: str = "wgs84") -> list[tuple]:
        dev = self.devices[device_id]
        out = self._received(dev, rx, ts)
        if dev.last_fix_ts is not None and ts == dev.last_fix_ts:
            return out  # duplicate
        late = dev.last_fix_ts is not None and ts < dev.last_fix_ts
        if late and ts == self._late_prev(dev):
            return out  # the previous late fix again: a duplicate
        if coord_sys == "gcj02":
            lon, lat = gcj02_to_wgs84(lon, lat)
        if not late:  # the relation rules come after the device rules (docs/rules.md)
            out += self._fresh_fix(dev, rx, lat, lon, acc)
            out += self.rel.fix(device_id, ts, lon, lat, acc)
        margin = max(self.buffer_m, acc)
        out += self._exclusion(dev, ts, lat, lon, margin, late)
        if late:
            return out + self._late_fix(dev, ts, lat, lon, margin)
        dev.last_fix_ts = ts
        violations = self._outbound(dev, ts, lat, lon, margin)
        curfew = self._curfew(dev, ts, lat, lon, margin)
        violations, border = self._border(dev, ts, lat, lon, margin, violations)
        out += violations + curfew + border
        dev.prev_ts = ts
        return out

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
                    if zid in dev.approach:  # the violation supersedes the warning
                        del dev.approach[zid]
                        out.append(("cleared", "approach", device_id, zid, ts, False))
                    dev.exclusion[zid] = ts
                    out.append(("raised", "exclusion", device_id, zid, ts, False))
                    continue
            else:
                dz = z.distance_m(lon, lat)
                if dz > margin:
                    del dev.exclusion[zid]
                    out.append(("cleared", "exclusion", device_id, zid, ts, False))
                else:
                    continue
            # Outside the zone, its exclusion closed: the approach warning.
            if self.approach_m > 0:
                out += self._warn(dev.approach, zid, z.distance_m(lon, lat), margin,
                                  self.approach_m, device_id, ts)
        return out

    @staticmethod
    def _warn(open_: dict, zid: str, dist: float, margin: float, warn_m: float,
              device_id: str, ts: int) -> list[tuple]:
        """A warning for ``dist`` metres (outside an exclusion zone, or inside the
        inclusion zone from its border): raised beyond the margin and within warn_m,
        cleared beyond warn_m plus the margin."""
        if zid not in open_ and margin < dist <= warn_m:
            open_[zid] = ts
            return [("raised", "approach", device_id, zid, ts, False)]
        if zid in open_ and dist > warn_m + margin:
            del open_[zid]
            return [("cleared", "approach", device_id, zid, ts, False)]
        return []

    def _border(self, dev: RefDevice, ts: int, lat: float, lon: float, margin: float,
                violations: list[tuple]) -> tuple[list[tuple], list[tuple]]:
        """The inclusion-border warning: inside an inclusion zone (the first listed that
        contains the fix), its boundary distance as a warning distance; outside every
        inclusion zone unchanged, until an outbound or leave_overdue raise supersedes it
        (cleared at the raise's at, before it)."""
        inclusion = dev.subject.get("inclusion", [])
        if self.border_warn_m <= 0 or not inclusion:
            return violations, []
        inside = next((z for z in inclusion if self.zones[z].contains(lon, lat)), None)
        if inside is not None:
            open_ = {} if dev.border is None else {dev.border[1]: dev.border[0]}
            zid = inside if dev.border is None else dev.border[1]
            out = self._warn(open_, zid, self.zones[inside].boundary_m(lon, lat), margin,
                             self.border_warn_m, dev.device_id, ts)
            dev.border = (open_[zid], zid) if zid in open_ else None
            return violations, out
        at = next((k for k, e in enumerate(violations) if e[0] == "raised"), None)
        if dev.border is None or at is None:
            return violations, []
        zid = dev.border[1]
        dev.border = None
        clear = ("cleared", "approach", dev.device_id, zid, violations[at][4], False)
        return violations[:at] + [clear] + violations[at:], []

    def _observe(self, d: float, margin: float) -> str:
        return "in" if d == 0.0 else ("near" if d <= margin else "out")

    @staticmethod
    def _run(run: int, obs: str) -> int:
        return 0 if obs == "in" else (run + 1 if obs == "out" else run)

    def _overdue_at_end(self, dev: RefDevice, ts: int) -> list[tuple]:
        """The first fix after a leave's end (the previous fix was at or before it, or
        there was none): the device owes a return; overdue from the end itself when the
        fixes before it were out of the inclusion zones (confirmed), unless another leave
        is open just after it."""
        s = dev.subject
        ends = [leave_end(lv) for lv in s.get("leaves", [])
                if leave_end(lv) >= lv["start"] and leave_end(lv) < ts
                and (dev.prev_ts is None or dev.prev_ts <= leave_end(lv))]
        if not ends:
            return []
        end = max(ends)
        dev.owe = end
        dev.out_run = dev.lv_run
        if (dev.lv_run >= self.confirm and dev.outbound is None
                and not any(leave_open(lv, end + 1) for lv in s.get("leaves", []))):
            zone = s["inclusion"][0]
            dev.outbound = (end, zone)
            dev.outbound_type = "leave_overdue"
            return [("raised", "leave_overdue", dev.device_id, zone, end, False)]
        return []

    def _outbound(self, dev: RefDevice, ts: int, lat: float, lon: float,
                  margin: float) -> list[tuple]:
        """Outbound (or leave_overdue) events of one in-order fix (WGS-84)."""
        device_id = dev.device_id
        s = dev.subject
        inclusion = s.get("inclusion", [])
        if not inclusion:
            return []
        out = self._overdue_at_end(dev, ts)
        allowed = list(inclusion)
        for lv in s.get("leaves", []):
            if leave_open(lv, ts):
                allowed += lv["zones"]
        dists = {zid: self.zones[zid].distance_m(lon, lat) for zid in allowed}
        obs = self._observe(min(dists.values()), margin)
        if obs == "in":
            dev.owe = None
            if dev.outbound is not None:
                out.append(("cleared", dev.outbound_type, device_id, dev.outbound[1], ts, False))
                dev.outbound = None
        dev.out_run = self._run(dev.out_run, obs)
        if obs == "out" and dev.out_run >= self.confirm and dev.outbound is None:
            if dev.owe is not None:
                nearest, kind = inclusion[0], "leave_overdue"
            else:
                nearest, kind = min((dists[z], i, z) for i, z in enumerate(inclusion))[2], \
                    "outbound"
            dev.outbound = (ts, nearest)
            dev.outbound_type = kind
            out.append(("raised", kind, device_id, nearest, ts, False))
        if any(leave_open(lv, ts) for lv in s.get("leaves", [])):
            obs = self._observe(min(dists[z] for z in inclusion), margin)
        dev.lv_run = self._run(dev.lv_run, obs)
        return out

    def _curfew(self, dev: RefDevice, ts: int, lat: float, lon: float,
                margin: float) -> list[tuple]:
        """Curfew events of one in-order fix: an episode clears when its window ends (at
        the end) or at an in fix; within a window the outbound table on its zone."""
        curfews = dev.subject.get("curfews", [])
        if not curfews:
            return []
        out = []
        if dev.curfew is not None and ts >= dev.curfew[1]:
            out.append(("cleared", "curfew", dev.device_id, dev.curfew[2], dev.curfew[1],
                        False))
            dev.curfew = None
            dev.curfew_run = 0
        if dev.curfew is not None:
            end, zone = dev.curfew[1], dev.curfew[2]
        else:
            window = curfew_window_at(curfews, ts, self.timezone)
            if window is None:
                dev.curfew_run = 0
                return out
            start, end, zone = window
            if dev.prev_ts is None or dev.prev_ts < start:
                dev.curfew_run = 0
        obs = self._observe(self.zones[zone].distance_m(lon, lat), margin)
        dev.curfew_run = self._run(dev.curfew_run, obs)
        if obs == "in" and dev.curfew is not None:
            out.append(("cleared", "curfew", dev.device_id, zone, ts, False))
            dev.curfew = None
        elif obs == "out" and dev.curfew_run >= self.confirm and dev.curfew is None:
            dev.curfew = (ts, end, zone)
            out.append(("raised", "curfew", dev.device_id, zone, ts, False))
        return out

    def status(self, device_id: str, ts: int, rx: int, battery: float | None = None,
               strap: str | None = None, power: str | None = None) -> list[tuple]:
        dev = self.devices[device_id]
        out = self._received(dev, rx, ts, power == "off")
        if dev.subject.get("victim"):
            return out
        if dev.last_status_ts is not None and ts == dev.last_status_ts:
            return out  # a duplicate
        if dev.last_status_ts is not None and ts < dev.last_status_ts:
            if ts % 2**31 == dev.late_status:  # (the engine keeps its low 31 bits)
                return out  # the previous late status again: a duplicate
            dev.late_status = ts % 2**31
            return out + self._late_status(dev, ts, battery, strap, power)
        dev.last_status_ts = ts
        if strap == "open" and dev.tamper is None:
            dev.tamper = ts
            out.append(Ev(("raised", "tamper", device_id, None, ts, False),
                          {**dev.where(), "strap": "open"}))
        elif strap == "ok" and dev.tamper is not None:
            dev.tamper = None
            out.append(Ev(("cleared", "tamper", device_id, None, ts, False),
                          {**dev.where(), "strap": "ok"}))
        if battery is not None:
            if dev.battery is None and battery <= self.battery_low:
                dev.battery = ts
                out.append(Ev(("raised", "low_battery", device_id, None, ts, False),
                              {"battery_pct": battery}))
            elif dev.battery is not None and battery >= self.battery_clear:
                dev.battery = None
                out.append(Ev(("cleared", "low_battery", device_id, None, ts, False),
                              {"battery_pct": battery}))
        if power == "off":
            if dev.power_off is None:
                dev.power_off = ts
                out.append(Ev(("raised", "power_off", device_id, None, ts, False),
                              dev.where()))
            dev.no_fix_from = None  # switched off: no count until it is heard again
        elif dev.no_fix_from is None and dev.no_fix is None:
            dev.no_fix_from = rx  # statuses without a fix: the count starts here
        return out

    # --- late messages: judged on their own ts, as past episodes (late pairs) ---------
    @staticmethod
    def _pair(typ: str, device_id: str, zid, ts: int, extra: dict | None = None) -> list:
        return [Ev(("raised", typ, device_id, zid, ts, True), extra),
                Ev(("cleared", typ, device_id, zid, ts, True), extra)]

    def _late_status(self, dev: RefDevice, ts: int, battery, strap, power) -> list[tuple]:
        """A status older than the newest: strap open, battery low, power off each a
        past episode (a late pair at its ts) unless that type's live episode is open."""
        out = []
        if strap == "open" and dev.tamper is None:
            out += [Ev(("raised", "tamper", dev.device_id, None, ts, True),
                       {**dev.where(), "strap": "open"}),
                    Ev(("cleared", "tamper", dev.device_id, None, ts, True),
                       {**dev.where(), "strap": "ok"})]
        if battery is not None and battery <= self.battery_low and dev.battery is None:
            out += self._pair("low_battery", dev.device_id, None, ts, {"battery_pct": battery})
        if power == "off" and dev.power_off is None:
            out += self._pair("power_off", dev.device_id, None, ts, dev.where())
        return out

    def _late_fix(self, dev: RefDevice, ts: int, lat: float, lon: float,
                  margin: float) -> list[tuple]:
        """Outbound, then curfew, of a late fix on its own ts. The late run goes on while
        the late fixes come in order among themselves with no in-order fix between."""
        prev = self._late_prev(dev)
        if prev is None or ts < prev:
            dev.late_run, dev.late_curfew_run = 0, 0
        dev.late_prev, dev.late_newest = ts, dev.last_fix_ts
        s = dev.subject
        out = []
        inclusion = s.get("inclusion", [])
        if inclusion:
            allowed = list(inclusion) + [z for lv in s.get("leaves", []) if leave_open(lv, ts)
                                         for z in lv["zones"]]
            dists = {z: self.zones[z].distance_m(lon, lat) for z in allowed}
            dev.late_run, up = self._late_step(dev.late_run,
                                               self._observe(min(dists.values()), margin))
            if up and dev.outbound is None:
                nearest = min((dists[z], i, z) for i, z in enumerate(inclusion))[2]
                out += self._pair("outbound", dev.device_id, nearest, ts)
        curfews = s.get("curfews", [])
        if curfews:
            window = curfew_window_at(curfews, ts, self.timezone)
            start = None if window is None else window[0]
            if start != dev.late_curfew_start:
                dev.late_curfew_run = 0
            dev.late_curfew_start = start
            if window is not None:
                zid = window[2]
                obs = self._observe(self.zones[zid].distance_m(lon, lat), margin)
                dev.late_curfew_run, up = self._late_step(dev.late_curfew_run, obs)
                if up and dev.curfew is None:
                    out += self._pair("curfew", dev.device_id, zid, ts)
        return out

    @staticmethod
    def _late_prev(dev: RefDevice) -> int | None:
        """The previous late fix's ts while no in-order fix came since, as the engine
        keeps it: newest - it in 31 bits (0: none), none once an in-order fix came."""
        if dev.late_prev is None or dev.late_newest - dev.late_prev >= 2**31:
            return None
        if dev.last_fix_ts != dev.late_newest:
            return None
        return dev.last_fix_ts - (dev.late_newest - dev.late_prev)

    def _late_step(self, run: int | None, obs: str) -> tuple[int | None, bool]:
        """in: 0; near: kept; out: one more, raising (then None) at the confirm count."""
        if obs == "in":
            return 0, False
        if obs == "near" or run is None:
            return run, False
        if run + 1 >= self.confirm:
            return None, True
        return run + 1, False

    def annotations(self, events: list[tuple]) -> list[tuple[str, bool]]:
        """(device_kind, suspended) of each event: the device's kind in the subjects file,
        and whether its at is in a suspension of that type ([start, end])."""
        out = []
        for _, typ, device_id, _, at, _ in events:
            s = self.devices[device_id].subject
            kind = next(d.get("kind", "bracelet") for d in s["devices"]
                        if d["device_id"] == device_id)
            out.append((kind, any(sp["type"] == typ and sp["start"] <= at <= sp["end"]
                                  for sp in s.get("suspensions", []))))
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
                out += self._fold(self.sweep(now))
            if "lat" in r:
                out += self._fold(self.fix(r["device_id"], r["ts"], rx, r["lat"], r["lon"],
                                           r.get("acc", 50.0), r.get("coord_sys", "wgs84")))
            else:
                out += self._fold(self.status(r["device_id"], r["ts"], rx, r.get("battery"),
                                              r.get("strap"), r.get("power")))
        end = until if until is not None else now
        if end is not None:
            out += self._fold(self.sweep(end))
        return out

    def _fold(self, events: list[tuple]) -> list[tuple]:
        """alarm_per = "subject": the events as the operator gets them (one alarm per
        subject, type and zone); each event's ``devices`` go to devices_lists."""
        out = []
        for e in events:
            s = self.devices[e[2]].subject
            if (self.alarm_per != "subject" or e[5] or len(s["devices"]) < 2
                    or e[1] not in SubjectFold.TYPES):
                out.append(e)
                self.devices_lists.append(None)
                continue
            for event, devices in self.folded.event(s["subject_id"], e):
                out.append(event)
                self.devices_lists.append(devices)
        return out


class SubjectFold:
    """One alarm per subject, type and zone: the first device's raise opens it (devices:
    [it]); other devices of the subject raising while it is open join it silently; it
    clears (as the first device's alarm, devices: all that joined) when the last open
    device clears. The subject's approach alarm for a zone is open only while none of
    its devices has the zone's violation (exclusion, outbound, leave_overdue) open: the
    violation's raise clears it first (same at), and when the violation clears with
    devices still in approach, it is raised again at that at, led by the first of them."""

    TYPES = ("outbound", "leave_overdue", "exclusion", "approach", "curfew")
    VIOLATIONS = ("exclusion", "outbound", "leave_overdue")

    def __init__(self):
        # (subject, type, zone) -> [lead, at, devices, open, hidden]; hidden: an approach
        # with no alarm of its own while a violation of its zone is open.
        self.open: dict = {}

    def violated(self, subject_id: str, zid) -> bool:
        return any((subject_id, t, zid) in self.open for t in self.VIOLATIONS)

    def event(self, subject_id: str, e: tuple) -> list[tuple[tuple, list]]:
        kind, typ, device_id, zid, at, _ = e
        out = []
        key = (subject_id, typ, zid)
        warn_key = (subject_id, "approach", zid)
        ep = self.open.get(key)
        if kind == "raised":
            w = self.open.get(warn_key)
            if typ in self.VIOLATIONS and w is not None and not w[4]:
                w[4] = True
                out.append((("cleared", "approach", w[0], zid, at, False), list(w[2])))
            if ep is None:
                hidden = typ == "approach" and self.violated(subject_id, zid)
                self.open[key] = [device_id, at, [device_id], [device_id], hidden]
                if not hidden:
                    out.append((e, [device_id]))
            else:
                if device_id not in ep[3]:
                    ep[3].append(device_id)
                if device_id not in ep[2]:
                    ep[2].append(device_id)
            return out
        if ep is None or device_id not in ep[3]:
            return out + [(e, [device_id])]
        ep[3].remove(device_id)
        if ep[3]:
            return out
        del self.open[key]
        if not ep[4]:
            out.append((("cleared", typ, ep[0], zid, at, False), list(ep[2])))
        w = self.open.get(warn_key)
        if typ in self.VIOLATIONS and w is not None and w[4] and not self.violated(subject_id, zid):
            w[0], w[1], w[2], w[4] = w[3][0], at, list(w[3]), False
            out.append((("raised", "approach", w[0], zid, at, False), list(w[2])))
        return out
