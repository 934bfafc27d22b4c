"""GCJ-02 zones with WGS-84 fixes (and GCJ-02 fixes) near a real county line.

The county outline comes from a Chinese map service in GCJ-02. A point that the map
shows 150 m inside the line is inside, whichever datum the bracelet reports it in; the
same numbers taken naively as WGS-84 land ~500 m off and flip many answers.
"""

from __future__ import annotations

import random

import numpy as np
import orjson
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
    e = make_engine([county_feature(code)], [subj])
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
        raised = {x["device_id"] for x in ev if x["event"] == "raised"}
        assert ("W" in raised) == inside, (k, glon, glat)
        assert ("G" in raised) == inside, (k, glon, glat)
        if ("W" in raised) != ("N" in raised):
            naive_flips += 1
        # The raised evidence is in WGS-84.
        for x in ev:
            if x["event"] == "raised" and x["device_id"] == "G":
                assert abs(x["lon"] - wlon) < 1e-8 and abs(x["lat"] - wlat) < 1e-8
    assert naive_flips > 10  # ignoring the datum would be wrong near the line
