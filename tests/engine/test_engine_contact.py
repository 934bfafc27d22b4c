"""The contact rule (prohibited contact between co-defendants, issue #14 rule 6,
docs/rules.md "Contact"): two listed subjects close for long enough; the kernel held
against the plain reference on generated walks over real county boundaries, its
numbers, evidence, late fixes, restarts and replay."""

from __future__ import annotations

import io
import random

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

HOME = (112.53, 33.0)  # inside Wancheng (411302)


def subject(sid, *devices, **extra) -> dict:
    return {"subject_id": sid, "region": "411302", "level": "strict",
            "devices": [{"device_id": d, "kind": "phone" if d.startswith("P") else "bracelet"}
                        for d in devices], "inclusion": ["411302"], **extra}


def feed(rules: dict | None = None) -> Feed:
    # S-2 lists S-1: the alarm is on S-1 (the smaller id), whichever side lists
    subjects = {"subjects": [subject("S-2", "B-2", contacts=["S-1"]),
                             subject("S-1", "B-1", "P-1"), subject("S-3", "B-3")]}
    zones = compiled([county_feature("411302")])
    config = config_from_dict({"rules": rules}) if rules else Config()
    return Feed(Engine(zones, load_registry(subjects, zones), config))


def east(m: float) -> tuple[float, float]:
    return offset(*HOME, m, 0.0)


# ----- the rule's numbers -------------------------------------------------------------
def test_raised_when_contact_min_s_is_reached_on_the_first_subject():
    f = feed()
    f.fix("B-1", T0, *HOME)
    f.fix("B-2", T0 + 60_000, *east(150))  # close from +60 s
    f.fix("B-1", T0 + 300_000, *HOME)
    f.fix("B-2", T0 + 500_000, *east(190))
    ev = f.fix("B-1", T0 + 700_000, *east(20))  # 640 s since the start: raised at +660 s
    assert brief(ev) == [("raised", "contact", "B-1", None, T0 + 660_000, False)]
    e = ev[0]
    assert (e["subject_id"], e["peer_subject_id"], e["peer_device_id"]) == ("S-1", "S-2", "B-2")
    assert e["distance_m"] == pytest.approx(170.0, abs=0.1)
    assert "lat" not in e and "lon" not in e
    assert [a["alarm_id"] for a in f.engine.open_alarms()] == [e["alarm_id"]]
    assert f.fix("B-2", T0 + 800_000, *east(260)) == []  # 240 m: within the buffer, open
    ev = f.fix("B-2", T0 + 900_000, *east(270))  # 250 m > 200 + 50: cleared on B-1
    assert brief(ev) == [("cleared", "contact", "B-1", None, T0 + 900_000, False)]
    assert ev[0]["alarm_id"] == e["alarm_id"] and ev[0]["peer_device_id"] == "B-2"


def test_the_nearest_fresh_device_counts_and_a_break_restarts_the_clock():
    f = feed({"contact_min_s": 100})
    f.fix("B-2", T0, *east(150))
    f.fix("P-1", T0 + 10_000, *east(5000))  # far, but B-1 may be near: nearest counts
    f.fix("B-1", T0 + 20_000, *HOME)  # close: the run starts at +20 s
    f.fix("B-2", T0 + 60_000, *east(230))  # in the buffer band, none open: run broken
    f.fix("B-2", T0 + 100_000, *east(150))  # close again: run starts at +100 s
    assert f.fix("B-2", T0 + 190_000, *east(150)) == []  # 90 s
    ev = f.fix("B-2", T0 + 200_000, *east(150))
    assert brief(ev) == [("raised", "contact", "B-1", None, T0 + 200_000, False)]
    assert ev[0]["peer_device_id"] == "B-2"


def test_only_fixes_within_the_separation_window_of_each_other_are_compared():
    f = feed({"contact_min_s": 1, "separation_window_s": 60})
    f.fix("B-1", T0, *HOME)
    assert f.fix("B-2", T0 + 61_000, *east(10)) == []  # B-1's fix is too old
    assert f.fix("B-2", T0 + 62_000, *east(10)) == []
    assert f.fix("B-1", T0 + 63_000, *HOME) == []  # a close pair: the run starts at +63 s
    ev = f.fix("B-2", T0 + 64_500, *east(10))
    assert brief(ev) == [("raised", "contact", "B-1", None, T0 + 64_000, False)]


def test_unlisted_subjects_and_late_fixes_never_touch_contact():
    f = feed({"contact_min_s": 1})
    f.fix("B-3", T0, *HOME)
    assert f.fix("B-1", T0 + 1000, *HOME) == []  # S-3 is nobody's contact
    f.fix("B-2", T0 + 10_000, *east(5000))
    assert f.fix("B-2", T0 + 5000, *HOME) == []  # late: ignored
    assert f.fix("B-1", T0 + 11_000, *east(10)) == []  # B-2's newest is still far
    assert f.engine.open_alarms() == []


def test_contacts_naming_an_unknown_subject_or_itself_are_refused():
    zones = compiled([county_feature("411302")])
    for contacts, what in ((["S-9"], "lists unknown subject 'S-9'"), (["S-1"], "lists itself"),
                           ("S-2", "must be a list of subject ids")):
        with pytest.raises(RegistryError, match=f"subject 'S-1'.*'contacts' {what}"):
            load_registry({"subjects": [subject("S-1", "B-1", contacts=contacts)]}, zones)


# ----- against the reference on real county boundaries ----------------------------------
def generate(seed: int, n: int = 300) -> tuple[dict, list[dict], int]:
    """Three co-defendants (S-A lists S-B, S-C lists S-A) walking near one point of the
    Wancheng line; now and then one heads for another, they stay together a while, and
    part; gaps, late fixes, duplicates, GCJ-02 and statuses."""
    rng = random.Random(seed)
    subj = {"subjects": [
        subject("S-A", "B-A", "P-A", contacts=["S-B"], exclusion=["victim-1"]),
        subject("S-B", "B-B"), subject("S-C", "B-C", contacts=["S-A"])]}
    ref = Reference(REF_ZONES, subj)
    centre = shapely.line_interpolate_point(HOME_LINE, rng.random(), normalized=True)
    walkers = {k: list(offset(centre.x, centre.y, rng.gauss(0, 800), rng.gauss(0, 800)))
               for k in "ABC"}
    target = dict.fromkeys("ABC")
    last_ts = dict.fromkeys(("B-A", "P-A", "B-B", "B-C"), T0)
    records: list[dict] = []
    rx = T0
    while len(records) < n:
        d = rng.choice(list(last_ts))
        w = d[-1]
        rx += rng.choice([1000, 15_000, 40_000]) if rng.random() > 0.04 else 400_000
        r = rng.random()
        ts = (last_ts[d] if r < 0.04 else last_ts[d] - rng.randint(1, 200_000) if r < 0.1
              else max(last_ts[d] + 1, rx - rng.randint(0, 3000)))
        last_ts[d] = max(last_ts[d], ts)
        if rng.random() < 0.06:
            records.append({"device_id": d, "ts": ts, "rx": rx, "battery": 60})
            continue
        if rng.random() < 0.05:
            target[w] = rng.choice([None, None, *[k for k in "ABC" if k != w]])
        x, y = walkers[w]
        if target[w]:
            tx, ty = walkers[target[w]]
            x, y = x + (tx - x) * 0.5, y + (ty - y) * 0.5
        walkers[w] = list(offset(x, y, rng.gauss(0, 40), rng.gauss(0, 40)))
        acc = rng.choice([5.0, 10.0, 30.0, 80.0])
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
    rel = [e for e in got if e["type"] in ("contact", "separation")]
    assert len(rel) == len(ref.rel.evidence)
    for e, want in zip(rel, ref.rel.evidence):
        assert abs(e["distance_m"] - want["distance_m"]) <= 0.06
        if e["type"] == "contact":
            assert (e["peer_subject_id"], e["peer_device_id"]) == (
                want["peer_subject_id"], want["peer_device_id"])
            assert e["subject_id"] < e["peer_subject_id"]
    check_episodes([e for e in got if e["type"] != "contact"])
    for peer in ("S-B", "S-C"):  # one episode per pair
        check_episodes([e for e in got if e.get("peer_subject_id") == peer])
    return got


@pytest.mark.parametrize("seed", range(6))
def test_contact_matches_the_reference_on_county_walks(seed):
    check_against_reference(seed, 400)


def test_generated_walks_raise_and_clear_contact_for_both_pairs():
    seen = set()
    for seed in range(6):
        subj, records, until = generate(seed, 400)
        ref = Reference(REF_ZONES, subj)
        events = [x for x in ref.replay(records, until) if x[1] == "contact"]
        peers = [x["peer_subject_id"] for x in ref.rel.evidence if "peer_subject_id" in x]
        seen |= {(ev[0], peer) for ev, peer in zip(events, peers, strict=True)}
    assert seen == {(k, p) for k in ("raised", "cleared") for p in ("S-B", "S-C")}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9), n=st.integers(min_value=2, max_value=250))
def test_contact_matches_the_reference_property(seed, n):
    check_against_reference(seed, n)


def test_the_comparison_is_sensitive_to_the_contact_numbers():
    comparison_is_sensitive(generate, 400, [{"contact_m": 150.0}, {"contact_min_s": 300.0},
                                            {"buffer_m": 150.0}])


def test_the_configured_numbers_reach_the_kernel():
    numbers_reach_the_kernel(generate, 1, 400, {"contact_m": 300.0, "contact_min_s": 300.0},
                             "contact")


def test_replay_is_byte_identical_and_restarts_anywhere_change_nothing(tmp_path):
    subj, records, until = generate(2, 400)
    whole, got = replay_events(Engine, subj, records, until)
    assert replay_events(Engine, subj, records, until)[0] == whole
    assert any(e["type"] == "contact" for e in got)
    for cut in (90, 200, 310):
        engine = Engine(ZONES, load_registry(subj, ZONES), Config())
        out = io.BytesIO()
        replay((orjson.dumps(r) for r in records[:cut]), engine, out, config=Config(),
               until_ms=records[cut - 1]["rx"])
        engine.checkpoint(tmp_path / "c.npz")
        e2 = Engine.restore(tmp_path / "c.npz", ZONES, load_registry(subj, ZONES), Config())
        replay((orjson.dumps(r) for r in records[cut:]), e2, out, config=Config(),
               until_ms=until)
        assert out.getvalue() == whole, cut


def test_the_relation_state_keeps_the_engine_within_256_bytes_per_device():
    """The issue's mix: 20 % of subjects with a bracelet and a phone, a protected person
    for 5 %, listed contacts for 2 %; relation state only where there are relations."""
    n = 1000
    subjects = [subject(f"S-{i}", f"B-{i}", *([f"P-{i}"] if i % 5 == 0 else []),
                        contacts=[f"S-{i + 1}"] if i % 50 == 0 else [])
                for i in range(n)]
    protected = [{"person_id": f"V-{i}", "region": "411302",
                  "devices": [{"device_id": f"V-{i}a", "kind": "victim"}],
                  "protected_from": [f"S-{i}"]} for i in range(0, n, 20)]
    zones = compiled([county_feature("411302")])
    e = Engine(zones, load_registry({"subjects": subjects, "protected": protected}, zones))
    # slots: 200 pairs (400 devices), 50 victim devices, and of the 20 contact pairs'
    # subjects the 20 not already slotted (S-(50k+1) has no phone)
    assert len(e.relations.rel_dev) == 400 + 50 + 20
    plain = Engine(zones, load_registry({"subjects": [subject(f"S-{i}", f"B-{i}")
                                                      for i in range(n)]}, zones))
    assert e.bytes_per_device() <= 256
    # what the relations add over a fleet without any: the 4-byte slot index and the
    # side tables, a few tens of bytes per device on this mix
    assert e.bytes_per_device() - plain.bytes_per_device() < 40
