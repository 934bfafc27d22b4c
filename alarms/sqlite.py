"""The SQLite dialect: the embedded default store (and its tracks file).

Every connection runs in WAL mode with ``synchronous=FULL`` (a committed alarm survives a
power cut), a busy timeout and foreign keys on. Writes begin with ``BEGIN IMMEDIATE``, so
one writer holds the file at a time, across processes too: that is what orders the event
log and serialises migrations and login counting here (PostgreSQL needs locks for them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from alarms.db import Cursor, Database, StoreError
from alarms.tracks import POSITION_UPSERT, TRACK_COLS, TRACK_COLUMNS, subject_pairs

# Track rows from one JSON array of arrays in TRACK_COLUMNS order (SQLite); "WHERE true"
# keeps an upsert's ON CONFLICT from being read as a join constraint.
_JSON_ROWS = "SELECT " + ", ".join(
    f"json_extract(value, '$[{i}]')" for i in range(len(TRACK_COLUMNS))) + \
    " FROM json_each(?) WHERE true"


class SqliteDatabase(Database):
    """A SQLite file: WAL, ``synchronous=FULL``, a busy timeout, one writer at a time."""

    dialect = "sqlite"

    def __init__(self, path: str, busy_timeout_s: float = 30.0):
        import sqlite3

        if sqlite3.sqlite_version_info < (3, 35, 0):
            # UPSERT and RETURNING, which the portable SQL relies on
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old; the store needs "
                             "3.35 or newer", where=path)
        super().__init__()
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.errors = (sqlite3.Error,)
        # Writers of this process queue on a lock of their own before BEGIN IMMEDIATE. A
        # writer that finds SQLite's lock taken sleeps in SQLite's busy handler, which
        # polls with growing pauses (up to 100 ms): an alarm event written while another
        # write commits would wait for the next poll, not for the commit. Here it is
        # woken as soon as the other writer commits. (Other processes on the same file
        # still meet the busy handler.)
        self._write_lock = threading.Lock()

    def _connect(self) -> Any:
        import sqlite3

        deadline = time.monotonic() + self.busy_timeout_s
        pause_s = 0.005
        while True:
            conn = None
            try:
                # isolation_level=None: we issue BEGIN ourselves (BEGIN IMMEDIATE for
                # writes, so a reader never has to upgrade its lock and fail with
                # SQLITE_BUSY mid-way).
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s,
                                       isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
                conn.execute("PRAGMA foreign_keys=ON")
                return conn
            except sqlite3.OperationalError as exc:
                if conn is not None:
                    conn.close()
                # Switching a new file to WAL while another connection does the same can
                # fail at once with "database is locked" (SQLite does not wait in its
                # busy handler there): wait and try again, as the busy timeout would.
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise StoreError(f"cannot open SQLite database: {exc}",
                                     where=self.path) from exc
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, 0.1)
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                raise StoreError(f"cannot open SQLite database: {exc}", where=self.path) from exc

    def _begin(self, conn: Any, write: bool) -> None:
        if not write:
            conn.execute("BEGIN")
            return
        self._write_lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._write_lock.release()
            raise
        self._local.writing = True

    def _end_write(self) -> None:
        if getattr(self._local, "writing", False):
            self._local.writing = False
            self._write_lock.release()

    def _commit(self, conn: Any) -> None:
        try:
            conn.execute("COMMIT")
        finally:
            self._end_write()

    def _rollback(self, conn: Any) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            self._end_write()

    def insert_fixes(self, cur: Cursor, rows: list[tuple[Any, ...]],
                     newest: list[tuple[Any, ...]]) -> None:
        # Each batch as one JSON parameter that SQLite unpacks itself (json_each): two
        # statements whatever the batch size. Bound multi-row INSERTs cost more Python
        # per row, and sqlite3 gives up and takes back the GIL around every statement,
        # which the busy event loop makes a wait each time.
        cur.execute(f"INSERT INTO tracks ({TRACK_COLS}) {_JSON_ROWS} "
                    "ON CONFLICT (device_id, ts) DO NOTHING", (orjson.dumps(rows),))
        cur.execute(f"INSERT INTO positions ({TRACK_COLS}) {_JSON_ROWS} " + POSITION_UPSERT,
                    (orjson.dumps(newest),))
        cur.execute("INSERT INTO track_subjects (subject_id, device_id) SELECT "
                    "json_extract(value, '$[0]'), json_extract(value, '$[1]') "
                    "FROM json_each(?) WHERE true ON CONFLICT DO NOTHING",
                    (orjson.dumps(subject_pairs(rows)),))

    def lock_event_log(self, cur: Cursor) -> None:
        pass  # BEGIN IMMEDIATE already makes this the only writer

    def lock_migrations(self, cur: Cursor) -> None:
        pass

    def lock_register(self, cur: Cursor) -> None:
        pass  # BEGIN IMMEDIATE already makes this the only writer

    def lock_logins(self, cur: Cursor, keys: Sequence[int]) -> None:
        pass  # BEGIN IMMEDIATE already makes this the only writer, in every process
