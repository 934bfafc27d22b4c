"""Worker-group leases and epoch fencing: several ``emfence run`` processes with one
``--name`` against one PostgreSQL store are a group, and only the holder of the group's
lease works (docs/operations.md, "Active and standby workers").

One row per group in ``worker_leases``: who holds it, until when, and its epoch, which
grows by one at every change of holder. Taking and renewing are one atomic conditional
upsert; time is the database's clock (``now()`` of PostgreSQL, ``'now'`` of SQLite), so
machines whose clocks disagree still agree on when a lease expires.

Fencing: once a holder's :class:`Fence` is set on the store (``store.fence``), the
transactions that record alarm events, save the checkpoint and mark outbox rows
delivered first check that the lease row still carries this holder and this epoch
(PostgreSQL: ``FOR SHARE``, so a takeover waits for a write in progress and a write
after the takeover sees the new epoch; SQLite: its single writer orders them). A write
of a holder that lost the lease raises :class:`LeaseFenced` and tells the fence's
``on_lost``; nothing of it is written. SQLite is a single-process store: a lease is taken
there too (one code path), but a group needs PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alarms.db import Cursor, Database, StoreError, int_ms

# Schema migration (alarms.schema): its version is its place in MIGRATIONS.
V11_LEASES = [
    """
    CREATE TABLE worker_leases (
        group_name  TEXT PRIMARY KEY,
        holder      TEXT NOT NULL,
        epoch       BIGINT NOT NULL,
        expires_ms  BIGINT NOT NULL,
        taken_ms    BIGINT NOT NULL
    )
    """,
]

# The database's clock in epoch milliseconds, per dialect.
_NOW_MS = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    "sqlite": "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)",
}
# Take a free or expired lease (a new epoch), or renew one's own (the same epoch); the
# row is left alone, and nothing returned, when another holder's lease has not expired.
_TAKE = """
INSERT INTO worker_leases (group_name, holder, epoch, expires_ms, taken_ms)
VALUES (?, ?, 1, {now} + ?, {now})
ON CONFLICT (group_name) DO UPDATE SET
    epoch = CASE WHEN worker_leases.holder = excluded.holder AND worker_leases.epoch = ?
                 THEN worker_leases.epoch ELSE worker_leases.epoch + 1 END,
    taken_ms = CASE WHEN worker_leases.holder = excluded.holder AND worker_leases.epoch = ?
                    THEN worker_leases.taken_ms ELSE excluded.taken_ms END,
    holder = excluded.holder,
    expires_ms = excluded.expires_ms
WHERE (worker_leases.holder = excluded.holder AND worker_leases.epoch = ?)
   OR worker_leases.expires_ms < excluded.taken_ms
RETURNING epoch
"""


class LeaseFenced(StoreError):
    """A write of a holder whose lease another worker has taken since (``group``,
    ``holder``, ``epoch``: the stale claim): nothing of it was written."""

    def __init__(self, group: str, holder: str, epoch: int, op: str):
        self.group, self.holder, self.epoch = group, holder, epoch
        super().__init__(f"{op}: fenced: the lease of worker group {group!r} is no longer "
                         f"held by {holder} at epoch {epoch}")


@dataclass(frozen=True)
class LeaseState:
    """The lease row as one call found it: ``held`` by the caller or not; ``holder``,
    ``epoch`` and ``expires_ms`` of whoever holds it; ``now_ms`` the database's clock."""

    group: str
    held: bool
    holder: str
    epoch: int
    expires_ms: int
    now_ms: int

    @property
    def left_ms(self) -> int:
        """How long the lease runs on, by the database's clock, ms (negative: expired)."""
        return self.expires_ms - self.now_ms


@dataclass
class Fence:
    """A holder's claim, set on the store as ``store.fence``: every fenced write checks
    it. ``on_lost(exc)`` is called (in the writing thread) when a write was fenced."""

    group: str
    holder: str
    epoch: int
    on_lost: Callable[[LeaseFenced], None] | None = None

    def check(self, cur: Cursor, op: str) -> None:
        """In the caller's transaction, before its writes: raise :class:`LeaseFenced`
        unless the lease row still carries this holder and epoch."""
        lock = " FOR SHARE" if cur.db.dialect == "postgresql" else ""
        row = cur.execute("SELECT epoch FROM worker_leases WHERE group_name = ? AND "
                          "holder = ? AND epoch = ?" + lock,
                          (self.group, self.holder, self.epoch)).one()
        if row is None:
            exc = LeaseFenced(self.group, self.holder, self.epoch, op)
            if self.on_lost is not None:
                self.on_lost(exc)
            raise exc


class LeaseStore:
    """Worker-group leases of :class:`alarms.store.AlarmStore`; ``fence`` (None: no
    fencing, e.g. the console or a tool) is checked by the fenced writes."""

    _db: Database
    fence: Fence | None = None

    def bound_idle_transactions(self, ms: int) -> None:
        """PostgreSQL: have the server end a session of this store idle inside a
        transaction for ``ms`` (connections opened from now on), so that a holder paused
        in the middle of a write releases its locks within ``ms``. SQLite: nothing."""
        if self._db.dialect == "postgresql":
            self._db.idle_in_transaction_ms = int_ms(ms, "ms")  # type: ignore[attr-defined]

    def _fenced(self, cur: Cursor, op: str) -> None:
        if self.fence is not None:
            self.fence.check(cur, op)

    def take_lease(self, group: str, holder: str, ttl_ms: int, epoch: int = 0) -> LeaseState:
        """Take ``group``'s lease for ``holder`` for ``ttl_ms`` (database clock) if it is
        free or expired (a new epoch), or renew it if ``holder`` holds it at ``epoch``
        (the same epoch). Either way the answer says who holds it now."""
        ttl_ms = int_ms(ttl_ms, "ttl_ms")
        if ttl_ms <= 0:
            raise StoreError(f"ttl_ms must be positive, got {ttl_ms}")
        now = _NOW_MS[self._db.dialect]
        with self._db.tx("take lease") as cur:
            got = cur.execute(_TAKE.format(now=now),
                              (group, holder, ttl_ms, epoch, epoch, epoch)).scalar()
            state = self._lease_row(cur, group)
        if state is None:  # not reachable: the upsert left a row either way
            raise StoreError(f"take lease: no lease row for group {group!r}")
        return LeaseState(group, got is not None and state.holder == holder, state.holder,
                          state.epoch, state.expires_ms, state.now_ms)

    def lease(self, group: str) -> LeaseState | None:
        """``group``'s lease as it stands (``held`` False), or None if nobody ever took it.
        A plain read: it never waits for a holder's write."""
        with self._db.tx("read lease", write=False) as cur:
            return self._lease_row(cur, group)

    def release_lease(self, group: str, holder: str, epoch: int) -> bool:
        """Let ``group``'s lease expire now, if ``holder`` still holds it at ``epoch`` (a
        clean stop: a standby need not wait for the expiry); True if it did."""
        now = _NOW_MS[self._db.dialect]
        with self._db.tx("release lease") as cur:
            return cur.execute(f"UPDATE worker_leases SET expires_ms = {now} - 1 WHERE "
                               "group_name = ? AND holder = ? AND epoch = ?",
                               (group, holder, epoch)).rowcount > 0

    def _lease_row(self, cur: Cursor, group: str) -> LeaseState | None:
        row = cur.execute(f"SELECT holder, epoch, expires_ms, {_NOW_MS[self._db.dialect]} "
                          "AS now_ms FROM worker_leases WHERE group_name = ?",
                          (group,)).one()
        if row is None:
            return None
        return LeaseState(group, False, row["holder"], int(row["epoch"]),
                          int(row["expires_ms"]), int(row["now_ms"]))
