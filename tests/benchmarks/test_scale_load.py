"""The national load of ``benchmarks.scale --e2e`` (benchmarks/scale_load.py) on a small
fleet of Henan's counties: homes clear of the circles and inside the county, every device
in turn across runs, fixes the wire contract accepts, and the latency step's simulation
merged in by time."""

from __future__ import annotations

import time

import numpy as np
import orjson
import shapely

from benchmarks.engine_fleet import build_fleet
from benchmarks.scale_load import (
    HOME_CLEAR_M,
    M_PER_DEG,
    MergedSim,
    NationalLoad,
    latency_subjects,
    pick_homes,
)
from contract.topics import device_topic
from ingest.decode import parse_fix


def _fleet(n_subjects: int = 300):
    from benchmarks.engine_fleet import COUNTIES
    from geofence import load_zones

    counties = load_zones(COUNTIES)
    _zones, doc, pools, county_of, circle_xy, circle_of = build_fleet(
        2 * n_subjects, n_subjects // 3, seed=5, counties=counties, pool_size=60)
    return counties, doc, pools, county_of, circle_xy, circle_of


def test_homes_are_inside_the_county_and_clear_of_the_circle():
    counties, _doc, pools, county_of, circle_xy, circle_of = _fleet()
    lon, lat, clear = pick_homes(pools, county_of, circle_xy, circle_of, seed=1)
    assert clear.mean() > 0.9
    centre = circle_xy[circle_of[0::2]]
    dist_m = np.hypot((lon - centre[:, 0]) * M_PER_DEG * np.cos(np.radians(lat)),
                      (lat - centre[:, 1]) * M_PER_DEG)
    assert (dist_m[clear] >= HOME_CLEAR_M).all()
    for s in range(0, len(lon), 17):
        county = counties[int(county_of[2 * s])].geometry
        assert shapely.contains_xy(county, lon[s], lat[s])


def test_runs_walk_the_whole_fleet_with_valid_fixes_and_leave_out_whom_they_must():
    _, doc, pools, county_of, circle_xy, circle_of = _fleet()
    lon, lat, clear = pick_homes(pools, county_of, circle_xy, circle_of, seed=1)
    left = {doc["subjects"][0]["subject_id"], doc["subjects"][1]["subject_id"]}
    load = NationalLoad(doc, lon, lat, clear, leave_out=left, seed=3)
    assert load.subjects_left_out == len(left) + int((~clear).sum())
    start = int(time.time() * 1000)
    first = load.run(rate=100.0, duration_s=load.n / 200.0, start_ms=start)  # half the fleet
    second = load.run(rate=100.0, duration_s=load.n / 200.0, start_ms=start + 10_000)
    msgs = first.messages(0, first.total_slots) + second.messages(0, second.total_slots)
    assert len(msgs) == first.total_slots + second.total_slots
    devices = [m.device for m in msgs]
    assert len(set(devices)) == len(devices) == load.n  # each once: the cursor went on
    ids = {d["device_id"]: s for s in doc["subjects"] for d in s["devices"]}
    for m in msgs[::7]:
        device_id = m.topic.split("/")[3]
        subject = ids[device_id]
        assert subject["subject_id"] not in left
        assert m.topic == device_topic(subject["region"], device_id, "fix")
        fix = parse_fix(orjson.loads(m.payload))
        assert fix.ts_ms == m.slot_ms and fix.acc_m == 10.0
        assert abs(fix.lat - lat[doc["subjects"].index(subject)]) < 5e-4
    ts = [m.slot_ms for m in first.messages(0, first.total_slots)]
    assert ts == sorted(ts) and ts[-1] - ts[0] < first.duration_s * 1000


def test_the_latency_simulation_is_merged_by_time():
    from emfence.config import Config
    from simulators.movement import Fleet
    from simulators.scenario import Simulation

    counties, doc, pools, county_of, circle_xy, circle_of = _fleet()
    lon, lat, clear = pick_homes(pools, county_of, circle_xy, circle_of, seed=1)
    chosen = latency_subjects(doc, 4)
    assert len({s["region"][:4] for s in chosen}) == 1 and len(chosen) == 4
    load = NationalLoad(doc, lon, lat, clear, leave_out={s["subject_id"] for s in chosen},
                        seed=3)
    from geofence import load_zones

    wanted = {z for s in chosen for z in s["inclusion"]}
    zones = [z for z in counties if z.zone_id in wanted] + load_zones(
        {"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"zone_id": f"X-{k}", "radius_m": 300.0},
             "geometry": {"type": "Point", "coordinates": list(map(float, circle_xy[k]))}}
            for k in range(len(circle_xy))]})
    start = int(time.time() * 1000) + 1000
    sub = Simulation(Fleet.build({"subjects": chosen}, zones), rate=8.0, duration_s=5.0,
                     start_ms=start, config=Config(), scenario="load", seed=1)
    merged = MergedSim(load.run(200.0, 5.0, start), sub)
    merged.shift(250)
    assert sub.start_ms == merged.start_ms == start + 250
    out = []
    for m0 in range(0, merged.total_slots, 37):
        out += merged.messages(m0, m0 + 37)
    sub_ids = {d["device_id"] for s in chosen for d in s["devices"]}
    from_sub = [m for m in out if m.topic.split("/")[3] in sub_ids]
    assert len(from_sub) == sub.total_slots == 40
    assert merged.expected_sent == len(out) == merged.total_slots + 40
    # each sub message goes out with the load slots of its time (within one call's span)
    span_ms = 37 * 1000 / 200.0
    for k, m in enumerate(out):
        if m.topic.split("/")[3] in sub_ids:
            before = [x.slot_ms for x in out[:k] if x.topic.split("/")[3] not in sub_ids]
            assert not before or m.slot_ms >= before[-1] - span_ms
