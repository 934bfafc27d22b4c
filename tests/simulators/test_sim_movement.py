"""Movement: subjects stay inside their county and away from their exclusion zones
unless an event sends them out; reported errors match the reported accuracy.

Checked with shapely (and pyproj's geodesic) on real county boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Geod
from sim_helpers import START_MS, fleet

from geofence.gcj02 import gcj02_to_wgs84
from simulators.movement import (
    ACC_RANGE_M,
    LEG_DWELL,
    NOISE_CLEARANCE_M,
    SRC_NONE,
    MovementModel,
)

GEOD = Geod(ellps="WGS84")
# Real counties of the bundled set: urban districts, large rural counties, odd shapes.
COUNTIES = ["411303", "411302", "411321", "411323", "411326", "411330", "410102", "410526"]
DAY_MS = 86_400_000


def _wgs84(obs, fl):
    lon, lat = obs.lon.copy(), obs.lat.copy()
    gcj = obs.coord == 1
    if gcj.any():
        lon[gcj], lat[gcj] = gcj02_to_wgs84(lon[gcj], lat[gcj])
    return lon, lat


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(county=st.sampled_from(COUNTIES), seed=st.integers(0, 10_000))
def test_true_positions_stay_inside_and_clear_of_exclusions(county, seed):
    _, zones, fl = fleet(24, seed % 7, (county,))
    model = MovementModel(fl, seed=seed, start_ms=START_MS, time_scale=1.0)
    rng = np.random.default_rng(seed)
    k = 4000
    subj = rng.integers(0, fl.n_subjects, k)
    t = START_MS + rng.integers(0, 2 * DAY_MS, k)  # two simulated days
    x, y, kind = model.true_position_m(subj, t)
    lon, lat = fl.frame.to_deg(x, y)
    by_id = {z.zone_id: z for z in zones}
    for s in range(fl.n_subjects):
        sel = subj == s
        county_wgs = shapely.union_all([by_id[z].geometry for z in fl.inclusion_ids[s]])
        assert shapely.contains_xy(county_wgs, lon[sel], lat[sel]).all(), fl.subject_ids[s]
        for zid, g in fl.exclusions_m[s]:
            d = shapely.distance(shapely.points(x[sel], y[sel]), g)
            assert d.min() >= NOISE_CLEARANCE_M, (fl.subject_ids[s], zid)
    assert set(np.unique(kind)) <= {0, 1}  # dwelling or moving: no event without one


def test_subjects_really_move_between_anchors():
    _, _, fl = fleet(20, 1, ("411303",))
    model = MovementModel(fl, seed=1, start_ms=START_MS, time_scale=1.0)
    s = np.arange(fl.n_subjects)
    moved = np.zeros(fl.n_subjects)
    x0, y0 = model.home[:, 0], model.home[:, 1]
    for h in range(24 * 6):
        x, y, _ = model.true_position_m(s, np.full(len(s), START_MS + h * 600_000))
        moved = np.maximum(moved, np.hypot(x - x0, y - y0))
    assert (moved > 300).mean() > 0.8  # most subjects leave home within a day
    assert moved.max() <= 2 * 2000  # star trips: never beyond 2 * trip_radius_m from home


def test_reported_error_never_exceeds_acc_and_matches_its_distribution():
    _, _, fl = fleet(60, 2, None)
    model = MovementModel(fl, seed=2, start_ms=START_MS, time_scale=20.0)
    rng = np.random.default_rng(0)
    k = 20_000
    dev = rng.integers(0, fl.n_devices, k)
    t = START_MS + rng.integers(0, DAY_MS // 20, k)
    obs = model.observe(dev, t, rng)
    have = obs.src != SRC_NONE
    lon, lat = _wgs84(obs, fl)
    _, _, dist = GEOD.inv(obs.true_lon[have], obs.true_lat[have], lon[have], lat[have])
    acc = obs.acc[have]
    # The reported accuracy covers the truth (0.5 m: the GCJ-02 inverse's tolerance).
    assert (dist <= acc + 0.5).all()
    # Rayleigh with acc as its 95th percentile: median error ~0.48 acc, 95 % below ~acc.
    ratio = dist / acc
    assert 0.42 < np.median(ratio) < 0.54
    assert (ratio > 0.9).mean() < 0.1
    for code, (lo, hi) in ACC_RANGE_M.items():
        a = obs.acc[obs.src == code]
        assert len(a) > 100, code
        assert a.min() >= lo and a.max() <= hi + 0.1
    # Phones report GCJ-02 (offset hundreds of metres from WGS-84), bracelets WGS-84.
    phones = np.array([fl.device_kind[d] == "phone" for d in dev])
    assert (obs.coord[phones] == 1).all() and (obs.coord[~phones] == 0).all()
    _, _, off = GEOD.inv(obs.lon[phones & have], obs.lat[phones & have], lon[phones & have],
                         lat[phones & have])
    assert off.min() > 100


def test_dropouts_happen_indoors_only():
    _, _, fl = fleet(60, 2, None)
    model = MovementModel(fl, seed=3, start_ms=START_MS, time_scale=20.0)
    rng = np.random.default_rng(1)
    dev = rng.integers(0, fl.n_devices, 20_000)
    t = START_MS + rng.integers(0, DAY_MS // 20, 20_000)
    obs = model.observe(dev, t, rng)
    _, _, kind = model.true_position_m(fl.device_subject[dev], t)
    assert (obs.src == SRC_NONE).any()
    assert (kind[obs.src == SRC_NONE] == LEG_DWELL).all()


def test_a_detour_goes_out_and_comes_back():
    _, _, fl = fleet(10, 4, ("411303",))
    model = MovementModel(fl, seed=4, start_ms=START_MS)
    s = 0
    x0, y0 = model.position_at(s, START_MS + 10_000)
    county = fl.inclusion_m[s]
    far = county.boundary.interpolate(0.3, normalized=True)
    cx, cy = county.centroid.x, county.centroid.y
    target = (far.x + (far.x - cx) * 0.2, far.y + (far.y - cy) * 0.2)
    assert not county.contains(shapely.Point(target))
    start, end = model.insert_detour(s, START_MS + 10_000, [target], travel_ms=5000, dwell_ms=8000)
    assert (start, end) == (START_MS + 10_000, START_MS + 10_000 + 18_000)
    x, y, kind = model.true_position_m(np.array([s, s, s]),
                                       np.array([start + 6000, start + 12_000, end]))
    assert kind[0] == 2 and kind[1] == 2
    assert (x[1], y[1]) == pytest.approx(target)
    assert (x[2], y[2]) == pytest.approx((x0, y0))
    # The rest of the day resumes where it was, shifted by the detour.
    model2 = MovementModel(fl, seed=4, start_ms=START_MS)
    later = START_MS + 3_600_000
    assert model.position_at(s, later + 18_000) == pytest.approx(model2.position_at(s, later))


def test_same_seed_same_observations():
    _, _, fl = fleet(30, 5, ("411302",))
    a = MovementModel(fl, seed=9, start_ms=START_MS, time_scale=10)
    b = MovementModel(fl, seed=9, start_ms=START_MS, time_scale=10)
    dev = np.arange(fl.n_devices)
    t = np.full(fl.n_devices, START_MS + 600_000)
    oa = a.observe(dev, t, np.random.default_rng(3))
    ob = b.observe(dev, t, np.random.default_rng(3))
    assert np.array_equal(oa.lon, ob.lon) and np.array_equal(oa.acc, ob.acc)
