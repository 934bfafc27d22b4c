"""Scenarios: the message schedule of a fleet, injected events and the ground truth.

A run publishes ``rate`` messages per second for ``duration_s``. Slot ``m`` (0, 1, 2, ...)
is due at ``start_ms + m * 1000 / rate`` and belongs to device ``order[m % n]`` (a
seeded permutation), so every device reports once per ``n / rate`` seconds, the fleet's
reports are evenly spread, and the rate is exact by construction.

A slot's message is a fix, or a status heartbeat (every ``status_every``-th report of a
device, and whenever it has no fix: an indoor drop-out). Injected events change what
some devices send and are written to the ground truth (:class:`TruthEvent`), one JSON
line each, with the alarm the engine is expected to raise (or ``null``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import orjson
import shapely
from shapely.geometry import LineString, Point
from shapely.ops import nearest_points

from contract.topics import device_topic
from emfence.config import Config
from simulators.movement import COORD_GCJ02, SOURCES, SRC_NONE, Fleet, MovementModel

SCENARIOS = ("normal", "excursions", "mixed", "load")
MOVEMENT_EVENTS = ("excursion", "exclusion_entry")
DEVICE_EVENTS = ("silent", "store_forward", "strap_open", "low_battery", "clock_skew",
                 "duplicate", "malformed", "spoof")
EXPECTED = {"excursion": "outbound", "exclusion_entry": "exclusion", "silent": "offline",
            "strap_open": "tamper", "low_battery": "low_battery"}
SCENARIO_EVENTS = {
    "normal": (),
    "load": (),
    "excursions": MOVEMENT_EVENTS,
    "mixed": MOVEMENT_EVENTS + DEVICE_EVENTS,
}
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


class Outgoing(NamedTuple):
    """One MQTT publish: sent over ``device``'s connection (or a pool connection)."""

    device: int
    topic: str
    payload: bytes
    kind: str  # fix | status | burst | duplicate | malformed | spoof
    slot_ms: int


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
class _Script:
    """What one device does differently: windows and one-shot actions (epoch ms)."""

    silent: list[tuple[int, int]] = field(default_factory=list)
    deadspot: list[tuple[int, int]] = field(default_factory=list)
    skew: list[tuple[int, int, int]] = field(default_factory=list)
    status_override: list[tuple[int, int, dict]] = field(default_factory=list)
    oneshots: list[tuple[int, str, object]] = field(default_factory=list)  # (t, action, arg)
    buffered: list[dict] = field(default_factory=list)


class Simulation:
    """The whole run, precomputed where it can be: schedule, movement, events, truth.

    ``messages(m0, m1)`` builds the publishes of slots ``m0 <= m < m1`` (pure: no I/O, no
    clock). ``spoof_allowed`` says whether each device has its own broker identity (one
    connection per device); without it the spoof event makes no sense and is skipped.
    """

    def __init__(self, fleet: Fleet, *, rate: float, duration_s: float, start_ms: int,
                 config: Config, scenario: str = "normal", seed: int = 0, time_scale: float = 1.0,
                 status_every: int = 10, events_per_kind: int | None = None,
                 spoof_allowed: bool = True):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        if rate <= 0 or duration_s <= 0:
            raise ValueError(f"rate and duration must be positive, got {rate}/s for {duration_s} s")
        self.fleet = fleet
        self.rate = float(rate)
        self.duration_s = float(duration_s)
        self.start_ms = int(start_ms)
        self.config = config
        self.scenario = scenario
        self.seed = seed
        self.status_every = 0 if scenario == "load" else max(1, status_every)
        n = fleet.n_devices
        self.n = n
        self.interval_ms = n * 1000.0 / self.rate
        self.total_slots = int(self.duration_s * self.rate)
        rng = np.random.default_rng([seed, 0x5C3E])
        self.order = rng.permutation(n)
        self._rng = np.random.default_rng([seed, 0x0B5E])
        # Plans cover the run and an hour beyond (the publisher may start late: ``shift``).
        self.model = MovementModel(fleet, seed=seed, start_ms=start_ms, time_scale=time_scale,
                                   horizon_ms=int(self.duration_s * 1000) + 3_600_000)
        self.battery0 = rng.uniform(45.0, 100.0, n)
        self.seq = np.zeros(n, dtype=np.int64)
        self.scripts: dict[int, _Script] = {}
        self.truth: list[TruthEvent] = []
        self.skipped: list[str] = []
        self._check_offline_margin()
        # Warm up (numba caches, the plan's arrays) now rather than in the first publish
        # tick, with a throwaway generator so the run's own draws stay deterministic.
        self.model.observe(self.order[:1], np.array([self.start_ms]), np.random.default_rng(0))
        kinds = [k for k in SCENARIO_EVENTS[scenario] if spoof_allowed or k != "spoof"]
        if not spoof_allowed and "spoof" in SCENARIO_EVENTS[scenario]:
            self.skipped.append("spoof: devices share pooled connections, so none can "
                                "publish under another's identity")
        if kinds:
            self._inject(kinds, rng, events_per_kind)

    # -- checks and helpers --------------------------------------------------------------

    def offline_after_ms(self, s: int) -> int:
        level = self.fleet.subject_level[s]
        return int(self.config.rules.offline_after_s.for_level(level) * 1000)

    def _check_offline_margin(self) -> None:
        """Every device must report well within its offline threshold, or the run itself
        would raise offline alarms that no event explains."""
        worst = min(self.offline_after_ms(s) for s in range(self.fleet.n_subjects))
        if 2 * self.interval_ms >= worst:
            raise ValueError(
                f"each device reports every {self.interval_ms / 1000:.1f} s ({self.n} devices at "
                f"{self.rate:g} messages/s), but the shortest offline threshold is "
                f"{worst / 1000:g} s: raise --rate, or use a config with longer "
                "rules.offline_after_s")

    def slot_ms(self, m) -> np.ndarray:
        return self.start_ms + (np.asarray(m, dtype=np.float64) * 1000.0 / self.rate).astype(np.int64)

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.duration_s * 1000)

    def _script(self, d: int) -> _Script:
        return self.scripts.setdefault(d, _Script())

    # -- event injection -----------------------------------------------------------------

    def _inject(self, kinds, rng, events_per_kind) -> None:
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
                self.skipped.append(f"{kind}: {done} of {per_kind} placed (no suitable subject "
                                    f"or the run is too short)")
        self.truth.sort(key=lambda e: (e.start, e.device_id))

    def _window(self, rng, need_ms: float, warm: float, tail: float) -> int | None:
        lo = self.start_ms + warm
        hi = self.end_ms - tail - need_ms
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
                                         {"out_m": round(float(shapely.distance(Point(target), fleet.allowed_any_m[s])), 1)}
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
        self.truth.append(TruthEvent(what, self.fleet.device_ids[d], self.fleet.subject_ids[s], zone,
                                     int(start), int(end), expect, detail))

    def _ev_silent(self, s, rng, warm, tail) -> bool:
        d = self._device(s, rng)
        thr = self.offline_after_ms(s)
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
        thr = self.offline_after_ms(s)
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
        reason, payload = MALFORMED[len([e for e in self.truth if e.what == "malformed"]) % len(MALFORMED)]
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
                  if self.fleet.device_subject[t] != s and int(self.fleet.device_subject[t]) in free]
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
        fixes = [{"ts": 0, "lat": round(float(lat[0]), 7), "lon": round(float(lon[0]), 7), "acc": 5.0}
                 for _ in range(3)]
        self._script(d).oneshots.append((ta, "spoof", (victim, fixes)))
        self.truth.append(TruthEvent("spoof", self.fleet.device_ids[victim], self.fleet.subject_ids[vs],
                                     None, ta, int(ta + 3 * self.interval_ms), None,
                                     {"by": self.fleet.device_ids[d]}))
        return True

    def shift(self, delta_ms: int) -> None:
        """Move the whole run ``delta_ms`` later (the publisher's start was later than
        planned): schedule, movement, events and truth together. Leave windows, being
        absolute dates, stay."""
        delta_ms = int(delta_ms)
        if not delta_ms:
            return
        self.start_ms += delta_ms
        self.model.shift(delta_ms)
        for e in self.truth:
            e.start += delta_ms
            e.end += delta_ms
        for sc in self.scripts.values():
            sc.silent = [(a + delta_ms, b + delta_ms) for a, b in sc.silent]
            sc.deadspot = [(a + delta_ms, b + delta_ms) for a, b in sc.deadspot]
            sc.skew = [(a + delta_ms, b + delta_ms, k) for a, b, k in sc.skew]
            sc.status_override = [(a + delta_ms, b + delta_ms, f) for a, b, f in sc.status_override]
            sc.oneshots = [(t + delta_ms, a, x) for t, a, x in sc.oneshots]

    # -- messages ------------------------------------------------------------------------

    def truth_lines(self) -> list[bytes]:
        return [e.to_json() for e in self.truth]

    def messages(self, m0: int, m1: int) -> list[Outgoing]:
        """The publishes of slots ``m0 <= m < m1`` (in slot order; extra messages of
        injected events follow their slot's own message)."""
        m1 = min(m1, self.total_slots)
        if m1 <= m0:
            return []
        fleet = self.fleet
        m = np.arange(m0, m1, dtype=np.int64)
        dev = self.order[m % self.n]
        rnd = m // self.n
        t = self.slot_ms(m)
        obs = self.model.observe(dev, t, self._rng, dropouts=self.scenario != "load")
        status_slot = (np.zeros(len(m), dtype=bool) if not self.status_every
                       else ((rnd + dev) % self.status_every) == 0)
        out: list[Outgoing] = []
        scripts = self.scripts
        ids = fleet.device_ids
        regions = fleet.device_region
        lon = np.round(obs.lon, 7).tolist()
        lat = np.round(obs.lat, 7).tolist()
        acc = obs.acc.tolist()
        src = obs.src.tolist()
        coord = obs.coord.tolist()
        tl = t.tolist()
        dl = dev.tolist()
        for k in range(len(m)):
            d = dl[k]
            ts = tl[k]
            sc = scripts.get(d)
            fix = None
            if src[k] != SRC_NONE and not status_slot[k]:
                self.seq[d] += 1
                fix = {"ts": ts, "lat": lat[k], "lon": lon[k], "acc": acc[k], "src": SOURCES[src[k]],
                       "seq": int(self.seq[d])}
                if coord[k] == COORD_GCJ02:
                    fix["coord_sys"] = "gcj02"
            if sc is None:
                if fix is not None:
                    out.append(Outgoing(d, device_topic(regions[d], ids[d], "fix"), orjson.dumps(fix), "fix", ts))
                else:
                    out.append(Outgoing(d, device_topic(regions[d], ids[d], "status"),
                                        orjson.dumps(self._status(d, ts)), "status", ts))
                continue
            self._scripted(d, ts, fix, sc, out)
        return out

    def replay_lines(self, m0: int = 0, m1: int | None = None) -> list[bytes]:
        """The run as ``emfence replay`` input: one JSON line per fix or status, with
        ``device_id`` and ``rx`` (= the slot time). A store-and-forward array becomes one
        line per fix; a malformed payload is written as it is (replay rejects and counts
        it); spoofed messages are left out, because a broker with the project's ACL
        refuses them before any engine could see them."""
        out: list[bytes] = []
        for msg in self.messages(m0, self.total_slots if m1 is None else m1):
            if msg.kind == "spoof":
                continue
            device_id = msg.topic.split("/")[3]
            if msg.kind == "malformed":
                out.append(msg.payload.replace(b"\n", b" "))
                continue
            obj = orjson.loads(msg.payload)
            for rec in obj if isinstance(obj, list) else [obj]:
                out.append(orjson.dumps({**rec, "device_id": device_id, "rx": msg.slot_ms}))
        return out

    def _status(self, d: int, ts: int, sc: _Script | None = None) -> dict:
        # Slow drain while the simulated day goes by, never down to the alarm threshold
        # unless an event says so (``status_override``).
        hours = (ts - self.start_ms) / 3_600_000 * self.model.time_scale
        battery = float(self.battery0[d] - 2.0 * hours)
        status = {"ts": ts, "battery": int(max(battery, 40.0)), "strap": "ok", "charging": battery < 40.0}
        if self.fleet.device_kind[d] == "phone":
            del status["strap"]
        if sc is not None:
            for a, b, fields in sc.status_override:
                if a <= ts < b:
                    status.update(fields)
        return status

    def _scripted(self, d: int, ts: int, fix: dict | None, sc: _Script, out: list[Outgoing]) -> None:
        ids, region = self.fleet.device_ids, self.fleet.device_region[d]
        fix_topic = device_topic(region, ids[d], "fix")
        if any(a <= ts < b for a, b in sc.silent):
            return
        for a, b, skew in sc.skew:
            if a <= ts < b and fix is not None:
                fix["ts"] = ts + skew
        if any(a <= ts < b for a, b in sc.deadspot):
            if fix is not None:
                sc.buffered.append(fix)
            return
        if sc.buffered:
            batch = sc.buffered + ([fix] if fix is not None else [])
            sc.buffered = []
            out.append(Outgoing(d, fix_topic, orjson.dumps(batch), "burst", ts))
        elif fix is not None:
            out.append(Outgoing(d, fix_topic, orjson.dumps(fix), "fix", ts))
        else:
            out.append(Outgoing(d, device_topic(region, ids[d], "status"),
                                orjson.dumps(self._status(d, ts, sc)), "status", ts))
        while sc.oneshots and min(sc.oneshots, key=lambda o: o[0])[0] <= ts:
            one = min(sc.oneshots, key=lambda o: o[0])
            sc.oneshots.remove(one)
            _, action, arg = one
            if action == "status":
                # ts + 1: a heartbeat of this very slot may carry ts, and the engine drops
                # a second status with the same ts as a duplicate.
                status = self._status(d, ts + 1, sc)
                status.update(arg)
                out.append(Outgoing(d, device_topic(region, ids[d], "status"), orjson.dumps(status),
                                    "status", ts))
            elif action == "duplicate" and fix is not None:
                out.append(Outgoing(d, fix_topic, orjson.dumps(fix), "duplicate", ts))
            elif action == "duplicate":
                sc.oneshots.append((ts + 1, "duplicate", None))  # no fix this slot: next one
                break
            elif action == "malformed":
                out.append(Outgoing(d, fix_topic, arg, "malformed", ts))
            elif action == "spoof":
                victim, fixes = arg
                for i, f in enumerate(fixes):
                    f = dict(f, ts=ts + i)
                    out.append(Outgoing(d, device_topic(self.fleet.device_region[victim], ids[victim], "fix"),
                                        orjson.dumps(f), "spoof", ts))
