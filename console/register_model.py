"""The register's zones and subjects in the shape the map's outlines are built from
(:func:`console.zones.zones_geojson`): loaded zones and each subject's zone uses.

Building it reads the register's snapshot and loads every zone outline, so it is kept
until the register's change sequence moves on; it runs on a store worker thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from geofence import load_zones


@dataclass(frozen=True)
class MapZones:
    """Loaded zones (``geofence.Zone``), as ``CompiledZones.zones`` offers them."""

    zones: tuple[Any, ...]


@dataclass(frozen=True)
class MapSubject:
    """What the map needs of a subject: its region and the zones it uses."""

    subject_id: str
    region: str
    inclusion: tuple[str, ...]
    exclusion: tuple[str, ...]
    leaves: tuple[tuple[int, int, tuple[str, ...]], ...]


@dataclass(frozen=True)
class MapRegistry:
    subjects: tuple[MapSubject, ...]


def _subjects(doc: dict[str, Any]) -> MapRegistry:
    out = []
    for s in doc.get("subjects") or []:
        leaves = tuple((int(lv.get("start") or 0), int(lv.get("end") or 0),
                        tuple(lv.get("zones") or ())) for lv in s.get("leaves") or [])
        out.append(MapSubject(str(s["subject_id"]), str(s.get("region") or ""),
                              tuple(s.get("inclusion") or ()), tuple(s.get("exclusion") or ()),
                              leaves))
    return MapRegistry(tuple(out))


class RegisterMap:
    """The register's current (zones, subjects) for the map, rebuilt when it changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq: int | None = None
        self._model: tuple[MapZones, MapRegistry, list[dict[str, Any]]] | None = None

    def current(self, register: Any) -> tuple[MapZones, MapRegistry, list[dict[str, Any]]]:
        """(zones, subjects, the zone library's entries) as the register is now."""
        with self._lock:
            seq = register.change_seq()
            if self._model is None or seq != self._seq:
                collection, subjects = register.snapshot()
                features = collection.get("features") or []
                zones = tuple(load_zones(collection)) if features else ()
                self._model = (MapZones(zones), _subjects(subjects), register.list_zones())
                self._seq = seq
            return self._model
