"""Issue 14, rules 4 and 7 held against the plain reference on real county boundaries
(the scenarios of test_engine_vs_reference: Nanyang's districts, exclusion circles on
the county line, late fixes, duplicates, GCJ-02 fixes, receive-time gaps), with the
approach warning, the inclusion-border warning and both ``alarm_per`` settings; and a
restart from a checkpoint anywhere in a scenario gives the same bytes as no restart.
"""

from __future__ import annotations

import io

import orjson
import pytest
from engine_reference import Reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_vs_reference import REF_ZONES, ZONES, check_episodes, generate

from emfence.config import config_from_dict
from emfence.replay import replay
from engine import Engine, load_registry
from engine.state import checkpoint_bytes

# (engine [rules], reference keyword arguments) of each variant.
VARIANTS = {
    "defaults": ({}, {}),
    "border": ({"border_warn_m": 400.0}, {"border_warn_m": 400.0}),
    "device": ({"alarm_per": "device", "border_warn_m": 250.0},
               {"alarm_per": "device", "border_warn_m": 250.0}),
    "near": ({"approach_m": 600.0, "border_warn_m": 150.0},
             {"approach_m": 600.0, "border_warn_m": 150.0}),
}


def scenario(seed: int, n: int, variant: str, walk: bool = False):
    """(subjects, records, until) with fixes near every threshold of the variant dropped."""
    return generate(seed, n, walk=walk, ref_kwargs=VARIANTS[variant][1])


def run_engine(subj, records, until, rules: dict) -> tuple[list[dict], Engine]:
    config = config_from_dict({"rules": rules})
    engine = Engine(ZONES, load_registry(subj, ZONES), config)
    out = io.BytesIO()
    stats = replay((orjson.dumps(r) for r in records), engine, out, config=config,
                   until_ms=until)
    assert stats.rejected_total == 0
    return [orjson.loads(x) for x in out.getvalue().splitlines()], engine


def check_variant(seed: int, n: int, variant: str, walk: bool = False) -> list[dict]:
    rules, kwargs = VARIANTS[variant]
    subj, records, until = scenario(seed, n, variant, walk)
    got, _ = run_engine(subj, records, until, rules)
    ref = Reference(REF_ZONES, subj, **kwargs)
    want = ref.replay(records, until)
    brief = [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
             for e in got]
    assert brief == want
    assert [e.get("devices") for e in got] == ref.devices_lists
    assert [(e["device_kind"], e.get("suspended", False)) for e in got] == \
        ref.annotations(want)
    check_episodes(got)
    return got


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("seed", range(4))
def test_engine_matches_reference_with_warnings(seed, variant):
    check_variant(seed, 400, variant)


@pytest.mark.parametrize("variant", ["defaults", "border"])
@pytest.mark.parametrize("seed", range(3))
def test_walkers_match_reference_and_keep_the_fast_path(seed, variant):
    """Walkers settle (the safe radius less approach_m / border_warn_m) and still see
    every warning where the reference has it."""
    check_variant(seed, 600, variant, walk=True)
    rules, _ = VARIANTS[variant]
    subj, records, until = scenario(seed, 600, variant, walk=True)
    _, engine = run_engine(subj, records, until, rules)
    assert engine.counters["settled_fixes"] > engine.counters["fixes"] // 10


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9), n=st.integers(min_value=1, max_value=200),
       variant=st.sampled_from(sorted(VARIANTS)))
def test_engine_matches_reference_with_warnings_property(seed, n, variant):
    check_variant(seed, n, variant)


def test_the_scenarios_exercise_both_rules():
    """Warnings raised and cleared (at exclusion zones and at the border), superseded,
    and subject alarms listing two devices: or agreement would prove little."""
    seen = set()
    for seed in range(4):
        for variant in ("defaults", "border"):
            for e in check_variant(seed, 400, variant):
                zone_kind = "border" if e["zone_id"] in ("411302", "411321") else "excl"
                seen.add((e["event"], e["type"], zone_kind if e["type"] == "approach" else ""))
                if len(e.get("devices") or []) > 1:
                    seen.add(("two devices", e["type"], ""))
    for item in [("raised", "approach", "excl"), ("cleared", "approach", "excl"),
                 ("raised", "approach", "border"), ("cleared", "approach", "border")]:
        assert item in seen, (item, seen)
    assert any(k[0] == "two devices" for k in seen), seen


def test_the_comparison_is_sensitive_to_the_new_rules():
    subj, records, until = scenario(0, 400, "border")
    got, _ = run_engine(subj, records, until, VARIANTS["border"][0])
    brief = [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
             for e in got]
    for kwargs in ({"border_warn_m": 400.0, "approach_m": 150.0},
                   {"border_warn_m": 300.0}, {"border_warn_m": 400.0, "alarm_per": "device"},
                   {"border_warn_m": 0.0}):
        assert brief != Reference(REF_ZONES, subj, **kwargs).replay(records, until), kwargs


def replay_bytes(engine: Engine, records: list[dict], until: int | None) -> bytes:
    """The replay's output lines, but offline's: `emfence replay`'s receive clock starts
    afresh with each replay (it is not in a checkpoint), so a second replay sweeps for
    offline only from its first batch on; that is the replay's, not these rules'."""
    out = io.BytesIO()
    replay((orjson.dumps(r) for r in records), engine, out, config=engine.config,
           until_ms=until)
    return b"".join(line + b"\n" for line in out.getvalue().splitlines()
                    if b'"type":"offline"' not in line)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9), cut=st.floats(0.05, 0.95),
       variant=st.sampled_from(sorted(VARIANTS)))
def test_restart_from_a_checkpoint_gives_the_same_bytes(seed, cut, variant):
    """Replay to a cut, checkpoint (bytes, as the store keeps them), restore into a new
    engine, replay the rest: the same alarm events, byte for byte, as without the
    restart (offline aside: see replay_bytes); open subject episodes and warnings
    included."""
    rules, _ = VARIANTS[variant]
    subj, records, until = scenario(seed, 300, variant)
    config = config_from_dict({"rules": rules})
    whole = replay_bytes(Engine(ZONES, load_registry(subj, ZONES), config), records, until)
    k = int(len(records) * cut)
    first = Engine(ZONES, load_registry(subj, ZONES), config)
    head = replay_bytes(first, records[:k], records[k - 1]["rx"] if k else None)
    restored = Engine.restore_bytes(checkpoint_bytes(first.snapshot()), ZONES,
                                    load_registry(subj, ZONES), config)
    tail = replay_bytes(restored, records[k:], until)
    assert head + tail == whole
    assert replay_bytes(Engine(ZONES, load_registry(subj, ZONES), config), records,
                        until) == whole  # and a second run gives the same bytes
