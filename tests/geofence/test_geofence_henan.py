"""The whole bundled province: which county is each point in, against shapely's STRtree."""

from __future__ import annotations

import numpy as np
import shapely

from geofence import compile_zones
from geofence.data import load_henan_counties


def test_every_point_is_in_the_same_county_as_shapely_says():
    zones = load_henan_counties()
    cz = compile_zones(zones)
    rng = np.random.default_rng(41)
    minx, miny, maxx, maxy = shapely.total_bounds([z.geometry for z in zones])
    lon = rng.uniform(minx, maxx, 30_000)
    lat = rng.uniform(miny, maxy, 30_000)
    offsets, zidx, inside = cz.contains_candidates(lon, lat)
    owner = np.repeat(np.arange(len(lon)), np.diff(offsets))
    ours = sorted(zip(owner[inside].tolist(), zidx[inside].tolist()))
    tree = shapely.STRtree([z.geometry for z in zones])
    p_idx, g_idx = tree.query(shapely.points(lon, lat), predicate="within")
    theirs = sorted(zip(p_idx.tolist(), g_idx.tolist()))
    assert ours == theirs
    # Counties tile the province: no point is in two of them, and most of the
    # province's bounding box is in some county.
    assert np.bincount(owner[inside], minlength=len(lon)).max() == 1
    assert 0.5 < inside.sum() / len(lon) < 0.9
