"""Region names for the page: a county code (adcode, e.g. ``411303``) and its name
(卧龙区), read from the bundled county boundaries (``geofence.data``) and from the
``name`` property of the zones the console serves (a county imported by adcode carries
it), so an operator reads names, not codes."""

from __future__ import annotations

import functools
import gzip
from typing import Any

import orjson

from geofence.data import henan_counties_path


@functools.lru_cache(maxsize=1)
def bundled_region_names() -> dict[str, str]:
    """adcode -> county name of every bundled county (properties only, no geometry)."""
    with gzip.open(henan_counties_path(), "rb") as fh:
        collection = orjson.loads(fh.read())
    names: dict[str, str] = {}
    for feature in collection.get("features", []):
        props = feature.get("properties") or {}
        code, name = props.get("zone_id") or feature.get("id"), props.get("name")
        if code and name:
            names[str(code)] = str(name)
    return names


def region_names(compiled: Any = None) -> dict[str, str]:
    """adcode -> name: the bundled counties, and any 6-digit county zone with a ``name``."""
    names = dict(bundled_region_names())
    for zone in list(getattr(compiled, "zones", None) or []):
        zid, name = str(zone.zone_id), (zone.properties or {}).get("name")
        if name and len(zid) == 6 and zid.isdigit():
            names.setdefault(zid, str(name))
    return names
