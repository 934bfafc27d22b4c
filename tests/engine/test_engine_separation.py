"""The separation rule (人机分离, issue #14 rule 1, docs/rules.md "Relations"): the
kernel held against the plain reference (relation_reference.py) on generated walks over
real county boundaries, its numbers, evidence, late fixes, restarts and replay."""

from __future__ import annotations

import io
import random

import numpy as np
import orjson
import pytest
import shapely
from engine_helpers import T0, Feed, brief, county_feature, make_engine, offset
from engine_reference import Reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_vs_reference import HOME_LINE, REF_ZONES, TOLERANCE_M, ZONES, check_episodes

from emfence.config import Config, config_from_dict
from emfence.replay import replay
from engine import Engine, load_registry
from engine.shapely_core import ShapelyEngine

HOME = (112.53, 33.0)  # inside Wancheng (411302)


def pair_subject(sid="S-1", b="B-1", p="P-1", **extra) -> dict:
    return {"subject_id": sid, "region": "411302", "level": "strict",
            "devices": [{"device_id": b}, {"device_id": p, "kind": "phone"}],
            "inclusion": ["411302"], **extra}


def feed(rules: dict | None = None, subjects=None) -> Feed:
    return Feed(make_engine([county_feature("411302")], subjects or [pair_subject()], rules))


def east(m: float) -> tuple[float, float]:
    return offset(*HOME, m, 0.0)


# ----- the rule's numbers -------------------------------------------------------------
def test_raised_at_the_confirming_far_pair_with_both_positions():
    f = feed()
    assert f.fix("B-1", T0, *HOME) == []
    assert f.fix("P-1", T0 + 10_000, *east(2000)) == []  # first far pair: run 1
    ev = f.fix("B-1", T0 + 70_000, *HOME)  # second far pair: raised, on the later fix
    assert brief(ev) == [("raised", "separation", "B-1", None, T0 + 70_000, False)]
    e = ev[0]
    assert (e["lat"], e["lon"], e["acc"], e["peer_device_id"]) == (HOME[1], HOME[0], 10.0, "P-1")
    assert (e["peer_lon"], e["peer_lat"], e["peer_acc"]) == (*east(2000), 10.0)
    assert e["distance_m"] == pytest.approx(2000.0, abs=0.1)
    assert e["device_kind"] == "bracelet" and e["subject_id"] == "S-1"
    assert f.fix("P-1", T0 + 80_000, *east(2100)) == []  # open: no second raise
    ev = f.fix("P-1", T0 + 90_000, *east(450))  # within separation_m: cleared
    assert brief(ev) == [("cleared", "separation", "B-1", None, T0 + 90_000, False)]
    assert ev[0]["alarm_id"] == e["alarm_id"]
    assert ev[0]["peer_device_id"] == "P-1" and ev[0]["distance_m"] == pytest.approx(450, abs=0.1)


def test_accuracies_count_for_raising_not_for_clearing():
    f = feed({"separation_confirm": 1})
    f.fix("B-1", T0, *HOME, acc=100.0)
    assert f.fix("P-1", T0 + 1000, *east(690), acc=100.0) == []  # 690 <= 500 + 200: uncertain
    ev = f.fix("P-1", T0 + 2000, *east(710), acc=100.0)
    assert [e["event"] for e in ev] == ["raised"]
    assert f.fix("P-1", T0 + 3000, *east(520), acc=100.0) == []  # uncertain: stays open
    assert [e["event"] for e in f.fix("P-1", T0 + 4000, *east(499), acc=100.0)] == ["cleared"]


def test_uncertain_pairs_neither_count_nor_break_the_run_and_near_pairs_reset_it():
    f = feed()
    f.fix("B-1", T0, *HOME)
    f.fix("P-1", T0 + 1000, *east(900))  # far: 1
    f.fix("P-1", T0 + 2000, *east(510))  # uncertain (<= 520): unchanged
    assert [e["event"] for e in f.fix("P-1", T0 + 3000, *east(900))] == ["raised"]  # 2
    f2 = feed()
    f2.fix("B-1", T0, *HOME)
    f2.fix("P-1", T0 + 1000, *east(900))  # far: 1
    f2.fix("P-1", T0 + 2000, *east(100))  # near: 0
    assert f2.fix("P-1", T0 + 3000, *east(900)) == []  # far: 1 again


def test_only_fixes_within_the_window_make_a_pair():
    f = feed({"separation_window_s": 60})
    f.fix("B-1", T0, *HOME)
    assert f.fix("P-1", T0 + 61_000, *east(3000)) == []  # 61 s apart: no pair
    assert f.fix("P-1", T0 + 62_000, *east(3000)) == []  # still no pair (B-1 too old)
    f.fix("B-1", T0 + 100_000, *HOME)  # pairs with P-1 at +62 s: far 1
    ev = f.fix("P-1", T0 + 160_000, *east(3000))  # exactly 60 s: a pair, far 2
    assert brief(ev) == [("raised", "separation", "P-1", None, T0 + 160_000, False)]


def test_the_later_fix_names_the_device_even_when_it_arrived_first():
    f = feed({"separation_confirm": 1})
    f.fix("P-1", T0 + 50_000, *east(3000))
    ev = f.fix("B-1", T0 + 10_000, *HOME)  # arrives later, is older: the phone's fix is later
    assert brief(ev) == [("raised", "separation", "P-1", None, T0 + 50_000, False)]
    assert (ev[0]["peer_device_id"], ev[0]["peer_lon"]) == ("B-1", HOME[0])


def test_late_and_duplicate_fixes_never_touch_separation():
    f = feed({"separation_confirm": 1})
    f.fix("B-1", T0 + 10_000, *HOME)
    f.fix("P-1", T0 + 10_000, *east(100))
    assert f.fix("P-1", T0 + 5000, *east(5000)) == []  # late: far, but ignored
    assert f.fix("P-1", T0 + 10_000, *east(5000)) == []  # duplicate
    assert f.engine.counters["late_fixes"] == 1
    # the latest position is still the in-order one: a near pair, nothing open
    assert f.fix("B-1", T0 + 20_000, *east(50)) == []
    assert f.engine.open_alarms() == []


def test_subjects_without_both_kinds_have_no_separation_and_no_relation_slot():
    subjects = [pair_subject(),
                {"subject_id": "S-2", "region": "411302", "level": "strict",
                 "devices": [{"device_id": "B-2"}, {"device_id": "B-3"}],
                 "inclusion": ["411302"]}]
    f = feed({"separation_confirm": 1}, subjects)
    assert f.engine.relations.dev_rel.tolist() == [0, 1, -1, -1]
    f.fix("B-2", T0, *HOME)
    assert f.fix("B-3", T0 + 1000, *east(5000)) == []


def test_the_separation_adds_four_bytes_per_device():
    f = feed()
    assert f.engine.relations.dev_rel.nbytes == 4 * f.engine.registry.n_devices
    # The budget on a fleet where every device is in a pair (the worst case for this
    # rule), not on the two-device feed: there the few arrays whose size does not grow
    # with the fleet (CSR offsets' last entry, ext's shared fresh row) are a large share.
    e = feed(subjects=[pair_subject(f"S-{i}", f"B-{i}", f"P-{i}") for i in range(500)]).engine
    assert e.bytes_per_device() <= 256


# ----- restart, reload, replay --------------------------------------------------------
def test_restart_mid_episode_clears_the_same_alarm(tmp_path):
    f = feed()
    f.fix("B-1", T0, *HOME)
    f.fix("P-1", T0 + 1000, *east(2000))
    raised = f.fix("P-1", T0 + 2000, *east(2000))[0]
    f.fix("B-1", T0 + 3000, *HOME)  # run goes on, still open
    f.engine.checkpoint(tmp_path / "s.npz")
    e2 = Engine.restore(tmp_path / "s.npz", f.engine.zones, f.engine.registry, f.engine.config)
    assert [a["alarm_id"] for a in e2.open_alarms()] == [raised["alarm_id"]]
    g = Feed(e2)
    assert g.fix("B-1", T0 + 4000, *east(3000)) == []  # pairs with the restored P-1 fix
    ev = g.fix("B-1", T0 + 5000, *east(1900))
    assert brief(ev) == [("cleared", "separation", "P-1", None, T0 + 5000, False)]
    assert ev[0]["alarm_id"] == raised["alarm_id"]
    # from the checkpoint's bytes too
    data = e2.snapshot()
    from engine.state import checkpoint_bytes
    e3 = Engine.restore_bytes(checkpoint_bytes(data), e2.zones, e2.registry, e2.config)
    assert e3.state.last_fix_ts_ms[:2].tolist() == [T0 + 5000, T0 + 2000]
    assert e3.rel_state.sep.tolist() == e2.rel_state.sep.tolist()


def test_a_checkpoint_without_relations_loads_with_them_fresh(tmp_path):
    f = feed()
    f.fix("B-1", T0, *HOME)
    arrays = {k: v for k, v in f.engine.snapshot().items() if not k.startswith("rel_")}
    path = tmp_path / "old.npz"
    np.savez(path, **arrays)
    e2 = Engine.restore(path, f.engine.zones, f.engine.registry, f.engine.config)
    from engine.relations import SEP_FRESH
    assert e2.rel_state.sep.tolist() == [list(SEP_FRESH)]  # the relations start fresh


def test_reload_keeps_the_episode_of_an_unchanged_pair_and_drops_a_changed_one():
    f = feed({"separation_confirm": 1}, [pair_subject(), pair_subject("S-2", "B-2", "P-2")])
    f.fix("B-1", T0, *HOME)
    f.fix("P-1", T0 + 1000, *east(2000))
    f.fix("B-2", T0, *HOME)
    f.fix("P-2", T0 + 1000, *east(2000))
    assert len(f.engine.open_alarms()) == 2
    changed = [pair_subject(), pair_subject("S-2", "B-2", "P-9")]
    f.engine.swap_registry(load_registry({"subjects": changed}, f.engine.zones), f.engine.zones)
    assert [a["device_id"] for a in f.engine.open_alarms()] == ["P-1"]
    ev = f.fix("B-1", T0 + 2000, *east(1990))
    assert brief(ev) == [("cleared", "separation", "P-1", None, T0 + 2000, False)]


# ----- against the reference on real county boundaries ----------------------------------
def generate(seed: int, n: int = 300) -> tuple[dict, list[dict], int]:
    """Two subjects, each a bracelet and a phone walking together around a point of the
    Wancheng line, until the phone is left behind (it stays, the bracelet walks off) and
    picked up again; the two fix at their own pace, with gaps past the window, late
    fixes, duplicates, GCJ-02 fixes and statuses."""
    rng = random.Random(seed)
    subj = {"subjects": [
        pair_subject("S-A", "B-A", "P-A", exclusion=["victim-1"]),
        {**pair_subject("S-B", "B-B", "P-B"), "level": "ordinary"}]}
    ref = Reference(REF_ZONES, subj)
    walker = {}
    for s in "AB":
        pt = shapely.line_interpolate_point(HOME_LINE, rng.random(), normalized=True)
        walker[s] = [pt.x, pt.y]
    left = {"A": None, "B": None}  # where the phone was left, or None: carried
    last_ts = {f"{k}-{s}": T0 for k in "BP" for s in "AB"}
    records: list[dict] = []
    rx = T0
    while len(records) < n:
        s = rng.choice("AB")
        d = f"{rng.choice('BP')}-{s}"
        rx += rng.choice([1000, 15_000, 60_000, 200_000]) if rng.random() > 0.05 else 400_000
        r = rng.random()
        if r < 0.04:
            ts = last_ts[d]
        elif r < 0.1:
            ts = last_ts[d] - rng.randint(1, 200_000)
        else:
            ts = max(last_ts[d] + 1, rx - rng.randint(0, 3000))
        last_ts[d] = max(last_ts[d], ts)
        if rng.random() < 0.08:
            records.append({"device_id": d, "ts": ts, "rx": rx,
                            "battery": rng.choice([10, 50]), "strap": "ok"})
            continue
        if rng.random() < 0.08:
            left[s] = None if left[s] else list(walker[s])
        step = 150.0 if left[s] else 60.0
        walker[s] = list(offset(*walker[s], rng.gauss(0, step), rng.gauss(0, step)))
        base = left[s] if (d[0] == "P" and left[s]) else walker[s]
        lon, lat = offset(*base, rng.gauss(0, 30), rng.gauss(0, 30))
        acc = rng.choice([5.0, 10.0, 30.0, 80.0, 250.0])
        rec = ref.clear_fix(d, ts, rx, lon, lat, acc, "gcj02" if rng.random() < 0.25 else "wgs84",
                            TOLERANCE_M)
        if rec is not None:
            records.append(rec)
    return subj, records, rx + 1000


def replay_events(cls, subj, records, until, config=None) -> tuple[bytes, list[dict]]:
    config = config or Config()
    engine = cls(ZONES, load_registry(subj, ZONES), config)
    out = io.BytesIO()
    stats = replay((orjson.dumps(r) for r in records), engine, out, config=config,
                   until_ms=until)
    assert stats.rejected_total == 0
    return out.getvalue(), [orjson.loads(x) for x in out.getvalue().splitlines()]


def check_against_reference(seed: int, n: int) -> list[dict]:
    subj, records, until = generate(seed, n)
    _, got = replay_events(Engine, subj, records, until)
    ref = Reference(REF_ZONES, subj)
    assert brief(got) == ref.replay(records, until)
    sep = [e for e in got if e["type"] == "separation"]
    assert len(sep) == len(ref.rel.evidence)
    for e, want in zip(sep, ref.rel.evidence):
        assert abs(e["distance_m"] - want["distance_m"]) <= 0.06
        for key in ("lat", "lon", "peer_lat", "peer_lon"):
            assert e[key] == pytest.approx(want[key], abs=1e-8), key
        assert (e["acc"], e["peer_acc"], e["peer_device_id"]) == (
            want["acc"], want["peer_acc"], want["peer_device_id"])
    check_episodes(got)
    return got


@pytest.mark.parametrize("seed", range(6))
def test_separation_matches_the_reference_on_county_walks(seed):
    got = check_against_reference(seed, 300)
    kinds = {(e["type"], e["event"]) for e in got}
    if seed == 0:  # the scenarios exercise the rule, or agreement would prove nothing
        assert {("separation", "raised"), ("separation", "cleared")} <= kinds


def test_generated_walks_raise_and_clear_separation_on_both_devices():
    seen = set()
    for seed in range(6):
        subj, records, until = generate(seed, 300)
        for ev in Reference(REF_ZONES, subj).replay(records, until):
            if ev[1] == "separation":
                seen.add((ev[0], ev[2][0]))
    assert seen == {("raised", "B"), ("raised", "P"), ("cleared", "B"), ("cleared", "P")}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9), n=st.integers(min_value=2, max_value=200))
def test_separation_matches_the_reference_property(seed, n):
    check_against_reference(seed, n)


def test_the_comparison_is_sensitive_to_the_separation_numbers():
    runs = []
    for seed in range(3):
        subj, records, until = generate(seed, 300)
        runs.append((subj, records, until, brief(replay_events(Engine, subj, records,
                                                               until)[1])))
    for variant in ({"separation_m": 450.0}, {"separation_m": 560.0},
                    {"separation_confirm": 3}, {"separation_window_s": 120.0}):
        assert any(got != Reference(REF_ZONES, subj, relations=variant).replay(records, until)
                   for subj, records, until, got in runs), variant


def test_the_configured_numbers_reach_the_kernel():
    subj, records, until = generate(0, 300)
    rules = {"separation_m": 800.0, "separation_confirm": 3, "separation_window_s": 120.0}
    _, got = replay_events(Engine, subj, records, until, config_from_dict({"rules": rules}))
    ref = Reference(REF_ZONES, subj, relations={k: v for k, v in rules.items()})
    want = ref.replay(records, until)
    # (fixes near these other thresholds were not dropped: compare the separation alone,
    # where a disagreement would be more than a millimetre's)
    assert [e for e in brief(got) if e[1] == "separation"] == [
        e for e in want if e[1] == "separation"]


def test_replay_is_byte_identical_and_the_shapely_core_agrees():
    subj, records, until = generate(3, 300)
    first, got = replay_events(Engine, subj, records, until)
    second, _ = replay_events(Engine, subj, records, until)
    assert first == second
    _, shp = replay_events(ShapelyEngine, subj, records, until)
    assert any(e["type"] == "separation" for e in got)
    assert len(shp) == len(got)
    for g, w in zip(shp, got):
        gd, wd = g.pop("distance_m", None), w.pop("distance_m", None)
        assert (gd is None) == (wd is None) and (gd is None or abs(gd - wd) <= 0.5)
        assert g == w


def test_restart_anywhere_in_a_replay_gives_the_same_events(tmp_path):
    """Split the records at several points; checkpoint, restore, go on: the same events
    as one run, byte for byte (open separations continue with their alarm ids)."""
    subj, records, until = generate(1, 300)
    whole, _ = replay_events(Engine, subj, records, until)
    for cut in (60, 150, 240):
        engine = Engine(ZONES, load_registry(subj, ZONES), Config())
        out = io.BytesIO()
        head = records[:cut]
        replay((orjson.dumps(r) for r in head), engine, out, config=Config(),
               until_ms=head[-1]["rx"])
        engine.checkpoint(tmp_path / "c.npz")
        e2 = Engine.restore(tmp_path / "c.npz", ZONES, load_registry(subj, ZONES), Config())
        replay((orjson.dumps(r) for r in records[cut:]), e2, out, config=Config(),
               until_ms=until)
        assert out.getvalue() == whole, cut
