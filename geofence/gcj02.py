"""GCJ-02 <-> WGS-84 for numpy arrays of longitudes and latitudes (degrees).

GCJ-02 is the obfuscated datum of Chinese map services (Amap, Tencent, Google China):
WGS-84 shifted by a smooth, position-dependent offset of roughly 100-700 m. The forward
transform is public; the inverse is iterative and accurate to about 1e-10 degrees
(far below the 0.5 m this project requires). Outside China both are the identity.

The per-point versions for numba code are ``geofence.kernels.wgs84_to_gcj02_point``
and ``geofence.kernels.gcj02_to_wgs84_point``.
"""

from __future__ import annotations

import numpy as np

from geofence import kernels as K

__all__ = ["gcj02_to_wgs84", "outside_china", "wgs84_to_gcj02"]


def _arrays(lon, lat) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    if lon_a.shape != lat_a.shape:
        raise ValueError(f"lon and lat must have the same shape, got {lon_a.shape} and "
                         f"{lat_a.shape}")
    for name, a in (("lon", lon_a), ("lat", lat_a)):
        bad = ~np.isfinite(a)
        if bad.any():
            first = int(np.flatnonzero(bad.ravel())[0])
            i = tuple(int(k) for k in np.unravel_index(first, a.shape))
            where = "".join(f"[{k}]" for k in i)
            raise ValueError(f"{name}{where} = {float(a[i])!r} is not finite")
    return np.ascontiguousarray(lon_a.ravel()), np.ascontiguousarray(lat_a.ravel()), lon_a.shape


# Below this many points the transform runs on the calling thread: waking numba's thread
# pool costs ~1 ms (far more on a loaded machine), the transform ~0.1 us a point.
_PARALLEL_MIN_POINTS = 20_000


def _run(lon, lat, inverse: bool, parallel: bool | None):
    lon_a, lat_a, shape = _arrays(lon, lat)
    out_lon = np.empty_like(lon_a)
    out_lat = np.empty_like(lat_a)
    n = lon_a.shape[0]
    if parallel is None:
        parallel = n >= _PARALLEL_MIN_POINTS
    if parallel and n:
        K._gcj02_batch(lon_a, lat_a, out_lon, out_lat, inverse, K.chunks_for(n))
    elif n:
        K._gcj02_serial(lon_a, lat_a, out_lon, out_lat, inverse)
    if shape == ():
        return float(out_lon[0]), float(out_lat[0])
    return out_lon.reshape(shape), out_lat.reshape(shape)


def wgs84_to_gcj02(lon, lat, *, parallel: bool | None = None):
    """WGS-84 -> GCJ-02: (lon, lat) degree arrays (or scalars) in, (lon, lat) out.

    ``parallel``: None picks by size (numba's threads from 20 000 points); False keeps
    the work on the calling thread (the live service's per-batch path, where waking the
    thread pool would take CPU from the event loop)."""
    return _run(lon, lat, inverse=False, parallel=parallel)


def gcj02_to_wgs84(lon, lat, *, parallel: bool | None = None):
    """GCJ-02 -> WGS-84 by fixed-point iteration on the forward transform; (lon, lat) out.
    ``parallel`` as for :func:`wgs84_to_gcj02`."""
    return _run(lon, lat, inverse=True, parallel=parallel)


def outside_china(lon, lat) -> np.ndarray:
    """bool array: where GCJ-02 equals WGS-84 (the points lie outside China's rectangle)."""
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    return ((lon_a < K._CHINA_LON_MIN) | (lon_a > K._CHINA_LON_MAX)
            | (lat_a < K._CHINA_LAT_MIN) | (lat_a > K._CHINA_LAT_MAX))
