"""The alarm store: :func:`open_store` and :class:`AlarmStore`, which composes the parts.

``open_store(url)`` opens (creating or migrating the schema) either

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: the embedded
  default (:mod:`alarms.sqlite`). The location history (``tracks``, ``positions``) lives
  in a second file beside it, ``path.tracks.db`` (:func:`tracks_path`), with the same
  schema: SQLite has one writer per file, and the bulk track writes must never hold up
  an alarm's; or
- ``postgresql://user@host:port/db`` (or ``postgres://``): for deployments where several
  engine workers and the console share one store (:mod:`alarms.postgres`).

One schema serves both (:mod:`alarms.schema`). Where each part lives:

===========================  ==========================================================
:mod:`alarms.db`             connections per thread, transactions, SQL helpers,
                             :class:`StoreError`
:mod:`alarms.events`         the event log and outbox (``record_events``, ``pending``,
                             ``mark_delivered``, ``events_since``)
:mod:`alarms.lifecycle`      the transition table; ``acknowledge``, ``close_alarm``,
                             ``add_note``, ``escalate_due``
:mod:`alarms.queries`        ``get_alarm``, ``actions``, ``list_alarms``, ``stats``
:mod:`alarms.tracks`         ``record_fixes``, ``track``, ``last_positions``,
                             ``purge_tracks``
:mod:`alarms.users`          accounts, logins, the audit log
:mod:`alarms.checkpoints`    each engine worker's checkpoint
:mod:`alarms.leases`         worker-group leases; the epoch fence of a holder's writes
:mod:`alarms.notify_store`   the notifications outbox (planned with each event)
:mod:`alarms.register`       ``store.register``: the supervision register (subjects,
                             devices, zones, leave, curfews, suspensions)
:mod:`alarms.roster`         ``store.roster``: the duty roster (who notifications reach)
===========================  ==========================================================

Threads: an :class:`AlarmStore` is synchronous and thread-safe. Each thread that uses it
gets its own database connection, opened on first use (asyncio callers wrap calls in
``asyncio.to_thread``); :meth:`AlarmStore.close_store` closes all of them. Every method
is one transaction.

Time is always passed in (``now_ms``, epoch milliseconds UTC); the store reads the clock
only to stamp when a schema migration ran (and when ``set_user_disabled`` is called
without ``now_ms``).

A lost PostgreSQL connection (server restart, network cut) fails the call in progress
with :class:`StoreError`; the next call opens a new connection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Self

from alarms import schema
from alarms.board import BoardStore
from alarms.checkpoints import CheckpointStore
from alarms.commands import CommandStore
from alarms.db import Database, StoreError, redact
from alarms.device_status import DeviceStatusStore
from alarms.events import EventLog
from alarms.leases import LeaseFenced, LeaseStore
from alarms.lifecycle import AlarmActionError, AlarmLifecycle
from alarms.notify import Planner
from alarms.notify_store import NotificationStore
from alarms.postgres import PostgresDatabase
from alarms.protected_positions import ProtectedPositionStore
from alarms.queries import AlarmQueries
from alarms.register import Register
from alarms.roster import Roster
from alarms.sqlite import SqliteDatabase
from alarms.tracks import TRACK_COLUMNS, TrackStore, tracks_path
from alarms.users import LoginAttempt, UserError, UserStore

__all__ = ["TRACK_COLUMNS", "AlarmActionError", "AlarmStore", "LeaseFenced", "LoginAttempt",
           "StoreError", "UserError", "open_store", "tracks_path"]


def open_store(url: str, *, notification_planner: Planner | None = None) -> AlarmStore:
    """Open the store at ``url``, creating or migrating its schema; see the module doc.

    ``notification_planner`` (:mod:`alarms.notify`) turns the alarm events this store
    records into notification rows, written in the same transaction."""
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
                          tracks_db=SqliteDatabase(str(tracks_path(p))),
                          notification_planner=notification_planner)
    if url.startswith(("postgresql://", "postgres://")):
        return AlarmStore(PostgresDatabase(url), notification_planner=notification_planner)
    raise StoreError("store URL must start with sqlite:/// or postgresql://",
                     where=redact(url))


class AlarmStore(NotificationStore, EventLog, AlarmLifecycle, AlarmQueries, TrackStore, UserStore,
                 CheckpointStore, ProtectedPositionStore, LeaseStore, CommandStore,
                 DeviceStatusStore, BoardStore):
    """The durable store of alarms and everything the console needs; see the module doc.

    Build it with :func:`open_store`. All times are epoch milliseconds (UTC). Its methods
    come from one class per part (the module doc says which file holds which); they share
    ``_db`` (and ``_tracks_db``, the same database except on SQLite).
    """

    def __init__(self, db: Database, *, tracks_db: Database | None = None,
                 notification_planner: Planner | None = None):
        self._db = db
        self._planner = notification_planner
        # tracks and positions (SQLite: a file of their own; see the module doc)
        self._tracks_db = tracks_db or db
        self.dialect = db.dialect
        self._migrate(self._db)
        if self._tracks_db is not self._db:
            self._migrate(self._tracks_db)
        # the supervision register (alarms.register), in the same database
        self.register = Register(self._db)
        # the duty roster (alarms.roster): who notifications reach, level by level
        self.roster = Roster(self._db)

    # --- schema -------------------------------------------------------------------------

    @staticmethod
    def _migrate(db: Database) -> None:
        with db.tx("migrate schema") as cur:
            db.lock_migrations(cur)
            cur.execute(schema.SCHEMA_VERSION_TABLE)
            current = cur.execute("SELECT MAX(version) FROM schema_version").scalar() or 0
            if current > schema.SCHEMA_VERSION:
                raise StoreError(f"database schema version {current} is newer than this "
                                 f"emfence understands ({schema.SCHEMA_VERSION}); upgrade emfence")
            for version in range(current + 1, schema.SCHEMA_VERSION + 1):
                for statement in schema.MIGRATIONS[version - 1]:
                    if callable(statement):
                        statement(cur, db.dialect)
                    else:
                        cur.execute(schema.render(statement, db.dialect))
                cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                            (version, time.time_ns() // 1_000_000))

    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._db.tx("schema version", write=False) as cur:
            return int(cur.execute("SELECT MAX(version) FROM schema_version").scalar() or 0)

    def close_store(self) -> None:
        """Close every connection this store opened (in any thread), after waiting for the
        transactions other threads are running; later calls raise :class:`StoreError`.
        An operator filing an alarm is :meth:`close_alarm`, not this."""
        self._db.close()
        if self._tracks_db is not self._db:
            self._tracks_db.close()

    def close(self) -> None:
        """:meth:`close_store`, under the usual name for releasing a resource (so that
        ``contextlib.closing(store)`` works). It closes the store, never an alarm."""
        self.close_store()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_store()
