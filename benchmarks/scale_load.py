"""The load of ``benchmarks.scale --e2e``: fixes of the national fleet over MQTT.

The simulator's movement model plans each subject's day in Python (minutes for 700 000
subjects), so the national load is simpler: each device reports from a *home*, a point
of its county's sample pool at least :data:`HOME_CLEAR_M` from the subject's exclusion
circle (so that no fix raises or warns), with ~5 m of noise, WGS-84, GPS, ``acc`` 10 m;
the bracelet and the phone of a subject at the same home. Slot ``m`` of a run belongs to
device ``order[(cursor + m) % n]`` (a seeded permutation of the fleet); the cursor goes
on from step to step, so successive steps walk the whole fleet rather than its first
devices again, and at the national rate (23 000 fixes/s) every device reports about
once a minute.

The latency step adds a small :class:`~simulators.scenario.Simulation` of a few subjects
of one city (:meth:`NationalSource.latency_fleet`) with the ``excursions`` scenario,
merged into the load by time (:class:`MergedSim`); its ground truth is what ``emfence
score`` scores. The load leaves those subjects' devices out.
"""

from __future__ import annotations

import math
import time

import numpy as np

from contract.topics import device_topic

HOME_CLEAR_M = 3_000.0  # from the exclusion circle's centre: radius <= 800 m + approach
NOISE_DEG = 5e-5  # ~5 m
M_PER_DEG = 111_320.0
FIX = b'{"ts":%d,"lat":%.7f,"lon":%.7f,"acc":10.0}'


def pick_homes(pools, county_of_device, circle_xy, circle_of_device,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lon, lat) of each subject's home (one per device pair: both devices share it),
    and whether it is :data:`HOME_CLEAR_M` from the circle (not so when no point of a
    small county's pool is: such subjects are left out of the load)."""
    rng = np.random.default_rng([seed, 0x40E])
    county = county_of_device[0::2]
    centre = circle_xy[circle_of_device[0::2]]
    pool_n = np.array([len(p) for p in pools])
    flat = np.concatenate(pools)
    offset = np.concatenate([[0], np.cumsum(pool_n)[:-1]])
    home = np.empty((len(county), 2))
    todo = np.arange(len(county))
    for _ in range(50):
        pick = flat[offset[county[todo]] + rng.integers(0, pool_n[county[todo]])]
        dx = (pick[:, 0] - centre[todo, 0]) * M_PER_DEG * np.cos(np.radians(pick[:, 1]))
        dy = (pick[:, 1] - centre[todo, 1]) * M_PER_DEG
        ok = np.hypot(dx, dy) >= HOME_CLEAR_M
        home[todo] = pick
        todo = todo[~ok]
        if not len(todo):
            break
    clear = np.ones(len(county), dtype=bool)
    clear[todo] = False
    return home[:, 0], home[:, 1], clear


class NationalLoad:
    """Device ids, topics' regions, homes and the publishing order of the fleet."""

    def __init__(self, subjects_doc: dict, home_lon, home_lat, clear, *, leave_out: set[str],
                 seed: int):
        subjects = subjects_doc["subjects"]
        # every device's fix topic, made once: the load generator has no time to spare
        self.topics = [device_topic(s["region"], d["device_id"], "fix")
                       for s in subjects for d in s["devices"]]
        per = np.array([len(s["devices"]) for s in subjects])
        self.lon = np.repeat(home_lon, per)
        self.lat = np.repeat(home_lat, per)
        keep = np.array([s["subject_id"] not in leave_out for s in subjects]) & clear
        self.subjects_left_out = int((~keep).sum())
        eligible = np.flatnonzero(np.repeat(keep, per))
        self.order = np.random.default_rng([seed, 0x10AD]).permutation(eligible)
        self.n = len(self.order)
        self.cursor = 0
        self._rng = np.random.default_rng([seed, 0x5EED])

    def run(self, rate: float, duration_s: float, start_ms: int) -> LoadSim:
        """A run from the cursor on; the cursor moves past it."""
        sim = LoadSim(self, rate, duration_s, start_ms, self.cursor)
        self.cursor = (self.cursor + sim.total_slots) % self.n
        return sim


class LoadSim:
    """A load run: what :class:`simulators.publisher.Publisher` publishes."""

    scenario = "load"

    def __init__(self, load: NationalLoad, rate: float, duration_s: float, start_ms: int,
                 cursor: int):
        self.load, self.rate, self.duration_s = load, float(rate), float(duration_s)
        self.start_ms, self.cursor = int(start_ms), cursor
        self.total_slots = int(self.duration_s * self.rate)
        self.expected_sent = self.total_slots

    def slot_ms(self, m) -> np.ndarray:
        return self.start_ms + (np.asarray(m, dtype=np.float64) * 1000.0
                                / self.rate).astype(np.int64)

    def shift(self, delta_ms: int) -> None:
        self.start_ms += int(delta_ms)

    def messages(self, m0: int, m1: int) -> list:
        from simulators.scenario import Outgoing

        m1 = min(m1, self.total_slots)
        if m1 <= m0:
            return []
        ld = self.load
        m = np.arange(m0, m1, dtype=np.int64)
        dev = ld.order[(self.cursor + m) % ld.n]
        noise = ld._rng.normal(0.0, NOISE_DEG, (2, len(m)))
        lon = (ld.lon[dev] + noise[0]).tolist()
        lat = (ld.lat[dev] + noise[1]).tolist()
        ts = self.slot_ms(m).tolist()
        topics = ld.topics
        # the payload formatted directly (7 µs a message in all against 25 with a dict
        # and orjson): the same JSON, 7 decimals as the simulator rounds
        return [Outgoing(d, topics[d], FIX % (t, la, lo), "fix", t)
                for d, t, la, lo in zip(dev.tolist(), ts, lat, lon, strict=True)]


class MergedSim:
    """The load and a small simulation (``sub``) of the same length, published together:
    the load's slots drive the clock, ``sub``'s messages go out with the load slots of
    their time. ``truth_sim`` is ``sub`` (its ground truth)."""

    scenario = "load"

    def __init__(self, load: LoadSim, sub):
        self.load, self.truth_sim = load, sub
        self.rate, self.total_slots = load.rate, load.total_slots
        self._j = 0
        self._sub_sent = 0

    @property
    def start_ms(self) -> int:
        return self.load.start_ms

    @property
    def expected_sent(self) -> int:
        return self.total_slots + self._sub_sent

    def slot_ms(self, m):
        return self.load.slot_ms(m)

    def shift(self, delta_ms: int) -> None:
        self.load.shift(delta_ms)
        self.truth_sim.shift(delta_ms)

    def messages(self, m0: int, m1: int) -> list:
        out = self.load.messages(m0, m1)
        sub = self.truth_sim
        if m1 >= self.total_slots:
            j1 = sub.total_slots
        else:
            t_end = float(self.load.slot_ms(m1))
            j1 = min(sub.total_slots, math.ceil((t_end - sub.start_ms) * sub.rate / 1000.0))
        if j1 > self._j:
            extra = sub.messages(self._j, j1)
            self._sub_sent += len(extra)
            out.extend(extra)
            self._j = j1
        return out


class NationalSource:
    """Each step's simulation (see :mod:`benchmarks.e2e_steps`): the load alone, or for a
    scenario other than ``load``, the load with ``latency_fleet``'s simulation merged."""

    def __init__(self, load: NationalLoad, latency_fleet, latency_rate: float):
        self.load, self.latency_fleet, self.latency_rate = load, latency_fleet, latency_rate

    def simulation(self, rig, rate: float, step_s: float, args, scenario: str,
                   events_per_kind):
        start_ms = int(time.time() * 1000) + 1500
        if scenario == "load":
            return self.load.run(rate, step_s, start_ms)
        from emfence.config import load_config
        from simulators.scenario import Simulation

        sub_rate = self.latency_rate
        # an excursion lasts ~14 report intervals (e2e_steps.FleetSource)
        duration = max(args.latency_s, 14 * self.latency_fleet.n_devices / sub_rate + 15)
        sub = Simulation(self.latency_fleet, rate=sub_rate, duration_s=duration,
                         start_ms=start_ms, config=load_config(rig.config_path),
                         scenario=scenario, seed=args.seed, events_per_kind=events_per_kind,
                         spoof_allowed=False)
        start_ms = max(start_ms, int(time.time() * 1000) + 500)
        sub.shift(start_ms - sub.start_ms)
        return MergedSim(self.load.run(max(rate - sub_rate, 1.0), duration, start_ms), sub)


def latency_subjects(subjects_doc: dict, k: int) -> list[dict]:
    """``k`` subjects without leave, all of the city (adcode's first four digits) that has
    the most such subjects: the excursions of the latency step."""
    from collections import Counter

    plain = [s for s in subjects_doc["subjects"] if not s.get("leaves")]
    city = Counter(s["region"][:4] for s in plain).most_common(1)[0][0]
    return [s for s in plain if s["region"][:4] == city][:k]
