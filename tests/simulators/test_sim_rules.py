"""Issue #14 on the simulator side: generated relations, and the `rules` scenario's
behaviours held against a naive judge of what the devices send (tests/simulators/
rules_judge.py): each injected behaviour surely happens inside its truth window, and
nothing that could fire one of the new rules happens outside the windows."""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rules_judge import (
    Run,
    near_pairs,
    no_fix_moments,
    separation_pairs,
    silences,
    surely_near_spells,
    zone_fixes,
)
from sim_helpers import START_MS, fleet

from emfence.config import config_from_dict
from ingest.decode import decode_fix_payload, decode_status_payload, parse_topic
from simulators.movement import MAX_ERROR_M, Fleet, MovementModel
from simulators.rule_events import RULE_EXPECTED
from simulators.scenario import Simulation

# Thresholds compressed so that a two-and-a-half-minute run shows every behaviour;
# no_fix later than offline, as by default for strict subjects.
RULES_CONFIG = {"rules": {"offline_after_s": {"strict": 10, "ordinary": 15, "lenient": 20},
                          "no_fix_after_s": {"strict": 20, "ordinary": 25, "lenient": 30},
                          "contact_min_s": 15}}


SEEDS = (2, 5)


def rules_config(**rules):
    return config_from_dict({"rules": {**RULES_CONFIG["rules"], **rules}})


@lru_cache(maxsize=2)
def rules_run(seed: int):
    """(simulation, its replay lines): 150 subjects, two events of each rule."""
    gen, zones, _ = fleet(150, seed, None)
    fl = Fleet.build(gen.subjects, zones, protected=True)
    sim = Simulation(fl, rate=200.0, duration_s=150.0, start_ms=START_MS, config=rules_config(),
                     scenario="rules", seed=seed, time_scale=30.0, events_per_kind=2)
    return sim, sim.replay_lines()


def _windows(sim, expect: str, key: str, value) -> list[tuple[int, int]]:
    return [(e.start, e.end) for e in sim.truth
            if e.expect == expect and getattr(e, key) == value]


def _inside(t: int, windows, slack: int = 0) -> bool:
    return any(a - slack <= t <= b + slack for a, b in windows)


def test_generated_subjects_name_protected_persons_and_contacts():
    gen, zones, _ = fleet(150, 2, None)
    subjects = {s["subject_id"]: s for s in gen.subjects["subjects"]}
    protected = gen.subjects["protected"]
    assert protected and any("contacts" in s for s in subjects.values())
    device_ids = [d["device_id"] for s in subjects.values() for d in s["devices"]]
    for p in protected:
        (sid,) = p["protected_from"]
        num = p["person_id"].removeprefix("V-")
        assert f"victim-{num}" in subjects[sid]["exclusion"] and p["region"] == subjects[sid][
            "region"]
        assert p["devices"] == [{"device_id": f"V-{num}-phone", "kind": "victim"}]
        device_ids.append(p["devices"][0]["device_id"])
    assert len(device_ids) == len(set(device_ids))
    for sid, s in subjects.items():
        for other in s.get("contacts", ()):
            assert other != sid and subjects[other]["contacts"] == [sid]
            assert subjects[other]["region"] == s["region"]
    plain = Fleet.build(gen.subjects, zones)
    full = Fleet.build(gen.subjects, zones, protected=True)
    assert full.device_ids[:plain.n_devices] == plain.device_ids
    assert full.n_devices == plain.n_devices + len(protected)
    assert (full.device_subject[plain.n_devices:] >= full.n_subjects).all()
    assert {full.device_kind[d] for d in range(plain.n_devices, full.n_devices)} == {"victim"}
    assert full.victim_ids == [p["person_id"] for p in protected]
    assert sum(len(c) for c in full.contacts) == sum(len(s.get("contacts", ()))
                                                    for s in subjects.values())


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), county=st.sampled_from(["411303", "411321", "411302"]))
def test_normal_movement_keeps_contacts_and_victims_apart(seed, county):
    """Over a simulated day the true positions of listed contacts stay farther apart
    than contact_m plus both largest errors, and victims than proximity_m plus both."""
    gen, zones, _ = fleet(80, seed % 7, (county,) if seed % 2 else None)
    fl = Fleet.build(gen.subjects, zones, protected=True)
    model = MovementModel(fl, seed=seed, start_ms=START_MS, horizon_ms=86_400_000)
    t = np.arange(START_MS, START_MS + 86_400_000, 60_000, dtype=np.int64)
    r = rules_config().rules
    close = {tuple(sorted(p)) for p in model.contacts_close}

    def track(m):
        x, y, _ = model.true_position_m(np.full(len(t), m), t)
        return x, y

    for s, partners in enumerate(fl.contacts):
        for o in partners:
            if (fl.subject_ids[s], fl.subject_ids[o]) in close or (
                    tuple(sorted((fl.subject_ids[s], fl.subject_ids[o]))) in close):
                continue
            (ax, ay), (bx, by) = track(s), track(o)
            assert np.hypot(ax - bx, ay - by).min() > r.contact_m + 2 * MAX_ERROR_M
    for v, frm in enumerate(fl.victim_from):
        vx, vy = track(fl.n_subjects + v)
        for s in frm:
            sx, sy = track(s)
            assert np.hypot(sx - vx, sy - vy).min() > r.proximity_m + 2 * MAX_ERROR_M


@pytest.mark.parametrize("seed", SEEDS)
def test_the_rules_scenario_places_every_behaviour_and_decodes(seed):
    sim, lines = rules_run(seed)
    assert not sim.skipped
    kinds = Counter(e.expect for e in sim.truth)
    assert set(kinds) == set(RULE_EXPECTED.values()) | {"exclusion"}
    assert all(kinds[k] >= 2 for k in RULE_EXPECTED.values())
    cfg = sim.config.ingest
    powers = Counter()
    for line in lines:
        rec = orjson.loads(line)
        rx, did = rec.pop("rx"), rec.pop("device_id")
        assert did in sim.fleet.device_index
        if "lat" in rec:
            decode_fix_payload(orjson.dumps(rec), rx_ms=rx, config=cfg)
        else:
            decode_status_payload(orjson.dumps(rec), rx_ms=rx, config=cfg)
            powers[rec.get("power")] += 1
    assert powers["off"] == powers["on"] == kinds["power_off"]


def test_rules_scenario_publishes_on_victim_topics_and_is_deterministic():
    gen, zones, _ = fleet(150, 2, None)

    def plan():
        fl = Fleet.build(gen.subjects, zones, protected=True)
        return Simulation(fl, rate=200.0, duration_s=150.0, start_ms=START_MS,
                          config=rules_config(), scenario="rules", seed=2, time_scale=30.0,
                          events_per_kind=2)

    a, b = plan(), plan()
    msgs = a.messages(0, a.total_slots)
    assert [m.payload for m in msgs] == [m.payload for m in b.messages(0, b.total_slots)]
    assert a.truth_lines() == b.truth_lines()
    victim_topics = {m.topic for m in msgs if parse_topic(m.topic)[1].startswith("V-")}
    assert len(victim_topics) >= len(a.fleet.victim_ids)  # fix and status topics


@pytest.mark.parametrize("seed", SEEDS)
def test_separation_happens_only_in_its_windows(seed):
    sim, lines = rules_run(seed)
    fl, r = sim.fleet, sim.config.rules
    run = Run.read(lines, fl.frame)
    confirm = r.separation_confirm
    checked = 0
    for s in range(fl.n_subjects):
        kinds = {fl.device_kind[d]: fl.device_ids[d] for d in fl.devices_of(s)}
        if set(kinds) != {"bracelet", "phone"}:
            continue
        pairs = separation_pairs(run, kinds["bracelet"], kinds["phone"], r)
        windows = _windows(sim, "separation", "subject_id", fl.subject_ids[s])
        count = 0  # docs/rules.md: apart counts, close resets, in between changes nothing
        for p in pairs:
            count = 0 if p[3] else count + 1 if p[1] else count
            if count >= confirm:  # could be raised here
                assert _inside(p[0], windows), (fl.subject_ids[s], p)
        for a, b in windows:
            sure = [p[2] for p in pairs if a <= p[0] <= b]
            assert any(all(sure[k:k + confirm]) for k in range(len(sure) - confirm + 1))
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_foil_and_power_off_happen_only_in_their_windows(seed):
    sim, lines = rules_run(seed)
    fl, r = sim.fleet, sim.config.rules
    run = Run.read(lines, fl.frame)
    foil = [e for e in sim.truth if e.expect == "no_fix"]
    power = [e for e in sim.truth if e.expect == "power_off"]
    for d, did in enumerate(fl.device_ids):
        s = int(fl.device_subject[d])
        if s >= fl.n_subjects:
            continue
        level = fl.subject_level[s]
        nofix = int(r.no_fix_after_s.for_level(level) * 1000)
        offline = int(r.offline_after_s.for_level(level) * 1000)
        allowed = ([(e.start, e.end) for e in foil if e.device_id == did]
                   + [(e.start, e.end) for e in power if e.device_id == did])
        for t in no_fix_moments(run, did, nofix, offline, sim.end_ms):
            assert _inside(t, allowed), (did, t)
        offs = [rec for rec in run.by_device[did] if rec.power == "off"]
        mine = [e for e in power if e.device_id == did]
        assert len(offs) == len(mine)
        for e in mine:
            (off,) = offs
            assert e.start <= off.ts <= e.start + sim.interval_ms
            # Silent after its last word for longer than the offline threshold, then on.
            gaps = [g for g in silences(run, did, offline) if g[0] == off.rx]
            assert gaps, (did, off)
            after = [rec for rec in run.by_device[did] if rec.rx >= gaps[0][1]]
            assert any(rec.power == "on" for rec in after[:2])
    for e in foil:
        s = fl.subject_ids.index(e.subject_id)
        nofix = int(r.no_fix_after_s.for_level(fl.subject_level[s]) * 1000)
        offline = int(r.offline_after_s.for_level(fl.subject_level[s]) * 1000)
        moments = no_fix_moments(run, e.device_id, nofix, offline, sim.end_ms)
        assert any(e.start <= t <= e.end for t in moments), e
        # Statuses keep coming all along: never silent for the offline threshold.
        assert not [g for g in silences(run, e.device_id, offline // 2)
                    if e.start - nofix <= g[0] <= e.end]


@pytest.mark.parametrize("seed", SEEDS)
def test_approach_and_exclusion_happen_only_in_their_windows(seed):
    sim, lines = rules_run(seed)
    fl, r = sim.fleet, sim.config.rules
    run = Run.read(lines, fl.frame)
    for s in range(fl.n_subjects):
        for zone, g in fl.exclusions_m[s]:
            for d in fl.devices_of(s):
                did = fl.device_ids[d]
                events = [e for e in sim.truth if e.device_id == did and e.zone_id == zone]
                detour = [(e.start, e.end) for e in events if e.expect == "exclusion"]
                near = zone_fixes(run, did, g, r)
                for ts, what in near:
                    assert _inside(ts, detour), (did, zone, ts, what)
                for e in events:
                    if e.expect == "approach":
                        first_in = min((ts for ts, w in near if w == "in"), default=None)
                        assert first_in is not None
                        assert any(e.start <= ts < first_in and w == "band" for ts, w in near)
                    else:
                        assert any(e.start <= ts <= e.end and w == "in" for ts, w in near)


@pytest.mark.parametrize("seed", SEEDS)
def test_proximity_and_contact_happen_only_in_their_windows(seed):
    sim, lines = rules_run(seed)
    fl, r = sim.fleet, sim.config.rules
    run = Run.read(lines, fl.frame)
    ids = fl.device_ids
    fresh = int(r.proximity_fresh_s * 1000)
    n_prox = n_contact = 0
    for v, frm in enumerate(fl.victim_from):
        vdev = [ids[d] for d in np.flatnonzero(fl.device_subject == fl.n_subjects + v)]
        for s in frm:
            pairs = near_pairs(run, [ids[d] for d in fl.devices_of(s)], vdev, r.proximity_m,
                               fresh)
            windows = _windows(sim, "proximity", "subject_id", fl.subject_ids[s])
            assert all(_inside(ts, windows) for ts, possible, _ in pairs if possible)
            for a, b in windows:
                assert any(a <= ts <= b and sure for ts, _, sure in pairs)
                n_prox += 1
    for s, partners in enumerate(fl.contacts):
        for o in partners:
            if o < s:
                continue
            first = min(fl.subject_ids[s], fl.subject_ids[o])
            pairs = near_pairs(run, [ids[d] for d in fl.devices_of(s)],
                               [ids[d] for d in fl.devices_of(o)], r.contact_m, 60_000)
            windows = [(e.start, e.end) for e in sim.truth if e.expect == "contact"
                       and e.subject_id == first
                       and e.detail["peer_subject_id"] in (fl.subject_ids[s], fl.subject_ids[o])]
            assert all(_inside(ts, windows) for ts, possible, _ in pairs if possible)
            for a, b in windows:
                spells = surely_near_spells([p for p in pairs if a <= p[0] <= b])
                assert max(y - x for x, y in spells) >= r.contact_min_s * 1000
                n_contact += 1
    assert n_prox >= 2 and n_contact >= 2


def test_relation_limits_are_checked_against_the_config():
    gen, zones, _ = fleet(60, 8, ("411303",))
    fl = Fleet.build(gen.subjects, zones, protected=True)
    for key, value in (("contact_m", 5000.0), ("proximity_m", 9000.0)):
        with pytest.raises(ValueError, match=f"rules.{key}"):
            Simulation(fl, rate=100.0, duration_s=30.0, start_ms=START_MS,
                       config=rules_config(**{key: value}), scenario="rules")


def test_cli_writes_the_rules_scenario_with_the_victims_devices(tmp_path):
    from emfence.cli import main as emfence_main

    gen, _, _ = fleet(150, 2, None)
    zp, sp = gen.write(tmp_path / "fleet")
    (tmp_path / "c.toml").write_text(
        "[rules]\ncontact_min_s = 15\n[rules.offline_after_s]\nstrict = 10\nordinary = 15\n"
        "lenient = 20\n[rules.no_fix_after_s]\nstrict = 20\nordinary = 25\nlenient = 30\n")
    base = ["simulate", "--zones", str(zp), "--subjects", str(sp), "--rate", "200",
            "--duration", "150", "--scenario", "rules", "--seed", "2", "--start", str(START_MS),
            "--config", str(tmp_path / "c.toml"), "--time-scale", "30",
            "--events-per-kind", "2"]
    for name in ("a", "b"):
        assert emfence_main(base + ["--replay-out", str(tmp_path / f"{name}.jsonl"),
                                    "--truth", str(tmp_path / f"{name}.truth")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.truth").read_bytes() == (tmp_path / "b.truth").read_bytes()
    _sim, lines = rules_run(2)
    assert (tmp_path / "a.jsonl").read_bytes() == b"".join(x + b"\n" for x in lines)
    truth = [orjson.loads(x) for x in (tmp_path / "a.truth").read_bytes().splitlines()]
    assert truth[0]["scenario"] == "rules" and truth[0]["skipped"] == []
    assert truth[0]["rules"]["no_fix_after_s"] == {"strict": 20, "ordinary": 25, "lenient": 30}
    assert truth[0]["rules"]["contact_min_s"] == 15 and truth[0]["rules"]["approach_m"] == 200
    assert {t["expect"] for t in truth[1:]} == set(RULE_EXPECTED.values()) | {"exclusion"}
    victims = {orjson.loads(x)["device_id"] for x in lines} - {
        d["device_id"] for s in gen.subjects["subjects"] for d in s["devices"]}
    assert victims == {p["devices"][0]["device_id"] for p in gen.subjects["protected"]}


def test_event_paths_keep_away_from_victims_and_other_contacts():
    from shapely.geometry import LineString

    from simulators.events import EventInjector

    sim, _ = rules_run(2)
    fl, model = sim.fleet, sim.model
    inj = EventInjector(sim)
    v = 0
    (s,) = fl.victim_from[v][:1]
    home, victim = model.home[s], model.home[fl.n_subjects + v]
    assert inj._relations_ok(s, LineString([home, home + 10.0]))
    towards = home + (victim - home) * 0.8  # within proximity_m + both errors of the victim
    assert not inj._relations_ok(s, LineString([home, towards]))
    s = next(i for i, c in enumerate(fl.contacts) if c)
    (t,) = fl.contacts[s]
    assert not inj._relations_ok(s, LineString([model.home[s], model.home[t]]))
    assert inj._relations_ok(s, LineString([model.home[s], model.home[t]]), meeting=t)


@pytest.mark.parametrize("seed", [3, 8])
def test_mixed_scenario_never_separates_a_pair_by_itself(seed):
    """The time-scaled day and its fast detours, with the separation rule's defaults:
    a subject's two devices never look apart twice in a row, except inside the events
    that allow it (one device held back). Seeds 3 and 8 did, before a subject's devices
    shared their rounds and drop-outs and settled after a detour."""
    _, _, fl = fleet(150, seed, None)
    config = config_from_dict({"rules": {"offline_after_s": {"strict": 10, "ordinary": 15,
                                                             "lenient": 20}}})
    sim = Simulation(fl, rate=150.0, duration_s=90.0, start_ms=START_MS, config=config,
                     scenario="mixed", seed=seed, time_scale=30.0)
    run = Run.read(sim.replay_lines(), fl.frame)
    r = config.rules
    pairs_checked = 0
    for s in range(fl.n_subjects):
        kinds = {fl.device_kind[d]: fl.device_ids[d] for d in fl.devices_of(s)}
        if set(kinds) != {"bracelet", "phone"}:
            continue
        allowed = [(e.start, e.end) for e in sim.truth if e.subject_id == fl.subject_ids[s]
                   and "separation" in e.detail.get("allow", ())]
        count = 0
        for p in separation_pairs(run, kinds["bracelet"], kinds["phone"], r):
            count = 0 if p[3] else count + 1 if p[1] else count
            pairs_checked += 1
            if count >= r.separation_confirm:
                assert _inside(p[0], allowed, slack=2000), (fl.subject_ids[s], p)
    assert pairs_checked > 1000


def test_a_shifted_rules_run_is_the_run_planned_later():
    """The publisher moves a run whose set-up overran (Simulation.shift): pinned phones,
    foil and power-off windows and the victims' detours move with it."""
    gen, zones, _ = fleet(150, 2, None)

    def plan(start):
        fl = Fleet.build(gen.subjects, zones, protected=True)
        return Simulation(fl, rate=200.0, duration_s=150.0, start_ms=start,
                          config=rules_config(), scenario="rules", seed=2, time_scale=30.0,
                          events_per_kind=2)

    a, b = plan(START_MS), plan(START_MS + 7_000)
    a.shift(7_000)
    assert a.truth_lines() == b.truth_lines()
    assert [m.payload for m in a.messages(0, a.total_slots)] == [
        m.payload for m in b.messages(0, b.total_slots)]


def test_bad_protected_persons_are_named():
    from simulators.movement import MovementError

    gen, zones, _ = fleet(60, 8, ("411303",))
    subjects = gen.subjects["subjects"]
    bad = [({"protected": [{"region": "411303"}]}, "protected[0] needs a person_id"),
           ({"protected": "V-1"}, '"protected" must be a list'),
           ({"protected": [{"person_id": "V-1", "region": "411303",
                            "devices": [{"device_id": subjects[0]["devices"][0]["device_id"],
                                         "kind": "victim"}],
                            "protected_from": [subjects[0]["subject_id"]]}]},
            "device id(s) used twice")]
    for extra, message in bad:
        with pytest.raises(MovementError, match=re.escape(message)):
            Fleet.build({"subjects": subjects, **extra}, zones, protected=True)
    # Without protected=True the block is not read at all (the other scenarios).
    assert Fleet.build({"subjects": subjects, "protected": "V-1"}, zones).victim_ids == []
