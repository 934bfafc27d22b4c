"""Injected events: where and when each is placed, what it makes a device do differently
(:class:`DeviceScript`) and the ground truth it adds (:class:`TruthEvent`).

An :class:`EventInjector` works on a :class:`simulators.scenario.Simulation` while it is
built: it picks a subject and a window for each event, inserts detours into the movement
model, and fills the simulation's ``scripts``, ``truth`` and ``skipped``. Everything is
drawn from the generator it is given, so a seed gives the same events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
import shapely
from shapely.geometry import LineString, Point
from shapely.ops import nearest_points

MOVEMENT_EVENTS = ("excursion", "exclusion_entry")
DEVICE_EVENTS = ("silent", "store_forward", "strap_open", "low_battery", "clock_skew",
                 "duplicate", "malformed", "spoof")
# The device rules of issue 14 (scenario "device_rules"): foil on a bracelet (statuses,
# no fix) and a clean power-off (a status with "power": "off", then silence).
DEVICE_RULE_EVENTS = ("foil", "power_off")
EXPECTED = {"excursion": "outbound", "exclusion_entry": "exclusion", "silent": "offline",
            "strap_open": "tamper", "low_battery": "low_battery"}
# How far beyond the county an excursion goes, at least (metres).
EXCURSION_OUT_M = 1000.0
# Injected detours keep this far from exclusion zones they are not meant to enter:
# the largest GPS error (30 m) plus a margin.
DETOUR_CLEARANCE_M = 150.0
SKEW_MS = 90_000  # ahead of true time, within the ingest's max_future_ms default (300 s)
MALFORMED = (
    ("truncated_json", b'{"ts": 1763800000000, "lat": 32.99, "lo'),
    ("lat_out_of_range", None),
    ("missing_ts", b'{"lat": 32.99, "lon": 112.5, "acc": 10}'),
    ("nan", b'{"ts": 1763800000000, "lat": NaN, "lon": 112.5}'),
    ("wrong_type", b'{"ts": "yesterday", "lat": "32.99", "lon": 112.5}'),
    ("array_too_long", None),
    ("not_json", b"\xff\xfe\x00garbage"),
    ("empty", b""),
)


@dataclass
class TruthEvent:
    """One line of the ground-truth file. ``expect`` is the alarm type the engine must
    raise for ``device_id`` between ``start`` and ``end`` (epoch ms), or None when the
    event must raise nothing (a negative case)."""

    what: str
    device_id: str
    subject_id: str
    zone_id: str | None
    start: int
    end: int
    expect: str | None
    detail: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))


@dataclass
class DeviceScript:
    """What one device does differently: windows and one-shot actions (epoch ms)."""

    silent: list[tuple[int, int]] = field(default_factory=list)
    deadspot: list[tuple[int, int]] = field(default_factory=list)
    skew: list[tuple[int, int, int]] = field(default_factory=list)
    status_override: list[tuple[int, int, dict]] = field(default_factory=list)
    foil: list[tuple[int, int]] = field(default_factory=list)  # statuses instead of fixes
    oneshots: list[tuple[int, str, object]] = field(default_factory=list)  # (t, action, arg)
    buffered: list[dict] = field(default_factory=list)


class EventInjector:
    """Places injected events on a :class:`~simulators.scenario.Simulation` being built.

    ``sim`` is not annotated: this module sits below scenario.py, which imports it. The
    injector reads the simulation's ``fleet``, ``model``, ``config``, ``interval_ms``,
    ``start_ms``, ``end_ms`` and ``offline_after_ms(subject)``, and fills its
    ``scripts``, ``truth`` and ``skipped``."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.fleet = sim.fleet
        self.model = sim.model
        self.config = sim.config
        self.interval_ms = sim.interval_ms
        self.truth = sim.truth
        self._free: list = []

    def _script(self, d: int) -> DeviceScript:
        return self.sim.scripts.setdefault(d, DeviceScript())

    def inject(self, kinds, rng, events_per_kind: int | None) -> None:
        """Place ``events_per_kind`` events of each kind (default: about a tenth of the
        subjects, shared over the kinds), each subject taking one event at most."""
        fleet = self.fleet
        per_kind = events_per_kind or max(1, round(0.1 * fleet.n_subjects / len(kinds)))
        free = list(rng.permutation(fleet.n_subjects))  # each subject takes one event at most
        self._free = free
        iv = self.interval_ms
        warm = max(3000.0, 2 * iv)
        tail = max(3000.0, 3 * iv)
        for kind in kinds:
            done = 0
            tried: list[int] = []
            while done < per_kind and free:
                s = int(free.pop())
                ok = getattr(self, f"_ev_{kind}")(s, rng, warm, tail)
                if ok:
                    done += 1
                else:
                    tried.append(s)
            free[:0] = tried  # in place: _ev_spoof picks its victim among the free ones
            if done < per_kind:
                self.sim.skipped.append(f"{kind}: {done} of {per_kind} placed (no suitable subject "
                                    f"or the run is too short)")
        self.truth.sort(key=lambda e: (e.start, e.device_id))

    def _window(self, rng, need_ms: float, warm: float, tail: float) -> int | None:
        lo = self.sim.start_ms + warm
        hi = self.sim.end_ms - tail - need_ms
        if hi <= lo:
            return None
        return int(rng.uniform(lo, hi))

    def _detour(self, s: int, kind: str, rng, warm, tail) -> bool:
        fleet = self.fleet
        iv = self.interval_ms
        travel = int(max(2 * iv, 4000))
        dwell = int(max(5 * iv, 8000))
        ta = self._window(rng, 2 * travel + dwell, warm, tail)
        if ta is None:
            return False
        px, py = self.model.position_at(s, ta)
        here = Point(px, py)
        excl = fleet.exclusions_m[s]
        if kind == "excursion":
            allowed = fleet.allowed_any_m[s]
            b, _ = nearest_points(allowed.boundary, here)
            dx, dy = b.x - px, b.y - py
            norm = float(np.hypot(dx, dy)) or 1.0
            out = max(EXCURSION_OUT_M, 2 * self.config.rules.buffer_m + 200)
            target = (b.x + dx / norm * out, b.y + dy / norm * out)
            if shapely.distance(Point(target), allowed) < out / 2:
                return False
            path = LineString([(px, py), target])
            avoid = [g for _, g in excl]
            zone = self._nearest_inclusion(s, target)
        else:
            if not excl:
                return False
            zone, g = excl[int(rng.integers(len(excl)))]
            # A circle's centre; for an odd polygon a point safely inside it.
            c = g.centroid
            if not g.contains(c) or shapely.distance(c, g.boundary) < 40:
                c = g.representative_point()
            target = (c.x, c.y)
            path = LineString([(px, py), target])
            if not fleet.inclusion_m[s].contains(path):
                return False
            avoid = [og for oz, og in excl if oz != zone]
        if any(shapely.distance(path, g) < DETOUR_CLEARANCE_M for g in avoid):
            return False
        start, end = self.model.insert_detour(s, ta, [target], travel_ms=travel, dwell_ms=dwell)
        expect = EXPECTED[kind]
        for d in fleet.devices_of(s):
            self.truth.append(TruthEvent(kind, fleet.device_ids[d], fleet.subject_ids[s], zone,
                                         start, end, expect,
                                         {"out_m": round(float(shapely.distance(
                                             Point(target), fleet.allowed_any_m[s])), 1)}
                                         if kind == "excursion" else {}))
        return True

    def _nearest_inclusion(self, s: int, xy) -> str:
        ids = self.fleet.inclusion_ids[s]
        if len(ids) == 1:
            return ids[0]
        # Several inclusion zones: the engine names the nearest one.
        p = Point(xy)
        return min(ids, key=lambda z: shapely.distance(p, self.fleet.zone_m[z]))

    def _ev_excursion(self, s, rng, warm, tail) -> bool:
        return self._detour(s, "excursion", rng, warm, tail)

    def _ev_exclusion_entry(self, s, rng, warm, tail) -> bool:
        return self._detour(s, "exclusion_entry", rng, warm, tail)

    def _device(self, s: int, rng, kind: str | None = None) -> int | None:
        devs = self.fleet.devices_of(s)
        if kind:
            devs = [d for d in devs if self.fleet.device_kind[d] == kind]
        return int(devs[int(rng.integers(len(devs)))]) if devs else None

    def _truth(self, what, d, start, end, expect=None, zone=None, **detail) -> None:
        s = int(self.fleet.device_subject[d])
        self.truth.append(TruthEvent(what, self.fleet.device_ids[d], self.fleet.subject_ids[s],
                                     zone, int(start), int(end), expect, detail))

    def _ev_silent(self, s, rng, warm, tail) -> bool:
        d = self._device(s, rng)
        thr = self.sim.offline_after_ms(s)
        length = thr + max(3 * self.interval_ms, 5000)
        ta = self._window(rng, length, warm, tail)
        if d is None or ta is None:
            return False
        tb = int(ta + length)
        self._script(d).silent.append((ta, tb))
        # at = last receive + threshold; the last report is at most one interval before ta.
        self._truth("silent", d, ta - self.interval_ms + thr, tb + self.interval_ms, "offline",
                    offline_after_ms=thr)
        return True

    def _ev_store_forward(self, s, rng, warm, tail) -> bool:
        d = self._device(s, rng)
        thr = self.sim.offline_after_ms(s)
        length = min(0.5 * thr - self.interval_ms, max(6 * self.interval_ms, 10_000))
        if d is None or length < 2 * self.interval_ms:
            return False
        ta = self._window(rng, length, warm, tail)
        if ta is None:
            return False
        self._script(d).deadspot.append((ta, int(ta + length)))
        self._truth("store_forward", d, ta, int(ta + length + self.interval_ms))
        return True

    def _status_window(self, s, rng, warm, tail, what, fields_on, fields_off, expect) -> bool:
        d = self._device(s, rng, "bracelet")
        length = max(4 * self.interval_ms, 6000)
        ta = self._window(rng, length, warm, tail)
        if d is None or ta is None:
            return False
        tb = int(ta + length)
        sc = self._script(d)
        sc.status_override.append((ta, tb, fields_on))
        sc.oneshots += [(ta, "status", fields_on), (tb, "status", fields_off)]
        self._truth(what, d, ta, tb + self.interval_ms, expect)
        return True

    def _ev_strap_open(self, s, rng, warm, tail) -> bool:
        return self._status_window(s, rng, warm, tail, "strap_open", {"strap": "open"},
                                   {"strap": "ok"}, "tamper")

    def _ev_low_battery(self, s, rng, warm, tail) -> bool:
        low = max(1.0, self.config.rules.battery_low_pct - 3)
        high = min(100.0, self.config.rules.battery_clear_pct + 5)
        return self._status_window(s, rng, warm, tail, "low_battery",
                                   {"battery": int(low), "charging": False},
                                   {"battery": int(high), "charging": True}, "low_battery")

    def _ev_clock_skew(self, s, rng, warm, tail) -> bool:
        d = self._device(s, rng)
        length = max(5 * self.interval_ms, 8000)
        ta = self._window(rng, length, warm, tail)
        if d is None or ta is None:
            return False
        self._script(d).skew.append((ta, int(ta + length), SKEW_MS))
        # After the skew its fixes are older than the newest it sent: late, for SKEW_MS.
        self._truth("clock_skew", d, ta, int(ta + length + SKEW_MS), skew_ms=SKEW_MS)
        return True

    def _ev_duplicate(self, s, rng, warm, tail) -> bool:
        d = self._device(s, rng)
        ta = self._window(rng, 0, warm, tail)
        if d is None or ta is None:
            return False
        self._script(d).oneshots.append((ta, "duplicate", None))
        self._truth("duplicate", d, ta, int(ta + 2 * self.interval_ms))
        return True

    def _ev_malformed(self, s, rng, warm, tail) -> bool:
        d = self._device(s, rng)
        ta = self._window(rng, 0, warm, tail)
        if d is None or ta is None:
            return False
        reason, payload = MALFORMED[len([e for e in self.truth if e.what == "malformed"])
                                    % len(MALFORMED)]
        if reason == "lat_out_of_range":
            payload = orjson.dumps({"ts": ta, "lat": 132.99, "lon": 112.5, "acc": 10})
        elif reason == "array_too_long":
            n = self.config.ingest.max_fixes_per_payload + 1
            payload = orjson.dumps([{"ts": ta - 1000 * (n - i), "lat": 32.99, "lon": 112.5}
                                    for i in range(n)])
        self._script(d).oneshots.append((ta, "malformed", payload))
        self._truth("malformed", d, ta, int(ta + 2 * self.interval_ms), reason=reason,
                    expect_deadletter=True)
        return True

    def _ev_spoof(self, s, rng, warm, tail) -> bool:
        """Device of subject ``s`` publishes, with its own credentials, fixes far outside
        another subject's county under that subject's device id: the broker's ACL must
        refuse them, so the victim device raises nothing."""
        d = self._device(s, rng)
        free = {int(x) for x in self._free}
        others = [t for t in range(self.fleet.n_devices)
                  if self.fleet.device_subject[t] != s
                  and int(self.fleet.device_subject[t]) in free]
        ta = self._window(rng, 3 * self.interval_ms, warm, tail)
        if d is None or not others or ta is None:
            return False
        victim = int(others[int(rng.integers(len(others)))])
        vs = int(self.fleet.device_subject[victim])
        self._free.remove(vs)  # the victim takes no event of its own
        allowed = self.fleet.allowed_any_m[vs]
        _, y0, x1, y1 = allowed.bounds
        far = (x1 + 20_000.0, (y0 + y1) / 2)  # 20 km east of the county's bounding box
        lon, lat = self.fleet.frame.to_deg(np.array([far[0]]), np.array([far[1]]))
        fixes = [{"ts": 0, "lat": round(float(lat[0]), 7), "lon": round(float(lon[0]), 7),
                  "acc": 5.0}
                 for _ in range(3)]
        self._script(d).oneshots.append((ta, "spoof", (victim, fixes)))
        self.truth.append(TruthEvent("spoof", self.fleet.device_ids[victim],
                                     self.fleet.subject_ids[vs],
                                     None, ta, int(ta + 3 * self.interval_ms), None,
                                     {"by": self.fleet.device_ids[d]}))
        return True

    def _ev_foil(self, s, rng, warm, tail) -> bool:
        """Foil on the bracelet: in its slots it sends statuses and no fix for longer than
        its level's no_fix_after, then fixes again: no_fix, cleared by the next fix."""
        d = self._device(s, rng, "bracelet")
        nfa = self.sim.no_fix_after_ms(s)
        length = nfa + max(3 * self.interval_ms, 5000)
        ta = self._window(rng, length, warm, tail)
        if d is None or ta is None:
            return False
        tb = int(ta + length)
        self._script(d).foil.append((ta, tb))
        # Counted from the last fix's receive time: its slot is at most one interval before.
        self._truth("foil", d, ta - self.interval_ms + nfa, tb + self.interval_ms, "no_fix",
                    no_fix_after_ms=nfa)
        return True

    def _ev_power_off(self, s, rng, warm, tail) -> bool:
        """A clean power-off: a status with "power": "off" in the slot at ``ta``, silence
        for longer than the offline threshold, then messages again (the first ends it).
        power_off expected, and no offline (it would be a false alarm)."""
        d = self._device(s, rng)
        iv = self.interval_ms
        thr = self.sim.offline_after_ms(s)
        length = thr + max(3 * iv, 5000)
        ta = self._window(rng, length + iv, warm, tail)
        if d is None or ta is None:
            return False
        tb = int(ta + iv + length)
        sc = self._script(d)
        sc.oneshots.append((ta, "status", {"power": "off"}))
        sc.silent.append((int(ta + iv), tb))
        sc.oneshots.append((tb, "status", {"power": "on"}))
        self._truth("power_off", d, ta, tb + iv, "power_off", offline_after_ms=thr)
        return True

