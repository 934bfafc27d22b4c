"""The device rules of issue 14 (no_fix, power_off, evidence on every device alarm) held
against the plain-Python reference on generated scenarios over real county boundaries:
devices go into foil (statuses, no fix), send power-off statuses and fall silent, send
duplicates and late fixes; the engine runs them straight through, and again restarted
from a checkpoint in the middle (open episodes included). Both sides must give the same
events and the same evidence.
"""

from __future__ import annotations

import io
import math

import numpy as np
import orjson
import pytest
from engine_reference import Reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_vs_reference import REF_ZONES, ZONES, check_episodes, engine_events, generate

from contract import COORD_SYS_CODES, POWER_CODES, STRAP_CODES, RecordBuilder
from emfence.config import Config, config_from_dict
from emfence.replay import replay
from engine import Engine, load_registry
from engine.state import checkpoint_bytes

DEVICE_TYPES = ("offline", "tamper", "low_battery", "no_fix", "power_off")
POSITION = ("lat", "lon", "acc")


def brief(events: list[dict]) -> list[tuple]:
    return [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
            for e in events]


def evidence(event: dict) -> dict:
    """The evidence keys a device alarm carries beyond the common ones."""
    common = ("event", "alarm_id", "type", "subject_id", "device_id", "zone_id", "region",
              "at", "late", "device_kind", "suspended")
    return {k: v for k, v in event.items() if k not in common}


def assert_same_evidence(got: list[dict], want: list) -> None:
    """Device alarms' evidence equal to the reference's (positions to 1e-7 degrees: two
    GCJ-02 inversions), keys in the documented order (position first)."""
    for g, w in zip(got, want, strict=True):
        if g["type"] not in DEVICE_TYPES:
            continue
        ev = evidence(g)
        assert set(ev) == set(w.extra), (g, w.extra)
        keys = list(ev)
        if "lat" in ev:
            assert keys[:3] == list(POSITION), keys
            assert ev["lat"] == pytest.approx(w.extra["lat"], abs=1e-7)
            assert ev["lon"] == pytest.approx(w.extra["lon"], abs=1e-7)
        for k, v in ev.items():
            if k not in ("lat", "lon"):
                assert v == w.extra[k], (k, g, w.extra)


def check_device_rules(seed: int, n: int, walk: bool = False) -> list[dict]:
    subj, records, until = generate(seed, n, walk=walk, device_rules=True)
    got = engine_events(subj, records, until)
    want = Reference(REF_ZONES, subj).replay(records, until)
    assert brief(got) == want
    assert_same_evidence(got, want)
    check_episodes(got)
    return got


@pytest.mark.parametrize("seed", range(6))
def test_device_rules_match_the_reference(seed):
    check_device_rules(seed, 500)


def test_walking_devices_with_device_rules_match_the_reference():
    check_device_rules(1, 600, walk=True)


def test_device_rule_scenarios_cover_every_case():
    """no_fix and power_off raised and cleared, offline held back by a power-off, and
    evidence with and without a position: agreement must mean something."""
    seen = set()
    for seed in range(6):
        subj, records, until = generate(seed, 500, device_rules=True)
        ref = Reference(REF_ZONES, subj)
        events = ref.replay(records, until)
        seen |= {(e[0], e[1]) for e in events}
        seen |= {("position", e[1], "lat" in e.extra) for e in events if e[1] in DEVICE_TYPES}
        plain = Reference(REF_ZONES, subj)
        plain_events = plain.replay([{k: v for k, v in r.items() if k != "power"}
                                     for r in records], until)
        offline = sum(e[1] == "offline" for e in events)
        seen.add(("offline held back", offline < sum(e[1] == "offline" for e in plain_events)))
    for typ in ("no_fix", "power_off", "offline", "tamper", "low_battery"):
        assert ("raised", typ) in seen and ("cleared", typ) in seen, (typ, seen)
    assert ("offline held back", True) in seen
    assert ("position", "offline", True) in seen and ("position", "no_fix", True) in seen
    assert ("position", "tamper", True) in seen and ("position", "power_off", True) in seen


def test_the_device_rule_comparison_is_sensitive():
    """A reference with other no_fix thresholds, or that ignores power, disagrees."""
    variants = ({"no_fix_s": {"strict": 600, "ordinary": 1800, "lenient": 3600}},
                {"no_fix_s": {"strict": 1200, "ordinary": 1800, "lenient": 3600}},
                {"no_fix_s": {"strict": 900, "ordinary": 1500, "lenient": 3600}},
                "unpowered")
    differs = dict.fromkeys(range(len(variants)), False)
    for seed in range(4):
        subj, records, until = generate(seed, 500, device_rules=True)
        got = brief(engine_events(subj, records, until))
        assert got == Reference(REF_ZONES, subj).replay(records, until)
        for k, variant in enumerate(variants):
            if variant == "unpowered":
                plain = [{f: v for f, v in r.items() if f != "power"} for r in records]
                other = Reference(REF_ZONES, subj).replay(plain, until)
            else:
                other = Reference(REF_ZONES, subj, **variant).replay(records, until)
            differs[k] = differs[k] or got != other
    assert all(differs.values()), differs


def test_configured_no_fix_thresholds_reach_the_kernel():
    subj, records, until = generate(2, 500, device_rules=True)
    no_fix_s = {"strict": 300, "ordinary": 600, "lenient": 900}
    config = config_from_dict({"rules": {"no_fix_after_s": no_fix_s}})
    engine = Engine(ZONES, load_registry(subj, ZONES), config)
    out = io.BytesIO()
    replay((orjson.dumps(r) for r in records), engine, out, config=config, until_ms=until)
    got = [orjson.loads(x) for x in out.getvalue().splitlines()]
    want = Reference(REF_ZONES, subj, no_fix_s=no_fix_s).replay(records, until)
    assert brief(got) == want
    assert brief(got) != Reference(REF_ZONES, subj).replay(records, until)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9), n=st.integers(min_value=1, max_value=300))
def test_device_rules_match_the_reference_property(seed, n):
    check_device_rules(seed, n)


# ----- restart from a checkpoint in the middle -------------------------------------------

def batch_of(engine: Engine, records: list[dict]):
    """Replay records (dicts) as a RecordBatch for ``engine``'s registry."""
    b = RecordBuilder()
    for r in records:
        d = engine.registry.device_index(r["device_id"])
        rx = r.get("rx", r["ts"])
        if "lat" in r:
            b.add_fix(d, r["ts"], rx, r["lat"], r["lon"], r.get("acc", 50.0),
                      COORD_SYS_CODES[r.get("coord_sys", "wgs84")])
        else:
            battery = r.get("battery")
            b.add_status(d, r["ts"], rx, math.nan if battery is None else battery,
                         STRAP_CODES.get(r.get("strap"), -1), POWER_CODES.get(r.get("power"), -1))
    return b.take()


def run_with_restart(subj: dict, records: list[dict], until: int, cut: int, tmp_path,
                     *, as_bytes: bool) -> tuple[list[dict], list[dict]]:
    """The records through one engine up to ``cut``, a checkpoint, a new engine restored
    from it for the rest and the final sweep; returns (events, open alarms at the cut)."""
    first = Engine(ZONES, load_registry(subj, ZONES), Config())
    clock = records[0].get("rx", records[0]["ts"])
    events, clock = first.process(batch_of(first, records[:cut]), clock_now_ms=clock)
    open_at_cut = first.open_alarms()
    if as_bytes:
        second = Engine.restore_bytes(checkpoint_bytes(first.snapshot()), ZONES,
                                      load_registry(subj, ZONES), Config())
    else:
        first.checkpoint(tmp_path / "state.npz")
        second = Engine.restore(tmp_path / "state.npz", ZONES, load_registry(subj, ZONES),
                                Config())
    more, clock = second.process(batch_of(second, records[cut:]), clock_now_ms=clock)
    return events + more + second.sweep(until), open_at_cut


@pytest.mark.parametrize("seed", range(4))
def test_restart_from_a_checkpoint_mid_episode_matches_the_reference(seed, tmp_path):
    subj, records, until = generate(seed, 500, device_rules=True)
    want = Reference(REF_ZONES, subj).replay(records, until)
    # Cut where a no_fix or power_off episode is open, so the restart carries one.
    ref = Reference(REF_ZONES, subj)
    cut = None
    now = None
    for i, r in enumerate(records):
        rx = r.get("rx", r["ts"])
        if now is not None and rx > now:
            ref.sweep(rx)
        now = rx if now is None else max(now, rx)
        if "lat" in r:
            ref.fix(r["device_id"], r["ts"], rx, r["lat"], r["lon"], r.get("acc", 50.0),
                    r.get("coord_sys", "wgs84"))
        else:
            ref.status(r["device_id"], r["ts"], rx, r.get("battery"), r.get("strap"),
                       r.get("power"))
        if i > 50 and any(d.no_fix is not None for d in ref.devices.values()) and \
                any(d.power_off is not None or d.no_fix_from is not None
                    for d in ref.devices.values()):
            cut = i + 1
            break
    assert cut is not None, "no point with an open no_fix to restart at"
    got, open_at_cut = run_with_restart(subj, records, until, cut, tmp_path,
                                        as_bytes=seed % 2 == 1)
    assert "no_fix" in {a["type"] for a in open_at_cut}
    assert brief(got) == want
    assert_same_evidence(got, want)
    check_episodes(got)


def test_a_checkpoint_from_before_the_device_rules_still_restores(tmp_path):
    """A checkpoint written before issue 14 (no device-rule arrays) restores with fresh
    device-rule state; offline still works."""
    subj, records, until = generate(0, 200, device_rules=True)
    engine = Engine(ZONES, load_registry(subj, ZONES), Config())
    engine.process(batch_of(engine, records), clock_now_ms=records[0]["rx"])
    arrays = engine.snapshot()
    for f in ("device_ms", "last_pos", "no_fix_deadline_ms"):
        del arrays[f]
    path = tmp_path / "old.npz"
    np.savez(path, **arrays)
    restored = Engine.restore(path, ZONES, load_registry(subj, ZONES), Config())
    assert (restored.state.device_ms == np.iinfo(np.int64).min).all()
    assert np.isnan(restored.state.last_pos).all()
    assert (restored.state.last_rx_ms == engine.state.last_rx_ms).all()
    late = restored.sweep(until + 10**8)
    assert {e["type"] for e in late} <= {"offline"} and late


# ----- short random message sequences against tight thresholds ---------------------------

STEP = st.tuples(
    st.sampled_from([0, 1, 500, 5_000, 29_999, 30_000, 30_001, 60_000, 200_000]),  # rx gap
    st.sampled_from(["fix", "status", "status_off", "status_on"]),
    st.sampled_from(["new", "new", "new", "duplicate", "late"]),
)


def _sequence(steps, t0: int) -> list[dict]:
    """Records of devices D-1 and D-2 (alternating by step parity) from hypothesis steps:
    receive gaps around the thresholds, fixes, statuses, power off/on, duplicates and
    late messages."""
    home = REF_ZONES["411302"].geometry.representative_point()
    out, rx, last = [], t0, {}
    for k, (gap, kind, when) in enumerate(steps):
        dev = "D-1" if k % 3 else "D-2"
        rx += gap
        newest = last.get(dev, t0 - 1)
        ts = {"new": max(newest + 1, rx - 100), "duplicate": newest,
              "late": newest - 1_000}[when]
        last[dev] = max(newest, ts)
        if kind == "fix":
            out.append({"device_id": dev, "ts": ts, "rx": rx, "lat": home.y + 1e-5 * k,
                        "lon": home.x, "acc": 10.0 + k})
        else:
            rec = {"device_id": dev, "ts": ts, "rx": rx}
            if kind != "status":
                rec["power"] = kind.removeprefix("status_")
            out.append(rec)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=40),
       offline_s=st.sampled_from([30, 60, 90]), no_fix_s=st.sampled_from([20, 30, 60, 120]))
def test_device_rules_on_tight_thresholds_match_the_reference(steps, offline_s, no_fix_s):
    """Thresholds near the receive gaps (ties included: a gap equal to a threshold is not
    past it), both devices strict; no zones, so only the device rules speak."""
    from engine_helpers import T0

    subj = {"subjects": [{"subject_id": "S-1", "region": "411302", "level": "strict",
                          "devices": [{"device_id": "D-1"}, {"device_id": "D-2"}]}]}
    records = _sequence(steps, T0)
    until = records[-1]["rx"] + 500_000
    config = config_from_dict({"rules": {"offline_after_s": offline_s,
                                         "no_fix_after_s": no_fix_s}})
    engine = Engine(ZONES, load_registry(subj, ZONES), config)
    out = io.BytesIO()
    replay((orjson.dumps(r) for r in records), engine, out, config=config, until_ms=until)
    got = [orjson.loads(x) for x in out.getvalue().splitlines()]
    levels = {"strict": offline_s, "ordinary": offline_s, "lenient": offline_s}
    ref = Reference(REF_ZONES, subj, offline_s=levels,
                    no_fix_s=dict.fromkeys(levels, no_fix_s))
    want = ref.replay(records, until)
    assert brief(got) == want
    assert_same_evidence(got, want)
    check_episodes(got)
