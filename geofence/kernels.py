"""Pure numba kernels of the geofence core: GCJ-02, the metric projection, containment
and distances.

Every function here takes arrays and numbers and returns numbers or fills arrays: no
I/O, no clocks, no Python objects. Positions are WGS-84 longitude/latitude in degrees;
distances are metres. The zone set is one :class:`geofence.compile.ZoneArrays` named
tuple (``za``) and a dense zone index ``z``.

Public kernels, callable from other ``@njit`` code (the engine's rule kernels):

- ``zone_contains(za, z, lon, lat) -> bool``
- ``zone_distance_m(za, z, lon, lat) -> float`` (0 inside, else metres to the zone)
- ``zone_boundary_distance_m(za, z, lon, lat) -> float`` (metres to the nearest edge)
- ``gcj02_to_wgs84_point(lon, lat)`` / ``wgs84_to_gcj02_point(lon, lat)``
- ``tm_forward(lon0, lon, lat) -> (x_m, y_m)`` (the per-zone metric frame)

The scalar kernels never allocate, and are compiled without numba's reference counting
(``_nrt=False``): they are called once per point, and the atomic increments and
decrements numba would otherwise emit for every array of ``za`` on every call cost
~20x the containment test itself (and contend between threads). Batch kernels
(``_contains_batch`` ...) are parallel over points with one contiguous range per thread
and sit behind the validating numpy methods of :class:`geofence.compile.CompiledZones`.

Containment is decided in degrees with the crossing-number (even-odd) rule, exactly as
a naive ray cast along +longitude decides it, so answers match a plain loop over all
edges bit for bit; the grid only skips edges that cannot change the answer (see
``_polygon_contains``). Distances are measured in a transverse Mercator frame centred
on each zone (see ``tm_forward`` and docs/zones.md).
"""

from __future__ import annotations

import cmath
import math

import numba
from numba import njit, prange

# Cell states of the per-zone grid.
CELL_OUTSIDE = 0
CELL_INSIDE = 1
CELL_BOUNDARY = 2

# Zone kinds.
KIND_POLYGON = 0
KIND_CIRCLE = 1

# --------------------------------------------------------------------------------------
# GCJ-02 (the obfuscated datum of Chinese map services).
#
# The forward transform is the widely published one (Krasovsky 1940 semi-major axis
# 6378245 m and its eccentricity); every public implementation that matches Amap's
# output uses exactly these constants. Outside the rectangle below GCJ-02 == WGS-84.
# --------------------------------------------------------------------------------------

_GCJ_A = 6378245.0
_GCJ_EE = 0.00669342162296594323
_CHINA_LON_MIN = 72.004
_CHINA_LON_MAX = 137.8347
_CHINA_LAT_MIN = 0.8293
_CHINA_LAT_MAX = 55.8271
# Iterative inverse: stop when the forward image is this close to the target, degrees
# (1e-10 degrees is about 0.01 mm), or after this many steps.
_GCJ_INV_TOL_DEG = 1e-10
_GCJ_INV_MAX_ITER = 30


@njit(cache=True, _nrt=False)
def outside_china(lon: float, lat: float) -> bool:
    """True where GCJ-02 is defined as identical to WGS-84 (outside China's rectangle)."""
    return (lon < _CHINA_LON_MIN or lon > _CHINA_LON_MAX
            or lat < _CHINA_LAT_MIN or lat > _CHINA_LAT_MAX)


@njit(cache=True, _nrt=False)
def _gcj_delta(lon: float, lat: float):
    """GCJ-02 minus WGS-84 at a WGS-84 point, (dlon, dlat) in degrees."""
    x = lon - 105.0
    y = lat - 35.0
    pi = math.pi
    d = (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x)) + d
    dlat += (20.0 * math.sin(y * pi) + 40.0 * math.sin(y / 3.0 * pi)) * 2.0 / 3.0
    dlat += (160.0 * math.sin(y / 12.0 * pi) + 320.0 * math.sin(y * pi / 30.0)) * 2.0 / 3.0
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x)) + d
    dlon += (20.0 * math.sin(x * pi) + 40.0 * math.sin(x / 3.0 * pi)) * 2.0 / 3.0
    dlon += (150.0 * math.sin(x / 12.0 * pi) + 300.0 * math.sin(x / 30.0 * pi)) * 2.0 / 3.0
    rad_lat = lat / 180.0 * pi
    magic = math.sin(rad_lat)
    magic = 1.0 - _GCJ_EE * magic * magic
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_GCJ_A * (1.0 - _GCJ_EE)) / (magic * sqrt_magic) * pi)
    dlon = (dlon * 180.0) / (_GCJ_A / sqrt_magic * math.cos(rad_lat) * pi)
    return dlon, dlat


@njit(cache=True, _nrt=False)
def wgs84_to_gcj02_point(lon: float, lat: float):
    """WGS-84 (lon, lat) degrees -> GCJ-02 (lon, lat) degrees; identity outside China."""
    if outside_china(lon, lat):
        return lon, lat
    dlon, dlat = _gcj_delta(lon, lat)
    return lon + dlon, lat + dlat


@njit(cache=True, _nrt=False)
def gcj02_to_wgs84_point(lon: float, lat: float):
    """GCJ-02 (lon, lat) degrees -> WGS-84 (lon, lat) degrees; identity outside China.

    Fixed-point iteration on the forward transform (its Jacobian is the identity to
    within ~1e-5), converging to ~1e-10 degrees in 3-5 steps.
    """
    if outside_china(lon, lat):
        return lon, lat
    # Solve w + delta(w) = g. The offset formula is applied even if an iterate strays
    # just outside the rectangle, so points within ~700 m of its border converge
    # instead of bouncing between the two definitions.
    w_lon = lon
    w_lat = lat
    for _ in range(_GCJ_INV_MAX_ITER):
        d_lon, d_lat = _gcj_delta(w_lon, w_lat)
        n_lon = lon - d_lon
        n_lat = lat - d_lat
        done = abs(n_lon - w_lon) < _GCJ_INV_TOL_DEG and abs(n_lat - w_lat) < _GCJ_INV_TOL_DEG
        w_lon = n_lon
        w_lat = n_lat
        if done:
            break
    return w_lon, w_lat


@njit(cache=True)
def _gcj02_serial(lon, lat, out_lon, out_lat, inverse):
    """_gcj02_batch on the calling thread: for small batches (a zone's vertices, one
    circle centre), where waking the thread pool costs more than the work."""
    for i in range(lon.shape[0]):
        if inverse:
            out_lon[i], out_lat[i] = gcj02_to_wgs84_point(lon[i], lat[i])
        else:
            out_lon[i], out_lat[i] = wgs84_to_gcj02_point(lon[i], lat[i])


@njit(cache=True, parallel=True)
def _gcj02_batch(lon, lat, out_lon, out_lat, inverse, nchunks):
    n = lon.shape[0]
    for c in prange(nchunks):
        start = c * n // nchunks
        stop = (c + 1) * n // nchunks
        for i in range(start, stop):
            if inverse:
                out_lon[i], out_lat[i] = gcj02_to_wgs84_point(lon[i], lat[i])
            else:
                out_lon[i], out_lat[i] = wgs84_to_gcj02_point(lon[i], lat[i])


# --------------------------------------------------------------------------------------
# Metric frame: ellipsoidal transverse Mercator (WGS-84, scale 1 on the central
# meridian), the Krueger series to 6th order in n as given by Karney (2011),
# "Transverse Mercator with an accuracy of a few nanometres", eq. (11), (35). This is
# the series PROJ's tmerc uses; tests hold this implementation against pyproj.
# --------------------------------------------------------------------------------------

_WGS_A = 6378137.0
_WGS_F = 1.0 / 298.257223563
_N = _WGS_F / (2.0 - _WGS_F)
_E = math.sqrt(_WGS_F * (2.0 - _WGS_F))
_TM_A = _WGS_A / (1.0 + _N) * (1.0 + _N**2 / 4.0 + _N**4 / 64.0 + _N**6 / 256.0)
_AL1 = (_N / 2 - 2 * _N**2 / 3 + 5 * _N**3 / 16 + 41 * _N**4 / 180 - 127 * _N**5 / 288
        + 7891 * _N**6 / 37800)
_AL2 = (13 * _N**2 / 48 - 3 * _N**3 / 5 + 557 * _N**4 / 1440 + 281 * _N**5 / 630
        - 1983433 * _N**6 / 1935360)
_AL3 = 61 * _N**3 / 240 - 103 * _N**4 / 140 + 15061 * _N**5 / 26880 + 167603 * _N**6 / 181440
_AL4 = 49561 * _N**4 / 161280 - 179 * _N**5 / 168 + 6601661 * _N**6 / 7257600
_AL5 = 34729 * _N**5 / 80640 - 3418889 * _N**6 / 1995840
_AL6 = 212378941 * _N**6 / 319334400


@njit(cache=True, _nrt=False)
def tm_forward(lon0: float, lon: float, lat: float):
    """Transverse Mercator of a WGS-84 point on central meridian ``lon0`` (degrees).

    Returns (x_m, y_m): easting from the central meridian and northing from the equator,
    metres, scale factor 1 on the central meridian.
    """
    phi = math.radians(lat)
    dlam = lon - lon0
    if dlam > 180.0:
        dlam -= 360.0
    elif dlam < -180.0:
        dlam += 360.0
    lam = math.radians(dlam)
    s = math.sin(phi)
    # tan of the conformal latitude.
    tau = math.sinh(math.atanh(s) - _E * math.atanh(_E * s))
    cl = math.cos(lam)
    xi = math.atan2(tau, cl)
    eta = math.asinh(math.sin(lam) / math.sqrt(tau * tau + cl * cl))
    z = complex(2.0 * xi, 2.0 * eta)
    c2 = 2.0 * cmath.cos(z)
    s1 = cmath.sin(z)
    s2 = c2 * s1
    s3 = c2 * s2 - s1
    s4 = c2 * s3 - s2
    s5 = c2 * s4 - s3
    s6 = c2 * s5 - s4
    w = complex(xi, eta) + _AL1 * s1 + _AL2 * s2 + _AL3 * s3 + _AL4 * s4 + _AL5 * s5 + _AL6 * s6
    return _TM_A * w.imag, _TM_A * w.real


@njit(cache=True, _nrt=False)
def zone_xy_m(za, z: int, lon: float, lat: float):
    """A WGS-84 point in zone ``z``'s metric frame (metres from the zone's origin)."""
    x, y = tm_forward(za.zone_tm[z, 0], lon, lat)
    return x, y - za.zone_tm[z, 2]


@njit(cache=True, parallel=True)
def _tm_batch(lon0, y0, lon, lat, out_x, out_y, nchunks):
    n = lon.shape[0]
    for c in prange(nchunks):
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            x, y = tm_forward(lon0, lon[i], lat[i])
            out_x[i] = x
            out_y[i] = y - y0


# --------------------------------------------------------------------------------------
# Containment.
# --------------------------------------------------------------------------------------


@njit(cache=True, _nrt=False)
def _cell_ix(za, z: int, lon: float) -> int:
    """Grid column of a longitude (clamped into the grid)."""
    f = (lon - za.grid_origin[z, 0]) * za.grid_inv_cell[z, 0]
    nx = za.grid_shape[z, 0]
    if not f >= 0.0:  # also catches NaN
        return 0
    if f >= nx:
        return nx - 1
    return int(f)


@njit(cache=True, _nrt=False)
def _cell_iy(za, z: int, lat: float) -> int:
    """Grid row of a latitude (clamped into the grid)."""
    f = (lat - za.grid_origin[z, 1]) * za.grid_inv_cell[z, 1]
    ny = za.grid_shape[z, 1]
    if not f >= 0.0:
        return 0
    if f >= ny:
        return ny - 1
    return int(f)


@njit(cache=True, _nrt=False)
def _polygon_contains(za, z: int, lon: float, lat: float) -> bool:
    """Even-odd containment of (lon, lat) in polygon zone ``z`` (all parts and holes).

    The answer is the parity of edges crossed by the ray from the point towards +lon,
    with the half-open rule ``(ay > lat) != (by > lat)``, i.e. exactly the naive ray
    cast. The grid lets us count only part of the ray: walking right along the point's
    row from its cell, every crossing whose x falls in a *boundary* cell is counted in
    that cell (each crossing is attributed to the one cell its x maps to, so an edge
    listed in several cells counts once); at the first cell with no edges the rest of
    the ray's parity is that cell's precomputed inside/outside state.
    """
    bb = za.zone_bbox
    if lon < bb[z, 0] or lon > bb[z, 2] or lat < bb[z, 1] or lat > bb[z, 3]:
        return False
    nx = za.grid_shape[z, 0]
    ix = _cell_ix(za, z, lon)
    iy = _cell_iy(za, z, lat)
    row = za.grid_cell_offsets[z] + iy * nx
    state = za.cell_state[row + ix]
    if state != CELL_BOUNDARY:
        return state == CELL_INSIDE
    # Each listed edge's endpoints are stored with the list (cell_edge_lonlat), so a
    # boundary cell is one contiguous read rather than scattered vertex lookups.
    seg = za.cell_edge_lonlat
    inside = False
    k = ix
    while k < nx:
        cell = row + k
        state = za.cell_state[cell]
        if state != CELL_BOUNDARY:
            return inside != (state == CELL_INSIDE)
        for j in range(za.cell_edge_offsets[cell], za.cell_edge_offsets[cell + 1]):
            ay = seg[j, 1]
            by = seg[j, 3]
            if (ay > lat) != (by > lat):
                ax = seg[j, 0]
                x = (seg[j, 2] - ax) * (lat - ay) / (by - ay) + ax
                if lon < x and _cell_ix(za, z, x) == k:
                    inside = not inside
        k += 1
    # Ran off the right of the grid: beyond it everything is outside.
    return inside


@njit(cache=True, _nrt=False)
def _circle_centre_distance_m(za, z: int, lon: float, lat: float) -> float:
    """Metres from (lon, lat) to circle zone ``z``'s centre (its frame is centred there)."""
    x, y = zone_xy_m(za, z, lon, lat)
    return math.sqrt(x * x + y * y)


@njit(cache=True, _nrt=False)
def zone_contains(za, z: int, lon: float, lat: float) -> bool:
    """True when WGS-84 (lon, lat) degrees is inside zone ``z`` (holes excluded).

    Polygons: even-odd rule in degrees, O(1) for points in grid cells away from the
    boundary. Circles: centre distance in metres <= radius_m.
    """
    if za.zone_kind[z] == KIND_CIRCLE:
        return _circle_centre_distance_m(za, z, lon, lat) <= za.zone_circle[z, 2]
    return _polygon_contains(za, z, lon, lat)


@njit(cache=True, _nrt=False)
def _segment_distance(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    """Euclidean distance from P to segment AB (same planar units)."""
    dx = bx - ax
    dy = by - ay
    wx = px - ax
    wy = py - ay
    dd = dx * dx + dy * dy
    if dd > 0.0:
        t = (wx * dx + wy * dy) / dd
        if t > 1.0:
            t = 1.0
        elif t < 0.0:
            t = 0.0
        wx -= t * dx
        wy -= t * dy
    return math.sqrt(wx * wx + wy * wy)


@njit(cache=True, _nrt=False)
def _cell_min_distance(za, cell: int, px: float, py: float, best: float) -> float:
    vx = za.vertex_x_m
    vy = za.vertex_y_m
    for j in range(za.cell_edge_offsets[cell], za.cell_edge_offsets[cell + 1]):
        e = za.cell_edges[j]
        d = _segment_distance(px, py, vx[e], vy[e], vx[e + 1], vy[e + 1])
        best = min(best, d)
    return best


@njit(cache=True, _nrt=False)
def _polygon_boundary_distance_m(za, z: int, lon: float, lat: float) -> float:
    """Metres from (lon, lat) to the nearest edge of polygon zone ``z``.

    Searches grid cells in growing square rings around the point's (clamped) cell and
    stops once no unvisited ring can hold anything nearer: a cell r rings away is at
    least (r - 1) * grid_cell_min_m away. Rings closer than the cell's precomputed
    ``cell_ring`` (Chebyshev distance to the nearest boundary cell) are skipped.
    """
    px, py = zone_xy_m(za, z, lon, lat)
    nx = za.grid_shape[z, 0]
    ny = za.grid_shape[z, 1]
    base = za.grid_cell_offsets[z]
    ix = _cell_ix(za, z, lon)
    iy = _cell_iy(za, z, lat)
    cmin = za.grid_cell_min_m[z]
    best = math.inf
    r = za.cell_ring[base + iy * nx + ix]
    rmax = max(nx, ny)
    while r <= rmax:
        if best <= (r - 1) * cmin:
            break
        if r == 0:
            best = _cell_min_distance(za, base + iy * nx + ix, px, py, best)
        else:
            x0 = ix - r
            x1 = ix + r
            y0 = iy - r
            y1 = iy + r
            cx0 = max(x0, 0)
            cx1 = min(x1, nx - 1)
            if y0 >= 0:
                for cx in range(cx0, cx1 + 1):
                    best = _cell_min_distance(za, base + y0 * nx + cx, px, py, best)
            if y1 < ny:
                for cx in range(cx0, cx1 + 1):
                    best = _cell_min_distance(za, base + y1 * nx + cx, px, py, best)
            cy0 = max(y0 + 1, 0)
            cy1 = min(y1 - 1, ny - 1)
            if x0 >= 0:
                for cy in range(cy0, cy1 + 1):
                    best = _cell_min_distance(za, base + cy * nx + x0, px, py, best)
            if x1 < nx:
                for cy in range(cy0, cy1 + 1):
                    best = _cell_min_distance(za, base + cy * nx + x1, px, py, best)
        r += 1
    return best


@njit(cache=True, _nrt=False)
def zone_boundary_distance_m(za, z: int, lon: float, lat: float) -> float:
    """Metres from WGS-84 (lon, lat) to the nearest point of zone ``z``'s boundary.

    Measured in the zone's transverse Mercator frame (docs/zones.md gives the error).
    """
    if za.zone_kind[z] == KIND_CIRCLE:
        return abs(_circle_centre_distance_m(za, z, lon, lat) - za.zone_circle[z, 2])
    return _polygon_boundary_distance_m(za, z, lon, lat)


@njit(cache=True, _nrt=False)
def zone_distance_m(za, z: int, lon: float, lat: float) -> float:
    """Metres from WGS-84 (lon, lat) to zone ``z``: 0 inside, else to the boundary."""
    if za.zone_kind[z] == KIND_CIRCLE:
        d = _circle_centre_distance_m(za, z, lon, lat) - za.zone_circle[z, 2]
        return max(0.0, d)
    if _polygon_contains(za, z, lon, lat):
        return 0.0
    return _polygon_boundary_distance_m(za, z, lon, lat)


# --------------------------------------------------------------------------------------
# Batch kernels: ``nchunks`` contiguous ranges of points (see ``chunks_for``), each task
# writes its own slice. The count is passed in because reading numba's thread count
# inside a kernel would stop it from being cached.
# --------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _fast_cell_state(za, z, lon, lat):
    """Fast path of the batch kernels, inlined into their loops: the cell state of a
    polygon point (outside for points off the bbox), or CELL_BOUNDARY when the full
    kernel must decide (boundary cells, circles)."""
    if za.zone_kind[z] != KIND_POLYGON:
        return CELL_BOUNDARY
    if (lon < za.zone_bbox[z, 0] or lon > za.zone_bbox[z, 2]
            or lat < za.zone_bbox[z, 1] or lat > za.zone_bbox[z, 3]):
        return CELL_OUTSIDE
    nx = za.grid_shape[z, 0]
    ny = za.grid_shape[z, 1]
    f = (lon - za.grid_origin[z, 0]) * za.grid_inv_cell[z, 0]
    ix = 0 if not f >= 0.0 else (nx - 1 if f >= nx else int(f))
    f = (lat - za.grid_origin[z, 1]) * za.grid_inv_cell[z, 1]
    iy = 0 if not f >= 0.0 else (ny - 1 if f >= ny else int(f))
    return za.cell_state[za.grid_cell_offsets[z] + iy * nx + ix]


@njit(cache=True)
def _first_out_of_range(a, limit):
    """Index of the first element of ``a`` not in [-limit, limit] (NaN included), or -1."""
    for i in range(a.shape[0]):
        if not abs(a[i]) <= limit:
            return i
    return -1


@njit(cache=True)
def _first_bad_zone(zone_idx, n_zones):
    """Index of the first zone index outside [0, n_zones), or -1."""
    for i in range(zone_idx.shape[0]):
        if zone_idx[i] < 0 or zone_idx[i] >= n_zones:
            return i
    return -1


def chunks_for(n: int) -> int:
    """How many point ranges a batch kernel splits ``n`` points into (a few per thread)."""
    return max(1, min(n, numba.get_num_threads() * 4))


@njit(cache=True, parallel=True)
def _contains_batch(za, lon, lat, zone_idx, out, nchunks):
    n = lon.shape[0]
    for c in prange(nchunks):
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            z = zone_idx[i]
            state = _fast_cell_state(za, z, lon[i], lat[i])
            out[i] = ((state == CELL_INSIDE) if state != CELL_BOUNDARY
                      else zone_contains(za, z, lon[i], lat[i]))


@njit(cache=True, parallel=True)
def _distance_batch(za, lon, lat, zone_idx, out, nchunks):
    n = lon.shape[0]
    for c in prange(nchunks):
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            z = zone_idx[i]
            if _fast_cell_state(za, z, lon[i], lat[i]) == CELL_INSIDE:
                out[i] = 0.0
            else:
                out[i] = zone_distance_m(za, z, lon[i], lat[i])


@njit(cache=True, parallel=True)
def _locate_batch(za, lon, lat, zone_idx, inside, distance, boundary, nchunks):
    n = lon.shape[0]
    for c in prange(nchunks):
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            z = zone_idx[i]
            ins = zone_contains(za, z, lon[i], lat[i])
            b = zone_boundary_distance_m(za, z, lon[i], lat[i])
            inside[i] = ins
            boundary[i] = b
            distance[i] = 0.0 if ins else b


@njit(cache=True, parallel=True)
def _locate_csr_batch(za, lon, lat, offsets, zone_idx, inside, distance, boundary, nchunks):
    """Like ``_locate_batch`` for every (point i, zone_idx[j]), offsets[i] <= j < offsets[i+1]."""
    n = lon.shape[0]
    for c in prange(nchunks):
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            for j in range(offsets[i], offsets[i + 1]):
                z = zone_idx[j]
                ins = zone_contains(za, z, lon[i], lat[i])
                b = zone_boundary_distance_m(za, z, lon[i], lat[i])
                inside[j] = ins
                boundary[j] = b
                distance[j] = 0.0 if ins else b


@njit(cache=True, parallel=True)
def _contains_csr_batch(za, lon, lat, offsets, zone_idx, out, nchunks):
    """out[j] = containment of point i in zone_idx[j] for offsets[i] <= j < offsets[i+1]."""
    n = lon.shape[0]
    for c in prange(nchunks):
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            for j in range(offsets[i], offsets[i + 1]):
                out[j] = zone_contains(za, zone_idx[j], lon[i], lat[i])


# --------------------------------------------------------------------------------------
# Grid construction (run once per zone at compile time).
# --------------------------------------------------------------------------------------


@njit(cache=True)
def _segment_hits_rect(ax, ay, bx, by, x0, y0, x1, y1) -> bool:
    """True when segment AB meets the closed rectangle [x0, x1] x [y0, y1]."""
    if max(ax, bx) < x0 or min(ax, bx) > x1 or max(ay, by) < y0 or min(ay, by) > y1:
        return False
    dx = bx - ax
    dy = by - ay
    # Signs of the rectangle's corners relative to the line AB: all on one side = miss.
    s1 = dx * (y0 - ay) - dy * (x0 - ax)
    s2 = dx * (y0 - ay) - dy * (x1 - ax)
    s3 = dx * (y1 - ay) - dy * (x0 - ax)
    s4 = dx * (y1 - ay) - dy * (x1 - ax)
    if s1 > 0.0 and s2 > 0.0 and s3 > 0.0 and s4 > 0.0:
        return False
    return not (s1 < 0.0 and s2 < 0.0 and s3 < 0.0 and s4 < 0.0)


@njit(cache=True)
def _grid_edges(lon, lat, ring_offsets, gx0, gy0, dx, dy, nx, ny, margin, counts, fill, cursor,
                out):
    """Count (fill=False) or write (fill=True) the edges meeting each grid cell.

    ``lon``/``lat`` are one zone's closed rings; edge e runs from vertex e to e + 1.
    Cells are tested expanded by ``margin`` degrees so that a crossing computed in
    floating point always lands in a cell that lists its edge.
    """
    for r in range(ring_offsets.shape[0] - 1):
        for e in range(ring_offsets[r], ring_offsets[r + 1] - 1):
            ax = lon[e]
            ay = lat[e]
            bx = lon[e + 1]
            by = lat[e + 1]
            ix0 = max(math.floor((min(ax, bx) - margin - gx0) / dx), 0)
            ix1 = min(math.floor((max(ax, bx) + margin - gx0) / dx), nx - 1)
            iy0 = max(math.floor((min(ay, by) - margin - gy0) / dy), 0)
            iy1 = min(math.floor((max(ay, by) + margin - gy0) / dy), ny - 1)
            for iy in range(iy0, iy1 + 1):
                cy0 = gy0 + iy * dy - margin
                cy1 = gy0 + (iy + 1) * dy + margin
                for ix in range(ix0, ix1 + 1):
                    cx0 = gx0 + ix * dx - margin
                    cx1 = gx0 + (ix + 1) * dx + margin
                    if _segment_hits_rect(ax, ay, bx, by, cx0, cy0, cx1, cy1):
                        c = iy * nx + ix
                        if fill:
                            out[cursor[c]] = e
                            cursor[c] += 1
                        else:
                            counts[c] += 1


@njit(cache=True)
def _grid_states(lon, lat, edge_offsets, edges, gx0, gy0, inv_dx, inv_dy, nx, ny, state):
    """Inside/outside state of every cell without edges; boundary cells get CELL_BOUNDARY.

    Per row, walks from the right (outside the grid) to the left at the row's centre
    latitude, accumulating the parity of crossings attributed to boundary cells exactly
    as ``_polygon_contains`` attributes them. An edge-free cell's state is that parity.
    """
    for iy in range(ny):
        y = gy0 + (iy + 0.5) / inv_dy
        parity = False
        for ix in range(nx - 1, -1, -1):
            c = iy * nx + ix
            if edge_offsets[c + 1] == edge_offsets[c]:
                state[c] = CELL_INSIDE if parity else CELL_OUTSIDE
                continue
            state[c] = CELL_BOUNDARY
            for j in range(edge_offsets[c], edge_offsets[c + 1]):
                e = edges[j]
                ay = lat[e]
                by = lat[e + 1]
                if (ay > y) != (by > y):
                    ax = lon[e]
                    x = (lon[e + 1] - ax) * (y - ay) / (by - ay) + ax
                    f = (x - gx0) * inv_dx
                    k = 0 if not f >= 0.0 else (nx - 1 if f >= nx else int(f))
                    if k == ix:
                        parity = not parity


@njit(cache=True)
def _grid_rings(state, nx, ny, ring):
    """Chebyshev distance (in cells) from each cell to the nearest boundary cell.

    Exact two-pass chamfer transform with the 8-neighbourhood.
    """
    big = nx + ny + 1
    for c in range(nx * ny):
        ring[c] = 0 if state[c] == CELL_BOUNDARY else big
    for iy in range(ny):
        for ix in range(nx):
            c = iy * nx + ix
            v = ring[c]
            if ix > 0:
                v = min(v, ring[c - 1] + 1)
            if iy > 0:
                v = min(v, ring[c - nx] + 1)
                if ix > 0:
                    v = min(v, ring[c - nx - 1] + 1)
                if ix < nx - 1:
                    v = min(v, ring[c - nx + 1] + 1)
            ring[c] = v
    for iy in range(ny - 1, -1, -1):
        for ix in range(nx - 1, -1, -1):
            c = iy * nx + ix
            v = ring[c]
            if ix < nx - 1:
                v = min(v, ring[c + 1] + 1)
            if iy < ny - 1:
                v = min(v, ring[c + nx] + 1)
                if ix < nx - 1:
                    v = min(v, ring[c + nx + 1] + 1)
                if ix > 0:
                    v = min(v, ring[c + nx - 1] + 1)
            ring[c] = v
