"""GCJ-02 zones with WGS-84 fixes (and GCJ-02 fixes) near a real county line.

The county outline comes from a Chinese map service in GCJ-02. A point that the map
shows 150 m inside the line is inside, whichever datum the bracelet reports it in; the
same numbers taken naively as WGS-84 land ~500 m off and flip many answers.
"""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
import shapely
from engine_helpers import CNMAPS, T0, county_feature, make_engine
from engine_reference import gcj02_to_wgs84
from pyproj import Geod

GEOD = Geod(ellps="WGS84")


def boundary_samples(code: str, n: int, seed: int):
    """(gcj_lon, gcj_lat, inside) points 150-400 m from the raw GCJ-02 outline."""
    raw = shapely.geometry.shape(orjson.loads((CNMAPS / f"{code}.geojson").read_bytes()))
    line = raw.boundary
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        p = shapely.line_interpolate_point(line, rng.random(), normalized=True)
        az = rng.uniform(0, 360)
        lon, lat, _ = GEOD.fwd(p.x, p.y, az, rng.uniform(150, 400))
        q = shapely.Point(lon, lat)
        # Keep points clearly on one side: at least 100 m (in GCJ degrees) from the line.
        _, _, gap = GEOD.inv(lon, lat, *shapely.shortest_line(line, q).coords[0])
        if gap < 100:
            continue
        out.append((lon, lat, bool(raw.contains(q))))
    return out


def test_gcj02_county_with_wgs84_and_gcj02_fixes():
    code = "411302"
    samples = boundary_samples(code, 120, seed=3)
    assert 20 < sum(s[2] for s in samples) < 100  # both sides are represented
    subj = {"subject_id": "S-1", "region": code, "level": "strict",
            "devices": [{"device_id": "W"}, {"device_id": "G"}, {"device_id": "N"}],
            "exclusion": [code]}  # exclusion: raises at the first fix inside, no confirmation
    # One device's view each (alarm_per "device": not one alarm for the subject).
    e = make_engine([county_feature(code)], [subj], {"alarm_per": "device"})
    far = (100.0, 40.0)  # clears between samples
    naive_flips = 0
    for k, (glon, glat, inside) in enumerate(samples):
        wlon, wlat = gcj02_to_wgs84(glon, glat)
        ts = T0 + 10 * k
        lat = np.array([wlat, glat, glat, far[1], far[1], far[1]])
        lon = np.array([wlon, glon, glon, far[0], far[0], far[0]])
        dev = np.array([0, 1, 2, 0, 1, 2], np.int32)
        tss = np.array([ts, ts, ts, ts + 5, ts + 5, ts + 5], np.int64)
        coord = np.array([0, 1, 0, 0, 0, 0], np.uint8)  # W: WGS-84, G: GCJ-02, N: GCJ as WGS
        ev = e.process_fixes(dev, tss, lat, lon, np.full(6, 5.0), coord, tss)
        raised = {x["device_id"] for x in ev
                  if x["event"] == "raised" and x["type"] == "exclusion"}
        assert ("W" in raised) == inside, (k, glon, glat)
        assert ("G" in raised) == inside, (k, glon, glat)
        if ("W" in raised) != ("N" in raised):
            naive_flips += 1
        # The raised evidence is in WGS-84.
        for x in ev:
            if x["event"] == "raised" and x["device_id"] == "G":
                assert abs(x["lon"] - wlon) < 1e-8 and abs(x["lat"] - wlat) < 1e-8
    assert naive_flips > 10  # ignoring the datum would be wrong near the line


def test_process_hands_back_the_wgs84_positions_it_ruled_on():
    """``Engine.process(batch, positions=...)`` fills, for every fix of a known device, the
    position the rules ran on: a GCJ-02 fix as the kernel converted it (bit for bit the
    point kernel's answer), a WGS-84 fix as it came; statuses and unknown devices stay
    NaN. Duplicates and late fixes are positions too (their track rows are kept)."""
    from contract import RecordBatch
    from engine import Positions
    from geofence.kernels import gcj02_to_wgs84_point

    code = "411302"
    subj = {"subject_id": "S-1", "region": code, "level": "strict",
            "devices": [{"device_id": "W"}, {"device_id": "G"}], "inclusion": [code]}
    e = make_engine([county_feature(code)], [subj])
    rng = np.random.default_rng(5)
    n = 40
    kind = (rng.random(n) < 0.2).astype(np.uint8)
    dev = rng.integers(0, 2, n).astype(np.int32)
    dev[7] = 99  # unknown: skipped
    ts = T0 + np.arange(n, dtype=np.int64) * 1000
    ts[11] = ts[10]  # a duplicate of the fix before (when both are fixes of one device)
    ts[20] -= 60_000  # late
    lat = 33.0 + rng.uniform(-0.1, 0.1, n)
    lon = 112.5 + rng.uniform(-0.1, 0.1, n)
    coord = (rng.random(n) < 0.5).astype(np.uint8)
    kind[[10, 11]] = 0
    dev[11] = dev[10]
    coord[[10, 11]] = 1
    batch = RecordBatch.records(kind=kind, device_idx=dev, ts_ms=ts, rx_ms=ts, lat=lat,
                                lon=lon, acc_m=np.full(n, 10.0), coord_sys=coord,
                                battery_pct=np.full(n, np.nan), strap=np.full(n, -1, np.int8))
    assert 0 < int(((kind == 0) & (coord == 1)).sum()) < int((kind == 0).sum())  # mixed
    positions = Positions.nan(n)
    events, _ = e.process(batch, positions=positions)
    assert e.counters["duplicate_fixes"] >= 1 and e.counters["late_fixes"] >= 1
    for i in range(n):
        if kind[i] != 0 or dev[i] == 99:
            assert np.isnan(positions.lat[i]) and np.isnan(positions.lon[i]), i
        elif coord[i] == 1:
            x, y = gcj02_to_wgs84_point(lon[i], lat[i])
            assert (positions.lon[i], positions.lat[i]) == (x, y), i
            assert abs(x - lon[i]) > 1e-4  # really converted (~500 m in Henan)
        else:
            assert (positions.lon[i], positions.lat[i]) == (lon[i], lat[i]), i
    # the evidence of an alarm is the same position
    for ev in events:
        if ev["event"] == "raised" and ev.get("lat") is not None:
            i = int(np.flatnonzero(ts == ev["at"])[0])
            assert (ev["lat"], ev["lon"]) == (positions.lat[i], positions.lon[i])


def test_positions_of_the_wrong_shape_are_refused_by_name():
    from contract import RecordBatch
    from engine import Positions

    e = make_engine([county_feature("411302")], [
        {"subject_id": "S-1", "region": "411302", "level": "strict",
         "devices": [{"device_id": "W"}], "inclusion": ["411302"]}])
    batch = RecordBatch.fixes(device_idx=[0, 0], ts_ms=[T0, T0 + 1], rx_ms=[T0, T0 + 1],
                              lat=[33.0, 33.0], lon=[112.5, 112.5], acc_m=[5.0, 5.0],
                              coord_sys=[1, 1])
    with pytest.raises(ValueError, match="positions.lat has 3 elements, expected 2"):
        e.process(batch, positions=Positions.nan(3))
    strided = Positions(np.full(4, np.nan)[::2], np.full(2, np.nan))
    with pytest.raises(ValueError, match="positions.lat must be a writable, contiguous"):
        e.process(batch, positions=strided)
