"""The PostgreSQL dialect: for deployments where several engine workers and the console
share one store.

Placeholders are ``%s``; what SQLite gets from its single writer is done here with
transaction-scoped advisory locks: one orders event-log appends (identity values are
handed out at insert time, and two concurrent transactions could otherwise commit seq 8
before seq 7), one serialises schema migrations, and a pair per account name and client
address serialises login counting. Fixes are staged with ``COPY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alarms.db import Cursor, Database, StoreError, redact
from alarms.tracks import POSITION_UPSERT, TRACK_COLS

# An arbitrary constant: the advisory lock that orders event-log appends on PostgreSQL.
_PG_EVENT_LOCK = 0x656D_6665_6E63_65  # "emfence"
# ...and the one that serialises schema migrations of concurrently starting workers.
_PG_MIGRATE_LOCK = _PG_EVENT_LOCK + 1
# ...and the one that orders register changes (alarms.register).
_PG_REGISTER_LOCK = _PG_EVENT_LOCK + 2
# The class (first key) of the two-key advisory locks that serialise login attempts per
# account name and per client address on PostgreSQL ("emfl"; the two-key and one-key lock
# spaces do not overlap).
_PG_LOGIN_LOCK_CLASS = 0x656D_666C

class PostgresDatabase(Database):
    """A PostgreSQL database (psycopg 3, autocommit connections, explicit transactions)."""

    dialect = "postgresql"

    def __init__(self, url: str, connect_timeout_s: int = 10):
        import psycopg

        super().__init__()
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.errors = (psycopg.Error,)
        # Set (ms): the server ends a session of this store that sits idle inside a
        # transaction this long, releasing its locks (a worker group's holder paused in
        # the middle of a write must not hold up the standby taking over); connections
        # opened from then on carry it. None: the server's setting.
        self.idle_in_transaction_ms: int | None = None

    def _connect(self) -> Any:
        import psycopg

        try:
            # autocommit: transactions are explicit BEGIN/COMMIT in tx(), nothing implicit.
            extra = {}
            if self.idle_in_transaction_ms:
                extra["options"] = ("-c idle_in_transaction_session_timeout="
                                    f"{self.idle_in_transaction_ms}")
            return psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=self.connect_timeout_s, **extra)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}",
                             where=redact(self.url)) from exc

    def sql(self, text: str) -> str:
        # The store's SQL contains no literal '?' or '%', so this is a plain substitution.
        return text.replace("?", "%s")

    def _begin(self, conn: Any, write: bool) -> None:
        conn.execute("BEGIN")

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        conn.execute("ROLLBACK")

    def _broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def insert_fixes(self, cur: Cursor, rows: list[tuple[Any, ...]],
                     newest: list[tuple[Any, ...]]) -> None:
        # COPY into a per-connection staging table, then two set-based statements: several
        # times faster than bound multi-row INSERTs, and the track writer must keep up
        # with the live fix rate.
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS tracks_in (LIKE tracks) "
                    "ON COMMIT DELETE ROWS")
        with cur.cur.copy(f"COPY tracks_in ({TRACK_COLS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(f"INSERT INTO tracks ({TRACK_COLS}) SELECT {TRACK_COLS} FROM tracks_in "
                    "ON CONFLICT (device_id, ts) DO NOTHING")
        cur.execute(f"INSERT INTO positions ({TRACK_COLS}) SELECT DISTINCT ON (device_id) "
                    f"{TRACK_COLS} FROM tracks_in ORDER BY device_id, ts DESC "
                    + POSITION_UPSERT)
        cur.execute("INSERT INTO track_subjects (subject_id, device_id) SELECT DISTINCT "
                    "subject_id, device_id FROM tracks_in WHERE subject_id IS NOT NULL "
                    "ON CONFLICT DO NOTHING")

    def lock_event_log(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (_PG_EVENT_LOCK,))

    def lock_migrations(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATE_LOCK,))

    def lock_register(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (_PG_REGISTER_LOCK,))

    def lock_logins(self, cur: Cursor, keys: Sequence[int]) -> None:
        # Always in ascending order, so two transactions never wait for each other's
        # second lock (no deadlock).
        for key in sorted(set(keys)):
            cur.execute("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), CAST(? AS INTEGER))",
                        (_PG_LOGIN_LOCK_CLASS, key))
