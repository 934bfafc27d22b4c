"""``ShapelyEngine``: the engine's rules with shapely and plain Python, one fix at a time.

The same interface and the same events as :class:`engine.Engine`, without numba: prepared
shapely geometries for containment, each zone projected once into a transverse Mercator
frame centred on it (pyproj) for distances in metres, circles measured geodesically. It
exists to measure what the numba core buys (``benchmarks/``), and a test holds it
against ``Engine``. Not meant for production traffic. It has every rule of docs/rules.md
but the curfew (subjects with curfews get no curfew alarms from it), the approach
warnings, one alarm per subject (engine.per_subject) and the relation rules included
(separation in :mod:`engine.shapely_separation`, proximity and contact in
:mod:`engine.shapely_relations`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
from pyproj import Geod, Transformer

from contract.alarms import ALARM_TYPES, alarm_event, alarm_id
from contract.records import K_FIX, RecordBatch
from emfence.config import LEVELS, Config
from engine import kernels as K
from engine.per_subject import SubjectEpisodes, folds
from engine.registry import Registry
from engine.relations import relation_arrays
from engine.shapely_late import LateRules
from engine.shapely_relations import PlainRelations
from engine.shapely_separation import SeparationRule
from geofence.gcj02 import gcj02_to_wgs84

_GEOD = Geod(ellps="WGS84")


class _ShapelyZone:
    def __init__(self, zone: Any):
        self.circle = zone.circle
        self.geometry = zone.geometry
        if self.circle is None:
            shapely.prepare(self.geometry)
            c = self.geometry.centroid
            self._to_m = Transformer.from_crs(
                "EPSG:4326", f"+proj=tmerc +lon_0={c.x} +lat_0={c.y} +k=1 +ellps=WGS84",
                always_xy=True)
            self._metric = shapely.transform(
                self.geometry,
                lambda xy: np.column_stack(self._to_m.transform(xy[:, 0], xy[:, 1])))
            shapely.prepare(self._metric)

    def _centre_m(self, lon: float, lat: float) -> float:
        return _GEOD.inv(self.circle[0], self.circle[1], lon, lat)[2]

    def contains(self, lon: float, lat: float) -> bool:
        if self.circle is not None:
            return self._centre_m(lon, lat) <= self.circle[2]
        return bool(shapely.contains_xy(self.geometry, lon, lat))

    def distance_m(self, lon: float, lat: float) -> float:
        if self.circle is not None:
            return max(0.0, self._centre_m(lon, lat) - self.circle[2])
        if self.contains(lon, lat):
            return 0.0
        x, y = self._to_m.transform(lon, lat)
        return float(shapely.distance(self._metric, shapely.Point(x, y)))

    def boundary_m(self, lon: float, lat: float) -> float:
        """Metres to the zone's boundary (inside or out)."""
        if self.circle is not None:
            return abs(self._centre_m(lon, lat) - self.circle[2])
        x, y = self._to_m.transform(lon, lat)
        return float(shapely.distance(self._metric.boundary, shapely.Point(x, y)))


class _Device:
    __slots__ = (
        "approach",
        "battery",
        "border",
        "exclusion",
        "last_fix_rx",
        "last_fix_ts",
        "last_rx",
        "last_status_ts",
        "lv_run",
        "no_fix",
        "no_fix_from",
        "offline",
        "out_run",
        "outbound",
        "owe",
        "position",
        "power_off",
        "prev_ts",
        "tamper",
    )

    def __init__(self) -> None:
        self.last_rx = self.last_fix_ts = self.last_status_ts = None
        self.out_run = self.lv_run = 0
        self.outbound = self.offline = self.tamper = self.battery = None
        self.owe = self.prev_ts = None  # leave_overdue: see engine.kernels._leave_rules
        self.exclusion: dict[int, int] = {}
        # The device rules (power_off, no_fix) and the last known position (evidence).
        self.power_off = self.no_fix = self.no_fix_from = self.last_fix_rx = None
        self.position: dict[str, float] = {}  # lat, lon, acc of the newest in-order fix
        self.approach: dict[int, int] = {}  # exclusion zone -> warning raised at
        self.border: tuple[int, int] | None = None  # (raised at, inclusion zone)


class ShapelyEngine(SeparationRule, LateRules):
    """Same constructor and ``process`` / ``process_fixes`` / ``process_statuses`` /
    ``process_records`` / ``sweep`` / ``counters`` as :class:`engine.Engine` (no
    checkpoints)."""

    def __init__(self, zones: Any, registry: Registry, config: Config | None = None):
        self.config = config or Config()
        r = self.config.rules
        self.zones = zones
        self.registry = registry
        self._shapes = [_ShapelyZone(z) for z in zones.zones]
        # (+ a protected person's device: never offline nor no_fix, as in Engine)
        self._offline_ms = [round(r.offline_after_s.for_level(lv) * 1000)
                            for lv in LEVELS] + [1 << 62]
        self._no_fix_ms = [round(r.no_fix_after_s.for_level(lv) * 1000)
                           for lv in LEVELS] + [1 << 62]
        self._devices = [_Device() for _ in range(registry.n_devices)]
        self._counts = dict.fromkeys(K.COUNTER_NAMES, 0)
        self._per_subject = SubjectEpisodes()
        # separation (docs/rules.md, "Relations"): pair p -> [run, open at, open device]
        self._pairs = relation_arrays(registry)[0].sep_dev.tolist()
        self._pair_of = {d: p for p, pair in enumerate(self._pairs) for d in pair}
        self._sep = [[0, None, None] for _ in self._pairs]
        self._latest: dict[int, tuple[int, float, float, float]] = {}
        self._others = PlainRelations(registry, self.config)  # proximity, contact

    @property
    def counters(self) -> dict[str, int]:
        out = dict(self._counts)
        out["duplicates"] = out["duplicate_fixes"] + out["duplicate_statuses"]
        out["late"] = out["late_fixes"] + out["late_statuses"]
        return out

    # ----- events ------------------------------------------------------------------------
    @staticmethod
    def _event(d: int, typ: int, z: int, raised: bool, at: int, episode: int,
               late: bool = False, evidence: tuple | None = None,
               extra: dict | None = None) -> tuple:
        """A device event, as the kernels' event rows (:meth:`_dicts` makes the dicts)."""
        return d, typ, z, raised, at, episode, late, evidence, extra

    def _dicts(self, rows: list[tuple]) -> list[dict]:
        """Device events -> alarm events, one alarm per subject where configured."""
        reg = self.registry
        out = []
        for d, typ, z, raised, at, episode, late, evidence, extra in rows:
            if reg.device_kinds[d] == "victim":
                continue  # a protected person's device raises nothing of its own
            subject = reg.subjects[int(reg.arrays.device_subject[d])]
            zone_id = self.zones.zone_ids[z] if z >= 0 else None
            name = ALARM_TYPES[typ]
            emit = [(raised, name, reg.device_ids[d], episode, None)]
            if folds(self.config.rules.alarm_per, name, late, len(subject.device_ids)):
                emit = self._per_subject.fold(raised, name, subject.subject_id,
                                              reg.device_ids[d], zone_id, episode, at)
            for up, type_name, device_id, ep_at, devices in emit:
                more = extra if devices is None else {**(extra or {}), "devices": devices}
                ev = alarm_event(up, type_name, subject.subject_id, device_id, zone_id,
                                 subject.region, at, ep_at, late, evidence, more)
                if extra and ("person_id" in extra or "peer_subject_id" in extra):
                    other = extra.get("person_id") or extra["peer_subject_id"]
                    ev["alarm_id"] = alarm_id(device_id, type_name, other, ep_at, late)
                ev["device_kind"] = reg.device_kinds[reg.device_index(device_id)]
                if any(sp.type == type_name and sp.start_ms <= at <= sp.end_ms
                       for sp in subject.suspensions):
                    ev["suspended"] = True
                out.append(ev)
        return out

    # ----- rules -------------------------------------------------------------------------
    def sweep(self, now_ms: int) -> list[dict]:
        """no_fix, then offline, by the receive clock ``now_ms`` (docs/rules.md); neither
        for a device whose power_off is open."""
        out = []
        level = self.registry.arrays.device_level
        for d, dev in enumerate(self._devices):
            if dev.last_rx is None or dev.offline is not None or dev.no_fix_from is None:
                continue
            # The count runs from its start, or from the newest fix received since.
            start = max(dev.no_fix_from, dev.last_fix_rx or dev.no_fix_from)
            crossed = start + self._no_fix_ms[level[d]]
            if now_ms > crossed:
                sent = dev.last_rx > start  # heard after the count started
                dev.no_fix_from = None
                deadline = dev.last_rx + self._offline_ms[level[d]]
                if crossed < deadline and sent and dev.power_off is None:
                    dev.no_fix = crossed
                    out.append(self._event(d, K.T_NO_FIX, -1, True, crossed, crossed,
                                           extra=self._no_fix_evidence(dev)))
        for d, dev in enumerate(self._devices):
            if dev.last_rx is None or dev.offline is not None:
                continue
            deadline = dev.last_rx + self._offline_ms[level[d]]
            if now_ms > deadline:
                dev.no_fix_from = None
                if dev.power_off is None:
                    dev.offline = deadline
                    out.append(self._event(d, K.T_OFFLINE, -1, True, deadline, deadline,
                                           extra={**dev.position, "last_rx_ms": dev.last_rx}))
        return self._dicts(out)

    @staticmethod
    def _no_fix_evidence(dev: _Device) -> dict:
        if dev.last_fix_rx is None:
            return dict(dev.position)
        return {**dev.position, "last_fix_rx_ms": dev.last_fix_rx}

    def _received(self, d: int, dev: _Device, rx: int, out: list, ts: int = 0,
                  power_off_status: bool = False) -> None:
        if dev.offline is not None:
            out.append(self._event(d, K.T_OFFLINE, -1, False, max(rx, dev.offline), dev.offline,
                                   extra={**dev.position, "last_rx_ms": dev.last_rx}))
            dev.offline = None
        dev.last_rx = rx if dev.last_rx is None else max(dev.last_rx, rx)
        if dev.power_off is not None and ts > dev.power_off and not power_off_status:
            out.append(self._event(d, K.T_POWER_OFF, -1, False, ts, dev.power_off,
                                   extra=dev.position))
            dev.power_off = None

    def _fresh_fix(self, d: int, dev: _Device, rx: int, lat: float, lon: float, acc: float,
                   out: list) -> None:
        """An in-order fix: no_fix clears, the count restarts, the position is kept."""
        if dev.no_fix is not None:
            out.append(self._event(d, K.T_NO_FIX, -1, False, max(rx, dev.no_fix), dev.no_fix,
                                   extra=self._no_fix_evidence(dev)))
            dev.no_fix = None
        dev.last_fix_rx = rx if dev.last_fix_rx is None else max(dev.last_fix_rx, rx)
        dev.position = {"lat": lat, "lon": lon, "acc": acc}
        if dev.no_fix_from is None:
            dev.no_fix_from = rx

    def _fix(self, d: int, ts: int, rx: int, lat: float, lon: float, acc: float,
             out: list) -> None:
        """One fix; ``lat``/``lon`` WGS-84 degrees (``process`` converted GCJ-02 ones)."""
        dev = self._devices[d]
        self._counts["fixes"] += 1
        self._received(d, dev, rx, out, ts)
        if dev.last_fix_ts is not None and ts == dev.last_fix_ts:
            self._counts["duplicate_fixes"] += 1
            return
        late = dev.last_fix_ts is not None and ts < dev.last_fix_ts
        if late and self._late_duplicate(d, ts):
            self._counts["duplicate_fixes"] += 1
            return
        if late:
            self._counts["late_fixes"] += 1
        else:
            dev.last_fix_ts = ts
            self._fresh_fix(d, dev, rx, lat, lon, acc, out)
            self._latest[d] = (ts, lon, lat, acc)
            if d in self._pair_of:
                self._separation(d, ts, out)
            self._others.fix(d, ts, self._latest, self._event, out)
        s = int(self.registry.arrays.device_subject[d])
        margin = max(self.config.rules.buffer_m, acc)
        self._exclusion(d, dev, s, ts, lat, lon, acc, margin, late, out)
        if late:
            self._late_outbound(d, s, ts, lat, lon, acc, margin, out)
        else:
            n0 = len(out)
            self._outbound(d, dev, s, ts, lat, lon, acc, margin, out)
            if self.config.rules.border_warn_m > 0:
                self._border(d, dev, s, ts, lat, lon, acc, margin, n0, out)
            dev.prev_ts = ts

    def _warn(self, d: int, slots: dict, z: int, ts: int, lat: float, lon: float, acc: float,
              dist: float, margin: float, warn_m: float, out: list) -> None:
        """An approach warning in ``slots[z]`` for ``dist`` metres (see docs/rules.md)."""
        if z not in slots and margin < dist <= warn_m:
            slots[z] = ts
            out.append(self._event(d, K.T_APPROACH, z, True, ts, ts, False,
                                   (lat, lon, dist, acc)))
        elif z in slots and dist > warn_m + margin:
            out.append(self._event(d, K.T_APPROACH, z, False, ts, slots.pop(z), False,
                                   (lat, lon, dist, acc)))

    def _border(self, d: int, dev: _Device, s: int, ts: int, lat: float, lon: float,
                acc: float, margin: float, n0: int, out: list) -> None:
        """The inclusion-border warning (engine.kernels._border_rule)."""
        a = self.registry.arrays
        inside = next((z for z in a.incl_zone[a.incl_off[s]:a.incl_off[s + 1]].tolist()
                       if self._shapes[z].contains(lon, lat)), None)
        if inside is not None:
            slots = {} if dev.border is None else {dev.border[1]: dev.border[0]}
            z = inside if dev.border is None else dev.border[1]
            self._warn(d, slots, z, ts, lat, lon, acc, self._shapes[inside].boundary_m(lon, lat),
                       margin, self.config.rules.border_warn_m, out)
            dev.border = (slots[z], z) if z in slots else None
            return
        at = next((k for k in range(n0, len(out)) if out[k][3]), None)
        if dev.border is not None and at is not None:
            raise_ = out[at]
            out.insert(at, self._event(d, K.T_APPROACH, dev.border[1], False, raise_[4],
                                       dev.border[0], False, (lat, lon, raise_[7][2], acc)))
            dev.border = None

    def _exclusion(self, d: int, dev: _Device, s: int, ts: int, lat: float, lon: float,
                   acc: float, margin: float, late: bool, out: list) -> None:
        a = self.registry.arrays
        for z in a.excl_zone[a.excl_off[s]:a.excl_off[s + 1]].tolist():
            shape = self._shapes[z]
            if late:
                if shape.contains(lon, lat):
                    ev = (lat, lon, 0.0, acc)
                    out.append(self._event(d, K.T_EXCLUSION, z, True, ts, ts, True, ev))
                    out.append(self._event(d, K.T_EXCLUSION, z, False, ts, ts, True, ev))
                continue
            approach_m = self.config.rules.approach_m
            if z not in dev.exclusion:
                if shape.contains(lon, lat):
                    if z in dev.approach:  # superseded by the violation
                        out.append(self._event(d, K.T_APPROACH, z, False, ts,
                                               dev.approach.pop(z), False, (lat, lon, 0.0, acc)))
                    dev.exclusion[z] = ts
                    out.append(self._event(d, K.T_EXCLUSION, z, True, ts, ts, False,
                                           (lat, lon, 0.0, acc)))
                elif approach_m > 0:
                    self._warn(d, dev.approach, z, ts, lat, lon, acc, shape.distance_m(lon, lat),
                               margin, approach_m, out)
            else:
                dz = shape.distance_m(lon, lat)
                if dz > margin:
                    ep = dev.exclusion.pop(z)
                    out.append(self._event(d, K.T_EXCLUSION, z, False, ts, ep, False,
                                           (lat, lon, dz, acc)))
                    if approach_m > 0:
                        self._warn(d, dev.approach, z, ts, lat, lon, acc, dz, margin,
                                   approach_m, out)

    def _overdue_at_end(self, d: int, dev: _Device, s: int, ts: int, lat: float, lon: float,
                        acc: float, out: list) -> None:
        """The first fix after a leave ended (engine.kernels._leave_rules)."""
        a = self.registry.arrays
        leaves = range(a.leave_off[s], a.leave_off[s + 1])
        ends = [int(a.leave_end_ms[lv]) for lv in leaves
                if a.leave_start_ms[lv] <= a.leave_end_ms[lv] < ts
                and (dev.prev_ts is None or dev.prev_ts <= a.leave_end_ms[lv])]
        if not ends:
            return
        end = max(ends)
        dev.owe = end
        dev.out_run = dev.lv_run
        if (dev.lv_run >= self.config.rules.outbound_confirm_fixes and dev.outbound is None
                and not any(a.leave_start_ms[lv] <= end + 1 <= a.leave_end_ms[lv]
                            for lv in leaves)):
            z = int(a.incl_zone[a.incl_off[s]])
            dev.outbound = (end, z, K.T_LEAVE_OVERDUE)
            out.append(self._event(d, K.T_LEAVE_OVERDUE, z, True, end, end, False,
                                   (lat, lon, self._allowed(s, ts, lon, lat)[0], acc)))

    def _allowed(self, s: int, ts: int, lon: float, lat: float) -> tuple[float, list, list]:
        """(metres to the allowed region at ts, inclusion zones, their distances)."""
        a = self.registry.arrays
        inclusion = a.incl_zone[a.incl_off[s]:a.incl_off[s + 1]].tolist()
        allowed = list(inclusion)
        for lv in range(a.leave_off[s], a.leave_off[s + 1]):
            if a.leave_start_ms[lv] <= ts <= a.leave_end_ms[lv]:
                allowed += a.leave_zone[a.leave_zone_off[lv]:a.leave_zone_off[lv + 1]].tolist()
        dists = [self._shapes[z].distance_m(lon, lat) for z in allowed]
        return min(dists), inclusion, dists[: len(inclusion)]

    def _outbound(self, d: int, dev: _Device, s: int, ts: int, lat: float, lon: float,
                  acc: float, margin: float, out: list) -> None:
        a = self.registry.arrays
        if a.incl_off[s + 1] == a.incl_off[s]:
            return
        leaves = a.leave_off[s + 1] > a.leave_off[s]
        if leaves:
            self._overdue_at_end(d, dev, s, ts, lat, lon, acc, out)
        dist, inclusion, dists = self._allowed(s, ts, lon, lat)
        on_leave = leaves and any(a.leave_start_ms[lv] <= ts <= a.leave_end_ms[lv]
                                  for lv in range(a.leave_off[s], a.leave_off[s + 1]))
        incl_dist = min(dists) if on_leave else dist
        dev.lv_run = 0 if incl_dist == 0.0 else (dev.lv_run + (incl_dist > margin))
        if dist == 0.0:
            dev.out_run = 0
            dev.owe = None
            if dev.outbound is not None:
                ep, z, typ = dev.outbound
                dev.outbound = None
                out.append(self._event(d, typ, z, False, ts, ep, False, (lat, lon, 0.0, acc)))
            return
        if dist <= margin:
            return
        dev.out_run += 1
        if dev.out_run >= self.config.rules.outbound_confirm_fixes and dev.outbound is None:
            if dev.owe is not None:
                z, typ = inclusion[0], K.T_LEAVE_OVERDUE
            else:
                k = min(range(len(inclusion)), key=lambda i: (dists[i], i))
                z, typ = inclusion[k], K.T_OUTBOUND
            dev.outbound = (ts, z, typ)
            out.append(self._event(d, typ, z, True, ts, ts, False, (lat, lon, dist, acc)))

    def _status(self, d: int, ts: int, rx: int, battery: float, strap: int, power: int,
                out: list) -> None:
        dev = self._devices[d]
        self._counts["statuses"] += 1
        self._received(d, dev, rx, out, ts, power == 1)
        if dev.last_status_ts is not None and ts < dev.last_status_ts:
            return self._late_status(d, ts, battery, strap, power, out)
        if ts == dev.last_status_ts:
            self._counts["duplicate_statuses"] += 1
            return
        dev.last_status_ts = ts
        r = self.config.rules
        if strap == 1 and dev.tamper is None:
            dev.tamper = ts
            out.append(self._event(d, K.T_TAMPER, -1, True, ts, ts,
                                   extra={**dev.position, "strap": "open"}))
        elif strap == 0 and dev.tamper is not None:
            out.append(self._event(d, K.T_TAMPER, -1, False, ts, dev.tamper,
                                   extra={**dev.position, "strap": "ok"}))
            dev.tamper = None
        if not math.isnan(battery):
            if dev.battery is None and battery <= r.battery_low_pct:
                dev.battery = ts
                out.append(self._event(d, K.T_LOW_BATTERY, -1, True, ts, ts,
                                       extra={"battery_pct": battery}))
            elif dev.battery is not None and battery >= r.battery_clear_pct:
                out.append(self._event(d, K.T_LOW_BATTERY, -1, False, ts, dev.battery,
                                       extra={"battery_pct": battery}))
                dev.battery = None
        if power == 1:
            if dev.power_off is None:
                dev.power_off = ts
                out.append(self._event(d, K.T_POWER_OFF, -1, True, ts, ts, extra=dev.position))
            dev.no_fix_from = None
        elif dev.no_fix_from is None and dev.no_fix is None:
            dev.no_fix_from = rx

    # ----- the Engine interface ----------------------------------------------------------
    def process(self, batch: RecordBatch, *, clock_now_ms: int | None = None,
                positions: Any = None):
        """As :meth:`engine.Engine.process`, ``positions`` included."""
        out: list[dict] = []
        now = clock_now_ms
        n_dev = len(self._devices)
        kind, _, ts_ms, rx_ms, lat, lon, acc_m, coord_sys, battery_pct, strap, power = batch
        if positions is not None:
            positions.check(len(kind))
        lat, lon = lat.copy(), lon.copy()
        gcj = (kind == K_FIX) & (coord_sys == 1)
        if gcj.any():
            lon[gcj], lat[gcj] = gcj02_to_wgs84(lon[gcj], lat[gcj], parallel=False)
        for i, d in enumerate(batch.device_idx.tolist()):
            if d < 0 or d >= n_dev:
                self._counts["unknown_device"] += 1
                continue
            rx = int(rx_ms[i])
            if now is not None and rx > now:
                now = rx
                out += self.sweep(now)
            rows: list[tuple] = []
            if kind[i] == K_FIX:
                if positions is not None:
                    positions.lat[i], positions.lon[i] = lat[i], lon[i]
                self._fix(d, int(ts_ms[i]), rx, float(lat[i]), float(lon[i]), float(acc_m[i]),
                          rows)
            else:
                self._status(d, int(ts_ms[i]), rx, float(battery_pct[i]), int(strap[i]),
                             int(power[i]), rows)
            out += self._dicts(rows)
        return out, now

    def process_records(self, kind, device_idx, ts_ms, rx_ms, lat, lon, acc_m, coord_sys,
                        battery_pct, strap, power=None, *, clock_now_ms: int | None = None):
        return self.process(RecordBatch.records(
            kind=kind, device_idx=device_idx, ts_ms=ts_ms, rx_ms=rx_ms, lat=lat, lon=lon,
            acc_m=acc_m, coord_sys=coord_sys, battery_pct=battery_pct, strap=strap,
            power=power), clock_now_ms=clock_now_ms)

    def process_fixes(self, device_idx, ts_ms, lat, lon, acc_m, coord_sys, rx_ms) -> list[dict]:
        return self.process(RecordBatch.fixes(device_idx=device_idx, ts_ms=ts_ms, rx_ms=rx_ms,
                                              lat=lat, lon=lon, acc_m=acc_m,
                                              coord_sys=coord_sys))[0]

    def process_statuses(self, device_idx, ts_ms, rx_ms, battery_pct, strap,
                         charging, power=None) -> list[dict]:
        return self.process(RecordBatch.statuses(device_idx=device_idx, ts_ms=ts_ms,
                                                 rx_ms=rx_ms, battery_pct=battery_pct,
                                                 strap=strap, power=power))[0]
