"""The newest position of each protected person's device (issue #14, rule 5: "a victim's
own positions are shown to supervisors only"; docs/rules.md, "Proximity").

Kept apart from the tracks on purpose: one row per device, its newest fix only (no
history: the least personal data that lets a supervisor see where the person is), in the
alarm store, never in the track store or its map that operators read. ``emfence run``
writes it (emfence.run.tracks); the console reads it for supervisors and admins only,
audited (console/resources/protected.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# Frozen once released (schema version 10).
V10_PROTECTED_POSITIONS: list[str] = [
    """
    CREATE TABLE protected_positions (
        device_id    TEXT PRIMARY KEY,
        person_id    TEXT NOT NULL,
        ts           BIGINT NOT NULL,
        lat          {float} NOT NULL,
        lon          {float} NOT NULL,
        acc          {float},
        received_at  BIGINT NOT NULL
    )
    """,
    "CREATE INDEX protected_positions_person ON protected_positions (person_id)",
]

COLUMNS = ("device_id", "person_id", "ts", "lat", "lon", "acc", "received_at")


class ProtectedPositionStore:
    """``record_protected_positions`` and ``protected_positions`` of the alarm store."""

    _db: Any

    def record_protected_positions(self, rows: Iterable[Sequence[Any]]) -> int:
        """Keep each row (a tuple in :data:`COLUMNS` order: device id, person id, ts epoch
        ms, lat, lon WGS-84 degrees, acc metres, received epoch ms) when it is newer than
        the device's stored one. Returns the number of rows given."""
        rows = [tuple(r) for r in rows]
        if not rows:
            return 0
        with self._db.tx("record protected positions") as cur:
            for r in rows:
                cur.execute(
                    f"INSERT INTO protected_positions ({', '.join(COLUMNS)}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                    "person_id = excluded.person_id, ts = excluded.ts, lat = excluded.lat, "
                    "lon = excluded.lon, acc = excluded.acc, received_at = excluded.received_at "
                    "WHERE excluded.ts > protected_positions.ts", r)
        return len(rows)

    def protected_positions(self, person_id: str) -> list[dict[str, Any]]:
        """The newest position of each device of ``person_id``, newest first."""
        with self._db.tx("protected positions", write=False) as cur:
            rows = cur.execute(f"SELECT {', '.join(COLUMNS)} FROM protected_positions "
                               "WHERE person_id = ? ORDER BY ts DESC, device_id",
                               (person_id,)).all()
        return [dict(r) for r in rows]
