"""Scenarios: the message schedule of a fleet, with its injected events and ground truth.

A run publishes ``rate`` messages per second for ``duration_s``. Slot ``m`` (0, 1, 2, ...)
is due at ``start_ms + m * 1000 / rate`` and belongs to device ``order[m % n]`` (a
seeded permutation), so every device reports once per ``n / rate`` seconds, the fleet's
reports are evenly spread, and the rate is exact by construction.

A slot's message is a fix, or a status heartbeat (every ``status_every``-th report of a
device, and whenever it has no fix: an indoor drop-out). Injected events change what
some devices send and are written to the ground truth (:class:`TruthEvent`), one JSON
line each, with the alarm the engine is expected to raise (or ``null``); where and when
each is placed is :mod:`simulators.events`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import orjson

from contract.topics import device_topic
from emfence.config import Config
from simulators.events import (
    DEVICE_EVENTS,
    DEVICE_RULE_EVENTS,
    MOVEMENT_EVENTS,
    DeviceScript,
    EventInjector,
    TruthEvent,
)
from simulators.movement import COORD_GCJ02, SOURCES, SRC_NONE, Fleet, MovementModel

SCENARIOS = ("normal", "excursions", "mixed", "load", "device_rules")
SCENARIO_EVENTS = {
    "normal": (),
    "load": (),
    "excursions": MOVEMENT_EVENTS,
    "mixed": MOVEMENT_EVENTS + DEVICE_EVENTS,
    "device_rules": DEVICE_RULE_EVENTS,
}


def _scripted_fix(sc: DeviceScript, ts: int, fix: dict | None) -> dict | None:
    """The slot's fix as a scripted device sends it: its clock skewed, or none in foil
    (the slot's message is then a status)."""
    for a, b, skew in sc.skew:
        if a <= ts < b and fix is not None:
            fix["ts"] = ts + skew
    if any(a <= ts < b for a, b in sc.foil):
        return None
    return fix


class Outgoing(NamedTuple):
    """One MQTT publish: sent over ``device``'s connection (or a pool connection)."""

    device: int
    topic: str
    payload: bytes
    kind: str  # fix | status | burst | duplicate | malformed | spoof
    slot_ms: int


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
        self.scripts: dict[int, DeviceScript] = {}
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
            EventInjector(self).inject(kinds, rng, events_per_kind)

    # -- checks and helpers --------------------------------------------------------------

    def offline_after_ms(self, s: int) -> int:
        level = self.fleet.subject_level[s]
        return int(self.config.rules.offline_after_s.for_level(level) * 1000)

    def no_fix_after_ms(self, s: int) -> int:
        level = self.fleet.subject_level[s]
        return int(self.config.rules.no_fix_after_s.for_level(level) * 1000)

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
        return self.start_ms + (np.asarray(m, dtype=np.float64) * 1000.0
                                / self.rate).astype(np.int64)

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.duration_s * 1000)

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
                fix = {"ts": ts, "lat": lat[k], "lon": lon[k], "acc": acc[k],
                       "src": SOURCES[src[k]], "seq": int(self.seq[d])}
                if coord[k] == COORD_GCJ02:
                    fix["coord_sys"] = "gcj02"
            if sc is None:
                if fix is not None:
                    out.append(Outgoing(d, device_topic(regions[d], ids[d], "fix"),
                                        orjson.dumps(fix), "fix", ts))
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

    def _status(self, d: int, ts: int, sc: DeviceScript | None = None) -> dict:
        # Slow drain while the simulated day goes by, never down to the alarm threshold
        # unless an event says so (``status_override``).
        hours = (ts - self.start_ms) / 3_600_000 * self.model.time_scale
        battery = float(self.battery0[d] - 2.0 * hours)
        status = {"ts": ts, "battery": int(max(battery, 40.0)), "strap": "ok",
                  "charging": battery < 40.0}
        if self.fleet.device_kind[d] == "phone":
            del status["strap"]
        if sc is not None:
            for a, b, fields in sc.status_override:
                if a <= ts < b:
                    status.update(fields)
        return status

    def _scripted(self, d: int, ts: int, fix: dict | None, sc: DeviceScript,
                  out: list[Outgoing]) -> None:
        ids, region = self.fleet.device_ids, self.fleet.device_region[d]
        fix_topic = device_topic(region, ids[d], "fix")
        if any(a <= ts < b for a, b in sc.silent):
            return
        fix = _scripted_fix(sc, ts, fix)
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
                    out.append(Outgoing(d, device_topic(self.fleet.device_region[victim],
                                                        ids[victim], "fix"),
                                        orjson.dumps(f), "spoof", ts))
