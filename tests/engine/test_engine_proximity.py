"""The proximity rule (victim protection, issue #14 rule 5, docs/rules.md "Proximity"):
a subject's fix near a protected person's newest fix; the kernel held against the plain
reference on generated walks over real county boundaries, its numbers, privacy, late
fixes, restarts, replay, and the subjects file's ``protected`` list."""

from __future__ import annotations

import io
import random
import re

import orjson
import pytest
import shapely
from engine_helpers import T0, Feed, brief, compiled, county_feature, offset
from engine_reference import Reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relation_checks import comparison_is_sensitive, numbers_reach_the_kernel
from test_engine_separation import replay_events
from test_engine_vs_reference import HOME_LINE, REF_ZONES, TOLERANCE_M, ZONES, check_episodes

from emfence.config import Config, config_from_dict
from emfence.replay import replay
from engine import Engine, load_registry
from engine.registry import RegistryError
from ingest.passwords import devices_of_subjects

HOME = (112.53, 33.0)  # inside Wancheng (411302)


def doc(**protected) -> dict:
    return {"subjects": [
        {"subject_id": "S-1", "region": "411302", "level": "strict",
         "devices": [{"device_id": "B-1"}, {"device_id": "P-1", "kind": "phone"}],
         "inclusion": ["411302"]},
        {"subject_id": "S-2", "region": "411302", "level": "strict",
         "devices": [{"device_id": "B-2"}], "inclusion": ["411302"]}],
        "protected": [{"person_id": "V-1", "region": "411302",
                       "devices": [{"device_id": "V-1a", "kind": "victim"},
                                   {"device_id": "V-1b", "kind": "victim"}],
                       "protected_from": ["S-1"], **protected}]}


def feed(rules: dict | None = None, subjects: dict | None = None) -> Feed:
    zones = compiled([county_feature("411302")])
    config = config_from_dict({"rules": rules}) if rules else Config()
    return Feed(Engine(zones, load_registry(subjects or doc(), zones), config))


def east(m: float) -> tuple[float, float]:
    return offset(*HOME, m, 0.0)


# ----- the rule's numbers -------------------------------------------------------------
def test_raised_within_proximity_m_counting_both_accuracies_cleared_beyond_the_buffer():
    f = feed()
    f.fix("V-1a", T0, *HOME, acc=10.0)
    assert f.fix("B-1", T0 + 1000, *east(1021), acc=10.0) == []  # 1001 m at the closest
    ev = f.fix("B-1", T0 + 2000, *east(1019), acc=10.0)  # 999 m: raised
    assert brief(ev) == [("raised", "proximity", "B-1", None, T0 + 2000, False)]
    e = ev[0]
    assert e["distance_m"] == pytest.approx(1019.0, abs=0.1) and e["person_id"] == "V-1"
    assert (e["lon"], e["lat"], e["acc"]) == (*east(1019), 10.0)  # the subject's fix
    assert [a["alarm_id"] for a in f.engine.open_alarms()] == [e["alarm_id"]]
    assert f.fix("B-1", T0 + 3000, *east(1069), acc=10.0) == []  # 1049: within the buffer
    ev = f.fix("B-1", T0 + 4000, *east(1071), acc=10.0)  # 1051 > 1000 + 50: cleared
    assert brief(ev) == [("cleared", "proximity", "B-1", None, T0 + 4000, False)]
    assert ev[0]["alarm_id"] == e["alarm_id"]


def test_the_event_never_shows_the_protected_persons_position():
    f = feed()
    f.fix("V-1a", T0, *HOME)
    [e] = f.fix("P-1", T0 + 1000, *east(300))
    assert set(e) == {"event", "alarm_id", "type", "subject_id", "device_id", "zone_id",
                      "region", "at", "late", "lat", "lon", "distance_m", "acc", "person_id",
                      "device_kind"}
    assert HOME[0] not in e.values() and HOME[1] not in e.values()


def test_each_device_of_the_subject_has_its_own_episode_and_others_none():
    f = feed()
    f.fix("V-1a", T0, *HOME)
    assert [e["device_id"] for e in f.fix("B-1", T0 + 1000, *east(100))] == ["B-1"]
    assert [e["device_id"] for e in f.fix("P-1", T0 + 1000, *east(100))] == ["P-1"]
    assert f.fix("B-2", T0 + 1000, *east(10)) == []  # V-1 is not protected from S-2
    assert sorted(a["device_id"] for a in f.engine.open_alarms()) == ["B-1", "P-1"]


def test_only_a_fresh_fix_of_the_person_counts_and_the_newest_of_their_devices():
    f = feed({"proximity_fresh_s": 60})
    f.fix("V-1a", T0, *HOME)
    assert f.fix("B-1", T0 + 61_000, *east(10)) == []  # the person's fix is 61 s old
    f.fix("V-1b", T0 + 50_000, *east(5000))  # the person's other device, newer: far away
    assert f.fix("B-1", T0 + 100_000, *east(10)) == []
    f.fix("V-1a", T0 + 120_000, *east(100))  # newest again, near
    assert [e["event"] for e in f.fix("B-1", T0 + 121_000, *east(10))] == ["raised"]
    # a fix of the person newer than the subject's is fresh too
    f2 = feed()
    f2.fix("V-1a", T0 + 500_000, *HOME)
    assert [e["event"] for e in f2.fix("B-1", T0, *east(10))] == ["raised"]


def test_the_persons_moves_alone_decide_nothing_and_their_device_raises_nothing():
    f = feed()
    f.fix("B-1", T0, *east(10))
    assert f.fix("V-1a", T0 + 1000, *HOME) == []  # only a subject's fix decides
    assert f.status("V-1a", T0 + 2000, battery=3, strap="open") == []
    assert brief(f.sweep(T0 + 10**9)) == [("raised", "offline", "B-1", None, T0 + 600_000,
                                           False)]  # the person's device is never offline
    assert [a["device_id"] for a in f.engine.open_alarms()] == ["B-1"]


def test_late_fixes_never_touch_proximity():
    f = feed()
    f.fix("V-1a", T0 + 10_000, *HOME)
    f.fix("B-1", T0 + 20_000, *east(5000))
    assert f.fix("B-1", T0 + 15_000, *east(10)) == []  # late, near: ignored
    f.fix("V-1a", T0 + 5000, *east(4990))  # late fix of the person: not their newest
    assert [e["event"] for e in f.fix("B-1", T0 + 30_000, *east(900))] == ["raised"]


# ----- the subjects file ----------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"protected_from": ["S-9"]}, "unknown subject 'S-9'"),
    ({"protected_from": []}, "protected_from must be a non-empty list"),
    ({"person_id": "S-1"}, "also a subject id"),
    ({"devices": [{"device_id": "B-2", "kind": "victim"}]}, "also listed by 'S-2'"),
    ({"devices": [{"device_id": "V-9", "kind": "phone"}]}, "of kind 'victim'"),
    ({"region": "no good"}, "protected[0].region"),
])
def test_a_bad_protected_entry_is_named(change, message):
    zones = compiled([county_feature("411302")])
    with pytest.raises(RegistryError, match="protected"):
        load_registry(doc(**change), zones)
    with pytest.raises(RegistryError, match=re.escape(message)):
        load_registry(doc(**change), zones)


def test_a_subjects_own_device_may_not_be_a_victim_device():
    bad = doc()
    bad["subjects"][1]["devices"] = [{"device_id": "B-2", "kind": "victim"}]
    with pytest.raises(RegistryError, match="subject 'S-2'.*kind 'victim' is for a protected"):
        load_registry(bad, compiled([county_feature("411302")]))


def test_victim_devices_are_registered_after_the_subjects_and_get_broker_accounts():
    reg = load_registry(doc(), compiled([county_feature("411302")]))
    assert reg.device_ids == ["B-1", "P-1", "B-2", "V-1a", "V-1b"]
    assert reg.subject_ids == ["S-1", "S-2"] and reg.n_subject_devices == 3
    assert reg.device_region(3) == "411302" and reg.device_level(3) == "protected"
    assert ("V-1a", "411302", "V-1") in devices_of_subjects(doc())


# ----- against the reference on real county boundaries ----------------------------------
def subjects_doc() -> dict:
    return {"subjects": [
        {"subject_id": "S-A", "region": "411302", "level": "strict",
         "devices": [{"device_id": "B-A"}, {"device_id": "P-A", "kind": "phone"}],
         "inclusion": ["411302"], "exclusion": ["victim-1"]},
        {"subject_id": "S-B", "region": "411302", "level": "ordinary",
         "devices": [{"device_id": "B-B"}], "inclusion": ["411302"]}],
        "protected": [
            {"person_id": "V-1", "region": "411302",
             "devices": [{"device_id": "V-1a", "kind": "victim"}],
             "protected_from": ["S-A", "S-B"]},
            {"person_id": "V-2", "region": "411302",
             "devices": [{"device_id": "V-2a", "kind": "victim"},
                         {"device_id": "V-2b", "kind": "victim"}],
             "protected_from": ["S-A"]}]}


def generate(seed: int, n: int = 300) -> tuple[dict, list[dict], int]:
    """Subjects and protected persons walking near one point of the Wancheng line; the
    subjects now and then head for a person (converging within a few hundred metres) and
    away again; gaps past the freshness, late fixes, duplicates, GCJ-02 and statuses."""
    rng = random.Random(seed)
    subj = subjects_doc()
    ref = Reference(REF_ZONES, subj)
    centre = shapely.line_interpolate_point(HOME_LINE, rng.random(), normalized=True)
    walkers = {k: list(offset(centre.x, centre.y, rng.gauss(0, 1500), rng.gauss(0, 1500)))
               for k in ("A", "B", "V-1", "V-2")}
    dev_walker = {"B-A": "A", "P-A": "A", "B-B": "B", "V-1a": "V-1", "V-2a": "V-2",
                  "V-2b": "V-2"}
    target = {"A": None, "B": None}
    last_ts = dict.fromkeys(dev_walker, T0)
    records: list[dict] = []
    rx = T0
    while len(records) < n:
        d = rng.choice(list(dev_walker))
        w = dev_walker[d]
        rx += rng.choice([1000, 15_000, 60_000]) if rng.random() > 0.05 else 400_000
        r = rng.random()
        ts = (last_ts[d] if r < 0.04 else last_ts[d] - rng.randint(1, 200_000) if r < 0.1
              else max(last_ts[d] + 1, rx - rng.randint(0, 3000)))
        last_ts[d] = max(last_ts[d], ts)
        if rng.random() < 0.08:
            records.append({"device_id": d, "ts": ts, "rx": rx, "battery": 10, "strap": "open"})
            continue
        if w in target and rng.random() < 0.1:
            target[w] = rng.choice([None, "V-1", "V-2"])
        x, y = walkers[w]
        if target.get(w):
            tx, ty = walkers[target[w]]
            x, y = x + (tx - x) * 0.3, y + (ty - y) * 0.3  # a third of the way there
        walkers[w] = list(offset(x, y, rng.gauss(0, 120), rng.gauss(0, 120)))
        acc = rng.choice([5.0, 10.0, 30.0, 80.0, 250.0])
        rec = ref.clear_fix(d, ts, rx, *walkers[w], acc,
                            "gcj02" if rng.random() < 0.25 else "wgs84", TOLERANCE_M)
        if rec is not None:
            records.append(rec)
    return subj, records, rx + 1000


def check_against_reference(seed: int, n: int, rules: dict | None = None) -> list[dict]:
    subj, records, until = generate(seed, n)
    config = config_from_dict({"rules": rules}) if rules else Config()
    _, got = replay_events(Engine, subj, records, until, config)
    ref = Reference(REF_ZONES, subj, relations=rules)
    assert brief(got) == ref.replay(records, until)
    rel = [e for e in got if e["type"] in ("proximity", "separation")]
    assert len(rel) == len(ref.rel.evidence)
    for e, want in zip(rel, ref.rel.evidence):
        assert abs(e["distance_m"] - want["distance_m"]) <= 0.06
        assert (e["lat"], e["lon"]) == pytest.approx((want["lat"], want["lon"]), abs=1e-8)
        assert e["acc"] == want["acc"]
        if e["type"] == "proximity":
            assert e["person_id"] == want["person_id"]
    assert not [e for e in got if e["device_id"].startswith("V-")]
    check_episodes([e for e in got if e["type"] != "proximity"])
    for person in ("V-1", "V-2"):  # one episode per (device, person)
        check_episodes([e for e in got if e.get("person_id") == person])
    return got


@pytest.mark.parametrize("seed", range(6))
def test_proximity_matches_the_reference_on_county_walks(seed):
    check_against_reference(seed, 300)


def test_generated_walks_raise_and_clear_proximity_for_both_persons():
    seen = set()
    for seed in range(6):
        subj, records, until = generate(seed, 300)
        ref = Reference(REF_ZONES, subj)
        for ev, e in zip([x for x in ref.replay(records, until) if x[1] == "proximity"],
                         [x for x in ref.rel.evidence if "person_id" in x], strict=True):
            seen.add((ev[0], e["person_id"]))
    assert seen == {(k, p) for k in ("raised", "cleared") for p in ("V-1", "V-2")}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9), n=st.integers(min_value=2, max_value=200))
def test_proximity_matches_the_reference_property(seed, n):
    check_against_reference(seed, n)


def test_the_comparison_is_sensitive_to_the_proximity_numbers():
    comparison_is_sensitive(generate, 300, [{"proximity_m": 900.0}, {"proximity_fresh_s": 100.0},
                                            {"buffer_m": 150.0}])


def test_the_configured_numbers_reach_the_kernel():
    numbers_reach_the_kernel(generate, 2, 300,
                             {"proximity_m": 700.0, "proximity_fresh_s": 120.0}, "proximity")


def test_replay_is_byte_identical_and_restarts_anywhere_change_nothing(tmp_path):
    subj, records, until = generate(4, 300)
    whole, got = replay_events(Engine, subj, records, until)
    assert replay_events(Engine, subj, records, until)[0] == whole
    assert any(e["type"] == "proximity" for e in got)
    for cut in (70, 160, 250):
        engine = Engine(ZONES, load_registry(subj, ZONES), Config())
        out = io.BytesIO()
        replay((orjson.dumps(r) for r in records[:cut]), engine, out, config=Config(),
               until_ms=records[cut - 1]["rx"])
        engine.checkpoint(tmp_path / "c.npz")
        e2 = Engine.restore(tmp_path / "c.npz", ZONES, load_registry(subj, ZONES), Config())
        replay((orjson.dumps(r) for r in records[cut:]), e2, out, config=Config(),
               until_ms=until)
        assert out.getvalue() == whole, cut


def test_lifting_a_protection_drops_its_episodes_and_keeps_the_others():
    f = feed(subjects=doc(protected_from=["S-1", "S-2"]))
    f.fix("V-1a", T0, *HOME)
    f.fix("B-1", T0 + 1000, *east(100))
    f.fix("B-2", T0 + 1000, *east(100))
    assert sorted(a["device_id"] for a in f.engine.open_alarms()) == ["B-1", "B-2"]
    f.engine.swap_registry(load_registry(doc(), f.engine.zones), f.engine.zones)
    assert [a["device_id"] for a in f.engine.open_alarms()] == ["B-1"]
    assert [e["event"] for e in f.fix("B-1", T0 + 2000, *east(3000))] == ["cleared"]
