"""Location history for the console's track view: every accepted fix (``tracks``), each
device's newest position (``positions``) and the devices each subject's fixes were stored
under (``track_subjects``).

With SQLite these tables are used in a file of their own beside the store's
(:func:`tracks_path`): SQLite has one writer per file, and the bulk track writes must
never hold up an alarm's. The bulk write itself is the dialect's
(:meth:`alarms.db.Database.insert_fixes`); the statements they share are here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alarms.db import Database, StoreError, Where, as_list, count, int_ms

# Columns of a track row, in the order record_fixes accepts tuples.
TRACK_COLUMNS = ("device_id", "subject_id", "region", "ts", "lat", "lon", "acc", "src",
                 "received_at")
TRACK_COLS = ", ".join(TRACK_COLUMNS)
# Keep a device's newest position: a late batch of older fixes must not move it back.
POSITION_UPSERT = (
    "ON CONFLICT (device_id) DO UPDATE SET ts = excluded.ts, "
    "subject_id = excluded.subject_id, region = excluded.region, lat = excluded.lat, "
    "lon = excluded.lon, acc = excluded.acc, src = excluded.src, "
    "received_at = excluded.received_at WHERE excluded.ts > positions.ts")
# A subject's fixes, found through the devices they were stored under (track_subjects),
# so that the lookup uses the tracks key (device_id, ts).
_SUBJECT_FIXES = ("(device_id IN (SELECT device_id FROM track_subjects WHERE subject_id = ?) "
                  "AND subject_id = ?)")


def tracks_path(path: str | Path) -> Path:
    """The file a SQLite store at ``path`` keeps its location history in:
    ``alarms.db`` -> ``alarms.tracks.db`` (back both up together)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.tracks{p.suffix}")


def subject_pairs(rows: list[tuple[Any, ...]]) -> list[tuple[str, str]]:
    """(subject_id, device_id) of track rows, once each (rows without a subject left out)."""
    return sorted({(r[1], r[0]) for r in rows if r[1] is not None})


def _track_key(row: tuple[Any, ...]) -> tuple[str, int]:
    return row[0], row[3]  # (device_id, ts): the tracks table's key


def _track_tuple(i: int, row: Mapping[str, Any] | Sequence[Any]) -> tuple[Any, ...]:
    """One fix as a tuple of plain Python values in TRACK_COLUMNS order."""
    if isinstance(row, Mapping):
        try:
            t = tuple(row[c] for c in TRACK_COLUMNS)
        except KeyError as exc:
            raise StoreError(f"missing key {exc.args[0]!r}", where=f"fixes[{i}]") from None
    else:
        t = tuple(row)
        if len(t) != len(TRACK_COLUMNS):
            raise StoreError(f"needs {len(TRACK_COLUMNS)} values "
                             f"({', '.join(TRACK_COLUMNS)}), got {len(t)}",
                             where=f"fixes[{i}]")
    # plain Python values: numpy scalars are not understood by every driver
    return (str(t[0]), None if t[1] is None else str(t[1]), str(t[2]), int(t[3]),
            float(t[4]), float(t[5]), None if t[6] is None else float(t[6]),
            None if t[7] is None else str(t[7]), int(t[8]))


class TrackStore:
    """Track writes and reads of :class:`alarms.store.AlarmStore`."""

    _tracks_db: Database

    def record_fixes(self, rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> int:
        """Store accepted fixes for the track view, batched in one transaction.

        Each row is a mapping with the keys of :data:`TRACK_COLUMNS` or a tuple in that
        order: device_id, subject_id, region, ts (epoch ms), lat, lon (WGS-84 degrees), acc
        (metres), src, received_at (epoch ms). A fix already stored (same device and ts)
        is kept as it was. Also keeps each device's newest position. Returns the number of
        rows given.
        """
        tuples = [_track_tuple(i, row) for i, row in enumerate(rows)]
        if not tuples:
            return 0
        # In key order: a device's fixes of the batch then land on the same index pages
        # (written once per transaction instead of once per fix; several times cheaper
        # for large batches of many devices).
        tuples.sort(key=_track_key)
        newest: dict[str, tuple[Any, ...]] = {}
        for t in tuples:
            best = newest.get(t[0])
            if best is None or t[3] > best[3]:  # of equal times the first, as tracks keeps
                newest[t[0]] = t
        db = self._tracks_db
        with db.tx("record fixes") as cur:
            db.insert_fixes(cur, tuples, list(newest.values()))
        return len(tuples)

    def track(self, key: str | Iterable[str] | None = None, from_ms: int | None = None,
              to_ms: int | None = None, *, subject_id: str | None = None,
              limit: int = 100_000) -> list[dict[str, Any]]:
        """Fixes with ``from_ms`` ≤ ts ≤ ``to_ms``, oldest first.

        ``key``: a device id or a subject id (a string matches either), or a list of
        device ids; or pass ``subject_id=`` explicitly. Rows: device_id, subject_id, region,
        ts, lat, lon, acc, src, received_at.
        """
        where = Where()
        if subject_id is not None:
            where.add(_SUBJECT_FIXES, subject_id, subject_id)
        if isinstance(key, str):
            where.add(f"(device_id = ? OR {_SUBJECT_FIXES})", key, key, key)
        elif key is not None:
            where.one_of("device_id", as_list(key, "device ids") or [])
            if where.nothing:
                return []
        if not where.conditions:
            raise StoreError("track needs a device id, a list of device ids or a subject_id")
        if from_ms is not None:
            where.add("ts >= ?", int_ms(from_ms, "from_ms"))
        if to_ms is not None:
            where.add("ts <= ?", int_ms(to_ms, "to_ms"))
        with self._tracks_db.tx("track", write=False) as cur:
            return cur.execute(f"SELECT {TRACK_COLS} FROM tracks{where.sql} "
                               "ORDER BY ts, device_id LIMIT ?",
                               (*where.params, count(limit, "limit"))).all()

    def last_positions(self, regions: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Each device's newest stored fix (rows as in :meth:`track`), by device id."""
        where = Where().regions(regions)
        if where.nothing:
            return []
        with self._tracks_db.tx("last positions", write=False) as cur:
            return cur.execute(f"SELECT {TRACK_COLS} FROM positions{where.sql} "
                               "ORDER BY device_id", where.params).all()

    def purge_tracks(self, before_ms: int) -> int:
        """Delete fixes (and newest positions, and newest device statuses) with ts <
        ``before_ms``; returns fixes deleted.

        The retention policy (``tracks.retention_days``) calls this; alarm evidence is part
        of the alarm's case file and is not touched.
        """
        before_ms = int_ms(before_ms, "before_ms")
        with self._tracks_db.tx("purge tracks") as cur:
            n = cur.execute("DELETE FROM tracks WHERE ts < ?", (before_ms,)).rowcount
            cur.execute("DELETE FROM positions WHERE ts < ?", (before_ms,))
            if n > 0:  # forget the subjects' devices that have no fix left
                cur.execute("DELETE FROM track_subjects WHERE NOT EXISTS (SELECT 1 FROM tracks "
                            "WHERE tracks.device_id = track_subjects.device_id "
                            "AND tracks.subject_id = track_subjects.subject_id)")
        self.purge_device_status(before_ms)
        return max(n, 0)
