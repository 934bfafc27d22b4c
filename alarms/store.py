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
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import orjson

from alarms import schema
from alarms.checkpoints import CheckpointStore
from alarms.db import Cursor as _Cursor
from alarms.db import Database as _Db
from alarms.db import StoreError, Where
from alarms.db import int_ms as _int_ms
from alarms.db import redact as _redact
from alarms.events import EventLog, append_event
from alarms.postgres import PostgresDatabase
from alarms.queries import ALARM_COLUMNS as _ALARM_COLUMNS
from alarms.queries import AlarmQueries
from alarms.queries import alarm_row as _alarm_row
from alarms.schema import (
    DISPOSITIONS,
)
from alarms.sqlite import SqliteDatabase
from alarms.tracks import TRACK_COLUMNS, TrackStore, tracks_path
from alarms.users import LoginAttempt, UserError, UserStore, audit_row
from contract.errors import EmfenceError

__all__ = ["TRACK_COLUMNS", "AlarmActionError", "AlarmStore", "LoginAttempt", "StoreError",
           "UserError", "open_store", "tracks_path"]

log = logging.getLogger("emfence.alarms.store")


class AlarmActionError(EmfenceError, ValueError):
    """An operator action is not allowed: ``alarm_id`` and a human ``reason``."""

    def __init__(self, alarm_id: str, reason: str):
        self.alarm_id = alarm_id
        self.reason = reason
        super().__init__(f"alarm {alarm_id!r}: {reason}")


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

class AlarmStore(EventLog, AlarmQueries, TrackStore, UserStore, CheckpointStore):
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

    # --- lifecycle ----------------------------------------------------------------------

    def _lifecycle_event(self, cur: _Cursor, alarm: dict[str, Any], event: str, now_ms: int,
                         extra: dict[str, Any]) -> int:
        payload = {
            "event": event, "alarm_id": alarm["alarm_id"], "type": alarm["type"],
            "subject_id": alarm["subject_id"], "device_id": alarm["device_id"],
            "zone_id": alarm["zone_id"], "region": alarm["region"], "at": now_ms,
            "late": bool(alarm["late"]), **extra,
        }
        return append_event(cur, alarm["alarm_id"], event, alarm["region"],
                                  alarm["type"], orjson.dumps(payload), now_ms)

    @staticmethod
    def _check_actor(alarm_id: str, user: Any) -> None:
        if not isinstance(user, str) or not user.strip():
            raise AlarmActionError(alarm_id, "the acting user must be named")

    def acknowledge(self, alarm_id: str, user: str, note: str | None, now_ms: int, *,
                    ip: str | None = None) -> dict[str, Any]:
        """An operator takes the alarm: workflow new → acknowledged.

        Appends an ``acknowledged`` event (published, so other consoles update), an action
        and an audit row, in one transaction. Raises :class:`AlarmActionError` for an
        unknown alarm or one already acknowledged or closed (two operators racing: exactly
        one wins). Returns the updated alarm.
        """
        now_ms = _int_ms(now_ms, "now_ms")
        self._check_actor(alarm_id, user)
        with self._db.tx("acknowledge") as cur:
            self._db.lock_event_log(cur)
            n = cur.execute("UPDATE alarms SET workflow = 'acknowledged', acknowledged_by = ?, "
                            "acknowledged_at = ? WHERE alarm_id = ? AND workflow = 'new'",
                            (user, now_ms, alarm_id)).rowcount
            alarm = cur.execute(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE alarm_id = ?",
                                (alarm_id,)).one()
            if alarm is None:
                raise AlarmActionError(alarm_id, "no such alarm")
            if n != 1:
                raise AlarmActionError(alarm_id, f"already {alarm['workflow']} by "
                                       f"{alarm['acknowledged_by']} (only a new alarm can be "
                                       "acknowledged)")
            cur.execute("INSERT INTO alarm_actions (alarm_id, who, what, at, note) "
                        "VALUES (?, ?, 'acknowledge', ?, ?)", (alarm_id, user, now_ms, note))
            self._lifecycle_event(cur, alarm, "acknowledged", now_ms, {"by": user})
            audit_row(cur, user, "alarm.acknowledge", alarm_id,
                        {"note": note, "region": alarm["region"]}, now_ms, ip)
        return _alarm_row(alarm)

    def close_alarm(self, alarm_id: str, user: str, disposition: str, note: str | None,
                    now_ms: int, *, ip: str | None = None) -> dict[str, Any]:
        """File the alarm: workflow acknowledged → closed, with a disposition and a note.

        ``disposition`` is one of :data:`alarms.schema.DISPOSITIONS`; ``other`` needs a
        note saying what it was. The condition (active/cleared) is independent: an operator
        may close an alarm whose condition is still active. Appends a ``closed`` event, an
        action and an audit row, in one transaction. Raises :class:`AlarmActionError`.
        Also reachable as ``close(alarm_id, user, disposition, note, now_ms)``.
        """
        now_ms = _int_ms(now_ms, "now_ms")
        self._check_actor(alarm_id, user)
        if disposition not in DISPOSITIONS:
            raise AlarmActionError(alarm_id, f"disposition must be one of "
                                   f"{', '.join(DISPOSITIONS)}, got {disposition!r}")
        if disposition == "other" and not (note and note.strip()):
            raise AlarmActionError(alarm_id, "disposition 'other' needs a note saying what it was")
        with self._db.tx("close alarm") as cur:
            self._db.lock_event_log(cur)
            n = cur.execute("UPDATE alarms SET workflow = 'closed', closed_by = ?, closed_at = ?, "
                            "disposition = ?, note = ? "
                            "WHERE alarm_id = ? AND workflow = 'acknowledged'",
                            (user, now_ms, disposition, note, alarm_id)).rowcount
            alarm = cur.execute(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE alarm_id = ?",
                                (alarm_id,)).one()
            if alarm is None:
                raise AlarmActionError(alarm_id, "no such alarm")
            if n != 1:
                reason = ("must be acknowledged before it is closed" if alarm["workflow"] == "new"
                          else f"already closed by {alarm['closed_by']}")
                raise AlarmActionError(alarm_id, reason)
            cur.execute("INSERT INTO alarm_actions (alarm_id, who, what, at, note, disposition) "
                        "VALUES (?, ?, 'close', ?, ?, ?)",
                        (alarm_id, user, now_ms, note, disposition))
            self._lifecycle_event(cur, alarm, "closed", now_ms,
                                  {"by": user, "disposition": disposition})
            audit_row(cur, user, "alarm.close", alarm_id,
                        {"disposition": disposition, "note": note, "region": alarm["region"]},
                        now_ms, ip)
        return _alarm_row(alarm)

    def add_note(self, alarm_id: str, user: str, note: str, now_ms: int, *,
                 ip: str | None = None) -> None:
        """Add a note to an alarm's history (any workflow state); audited."""
        now_ms = _int_ms(now_ms, "now_ms")
        self._check_actor(alarm_id, user)
        if not isinstance(note, str) or not note.strip():
            raise AlarmActionError(alarm_id, "a note must not be empty")
        with self._db.tx("add note") as cur:
            region = cur.execute("SELECT region FROM alarms WHERE alarm_id = ?",
                                 (alarm_id,)).scalar()
            if region is None:
                raise AlarmActionError(alarm_id, "no such alarm")
            cur.execute("INSERT INTO alarm_actions (alarm_id, who, what, at, note) "
                        "VALUES (?, ?, 'note', ?, ?)", (alarm_id, user, now_ms, note))
            audit_row(cur, user, "alarm.note", alarm_id, {"note": note, "region": region},
                        now_ms, ip)

    def escalate_due(self, now_ms: int, after_ms: int, regions: Iterable[str] | None = None
                     ) -> list[dict[str, Any]]:
        """Escalate alarms nobody acknowledged within ``after_ms`` of being recorded.

        The window starts at ``recorded_at`` (when the store learned of the raise), not the
        fix time, so a late store-and-forward alarm still gives the operator the full window.
        The condition state does not matter: a cleared alarm still needs an operator.
        Each alarm escalates exactly once, even with several workers on one PostgreSQL
        (a conditional UPDATE claims it). Appends one ``escalated`` event per alarm (with
        ``raised_at``) plus an action and an audit row by ``system``, in one transaction.
        Returns the escalated events as published.
        """
        now_ms = _int_ms(now_ms, "now_ms")
        after_ms = _int_ms(after_ms, "after_ms")
        where = Where("workflow = 'new'", "escalated_at IS NULL", "recorded_at <= ?",
                      params=[now_ms - after_ms]).regions(regions)
        if where.nothing:
            return []
        out: list[dict[str, Any]] = []
        with self._db.tx("escalate") as cur:
            self._db.lock_event_log(cur)
            claimed = cur.execute(
                f"UPDATE alarms SET escalated_at = ?{where.sql} RETURNING {_ALARM_COLUMNS}",
                (now_ms, *where.params)).all()
            claimed.sort(key=lambda a: (a["recorded_at"], a["alarm_id"]))
            for alarm in claimed:
                extra = {"raised_at": alarm["raised_at"], "after_ms": after_ms}
                self._lifecycle_event(cur, alarm, "escalated", now_ms, extra)
                cur.execute("INSERT INTO alarm_actions (alarm_id, who, what, at) "
                            "VALUES (?, 'system', 'escalated', ?)", (alarm["alarm_id"], now_ms))
                audit_row(cur, "system", "alarm.escalate", alarm["alarm_id"],
                            {"region": alarm["region"], "after_ms": after_ms}, now_ms, None)
                out.append({
                    "event": "escalated", "alarm_id": alarm["alarm_id"], "type": alarm["type"],
                    "subject_id": alarm["subject_id"], "device_id": alarm["device_id"],
                    "zone_id": alarm["zone_id"], "region": alarm["region"], "at": now_ms,
                    "late": bool(alarm["late"]), **extra,
                })
        return out
