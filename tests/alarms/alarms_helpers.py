"""Event builders for the alarm store tests: dicts shaped exactly like the engine's."""

from __future__ import annotations

from typing import Any

REGION_A = "330723"
REGION_B = "330702"


def raised(alarm_id: str, *, at: int, type: str = "outbound", region: str = REGION_A,
           subject_id: str = "S-1", device_id: str = "BR-1", zone_id: str | None = "Z-county",
           late: bool = False, **evidence: Any) -> dict[str, Any]:
    """A `raised` event with the engine's key order; evidence defaults to a fix's."""
    ev = {"event": "raised", "alarm_id": alarm_id, "type": type, "subject_id": subject_id,
          "device_id": device_id, "zone_id": zone_id, "region": region, "at": at, "late": late}
    ev.update(evidence or {"lat": 29.15, "lon": 120.28, "distance_m": 412.5, "acc": 12.0})
    return ev


def cleared(raised_event: dict[str, Any], *, at: int, **evidence: Any) -> dict[str, Any]:
    """The `cleared` event of an alarm (same alarm_id and identity, new time and evidence)."""
    ev = {k: raised_event[k] for k in ("alarm_id", "type", "subject_id", "device_id",
                                       "zone_id", "region")}
    ev = {"event": "cleared", **ev, "at": at, "late": False}
    ev.update(evidence)
    return ev


def table_count(store, table: str) -> int:
    """Rows in a table, read through the store's own connection (tests only)."""
    db = store._tracks_db if table in ("tracks", "positions", "track_subjects") else store._db
    with db.tx("test count", write=False) as cur:
        return int(cur.execute(f"SELECT COUNT(*) FROM {table}").scalar())
