"""The alarm store: alarms, their actions, the event log + outbox, tracks, users, audit,
and each engine worker's checkpoint.

``open_store(url)`` opens (creating or migrating the schema) either

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: the embedded
  default, in WAL mode with ``synchronous=FULL`` (a committed alarm survives a power cut)
  and a busy timeout. The location history (``tracks``, ``positions``) lives in a second
  file beside it, ``path.tracks.db`` (:func:`tracks_path`), with the same schema: SQLite
  has one writer per file, and the bulk track writes must never hold up an alarm's; or
- ``postgresql://user@host:port/db`` (or ``postgres://``): for deployments where several
  engine workers and the console share one store.

One schema serves both (``alarms/schema.py``); the only dialect differences are the
placeholder style and three column types.

Threads: an :class:`AlarmStore` is synchronous and thread-safe. Each thread that uses it
gets its own database connection, opened on first use (asyncio callers wrap calls in
``asyncio.to_thread``); ``close()`` closes all of them. Every method is one transaction.

Time is always passed in (``now_ms``, epoch milliseconds UTC); the store reads the clock
only to stamp when a schema migration ran (and when ``set_user_disabled`` is called
without ``now_ms``).

A lost PostgreSQL connection (server restart, network cut) fails the call in progress
with :class:`StoreError`; the next call opens a new connection.

Ordering of the event log: ``seq`` grows with commit order, so a consumer that reads
``events_since(last_seen_seq)`` never skips an event. SQLite gets this from its single
writer; on PostgreSQL every transaction that appends events first takes one
transaction-scoped advisory lock, because identity values are handed out at insert time
and two concurrent transactions could otherwise commit seq 8 before seq 7.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Self

from alarms import schema
from alarms.checkpoints import CheckpointStore
from alarms.db import Database as _Db
from alarms.db import StoreError
from alarms.db import redact as _redact
from alarms.events import EventLog
from alarms.lifecycle import AlarmActionError, AlarmLifecycle
from alarms.postgres import PostgresDatabase
from alarms.queries import AlarmQueries
from alarms.sqlite import SqliteDatabase
from alarms.tracks import TRACK_COLUMNS, TrackStore, tracks_path
from alarms.users import LoginAttempt, UserError, UserStore

__all__ = ["TRACK_COLUMNS", "AlarmActionError", "AlarmStore", "LoginAttempt", "StoreError",
           "UserError", "open_store", "tracks_path"]

log = logging.getLogger("emfence.alarms.store")


def open_store(url: str) -> AlarmStore:
    """Open the store at ``url``, creating or migrating its schema; see the module doc."""
    if not isinstance(url, str):
        raise StoreError(f"store URL must be a string, got {type(url).__name__}")
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise StoreError("an in-memory SQLite store is not durable and cannot be shared "
                             "between threads; give a file path", where=url)
        p = Path(path)
        if not p.parent.is_dir():
            raise StoreError(f"folder {str(p.parent)!r} does not exist", where=url)
        return AlarmStore(SqliteDatabase(str(p)),
                          tracks_db=SqliteDatabase(str(tracks_path(p))))
    if url.startswith(("postgresql://", "postgres://")):
        return AlarmStore(PostgresDatabase(url))
    raise StoreError("store URL must start with sqlite:/// or postgresql://",
                     where=_redact(url))


# --- dialects ---------------------------------------------------------------------------


# --- helpers ----------------------------------------------------------------------------


# --- the store --------------------------------------------------------------------------

class AlarmStore(EventLog, AlarmLifecycle, AlarmQueries, TrackStore, UserStore,
                 CheckpointStore):
    """The durable store of alarms and everything the console needs; see the module doc.

    Build it with :func:`open_store`. All times are epoch milliseconds (UTC).
    """

    def __init__(self, db: _Db, *, tracks_db: _Db | None = None):
        self._db = db
        # tracks and positions (SQLite: a file of their own; see the module doc)
        self._tracks_db = tracks_db or db
        self.dialect = db.dialect
        self._migrate(self._db)
        if self._tracks_db is not self._db:
            self._migrate(self._tracks_db)

    # --- schema -------------------------------------------------------------------------

    @staticmethod
    def _migrate(db: _Db) -> None:
        with db.tx("migrate schema") as cur:
            db.lock_migrations(cur)
            cur.execute(schema.SCHEMA_VERSION_TABLE)
            current = cur.execute("SELECT MAX(version) FROM schema_version").scalar() or 0
            if current > schema.SCHEMA_VERSION:
                raise StoreError(f"database schema version {current} is newer than this "
                                 f"emfence understands ({schema.SCHEMA_VERSION}); upgrade emfence")
            for version in range(current + 1, schema.SCHEMA_VERSION + 1):
                for statement in schema.MIGRATIONS[version - 1]:
                    cur.execute(schema.render(statement, db.dialect))
                cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                            (version, time.time_ns() // 1_000_000))

    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._db.tx("schema version", write=False) as cur:
            return int(cur.execute("SELECT MAX(version) FROM schema_version").scalar() or 0)

    def close_store(self) -> None:
        """Close every connection this store opened (in any thread). An operator closing
        an alarm is :meth:`close_alarm`."""
        self._db.close()
        if self._tracks_db is not self._db:
            self._tracks_db.close()

    close = close_store

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_store()
