"""A local metric frame for simulation geometry (not the hot path of the engine).

The simulator plans movement in metres: anchors, trips, keep-out distances. A fleet
lives within a province, so one azimuthal equidistant projection centred on the fleet
keeps distances within ~0.1 % (the scale error of aeqd at 250 km from its centre).
"""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import Transformer


class LocalFrame:
    """WGS-84 lon/lat degrees <-> local metres (x east, y north) around ``(lon0, lat0)``."""

    def __init__(self, lon0: float, lat0: float):
        self.lon0 = float(lon0)
        self.lat0 = float(lat0)
        proj = f"+proj=aeqd +lat_0={self.lat0} +lon_0={self.lon0} +ellps=WGS84 +units=m"
        self._fwd = Transformer.from_crs("EPSG:4326", proj, always_xy=True)
        self._inv = Transformer.from_crs(proj, "EPSG:4326", always_xy=True)

    @classmethod
    def around(cls, geoms) -> LocalFrame:
        """A frame centred on the bounding box of WGS-84 shapely geometries."""
        x0, y0, x1, y1 = shapely.total_bounds(np.asarray(list(geoms), dtype=object))
        return cls((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def to_m(self, lon, lat) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._fwd.transform(np.asarray(lon, dtype=np.float64),
                                   np.asarray(lat, dtype=np.float64))
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def to_deg(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        lon, lat = self._inv.transform(np.asarray(x, dtype=np.float64),
                                       np.asarray(y, dtype=np.float64))
        return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)

    def geom_to_m(self, geom):
        """A WGS-84 shapely geometry in local metres."""
        return shapely.transform(geom, lambda c: np.column_stack(self.to_m(c[:, 0], c[:, 1])))

    def geom_to_deg(self, geom):
        return shapely.transform(geom, lambda c: np.column_stack(self.to_deg(c[:, 0], c[:, 1])))


def sample_points_in(geom, n: int, rng: np.random.Generator, *,
                     max_rounds: int = 200) -> np.ndarray:
    """``n`` points drawn uniformly inside a (prepared) shapely polygon, as an (n, 2) array
    in the geometry's own coordinates. Raises ValueError if the polygon is empty or so
    thin that rejection sampling from its bounding box keeps failing."""
    if n <= 0:
        return np.empty((0, 2))
    if geom.is_empty:
        raise ValueError("cannot sample points in an empty geometry")
    shapely.prepare(geom)
    x0, y0, x1, y1 = geom.bounds
    out = np.empty((0, 2))
    for _ in range(max_rounds):
        need = n - len(out)
        k = max(64, need * 4)
        x = rng.uniform(x0, x1, k)
        y = rng.uniform(y0, y1, k)
        ok = shapely.contains_xy(geom, x, y)
        out = np.vstack([out, np.column_stack([x[ok], y[ok]])[:need]])
        if len(out) >= n:
            return out
    raise ValueError(f"could only sample {len(out)} of {n} points inside the geometry")
