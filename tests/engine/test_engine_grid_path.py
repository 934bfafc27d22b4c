"""The grid path of engine.kernels.process_batch (a fix whose county grid cell is wholly
inside, far from its last position, nothing open) against the shapely reference, on
fixes scattered over real counties: the case the path exists for."""

from __future__ import annotations

import io
import random

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
COUNTIES = ["411302", "411303", "411321"]


def _build():
    zones0 = load_zones({"type": "FeatureCollection",
                         "features": [county_feature(c) for c in COUNTIES]})
    rng = random.Random(5)
    features = [county_feature(c) for c in COUNTIES]
    circles = []
    for k in range(4):  # exclusion circles inside the first two counties
        geom = zones0[k % 2].geometry
        minx, miny, maxx, maxy = geom.bounds
        while True:
            p = shapely.Point(rng.uniform(minx, maxx), rng.uniform(miny, maxy))
            if geom.contains(p):
                break
        circles.append((p.x, p.y))
        features.append(circle_feature(f"X-{k}", p.x, p.y, rng.choice([300.0, 900.0])))
    zones = compile_zones(load_zones({"type": "FeatureCollection", "features": features}))
    ref_zones = {z.zone_id: RefZone(z.zone_id, z.geometry, z.circle) for z in zones.zones}
    return zones, ref_zones, circles


ZONES, REF_ZONES, CIRCLES = _build()
SUBJECTS = {"subjects": [
    {"subject_id": f"S-{s}", "region": COUNTIES[s % 2], "level": "strict",
     "devices": [{"device_id": f"B-{s}"}, {"device_id": f"P-{s}", "kind": "phone"}],
     "inclusion": [COUNTIES[s % 2]] + (["411321"] if s == 3 else []),
     "exclusion": [f"X-{s}"] + ([f"X-{(s + 2) % 4}"] if s >= 2 else [])}
    for s in range(4)]}
DEVICES = [d["device_id"] for s in SUBJECTS["subjects"] for d in s["devices"]]


def generate(seed: int, n: int) -> list[dict]:
    """Fixes in arrival order, each a fresh point: 80 % anywhere in the device's county
    bounding box (inside and outside the county), 15 % near one of its circles (half
    of the 5 % late ones)."""
    rng = random.Random(seed)
    ref = Reference(REF_ZONES, SUBJECTS)
    subject_of = {d["device_id"]: s for s in SUBJECTS["subjects"] for d in s["devices"]}
    last_ts = dict.fromkeys(DEVICES, T0)
    records = []
    rx = T0
    while len(records) < n:
        d = rng.choice(DEVICES)
        s = subject_of[d]
        rx += rng.choice([1000, 5000, 20_000])
        late = rng.random() < 0.05
        if late:
            ts = last_ts[d] - rng.randint(1, 120_000)
        else:
            ts = max(last_ts[d] + 1, rx - rng.randint(0, 3000))
        last_ts[d] = max(last_ts[d], ts)
        if rng.random() < (0.5 if late else 0.15):
            k = int(rng.choice(s["exclusion"])[2:])
            lon, lat = offset(*CIRCLES[k], rng.gauss(0, 600), rng.gauss(0, 600))
        else:
            minx, miny, maxx, maxy = REF_ZONES[s["inclusion"][0]].geometry.bounds
            lon, lat = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
        acc = rng.choice([5.0, 10.0, 49.0, 80.0])
        coord_sys = "gcj02" if rng.random() < 0.2 else "wgs84"
        record = ref.clear_fix(d, ts, rx, lon, lat, acc, coord_sys, TOLERANCE_M)
        if record is not None:
            records.append(record)
    return records


def run(records: list[dict]) -> tuple[list[tuple], dict]:
    engine = Engine(ZONES, load_registry(SUBJECTS, ZONES), Config())
    out = io.BytesIO()
    until = records[-1]["rx"] + 1
    replay((orjson.dumps(r) for r in records), engine, out, config=Config(), until_ms=until)
    got = [orjson.loads(x) for x in out.getvalue().splitlines()]
    brief = [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
             for e in got]
    assert brief == Reference(REF_ZONES, SUBJECTS).replay(records, until)
    return brief, engine.counters


@pytest.mark.parametrize("seed", range(4))
def test_scattered_fixes_match_the_reference_and_take_the_grid_path(seed):
    brief, counters = run(generate(seed, 1500))
    # The grid path answered a good share of the fixes, both in order and late...
    assert counters["grid_fixes"] > counters["fixes"] // 3
    # ...and the run still raised and cleared both kinds of zone alarm, so a grid path
    # that swallowed a real transition would have shown up as a difference above.
    kinds = {(e[0], e[1]) for e in brief}
    for k in (("raised", "outbound"), ("cleared", "outbound"), ("raised", "exclusion"),
              ("cleared", "exclusion")):
        assert k in kinds, k
    assert any(e[5] for e in brief)  # a late exclusion pair beside the late grid fixes


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9), n=st.integers(min_value=1, max_value=400))
def test_grid_path_matches_the_reference_property(seed, n):
    run(generate(seed, n))
