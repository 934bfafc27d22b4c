"""Compile loaded zones into flat numpy arrays (``ZoneArrays``) for the numba kernels.

``compile_zones(zones) -> CompiledZones``. The arrays hold, per zone, its kind, bounding
box, metric frame and circle parameters; the polygon rings as closed vertex runs in
degrees and in the zone's metric frame; and a uniform grid over the zone's bounding box
whose cells are marked outside / inside / boundary, with each boundary cell's edge list.
A point in an inside or outside cell is answered with one lookup; only points in
boundary cells look at edges, and only at the edges of their row's boundary cells.

The numpy methods of :class:`CompiledZones` validate their inputs and raise
``ValueError`` naming the argument and the first bad position, then call the parallel
kernels of :mod:`geofence.kernels`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import shapely

from geofence import kernels as K
from geofence.zones import Zone

# Grid sizing: about this many cells per polygon edge (more cells = fewer boundary
# edges per cell and more points answered by the cell state alone) ...
GRID_CELLS_PER_EDGE = 8.0
# ... but never fewer or more cells than these per zone.
GRID_MIN_CELLS = 16
GRID_MAX_CELLS = 1 << 22
# Edges are listed in every cell they pass within this many degrees of (~0.1 mm), so a
# crossing computed in floating point always lands in a cell that lists its edge.
GRID_MARGIN_DEG = 1e-9
# Metres per degree of latitude at the equator (the smallest anywhere, WGS-84) and of
# longitude on the equator (a * pi / 180): lower bounds for the ring search.
_M_PER_DEG_LAT_MIN = 110574.0
_M_PER_DEG_LON_EQ = 111319.49


class ZoneArrays(NamedTuple):
    """Flat arrays of a compiled zone set; numba takes the whole tuple as one argument.

    ``nz`` zones, ``nr`` rings, ``nv`` vertices, ``nc`` grid cells, ``ne`` cell-edge
    entries. Degrees are WGS-84; metres are in each zone's own frame.
    """

    zone_kind: np.ndarray  # int8[nz]: KIND_POLYGON or KIND_CIRCLE
    zone_bbox: np.ndarray  # float64[nz, 4]: lon_min, lat_min, lon_max, lat_max (degrees)
    zone_tm: np.ndarray  # float64[nz, 3]: central meridian, origin lat (deg), origin northing (m)
    zone_circle: np.ndarray  # float64[nz, 3]: centre lon, lat (deg), radius_m (0 for polygons)
    zone_ring_offsets: np.ndarray  # int64[nz + 1]: zone z's rings are [o[z], o[z+1])
    ring_offsets: np.ndarray  # int64[nr + 1]: ring r's closed vertices are [o[r], o[r+1])
    vertex_lon: np.ndarray  # float64[nv] degrees
    vertex_lat: np.ndarray  # float64[nv] degrees
    vertex_x_m: np.ndarray  # float64[nv] metres east of the zone origin
    vertex_y_m: np.ndarray  # float64[nv] metres north of the zone origin
    grid_origin: np.ndarray  # float64[nz, 2]: lon, lat of the grid's lower-left corner
    grid_inv_cell: np.ndarray  # float64[nz, 2]: cells per degree of lon, lat
    grid_shape: np.ndarray  # int64[nz, 2]: nx, ny (0, 0 for circles)
    grid_cell_min_m: np.ndarray  # float64[nz]: lower bound of a cell's width/height, metres
    grid_cell_offsets: np.ndarray  # int64[nz + 1]: zone z's cells are [o[z], o[z+1]), row-major
    cell_state: np.ndarray  # int8[nc]: CELL_OUTSIDE / CELL_INSIDE / CELL_BOUNDARY
    cell_ring: np.ndarray  # int32[nc]: Chebyshev distance in cells to a boundary cell
    cell_edge_offsets: np.ndarray  # int64[nc + 1]
    cell_edges: np.ndarray  # int64[ne]: global vertex index of each listed edge's start
    cell_edge_lonlat: np.ndarray  # float64[ne, 4]: that edge's lon_a, lat_a, lon_b, lat_b (degrees)


def _rings_of(geom) -> list[np.ndarray]:
    """Closed (n, 2) coordinate arrays of every ring of a Polygon/MultiPolygon."""
    parts = geom.geoms if geom.geom_type == "MultiPolygon" else [geom]
    rings = []
    for p in parts:
        rings.append(np.asarray(p.exterior.coords, dtype=np.float64)[:, :2])
        rings.extend(np.asarray(r.coords, dtype=np.float64)[:, :2] for r in p.interiors)
    return rings


def _grid_shape(n_edges: int, width_deg: float, height_deg: float, mid_lat: float
                ) -> tuple[int, int]:
    """Grid columns and rows: about GRID_CELLS_PER_EDGE cells per edge, cells near square in
    metres."""
    target = min(max(GRID_CELLS_PER_EDGE * n_edges, GRID_MIN_CELLS), GRID_MAX_CELLS)
    w = max(width_deg * math.cos(math.radians(mid_lat)), 1e-12)
    h = max(height_deg, 1e-12)
    nx = round(math.sqrt(target * w / h))
    nx = min(max(nx, 1), int(target))
    ny = min(max(round(target / nx), 1), int(target))
    return nx, ny


class _ZoneBuild(NamedTuple):
    kind: int
    bbox: tuple[float, float, float, float]
    tm: tuple[float, float, float]
    circle: tuple[float, float, float]
    ring_lengths: list[int]
    lon: np.ndarray
    lat: np.ndarray
    x_m: np.ndarray
    y_m: np.ndarray
    grid_origin: tuple[float, float]
    grid_inv_cell: tuple[float, float]
    grid_shape: tuple[int, int]
    cell_min_m: float
    cell_state: np.ndarray
    cell_ring: np.ndarray
    cell_edge_counts: np.ndarray
    cell_edges: np.ndarray  # local vertex indices


_EMPTY_F = np.zeros(0, dtype=np.float64)
_EMPTY_I8 = np.zeros(0, dtype=np.int8)
_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


def _tm_origin(lon0: float, lat0: float) -> float:
    return float(K.tm_forward(lon0, lon0, lat0)[1])


def _build_circle(zone: Zone) -> _ZoneBuild:
    lon, lat, radius_m = zone.circle
    # The bbox must hold the exact circle, not just its drawing (an inscribed polygon):
    # rtree candidates and bbox rejection rely on it. A degree of latitude is at least
    # 110574 m, a degree of longitude at least that times cos(lat) at the far edge.
    dlat = radius_m / _M_PER_DEG_LAT_MIN * 1.001
    far_lat = min(abs(lat) + dlat, 89.9)
    dlon = min(dlat / math.cos(math.radians(far_lat)), 180.0)
    minx, miny, maxx, maxy = lon - dlon, max(lat - dlat, -90.0), lon + dlon, min(lat + dlat, 90.0)
    return _ZoneBuild(
        kind=K.KIND_CIRCLE,
        bbox=(minx, miny, maxx, maxy),
        tm=(lon, lat, _tm_origin(lon, lat)),
        circle=(lon, lat, radius_m),
        ring_lengths=[],
        lon=_EMPTY_F, lat=_EMPTY_F, x_m=_EMPTY_F, y_m=_EMPTY_F,
        grid_origin=(lon, lat), grid_inv_cell=(0.0, 0.0), grid_shape=(0, 0), cell_min_m=0.0,
        cell_state=_EMPTY_I8, cell_ring=_EMPTY_I32, cell_edge_counts=_EMPTY_I64,
        cell_edges=_EMPTY_I64,
    )


def _build_polygon(zone: Zone) -> _ZoneBuild:
    rings = _rings_of(zone.geometry)
    lengths = [len(r) for r in rings]
    xy = np.concatenate(rings)
    lon = np.ascontiguousarray(xy[:, 0])
    lat = np.ascontiguousarray(xy[:, 1])
    minx, miny, maxx, maxy = float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())
    lon0 = (minx + maxx) / 2.0
    lat0 = (miny + maxy) / 2.0
    y0 = _tm_origin(lon0, lat0)
    x_m = np.empty_like(lon)
    y_m = np.empty_like(lat)
    K._tm_batch(lon0, y0, lon, lat, x_m, y_m, K.chunks_for(lon.shape[0]))

    # The grid covers the bbox padded a little, so bbox points never sit on its edge.
    pad_x = (maxx - minx) * 1e-6 + 4 * GRID_MARGIN_DEG
    pad_y = (maxy - miny) * 1e-6 + 4 * GRID_MARGIN_DEG
    gx0, gy0 = minx - pad_x, miny - pad_y
    width, height = (maxx - minx) + 2 * pad_x, (maxy - miny) + 2 * pad_y
    n_edges = len(lon) - len(rings)
    nx, ny = _grid_shape(n_edges, width, height, lat0)
    dx, dy = width / nx, height / ny
    inv_dx, inv_dy = nx / width, ny / height

    ring_offsets = np.zeros(len(rings) + 1, dtype=np.int64)
    ring_offsets[1:] = np.cumsum(lengths)
    ncells = nx * ny
    counts = np.zeros(ncells, dtype=np.int64)
    K._grid_edges(lon, lat, ring_offsets, gx0, gy0, dx, dy, nx, ny, GRID_MARGIN_DEG,
                  counts, False, counts, _EMPTY_I64)
    offsets = np.zeros(ncells + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    cursor = offsets[:-1].copy()
    edges = np.empty(int(offsets[-1]), dtype=np.int64)
    K._grid_edges(lon, lat, ring_offsets, gx0, gy0, dx, dy, nx, ny, GRID_MARGIN_DEG,
                  counts, True, cursor, edges)
    state = np.empty(ncells, dtype=np.int8)
    K._grid_states(lon, lat, offsets, edges, gx0, gy0, inv_dx, inv_dy, nx, ny, state)
    ring = np.empty(ncells, dtype=np.int32)
    K._grid_rings(state, nx, ny, ring)

    # Smallest metres a cell spans in either direction, anywhere in the zone; 1 %
    # slack covers the frame's scale (>= 1 off the central meridian only helps).
    max_abs_lat = min(max(abs(gy0), abs(gy0 + height)), 89.9)
    cell_min_m = 0.99 * min(dy * _M_PER_DEG_LAT_MIN,
                            dx * _M_PER_DEG_LON_EQ * math.cos(math.radians(max_abs_lat)))
    return _ZoneBuild(
        kind=K.KIND_POLYGON,
        bbox=(minx, miny, maxx, maxy),
        tm=(lon0, lat0, y0),
        circle=(0.0, 0.0, 0.0),
        ring_lengths=lengths,
        lon=lon, lat=lat, x_m=x_m, y_m=y_m,
        grid_origin=(gx0, gy0), grid_inv_cell=(inv_dx, inv_dy), grid_shape=(nx, ny),
        cell_min_m=cell_min_m,
        cell_state=state, cell_ring=ring, cell_edge_counts=counts, cell_edges=edges,
    )


def _assemble(builds: list[_ZoneBuild]) -> ZoneArrays:
    nz = len(builds)
    ring_counts = [len(b.ring_lengths) for b in builds]
    zone_ring_offsets = np.zeros(nz + 1, dtype=np.int64)
    zone_ring_offsets[1:] = np.cumsum(ring_counts)
    ring_lengths = [n for b in builds for n in b.ring_lengths]
    ring_offsets = np.zeros(len(ring_lengths) + 1, dtype=np.int64)
    ring_offsets[1:] = np.cumsum(ring_lengths)
    vertex_base = np.zeros(nz + 1, dtype=np.int64)
    vertex_base[1:] = np.cumsum([len(b.lon) for b in builds])
    cells = [b.grid_shape[0] * b.grid_shape[1] for b in builds]
    grid_cell_offsets = np.zeros(nz + 1, dtype=np.int64)
    grid_cell_offsets[1:] = np.cumsum(cells)
    counts = np.concatenate([b.cell_edge_counts for b in builds] + [_EMPTY_I64])
    cell_edge_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=cell_edge_offsets[1:])

    def cat(name, dtype):
        parts = [getattr(b, name) for b in builds] + [np.zeros(0, dtype)]
        return np.ascontiguousarray(np.concatenate(parts).astype(dtype, copy=False))

    cell_edges = np.ascontiguousarray(np.concatenate(
        [b.cell_edges + vertex_base[i] for i, b in enumerate(builds)] + [_EMPTY_I64]))
    vertex_lon = cat("lon", np.float64)
    vertex_lat = cat("lat", np.float64)
    cell_edge_lonlat = np.ascontiguousarray(np.column_stack([
        vertex_lon[cell_edges], vertex_lat[cell_edges],
        vertex_lon[cell_edges + 1], vertex_lat[cell_edges + 1]]))
    return ZoneArrays(
        zone_kind=np.array([b.kind for b in builds], dtype=np.int8),
        zone_bbox=np.array([b.bbox for b in builds], dtype=np.float64).reshape(nz, 4),
        zone_tm=np.array([b.tm for b in builds], dtype=np.float64).reshape(nz, 3),
        zone_circle=np.array([b.circle for b in builds], dtype=np.float64).reshape(nz, 3),
        zone_ring_offsets=zone_ring_offsets,
        ring_offsets=ring_offsets,
        vertex_lon=vertex_lon,
        vertex_lat=vertex_lat,
        vertex_x_m=cat("x_m", np.float64),
        vertex_y_m=cat("y_m", np.float64),
        grid_origin=np.array([b.grid_origin for b in builds], dtype=np.float64).reshape(nz, 2),
        grid_inv_cell=np.array([b.grid_inv_cell for b in builds], dtype=np.float64).reshape(nz, 2),
        grid_shape=np.array([b.grid_shape for b in builds], dtype=np.int64).reshape(nz, 2),
        grid_cell_min_m=np.array([b.cell_min_m for b in builds], dtype=np.float64),
        grid_cell_offsets=grid_cell_offsets,
        cell_state=cat("cell_state", np.int8),
        cell_ring=cat("cell_ring", np.int32),
        cell_edge_offsets=cell_edge_offsets,
        cell_edges=cell_edges,
        cell_edge_lonlat=cell_edge_lonlat.reshape(-1, 4),
    )


def _as_points(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D float64 lon/lat arrays of equal length (degrees, finite, in range)."""
    lon_a = np.ascontiguousarray(np.atleast_1d(np.asarray(lon, dtype=np.float64)))
    lat_a = np.ascontiguousarray(np.atleast_1d(np.asarray(lat, dtype=np.float64)))
    if lon_a.ndim != 1 or lat_a.ndim != 1:
        raise ValueError(f"lon and lat must be 1-D arrays, got shapes {lon_a.shape} and "
                         f"{lat_a.shape}")
    if lon_a.shape != lat_a.shape:
        raise ValueError(f"lon and lat must have the same length, got {lon_a.shape[0]} and "
                         f"{lat_a.shape[0]}")
    for name, a, lim in (("lon", lon_a, 180.0), ("lat", lat_a, 90.0)):
        if K._first_out_of_range(a, lim) >= 0:  # one pass, no temporaries; details only on error
            bad = ~(np.abs(a) <= lim)  # also catches NaN
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name}[{i}] = {float(a[i])!r} is not a finite degree value in "
                f"[-{lim:g}, {lim:g}] ({int(bad.sum())} such values)"
            )
    return lon_a, lat_a


class CompiledZones:
    """A zone set compiled for the kernels; zone index = position in ``zone_ids``.

    Attributes: ``zones`` (the source :class:`Zone` objects), ``zone_ids``, ``index``
    (zone id -> dense index) and ``arrays`` (:class:`ZoneArrays`, for njit code).
    """

    def __init__(self, zones: list[Zone], arrays: ZoneArrays):
        self.zones = list(zones)
        self.zone_ids = [z.zone_id for z in self.zones]
        self.index = {zid: i for i, zid in enumerate(self.zone_ids)}
        self.arrays = arrays
        self._rtree = None

    def __len__(self) -> int:
        return len(self.zone_ids)

    def __repr__(self) -> str:
        return f"<CompiledZones {len(self)} zones, {self.arrays.vertex_lon.shape[0]} vertices>"

    def zone_index(self, zone_id: str) -> int:
        """Dense index of ``zone_id``; ValueError naming it when unknown."""
        try:
            return self.index[zone_id]
        except KeyError:
            raise ValueError(f"unknown zone id {zone_id!r}") from None

    def _zone_idx(self, zone_idx, n: int) -> np.ndarray:
        if isinstance(zone_idx, str):
            zone_idx = self.zone_index(zone_idx)
        z = np.asarray(zone_idx)
        if z.dtype.kind not in "iu":
            raise ValueError(f"zone_idx must be integer zone indices, got dtype {z.dtype}")
        if z.ndim == 0:
            if not 0 <= int(z) < len(self):
                raise ValueError(f"zone_idx = {int(z)} is out of range for {len(self)} zones")
            return np.full(n, int(z), dtype=np.int64)
        if z.shape != (n,):
            raise ValueError(f"zone_idx must be a scalar or have one entry per point ({n}), "
                             f"got shape {z.shape}")
        z = np.ascontiguousarray(z, dtype=np.int64)
        i = K._first_bad_zone(z, len(self))
        if i >= 0:
            raise ValueError(f"zone_idx[{i}] = {int(z[i])} is out of range for {len(self)} zones")
        return z

    def contains(self, lon, lat, zone_idx) -> np.ndarray:
        """bool[n]: is point i (WGS-84 degrees) inside zone ``zone_idx[i]`` (or one zone for
        all)."""
        lon_a, lat_a = _as_points(lon, lat)
        z = self._zone_idx(zone_idx, lon_a.shape[0])
        out = np.empty(lon_a.shape[0], dtype=np.bool_)
        if out.shape[0]:
            K._contains_batch(self.arrays, lon_a, lat_a, z, out, K.chunks_for(out.shape[0]))
        return out

    def distance_m(self, lon, lat, zone_idx) -> np.ndarray:
        """float64[n]: metres from point i to zone ``zone_idx[i]``, 0 inside."""
        lon_a, lat_a = _as_points(lon, lat)
        z = self._zone_idx(zone_idx, lon_a.shape[0])
        out = np.empty(lon_a.shape[0], dtype=np.float64)
        if out.shape[0]:
            K._distance_batch(self.arrays, lon_a, lat_a, z, out, K.chunks_for(out.shape[0]))
        return out

    def locate(self, lon, lat, zone_idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inside bool[n], distance_m float64[n] (0 inside), boundary_distance_m float64[n])."""
        lon_a, lat_a = _as_points(lon, lat)
        n = lon_a.shape[0]
        z = self._zone_idx(zone_idx, n)
        inside = np.empty(n, dtype=np.bool_)
        distance = np.empty(n, dtype=np.float64)
        boundary = np.empty(n, dtype=np.float64)
        if n:
            K._locate_batch(self.arrays, lon_a, lat_a, z, inside, distance, boundary,
                            K.chunks_for(n))
        return inside, distance, boundary

    def _csr(self, offsets, zone_idx, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Validated CSR arrays: offsets int64[n + 1] from 0, non-decreasing, ending at
        len(zone_idx)."""
        off = np.ascontiguousarray(np.asarray(offsets))
        if off.dtype.kind not in "iu" or off.shape != (n + 1,):
            raise ValueError(f"offsets must be n + 1 = {n + 1} integers, got dtype {off.dtype} "
                             f"and shape {off.shape}")
        z = np.asarray(zone_idx)
        if z.ndim != 1:
            raise ValueError(f"zone_idx must be 1-D, got shape {z.shape}")
        if off[0] != 0 or off[-1] != z.shape[0]:
            raise ValueError(f"offsets must start at 0 and end at len(zone_idx) = {z.shape[0]}, "
                             f"got {int(off[0])} .. {int(off[-1])}")
        steps = np.diff(off)
        if (steps < 0).any():
            i = int(np.flatnonzero(steps < 0)[0])
            raise ValueError(f"offsets must not decrease: offsets[{i + 1}] = {int(off[i + 1])} "
                             f"< offsets[{i}] = {int(off[i])}")
        return off.astype(np.int64, copy=False), self._zone_idx(z, z.shape[0])

    def locate_many(self, lon, lat, offsets, zone_idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``locate`` for several zones per point, given as CSR: point i against each of
        ``zone_idx[offsets[i]:offsets[i+1]]`` (e.g. the output of ``candidates``).

        Returns ``(inside, distance_m, boundary_distance_m)``, one entry per zone_idx entry.
        """
        lon_a, lat_a = _as_points(lon, lat)
        off, z = self._csr(offsets, zone_idx, lon_a.shape[0])
        m = z.shape[0]
        inside = np.empty(m, dtype=np.bool_)
        distance = np.empty(m, dtype=np.float64)
        boundary = np.empty(m, dtype=np.float64)
        if m:
            K._locate_csr_batch(self.arrays, lon_a, lat_a, off, z, inside, distance, boundary,
                                K.chunks_for(lon_a.shape[0]))
        return inside, distance, boundary

    def _index(self):
        if self._rtree is None:
            from rtree import index as rtree_index

            prop = rtree_index.Property()
            prop.dimension = 2
            bb = self.arrays.zone_bbox
            if len(self):
                stream = ((i, tuple(map(float, bb[i])), None) for i in range(len(self)))
                self._rtree = rtree_index.Index(stream, properties=prop)
            else:
                self._rtree = rtree_index.Index(properties=prop)
        return self._rtree

    def candidates(self, lon, lat) -> tuple[np.ndarray, np.ndarray]:
        """Zones whose bounding box holds each point, as CSR ``(offsets, zone_idx)``.

        Point i's candidates are ``zone_idx[offsets[i]:offsets[i+1]]``, ascending. One
        batch query of the rtree of zone bounding boxes; no per-point Python loop.
        """
        lon_a, lat_a = _as_points(lon, lat)
        n = lon_a.shape[0]
        offsets = np.zeros(n + 1, dtype=np.int64)
        if n == 0 or len(self) == 0:
            return offsets, np.zeros(0, dtype=np.int64)
        pts = np.column_stack([lon_a, lat_a])
        ids, counts = self._index().intersection_v(pts, pts)
        counts = np.asarray(counts, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ids = np.asarray(ids, dtype=np.int64)
        owner = np.repeat(np.arange(n, dtype=np.int64), counts)
        order = np.lexsort((ids, owner))
        return offsets, ids[order]

    def contains_candidates(self, lon, lat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Containment of each point in each of its bbox candidates.

        Returns CSR ``(offsets, zone_idx, inside)``: for point i the entries
        ``offsets[i]:offsets[i+1]`` list candidate zones and whether the point is inside.
        """
        lon_a, lat_a = _as_points(lon, lat)
        offsets, zone_idx = self.candidates(lon_a, lat_a)
        inside = np.empty(zone_idx.shape[0], dtype=np.bool_)
        if zone_idx.shape[0]:
            K._contains_csr_batch(self.arrays, lon_a, lat_a, offsets, zone_idx, inside,
                                  K.chunks_for(lon_a.shape[0]))
        return offsets, zone_idx, inside


def compile_zones(zones: list[Zone]) -> CompiledZones:
    """Compile loaded zones (from :func:`geofence.load_zones`) for the kernels."""
    zones = list(zones)
    seen: set[str] = set()
    builds = []
    for zone in zones:
        if not isinstance(zone, Zone):
            raise TypeError(f"compile_zones takes Zone objects, got {type(zone).__name__}")
        if zone.zone_id in seen:
            raise ValueError(f"duplicate zone id {zone.zone_id!r}")
        seen.add(zone.zone_id)
        if zone.circle is not None:
            builds.append(_build_circle(zone))
        else:
            if shapely.is_empty(zone.geometry):
                raise ValueError(f"zone {zone.zone_id!r} has an empty geometry")
            builds.append(_build_polygon(zone))
    return CompiledZones(zones, _assemble(builds))
