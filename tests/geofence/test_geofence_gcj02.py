"""GCJ-02 <-> WGS-84 against published reference pairs and round-trip properties."""

from __future__ import annotations

import os

import numpy as np
import pyproj
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence import kernels as K
from geofence.gcj02 import gcj02_to_wgs84, outside_china, wgs84_to_gcj02

pytestmark = pytest.mark.kernel

JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") != "1"
PROPS = settings(max_examples=300 if JIT else 25, deadline=None)
GEOD = pyproj.Geod(ellps="WGS84")

# (WGS-84 lon, lat) -> (GCJ-02 lon, lat), as published by public coordinate-transform
# projects in their own test suites:
PUBLISHED = [
    # googollee/eviltransform (MIT), python/test.py TESTS: Shanghai, Shenzhen, Beijing.
    ((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597)),
    ((113.912316, 22.543847), (113.9171764808363, 22.540796131694766)),
    ((116.377817, 39.911954), (116.38404722455657, 39.91334545536069)),
    # wandergis/coordtransform (MIT), test/app.js: wgs84togcj02(116.404, 39.915).
    ((116.404, 39.915), (116.41024449916938, 39.91640428150164)),
]


def _metres(lon1, lat1, lon2, lat2):
    return GEOD.inv(lon1, lat1, lon2, lat2)[2]


@pytest.mark.parametrize(("wgs", "gcj"), PUBLISHED)
def test_forward_matches_published_pairs(wgs, gcj):
    lon, lat = wgs84_to_gcj02(*wgs)
    assert abs(lon - gcj[0]) < 1e-12 and abs(lat - gcj[1]) < 1e-12
    assert K.wgs84_to_gcj02_point(*wgs) == (lon, lat)


@pytest.mark.parametrize(("wgs", "gcj"), PUBLISHED)
def test_inverse_recovers_published_wgs84_within_half_a_metre(wgs, gcj):
    lon, lat = gcj02_to_wgs84(*gcj)
    assert _metres(lon, lat, *wgs) < 0.5
    # In fact to well under a millimetre.
    assert _metres(lon, lat, *wgs) < 1e-3
    assert K.gcj02_to_wgs84_point(*gcj) == (lon, lat)


def test_the_offset_is_hundreds_of_metres_in_china():
    for wgs, gcj in PUBLISHED:
        assert 100 < _metres(*wgs, *gcj) < 1000


china_lon = st.floats(73.0, 135.0)
china_lat = st.floats(18.0, 53.5)


@given(lon=china_lon, lat=china_lat)
@PROPS
def test_round_trip_inside_china(lon, lat):
    glon, glat = wgs84_to_gcj02(lon, lat)
    back_lon, back_lat = gcj02_to_wgs84(glon, glat)
    assert _metres(lon, lat, back_lon, back_lat) <= 0.5
    # The inverse is a true inverse: forward(inverse(g)) == g to ~1e-10 degrees.
    f_lon, f_lat = wgs84_to_gcj02(back_lon, back_lat)
    assert abs(f_lon - glon) < 1e-9 and abs(f_lat - glat) < 1e-9
    # And the shift is the documented size.
    assert 1 < _metres(lon, lat, glon, glat) < 1000


@given(lon=st.floats(-180, 180), lat=st.floats(-90, 90))
@PROPS
def test_identity_outside_china(lon, lat):
    if not outside_china(lon, lat):
        lon = lon - 150.0 if lon > 0 else lon  # move it to the Pacific / Americas
        lat = lat if outside_china(lon, lat) else -lat - 1.0
    assert outside_china(lon, lat)
    assert wgs84_to_gcj02(lon, lat) == (lon, lat)
    assert gcj02_to_wgs84(lon, lat) == (lon, lat)


def test_arrays_keep_their_shape_and_match_the_point_kernels():
    rng = np.random.default_rng(1)
    lon = rng.uniform(70, 140, (4, 25))
    lat = rng.uniform(0, 56, (4, 25))
    glon, glat = wgs84_to_gcj02(lon, lat)
    assert glon.shape == (4, 25) and glat.shape == (4, 25)
    for i in (0, 3):
        for j in (0, 7, 24):
            assert K.wgs84_to_gcj02_point(lon[i, j], lat[i, j]) == (glon[i, j], glat[i, j])
    wlon, _ = gcj02_to_wgs84(glon, glat)
    assert wlon.shape == (4, 25)
    inside = ~outside_china(lon, lat)
    assert np.abs(wlon - lon)[inside].max() < 1e-8
    assert (wlon[~inside] == glon[~inside]).all()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same shape"):
        wgs84_to_gcj02([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"lat\[1\] = nan is not finite"):
        gcj02_to_wgs84([113.0, 113.0], [34.0, float("nan")])


@given(lon=st.floats(72.0041, 72.0085), lat=st.floats(18.0, 50.0))
@PROPS
def test_inverse_converges_next_to_chinas_rectangle(lon, lat):
    """GCJ-02 points just inside the western edge, whose WGS-84 preimage may lie outside:
    the inverse still solves w + offset(w) = g there."""
    w_lon, w_lat = gcj02_to_wgs84(lon, lat)
    d_lon, d_lat = K._gcj_delta(w_lon, w_lat)
    assert abs(w_lon + d_lon - lon) < 1e-9 and abs(w_lat + d_lat - lat) < 1e-9


@pytest.mark.parametrize("inverse", [False, True])
def test_small_and_large_batches_take_the_same_transform(inverse):
    # Batches below the threshold run serially, larger ones on the thread pool: both
    # paths must give the same numbers, point for point.
    from geofence import gcj02

    rng = np.random.default_rng(7)
    n = 4096
    lon = rng.uniform(73.0, 135.0, n)
    lat = rng.uniform(18.0, 53.0, n)
    serial = (np.empty(n), np.empty(n))
    pooled = (np.empty(n), np.empty(n))
    K._gcj02_serial(lon, lat, serial[0], serial[1], inverse)
    K._gcj02_batch(lon, lat, pooled[0], pooled[1], inverse, K.chunks_for(n))
    np.testing.assert_array_equal(serial[0], pooled[0])
    np.testing.assert_array_equal(serial[1], pooled[1])
    big = gcj02._PARALLEL_MIN_POINTS + 1
    transform = gcj02_to_wgs84 if inverse else wgs84_to_gcj02
    whole = transform(np.resize(lon, big), np.resize(lat, big))
    np.testing.assert_array_equal(whole[0][:n], serial[0])
    on_caller = transform(np.resize(lon, big), np.resize(lat, big), parallel=False)
    np.testing.assert_array_equal(on_caller[0], whole[0])
    np.testing.assert_array_equal(on_caller[1], whole[1])
