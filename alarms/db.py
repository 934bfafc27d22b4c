"""The store's connection layer: one database (a connection per thread, transactions, the
placeholder style), the cursor every part of the store writes its SQL through, and the
small SQL helpers they share.

One subclass per dialect: :mod:`alarms.sqlite`, :mod:`alarms.postgres`. The rest of the
store (events, lifecycle, queries, tracks, users, checkpoints) sees only
:class:`Database` and :class:`Cursor`, and writes ``?`` placeholders whatever the dialect.

Closing: :meth:`Database.close` refuses new transactions, then waits (up to
``close_timeout_s``) for the transactions other threads are running to end before it
closes their connections: closing a SQLite connection under a statement running on
another thread can crash the interpreter. A transaction still running when the wait
gives up keeps its connection, which its own thread closes when it ends.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from contract.errors import EmfenceError

# Longest list bound into one "IN (...)" (SQLite allows 32766 variables; stay well under).
IN_CHUNK = 500
# Rows per multi-row INSERT: at most 10 columns, so well under both databases' limit on
# bound parameters (SQLite 32766, PostgreSQL 65535).
ROWS_PER_INSERT = 500

log = logging.getLogger("emfence.alarms.store")


class StoreError(EmfenceError):
    """The store cannot do what was asked: bad URL, unreachable database, schema newer than
    this code, a malformed event (``where`` names it), or a database error (``__cause__``)."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def redact(url: str) -> str:
    """``url`` without a password, for messages and logs."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


class Database:
    """One database: a connection per thread, transactions, placeholder style.

    A dialect subclass provides ``_connect``, ``_begin``, ``_commit``, ``_rollback``
    (and ``_broken`` if a connection can die under it), the locks and ``insert_fixes``.
    """

    dialect = ""
    errors: tuple[type[BaseException], ...] = ()
    # How long close() waits for other threads' transactions to end (seconds).
    close_timeout_s = 10.0

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._all: dict[Any, int] = {}  # every open connection -> the thread that owns it
        self._active: dict[int, int] = {}  # thread -> transactions it is inside
        self._orphans: dict[Any, int] = {}  # still in use when close() gave up waiting
        self._closed = False

    # --- the dialect's part -------------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, conn: Any, write: bool) -> None:
        raise NotImplementedError

    def _commit(self, conn: Any) -> None:
        raise NotImplementedError

    def _rollback(self, conn: Any) -> None:
        raise NotImplementedError

    def _broken(self, conn: Any) -> bool:
        """Is this connection unusable (server restarted, network cut)?"""
        return False

    def sql(self, text: str) -> str:
        """``text`` (``?`` placeholders) in the driver's placeholder style."""
        return text

    def lock_event_log(self, cur: Cursor) -> None:
        """Order this transaction's event-log appends after every earlier commit's."""
        raise NotImplementedError

    def lock_migrations(self, cur: Cursor) -> None:
        """Make this the only transaction migrating the schema."""
        raise NotImplementedError

    def lock_register(self, cur: Cursor) -> None:
        """Make this the only transaction changing the register (its change sequence is
        then committed in order, and its checks see every earlier change)."""
        raise NotImplementedError

    def lock_logins(self, cur: Cursor, keys: Sequence[int]) -> None:
        """Make this the only transaction counting login attempts for these keys."""
        raise NotImplementedError

    def insert_fixes(self, cur: Cursor, rows: list[tuple[Any, ...]],
                     newest: list[tuple[Any, ...]]) -> None:
        """Append fixes to tracks (skipping ones already stored) and move positions forward.

        ``rows`` and ``newest`` (one row per device, its newest in the batch) are tuples in
        :data:`alarms.tracks.TRACK_COLUMNS` order, ``rows`` sorted by (device_id, ts).
        """
        raise NotImplementedError

    # --- connections and transactions ---------------------------------------------------

    def conn(self) -> Any:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StoreError("store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            with self._lock:
                if self._closed:  # closed while connecting: nobody else will close it
                    self._close_quietly(conn)
                    raise StoreError("store is closed")
                self._all[conn] = threading.get_ident()
            self._local.conn = conn
        return conn

    def _close_quietly(self, conn: Any) -> None:
        try:
            conn.close()
        except self.errors as exc:  # closing is best effort; say why it failed
            log.warning("closing a store connection failed: %s", exc)

    def _discard(self, conn: Any) -> None:
        """Forget this thread's broken connection, so the next call opens a new one."""
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._all.pop(conn, None)
        try:
            conn.close()
        except self.errors:
            pass  # it is broken already; closing only frees the client side

    def _begin_fresh(self, op: str, write: bool) -> Any:
        """This thread's connection with a transaction begun on it.

        A connection found dead at BEGIN (e.g. PostgreSQL restarted since the last call)
        is replaced once: nothing has been done on it yet, so retrying is safe.
        """
        for attempt in (1, 2):
            conn = self.conn()
            try:
                self._begin(conn, write)
                return conn
            except self.errors as exc:
                if self._broken(conn):
                    self._discard(conn)
                    if attempt == 1:
                        log.warning("%s: store connection was lost; reconnecting", op)
                        continue
                raise StoreError(f"{op}: cannot begin a transaction: {exc}") from exc
        raise AssertionError("unreachable")

    def _enter(self, op: str) -> None:
        """Count this thread into a transaction; refused once the store is closing."""
        me = threading.get_ident()
        with self._lock:
            if self._closed:
                raise StoreError(f"{op}: store is closed")
            self._active[me] = self._active.get(me, 0) + 1

    def _leave(self) -> None:
        """Count this thread out; after a close that gave up waiting, close what it left."""
        me = threading.get_ident()
        with self._lock:
            depth = self._active.pop(me) - 1
            if depth:
                self._active[me] = depth
            if not self._closed:
                return  # nobody waits (close() sets _closed before it waits)
            self._idle.notify_all()
            leftovers = [] if depth else [c for c, o in self._orphans.items() if o == me]
            for c in leftovers:
                del self._orphans[c]
        for c in leftovers:
            self._local.conn = None
            self._close_quietly(c)

    @contextmanager
    def tx(self, op: str, write: bool = True) -> Iterator[Cursor]:
        """One transaction; any database error becomes a StoreError naming ``op``.

        A connection that breaks during the transaction is discarded (the transaction is
        lost as a whole; the caller may retry and the next call reconnects).
        """
        self._enter(op)
        try:
            conn = self._begin_fresh(op, write)
            try:
                yield Cursor(self, conn.cursor())
            except BaseException as exc:
                try:
                    self._rollback(conn)
                except self.errors:
                    pass  # the connection is broken; the original error is what matters
                if self._broken(conn):
                    self._discard(conn)
                if isinstance(exc, self.errors):
                    raise StoreError(f"{op}: {exc}") from exc
                raise
            try:
                self._commit(conn)
            except self.errors as exc:
                if self._broken(conn):
                    self._discard(conn)
                raise StoreError(f"{op}: commit failed: {exc}") from exc
        finally:
            self._leave()

    def close(self) -> None:
        """Refuse new transactions, wait for running ones, close every connection."""
        me = threading.get_ident()
        with self._lock:
            self._closed = True
            # (a transaction of this very thread cannot end while it waits here)
            done = self._idle.wait_for(lambda: not self._active.keys() - {me},
                                       self.close_timeout_s)
            busy = set(self._active) - {me}
            conns = [c for c, owner in self._all.items() if owner not in busy]
            self._orphans.update({c: o for c, o in self._all.items() if o in busy})
            self._all = {}
        if not done:
            log.warning("closing the store: %d thread(s) still inside a transaction after "
                        "%.0f s; each closes its connection when it ends", len(busy),
                        self.close_timeout_s)
        for conn in conns:
            self._close_quietly(conn)


class Cursor:
    """A cursor that speaks '?' placeholders on every dialect and returns dict rows."""

    def __init__(self, db: Database, cur: Any):
        self.db = db
        self.cur = cur

    def execute(self, text: str, params: Sequence[Any] = ()) -> Cursor:
        self.cur.execute(self.db.sql(text), tuple(params))
        return self

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cur.executemany(self.db.sql(text), rows)

    @property
    def rowcount(self) -> int:
        return self.cur.rowcount

    def one(self) -> dict[str, Any] | None:
        row = self.cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in self.cur.description], row))

    def all(self) -> list[dict[str, Any]]:
        rows = self.cur.fetchall()
        if not rows:
            return []
        names = [d[0] for d in self.cur.description]
        return [dict(zip(names, r)) for r in rows]

    def scalar(self) -> Any:
        row = self.cur.fetchone()
        return None if row is None else row[0]


# --- SQL helpers --------------------------------------------------------------------------


def placeholders(n: int) -> str:
    """``(?, ?, ?)``: ``n`` placeholders in parentheses."""
    return "(" + ", ".join("?" * n) + ")"


def values(rows: int, cols: int) -> str:
    """``(?, ?), (?, ?)``: the VALUES list of a multi-row INSERT."""
    one = placeholders(cols)
    return ", ".join([one] * rows)


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def as_list(value: str | Iterable[str] | None, name: str) -> list[str] | None:
    """None (no filter) or a list of strings; a bare string is a one-element list."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    out = list(value)
    for v in out:
        if not isinstance(v, str):
            raise StoreError(f"{name} must be strings, got {v!r}")
    return out


def int_ms(value: Any, name: str) -> int:
    """An epoch-millisecond (or millisecond duration) argument as a plain int."""
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers are fine; floats and strings are a caller bug worth naming
        if hasattr(value, "__index__") and not isinstance(value, bool):
            return int(value)
        raise StoreError(f"{name} must be an integer number of epoch milliseconds, got {value!r}")
    return value


def count(value: Any, name: str) -> int:
    """A row count (limit, offset): a non-negative integer."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 0:
        raise StoreError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class Where:
    """Conditions ANDed into one WHERE clause, with their parameters in order.

    ``nothing`` is set once a filter can match no row (an empty list of allowed values),
    so that a caller can answer at once instead of asking the database.
    """

    def __init__(self, *conditions: str, params: Sequence[Any] = ()):
        self.conditions = list(conditions)
        self.params = list(params)
        self.nothing = False

    def add(self, condition: str, *params: Any) -> Where:
        self.conditions.append(condition)
        self.params += params
        return self

    def one_of(self, column: str, allowed: Sequence[Any] | None) -> Where:
        """``column IN (allowed)``; None adds nothing; an empty list matches no row."""
        if allowed is None:
            return self
        if not allowed:
            self.nothing = True
            return self.add("1 = 0")
        return self.add(f"{column} IN {placeholders(len(allowed))}", *allowed)

    def regions(self, regions: str | Iterable[str] | None) -> Where:
        """The region filter of every region-scoped read and write: None is every region,
        a string or a list names them (an empty list: none)."""
        return self.one_of("region", as_list(regions, "regions"))

    def also(self, *conditions: str) -> Where:
        """A copy with more conditions (no parameters)."""
        out = Where(*self.conditions, *conditions, params=self.params)
        out.nothing = self.nothing
        return out

    @property
    def sql(self) -> str:
        """`` WHERE a AND b`` (with its leading space), or "" without conditions."""
        return (" WHERE " + " AND ".join(self.conditions)) if self.conditions else ""
