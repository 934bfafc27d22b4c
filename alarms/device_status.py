"""Each device's newest status (battery, strap, power) and its last receive time, for
the console's status board (issue #16; docs/console-api.md, "The status board").

One row per device, kept up to date by ``emfence run``'s track writer
(emfence.run.tracks): the statuses of a flush are reduced to the newest per device
before they are written, so the cost is one upsert per device per flush in one
executemany (10 000 devices: ~0.07 s on SQLite, ~0.45 s on PostgreSQL), not one per
status. A field a status does not carry (NULL) keeps the stored value; an older status
than the stored one changes nothing except that the receive time never moves back.
The console's board reads it together with the positions and the open alarms
(:mod:`alarms.board`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from alarms.db import Where

# Frozen once released. The schema version it is released as (alarms.schema.MIGRATIONS).
V13_DEVICE_STATUS: list[str] = [
    """
    CREATE TABLE device_status (
        device_id    TEXT PRIMARY KEY,
        region       TEXT NOT NULL,
        ts           BIGINT NOT NULL,
        battery_pct  {float},
        strap        TEXT,
        power        TEXT,
        received_at  BIGINT NOT NULL
    )
    """,
    "CREATE INDEX device_status_region ON device_status (region)",
]

COLUMNS = ("device_id", "region", "ts", "battery_pct", "strap", "power", "received_at")
_UPSERT = (
    f"INSERT INTO device_status ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device_id) DO UPDATE SET "
    "region = excluded.region, "
    "battery_pct = CASE WHEN excluded.ts >= device_status.ts "
    "THEN COALESCE(excluded.battery_pct, device_status.battery_pct) "
    "ELSE device_status.battery_pct END, "
    "strap = CASE WHEN excluded.ts >= device_status.ts "
    "THEN COALESCE(excluded.strap, device_status.strap) ELSE device_status.strap END, "
    "power = CASE WHEN excluded.ts >= device_status.ts "
    "THEN COALESCE(excluded.power, device_status.power) ELSE device_status.power END, "
    "ts = CASE WHEN excluded.ts > device_status.ts THEN excluded.ts "
    "ELSE device_status.ts END, "
    "received_at = CASE WHEN excluded.received_at > device_status.received_at "
    "THEN excluded.received_at ELSE device_status.received_at END")


class DeviceStatusStore:
    """``record_device_status`` and ``device_status`` of the alarm store."""

    _db: Any

    def record_device_status(self, rows: Iterable[Sequence[Any]]) -> int:
        """Keep each row (a tuple in :data:`COLUMNS` order: device id, region, ts epoch
        ms of the status, battery percent or None, strap ``ok``/``open`` or None, power
        ``on``/``off`` or None, received epoch ms) as the module doc says; one row per
        device expected (the writer keeps the newest). Returns the number of rows given."""
        rows = [tuple(r) for r in rows]
        if not rows:
            return 0
        with self._db.tx("record device status") as cur:
            cur.executemany(_UPSERT, rows)
        return len(rows)

    def device_status(self, regions: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every device's stored status (rows with the keys of :data:`COLUMNS`), of
        ``regions`` (None: all), by device id."""
        where = Where().regions(regions)
        if where.nothing:
            return []
        with self._db.tx("device status", write=False) as cur:
            return [dict(r) for r in cur.execute(
                f"SELECT {', '.join(COLUMNS)} FROM device_status{where.sql} "
                "ORDER BY device_id", where.params).all()]

    def purge_device_status(self, before_ms: int) -> int:
        """Forget the newest status of every device whose newest status is older than
        ``before_ms`` (ts, epoch ms): the track retention's cut-off, so a device silent
        for longer than ``tracks.retention_days`` keeps nothing of itself here either.
        Returns the rows deleted."""
        with self._db.tx("purge device status") as cur:
            return max(cur.execute("DELETE FROM device_status WHERE ts < ?",
                                   (int(before_ms),)).rowcount, 0)
