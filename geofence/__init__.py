"""The geofence core: zones in, containment and distances in metres out.

- :func:`load_zones` reads GeoJSON zone files (WGS-84, GCJ-02 or any pyproj CRS) into
  :class:`Zone` objects in WGS-84 lon/lat (docs/zones.md is the format reference);
- :func:`compile_zones` turns them into flat arrays plus a grid index
  (:class:`CompiledZones`, :class:`ZoneArrays`) for the numba kernels in
  :mod:`geofence.kernels`;
- :mod:`geofence.gcj02` converts between GCJ-02 and WGS-84;
- :mod:`geofence.data` holds real county boundaries (Henan province).
"""

from geofence.compile import CompiledZones, ZoneArrays, compile_zones
from geofence.zones import Zone, ZoneError, ZoneWarning, load_zones

__all__ = ["CompiledZones", "Zone", "ZoneArrays", "ZoneError", "ZoneWarning", "compile_zones",
           "load_zones"]
