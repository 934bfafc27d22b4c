"""The geofence kernels against plain references, on real county boundaries and on
nasty synthetic shapes.

Containment must equal a naive ray cast over every edge exactly (same rule, same
arithmetic) and shapely's ``contains_xy`` except within 1e-9 degrees of an edge.
Distances must equal shapely's in the same transverse Mercator frame (pyproj) to 1 mm,
far inside the 0.5 % / 0.5 m the project requires.
"""

from __future__ import annotations

import math
import os

import geofence_reference as ref
import numpy as np
import pyproj
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from geofence import compile_zones, load_zones
from geofence import kernels as K

pytestmark = pytest.mark.kernel

JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") != "1"
# Plain-Python runs (NUMBA_DISABLE_JIT=1) are ~1000x slower: fewer examples there.
EXAMPLES = 80 if JIT else 8
PROPS = settings(max_examples=EXAMPLES, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EDGE_EPS_DEG = 1e-9
DIST_TOL_M = 1e-3


@pytest.fixture(scope="module")
def counties():
    zones = load_zones(ref.county_collection(ref.all_adcodes()))
    return zones, compile_zones(zones)


@pytest.fixture(scope="module")
def county_edges(counties):
    zones, _ = counties
    return {z.zone_id: ref.edge_arrays(ref.rings_of(z.geometry)) for z in zones}


def _check_containment(cz, zi, zone, edges, lon, lat):
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    ours = cz.contains(lon, lat, zi)
    naive = np.array([ref.ray_cast_contains_np(edges, x, y) for x, y in zip(lon, lat)])
    bad = np.flatnonzero(ours != naive)
    assert bad.size == 0, (f"zone {zone.zone_id}: kernel != ray cast at "
                           f"{[(lon[i], lat[i]) for i in bad[:5]]}")
    sh = shapely.contains_xy(zone.geometry, lon, lat)
    differ = np.flatnonzero(ours != sh)
    if differ.size:
        near = shapely.distance(zone.geometry.boundary, shapely.points(lon[differ], lat[differ]))
        far = differ[near >= EDGE_EPS_DEG]
        assert far.size == 0, (f"zone {zone.zone_id}: kernel != shapely away from edges at "
                               f"{[(lon[i], lat[i]) for i in far[:5]]}")
    # The scalar kernel (what the engine calls from njit code) agrees with the batch.
    for i in range(min(len(lon), 5)):
        assert K.zone_contains(cz.arrays, zi, lon[i], lat[i]) == ours[i]
    return ours


def _check_distances(cz, zi, zone, lon, lat):
    inside, dist, bdist = cz.locate(lon, lat, zi)
    lon0, lat0 = cz.arrays.zone_tm[zi, 0], cz.arrays.zone_tm[zi, 1]
    ref_dist, ref_bdist = ref.shapely_distances_m(zone, lon0, lat0, lon, lat)
    np.testing.assert_allclose(bdist, ref_bdist, rtol=0, atol=DIST_TOL_M)
    # Inside points are 0; outside ones equal shapely's distance to the polygon. Where
    # inside-in-degrees (the kernel, like the GeoJSON) and inside-the-projected-polygon
    # (shapely here) disagree, the point is within centimetres of an edge (projected
    # edges bow slightly): there both distances must be below the 0.5 m requirement.
    assert (dist[inside] == 0).all()
    projected_inside = ref_dist == 0
    same = projected_inside == inside
    np.testing.assert_allclose(dist[same], ref_dist[same], rtol=0, atol=DIST_TOL_M)
    assert (dist[~same] < 0.5).all() and (ref_dist[~same] < 0.5).all()
    np.testing.assert_array_equal(cz.distance_m(lon, lat, zi), dist)
    np.testing.assert_array_equal(cz.contains(lon, lat, zi), inside)
    for i in range(min(len(lon), 3)):
        assert K.zone_distance_m(cz.arrays, zi, lon[i], lat[i]) == dist[i]
        assert K.zone_boundary_distance_m(cz.arrays, zi, lon[i], lat[i]) == bdist[i]


@st.composite
def county_points(draw, zones):
    """A county and points around it: uniform in the padded bbox, far outside it, on and
    near vertices, on edge midpoints, and on the horizontal lines through vertices."""
    zone = draw(st.sampled_from(zones))
    minx, miny, maxx, maxy = zone.geometry.bounds
    pad = 0.02 * max(maxx - minx, maxy - miny)
    coords = np.concatenate([np.asarray(r) for r in ref.rings_of(zone.geometry)])
    pts = []
    n = draw(st.integers(1, 24))
    for _ in range(n):
        kind = draw(st.sampled_from(["uniform", "far", "vertex", "near_vertex", "midpoint",
                                     "vertex_row"]))
        if kind == "uniform":
            pts.append((draw(st.floats(minx - pad, maxx + pad)),
                        draw(st.floats(miny - pad, maxy + pad))))
            continue
        if kind == "far":  # up to a county's size outside its bbox: the ring search's long way
            w, h = maxx - minx, maxy - miny
            pts.append((draw(st.floats(minx - w, maxx + w)), draw(st.floats(miny - h, maxy + h))))
            continue
        i = draw(st.integers(0, len(coords) - 2))
        (ax, ay), (bx, by) = coords[i], coords[i + 1]
        if kind == "vertex":
            pts.append((ax, ay))
        elif kind == "near_vertex":
            d = draw(st.sampled_from([1e-12, 1e-10, 1e-8, 1e-6, 1e-4]))
            pts.append((ax + draw(st.sampled_from([-d, 0.0, d])),
                        ay + draw(st.sampled_from([-d, 0.0, d]))))
        elif kind == "midpoint":
            pts.append(((ax + bx) / 2, (ay + by) / 2))
        else:
            pts.append((draw(st.floats(minx - pad, maxx + pad)), ay))
    lon, lat = np.array(pts).T
    return zone, lon, lat


def test_real_counties_cover_the_required_shapes(counties):
    zones, cz = counties
    nverts = {z.zone_id: sum(len(r) for r in ref.rings_of(z.geometry)) for z in zones}
    holes = {z.zone_id for z in zones
             if any(len(p.interiors) for p in getattr(z.geometry, "geoms", [z.geometry]))}
    parts = {z.zone_id for z in zones if len(getattr(z.geometry, "geoms", [z.geometry])) > 1}
    assert min(nverts.values()) <= 60 and max(nverts.values()) > 10_000
    assert {"411321", "421125", "420113"} <= holes
    assert {"411303", "350626", "810011"} <= parts
    assert cz.arrays.vertex_lon.shape[0] == sum(nverts.values())


@given(data=st.data())
@PROPS
def test_containment_on_real_counties_matches_ray_cast_and_shapely(counties, county_edges, data):
    zones, cz = counties
    zone, lon, lat = data.draw(county_points(zones))
    zi = cz.index[zone.zone_id]
    _check_containment(cz, zi, zone, county_edges[zone.zone_id], lon, lat)


@given(data=st.data())
@PROPS
def test_distances_on_real_counties_match_shapely_in_the_same_projection(counties, data):
    zones, cz = counties
    zone, lon, lat = data.draw(county_points(zones))
    zi = cz.index[zone.zone_id]
    _check_distances(cz, zi, zone, lon, lat)


def test_dense_grid_of_points_on_a_county_with_holes(counties, county_edges):
    """Every cell kind (inside, outside, boundary, holes) on one real county, densely."""
    zones, cz = counties
    zone = next(z for z in zones if z.zone_id == "411321")
    zi = cz.index["411321"]
    minx, miny, maxx, maxy = zone.geometry.bounds
    n = 120 if JIT else 25
    gx, gy = np.meshgrid(np.linspace(minx - 0.01, maxx + 0.01, n),
                         np.linspace(miny - 0.01, maxy + 0.01, n))
    inside = _check_containment(cz, zi, zone, county_edges["411321"], gx.ravel(), gy.ravel())
    assert 0.1 < inside.mean() < 0.9
    # Points in the holes are outside.
    hole = (zone.geometry.interiors[0] if zone.geometry.geom_type == "Polygon"
            else zone.geometry.geoms[0].interiors[0])
    p = shapely.Polygon(hole).representative_point()
    assert not cz.contains([p.x], [p.y], zi)[0]
    assert cz.distance_m([p.x], [p.y], zi)[0] > 0


# ----------------------------------------------------------------------------------------
# Synthetic nasty cases.
# ----------------------------------------------------------------------------------------

def _zone(geom, zone_id="z"):
    return load_zones({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"zone_id": zone_id},
         "geometry": shapely.geometry.mapping(geom)}]})[0]


SYNTHETIC = {
    # Horizontal and vertical edges everywhere, a hole sharing the shell's y values.
    "square_hole": shapely.Polygon([(113, 34), (114, 34), (114, 35), (113, 35)],
                                   [[(113.25, 34.25), (113.75, 34.25), (113.75, 34.75),
                                     (113.25, 34.75)]]),
    # Collinear vertices along every side, and a staircase of horizontal edges.
    "collinear": shapely.Polygon([(113, 34), (113.5, 34), (114, 34), (114, 34.5), (114, 35),
                                  (113.5, 35.0), (113.5, 34.5), (113.25, 34.5), (113, 34.5)]),
    "comb": shapely.Polygon([(0.0, 0.0), (1.0, 0.0), (1.0, 0.5)]
                            + [(1.0 - 0.1 * k - (0.05 if j else 0), 0.5 + (0.4 if j else 0))
                               for k in range(10) for j in (0, 1)][1:] + [(0.0, 0.5)]),
    "tiny": shapely.Polygon([(113.0, 34.0), (113.000001, 34.0), (113.000001, 34.000001),
                             (113.0, 34.000001)]),
    "huge": shapely.Polygon([(100, 25), (110, 25), (110, 33), (105, 29), (100, 33)]),
    "two_parts": shapely.MultiPolygon([shapely.box(113, 34, 113.1, 34.1),
                                       shapely.box(113.1, 34.1, 113.2, 34.2)]),
    "triangle_vertex_row": shapely.Polygon([(10, 10), (11, 11), (12, 10), (11, 12), (10, 13),
                                            (9, 11)]),
}


@pytest.fixture(scope="module")
def synthetic():
    zones = [_zone(g, name) for name, g in SYNTHETIC.items()]
    return zones, compile_zones(zones)


def _synthetic_points(zone, rng, n):
    minx, miny, maxx, maxy = zone.geometry.bounds
    w, h = maxx - minx, maxy - miny
    coords = np.concatenate([np.asarray(r) for r in ref.rings_of(zone.geometry)])
    uniq_x = np.unique(coords[:, 0])
    uniq_y = np.unique(coords[:, 1])
    mids = (coords[:-1] + coords[1:]) / 2
    if len(coords) > n:  # densified long edges: a sample of their vertices is enough
        coords, mids = coords[rng.choice(len(coords), n)], mids[rng.choice(len(mids), n)]
    pts = [coords, mids]  # exactly on vertices, and on edges
    # On the horizontal and vertical lines through vertices, inside and outside.
    pts.append(np.column_stack([rng.uniform(minx - w / 4, maxx + w / 4, n), rng.choice(uniq_y, n)]))
    pts.append(np.column_stack([rng.choice(uniq_x, n), rng.uniform(miny - h / 4, maxy + h / 4, n)]))
    pts.append(np.column_stack([rng.uniform(minx - w / 4, maxx + w / 4, n),
                                rng.uniform(miny - h / 4, maxy + h / 4, n)]))
    p = np.concatenate(pts)
    return p[:, 0], p[:, 1]


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_shapes_match_ray_cast_shapely_and_distances(synthetic, name):
    zones, cz = synthetic
    zi = cz.index[name]
    zone = zones[zi]
    rng = np.random.default_rng(len(name))
    lon, lat = _synthetic_points(zone, rng, 400 if JIT else 60)
    rings = ref.rings_of(zone.geometry)
    # The vectorised reference is the loop reference (same IEEE operations).
    for x, y in zip(lon[:40], lat[:40]):
        assert (ref.ray_cast_contains_np(ref.edge_arrays(rings), x, y)
                == ref.ray_cast_contains(rings, x, y))
    _check_containment(cz, zi, zone, ref.edge_arrays(rings), lon, lat)
    _check_distances(cz, zi, zone, lon, lat)


def test_points_exactly_on_edges_are_at_distance_zero(synthetic):
    _zones, cz = synthetic
    zi = cz.index["square_hole"]
    lon = np.array([113.0, 113.5, 114.0, 113.25, 113.5])
    lat = np.array([34.5, 34.0, 34.0, 34.5, 34.75])
    _, dist, bdist = cz.locate(lon, lat, zi)
    np.testing.assert_allclose(bdist, 0.0, atol=1e-6)
    np.testing.assert_allclose(dist, 0.0, atol=1e-6)


def test_distance_grows_like_the_geodesic_away_from_a_county(counties):
    """Far outside the grid the ring search still finds the nearest edge."""
    zones, cz = counties
    zone = next(z for z in zones if z.zone_id == "330723")
    zi = cz.index["330723"]
    minx, miny, maxx, maxy = zone.geometry.bounds
    lon = np.array([maxx + 0.5, minx - 1.0, (minx + maxx) / 2])
    lat = np.array([(miny + maxy) / 2, miny - 1.0, maxy + 0.3])
    _check_distances(cz, zi, zone, lon, lat)
    assert cz.distance_m(lon, lat, zi).min() > 20_000


# ----------------------------------------------------------------------------------------
# Circles.
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def circles():
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"zone_id": "home", "radius_m": 200},
         "geometry": {"type": "Point", "coordinates": [113.6253, 34.7466]}},
        {"type": "Feature", "properties": {"zone_id": "school", "radius_m": 5_000},
         "geometry": {"type": "Point", "coordinates": [126.65, 45.75]}},
        {"type": "Feature", "properties": {"zone_id": "tiny", "radius_m": 0.5},
         "geometry": {"type": "Point", "coordinates": [-0.1276, 51.5072]}},
    ]}
    zones = load_zones(fc)
    return zones, compile_zones(zones)


@given(data=st.data())
@PROPS
def test_circles_against_the_geodesic(circles, data):
    zones, cz = circles
    zi = data.draw(st.integers(0, len(zones) - 1))
    lon0, lat0, r = zones[zi].circle
    az = data.draw(st.floats(0, 360))
    d = data.draw(st.floats(0, 20 * r))
    plon, plat, _ = pyproj.Geod(ellps="WGS84").fwd(lon0, lat0, az, d)
    inside, dist, bdist = cz.locate([plon], [plat], zi)
    expect = max(d - r, 0.0)
    if expect:
        assert abs(dist[0] - expect) <= max(0.5, 0.005 * expect)
    elif r - d > 1e-3:
        assert dist[0] == 0.0  # clearly inside: no distance at all
    else:
        # On the circle itself (d == r, e.g. 0.5 m from a 0.5 m circle's centre): the
        # kernel's metric frame and the geodesic may disagree by the boundary tolerance below.
        assert dist[0] <= 1e-3
    assert abs(bdist[0] - abs(d - r)) <= max(1e-3, 1e-4 * d)
    if abs(d - r) > 1e-3:
        assert bool(inside[0]) == (d < r)


# ----------------------------------------------------------------------------------------
# The metric frame.
# ----------------------------------------------------------------------------------------

@given(lon0=st.floats(73, 135), lat0=st.floats(18, 54), dlon=st.floats(-3, 3),
       lat=st.floats(-80, 80))
@PROPS
def test_tm_forward_matches_pyproj(lon0, lat0, dlon, lat):
    tr = ref.tm_transformer(lon0, 0.0)
    ex, ey = tr.transform(lon0 + dlon, lat)
    x, y = K.tm_forward(lon0, lon0 + dlon, lat)
    assert abs(x - ex) < 1e-6 and abs(y - ey) < 1e-6


@given(lon0=st.floats(73, 135), lat0=st.floats(18, 53),
       a=st.tuples(st.floats(-2.5, 2.5), st.floats(-2.5, 2.5)),
       b=st.tuples(st.floats(-2.5, 2.5), st.floats(-2.5, 2.5)))
@PROPS
def test_frame_distances_within_half_a_percent_of_the_geodesic_across_a_province(lon0, lat0, a, b):
    """Two points anywhere in a 5 x 5 degree box (larger than any Chinese province's
    county-to-county span the engine measures) around the zone origin."""
    _, _, geodesic = pyproj.Geod(ellps="WGS84").inv(lon0 + a[0], lat0 + a[1],
                                                    lon0 + b[0], lat0 + b[1])
    ax, ay = K.tm_forward(lon0, lon0 + a[0], lat0 + a[1])
    bx, by = K.tm_forward(lon0, lon0 + b[0], lat0 + b[1])
    planar = math.hypot(bx - ax, by - ay)
    assert abs(planar - geodesic) <= max(0.005 * geodesic, 1e-6)


# ----------------------------------------------------------------------------------------
# The kernels called from other njit code, and the numpy API's input checks.
# ----------------------------------------------------------------------------------------

@njit(cache=False)
def _rule_like_kernel(za, zone_idx, lon, lat, out_in, out_d):
    for i in range(lon.shape[0]):
        g_lon, g_lat = K.gcj02_to_wgs84_point(lon[i], lat[i])
        out_in[i] = K.zone_contains(za, zone_idx[i], g_lon, g_lat)
        out_d[i] = K.zone_distance_m(za, zone_idx[i], g_lon, g_lat)


def test_kernels_callable_from_user_njit_code(counties):
    zones, cz = counties
    rng = np.random.default_rng(7)
    zi = rng.integers(0, len(zones), 300)
    b = cz.arrays.zone_bbox[zi]
    lon = rng.uniform(b[:, 0], b[:, 2])
    lat = rng.uniform(b[:, 1], b[:, 3])
    from geofence.gcj02 import gcj02_to_wgs84, wgs84_to_gcj02

    glon, glat = wgs84_to_gcj02(lon, lat)
    out_in = np.empty(300, dtype=np.bool_)
    out_d = np.empty(300)
    _rule_like_kernel(cz.arrays, zi, glon, glat, out_in, out_d)
    back_lon, back_lat = gcj02_to_wgs84(glon, glat)
    np.testing.assert_array_equal(out_in, cz.contains(back_lon, back_lat, zi))
    np.testing.assert_array_equal(out_d, cz.distance_m(back_lon, back_lat, zi))
    # Round trip through GCJ-02 moves points by far less than a millimetre.
    assert np.abs(back_lon - lon).max() < 1e-8 and np.abs(back_lat - lat).max() < 1e-8
    assert 0 < out_in.sum() < 300


@pytest.mark.parametrize(
    ("lon", "lat", "zone_idx", "message"),
    [
        ([113.0, 113.1], [34.0], 0, "same length"),
        ([[113.0]], [[34.0]], 0, "1-D"),
        ([113.0, float("nan")], [34.0, 34.0], 0, r"lon\[1\]"),
        ([113.0], [95.0], 0, r"lat\[0\] = 95"),
        ([113.0, 113.0], [34.0, 34.0], [0, 99], r"zone_idx\[1\] = 99 is out of range"),
        ([113.0], [34.0], [0.0], "integer"),
        ([113.0, 113.0], [34.0, 34.0], [0, 0, 0], "one entry per point"),
        ([113.0], [34.0], "no-such-zone", "unknown zone id"),
    ],
)
def test_numpy_api_rejects_bad_input_with_a_useful_message(synthetic, lon, lat, zone_idx, message):
    _, cz = synthetic
    for method in (cz.contains, cz.distance_m, cz.locate):
        with pytest.raises(ValueError, match=message):
            method(lon, lat, zone_idx)


def test_empty_batches_and_zone_ids(synthetic):
    _, cz = synthetic
    assert cz.contains([], [], 0).shape == (0,)
    assert cz.contains([113.5], [34.1], "square_hole")[0]


# ----------------------------------------------------------------------------------------
# rtree candidates.
# ----------------------------------------------------------------------------------------

def test_candidates_equal_a_brute_force_bbox_scan():
    rng = np.random.default_rng(3)
    feats = []
    for i in range(300):
        lon, lat = rng.uniform(113, 114), rng.uniform(34, 35)
        if i % 2:
            feats.append({"type": "Feature",
                          "properties": {"zone_id": f"c{i}",
                                         "radius_m": float(rng.uniform(50, 3000))},
                          "geometry": {"type": "Point", "coordinates": [lon, lat]}})
        else:
            s = rng.uniform(0.001, 0.05)
            feats.append({"type": "Feature", "properties": {"zone_id": f"p{i}"},
                          "geometry": shapely.geometry.mapping(
                              shapely.box(lon, lat, lon + s, lat + s))})
    zones = load_zones({"type": "FeatureCollection", "features": feats})
    cz = compile_zones(zones)
    lon = rng.uniform(112.9, 114.1, 3000)
    lat = rng.uniform(33.9, 35.1, 3000)
    offsets, zidx = cz.candidates(lon, lat)
    bb = cz.arrays.zone_bbox
    for i in range(len(lon)):
        expect = np.flatnonzero((bb[:, 0] <= lon[i]) & (lon[i] <= bb[:, 2])
                                & (bb[:, 1] <= lat[i]) & (lat[i] <= bb[:, 3]))
        np.testing.assert_array_equal(zidx[offsets[i]:offsets[i + 1]], expect)
    assert offsets[-1] > 0
    off2, z2, inside = cz.contains_candidates(lon, lat)
    np.testing.assert_array_equal(off2, offsets)
    owner = np.repeat(np.arange(len(lon)), np.diff(offsets))
    np.testing.assert_array_equal(inside, cz.contains(lon[owner], lat[owner], z2))
    assert inside.any() and not inside.all()


def test_circle_bbox_and_candidates_hold_the_whole_circle(circles):
    """Points just inside the exact circle but outside its drawn polygon are candidates."""
    zones, cz = circles
    geod = pyproj.Geod(ellps="WGS84")
    for zi, zone in enumerate(zones):
        lon0, lat0, r = zone.circle
        az = np.arange(0.0, 360.0, 360.0 / 64 / 2)[1::2]  # between the drawing's vertices
        plon, plat, _ = geod.fwd(np.full_like(az, lon0), np.full_like(az, lat0), az,
                                 np.full_like(az, r * 0.9999))
        assert cz.contains(plon, plat, zi).all()
        assert not shapely.contains_xy(zone.geometry, plon, plat).any() or r < 1
        offsets, zidx = cz.candidates(plon, plat)
        assert all(zi in zidx[offsets[i]:offsets[i + 1]] for i in range(len(az)))


@given(data=st.data())
@PROPS
def test_grid_ring_bound_is_a_lower_bound_of_the_boundary_distance(counties, data):
    """``cell_ring`` (cells to the nearest boundary cell) times ``grid_cell_min_m`` never
    exceeds the true distance to the boundary: the ring search and the engine rely on it."""
    zones, cz = counties
    zone, lon, lat = data.draw(county_points(zones))
    zi = cz.index[zone.zone_id]
    a = cz.arrays
    nx, ny = a.grid_shape[zi]
    ix = np.clip(((lon - a.grid_origin[zi, 0]) * a.grid_inv_cell[zi, 0]).astype(np.int64),
                 0, nx - 1)
    iy = np.clip(((lat - a.grid_origin[zi, 1]) * a.grid_inv_cell[zi, 1]).astype(np.int64),
                 0, ny - 1)
    ring = a.cell_ring[a.grid_cell_offsets[zi] + iy * nx + ix]
    bound = np.maximum(ring - 1, 0) * a.grid_cell_min_m[zi]
    _, ref_bdist = ref.shapely_distances_m(zone, a.zone_tm[zi, 0], a.zone_tm[zi, 1], lon, lat)
    assert (bound <= ref_bdist + 1e-6).all()
    # Cells away from the boundary really are: some drawn points sit several rings deep.
    assert a.grid_cell_min_m[zi] > 0


def test_grid_cell_min_m_is_a_lower_bound_of_cell_sizes(counties):
    zones, cz = counties
    a = cz.arrays
    for zi, zone in enumerate(zones):
        nx, ny = a.grid_shape[zi]
        gx0, gy0 = a.grid_origin[zi]
        dx, dy = 1 / a.grid_inv_cell[zi, 0], 1 / a.grid_inv_cell[zi, 1]
        # Cell widths along the top and bottom grid lines, heights along the side lines.
        xs = gx0 + np.arange(nx + 1) * dx
        for y in (gy0, gy0 + ny * dy):
            x_m, _ = zip(*(K.tm_forward(a.zone_tm[zi, 0], x, y) for x in xs))
            assert np.diff(x_m).min() >= a.grid_cell_min_m[zi]
        ys = gy0 + np.arange(ny + 1) * dy
        _, y_m = zip(*(K.tm_forward(a.zone_tm[zi, 0], gx0, y) for y in ys))
        assert np.diff(y_m).min() >= a.grid_cell_min_m[zi]



def test_locate_many_over_candidates_equals_locate_per_entry(counties):
    zones, cz = counties
    rng = np.random.default_rng(11)
    # Points around the adjacent Nanyang counties, several candidates each.
    nanyang = [cz.index[z.zone_id] for z in zones if z.zone_id.startswith("4113")]
    bb = cz.arrays.zone_bbox[nanyang]
    lon = rng.uniform(bb[:, 0].min(), bb[:, 2].max(), 400)
    lat = rng.uniform(bb[:, 1].min(), bb[:, 3].max(), 400)
    offsets, zidx = cz.candidates(lon, lat)
    assert (np.diff(offsets) > 1).any()
    inside, dist, bdist = cz.locate_many(lon, lat, offsets, zidx)
    owner = np.repeat(np.arange(len(lon)), np.diff(offsets))
    e_in, e_d, e_b = cz.locate(lon[owner], lat[owner], zidx)
    np.testing.assert_array_equal(inside, e_in)
    np.testing.assert_array_equal(dist, e_d)
    np.testing.assert_array_equal(bdist, e_b)
    # Counties do not overlap: a point is inside at most one (boundary points aside).
    assert np.bincount(owner, weights=inside, minlength=len(lon)).max() <= 1
    for bad_offsets, message in (([0, 1], "n \\+ 1"), (np.r_[1, offsets[1:]], "start at 0"),
                                 (np.r_[offsets[:-1], offsets[-1] + 1], "end at len"),
                                 (np.r_[0, 2, 1, offsets[3:]], "must not decrease")):
        with pytest.raises(ValueError, match=message):
            cz.locate_many(lon, lat, bad_offsets, zidx)
