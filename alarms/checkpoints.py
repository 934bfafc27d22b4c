"""Each engine worker's checkpoint in the store: its rule state and the redelivery digests
that state covers, one row per worker (``emfence run --name``), and the incremental
checkpoints written after that state (engine.checkpoint_delta), one row each."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from alarms.db import Cursor, Database, StoreError, int_ms

# Schema migration (alarms.schema): the deltas after each worker's full checkpoint, in
# order (``seq`` 1, 2, ...), each with the redelivery digests it covers (the newest row's
# are the worker's: the full checkpoint's row is not rewritten for them, which in SQLite
# would copy its whole state), deleted with every new full checkpoint in the same
# transaction.
V16_CHECKPOINT_DELTAS = [
    """
    CREATE TABLE engine_checkpoint_deltas (
        worker      TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        state       {blob} NOT NULL,
        digests     {blob} NOT NULL,
        written_at  BIGINT NOT NULL,
        PRIMARY KEY (worker, seq)
    )
    """,
]


class CheckpointStore:
    """Engine checkpoints of :class:`alarms.store.AlarmStore`."""

    _db: Database
    # alarms.leases.LeaseStore: the holder's epoch fence (a no-op without one)
    _fenced: Callable[[Cursor, str], None]

    def save_checkpoint(self, worker: str, state: bytes, digests: bytes, now_ms: int) -> None:
        """Keep ``worker``'s engine checkpoint (``state``: the bytes of a checkpoint file)
        and the redelivery digests it covers, replacing the previous ones and their deltas
        in one transaction: a reader sees both old or both new, never a mix."""
        self.save_checkpoint_chain(worker, state, [], digests, now_ms)

    def save_checkpoint_chain(self, worker: str, base: bytes | None,
                              deltas: Sequence[tuple[int, bytes]], digests: bytes,
                              now_ms: int) -> None:
        """In one transaction, fenced: ``base`` (None: keep the one stored) replacing the
        previous checkpoint and its deltas, then ``deltas`` (``(seq, bytes)`` in order,
        after those kept); ``digests`` go with the newest of them."""
        now_ms = int_ms(now_ms, "now_ms")
        with self._db.tx("save engine checkpoint") as cur:
            self._fenced(cur, "save engine checkpoint")
            if base is not None:
                cur.execute("INSERT INTO engine_checkpoints (worker, state, digests, "
                            "written_at) VALUES (?, ?, ?, ?) ON CONFLICT (worker) DO UPDATE "
                            "SET state = excluded.state, digests = excluded.digests, "
                            "written_at = excluded.written_at",
                            (worker, base, b"" if deltas else digests, now_ms))
                cur.execute("DELETE FROM engine_checkpoint_deltas WHERE worker = ?", (worker,))
            elif cur.execute("SELECT 1 AS one FROM engine_checkpoints WHERE worker = ?",
                             (worker,)).one() is None:
                raise StoreError(f"no checkpoint of worker {worker!r} for its deltas")
            if deltas:
                last = len(deltas) - 1
                cur.executemany("INSERT INTO engine_checkpoint_deltas (worker, seq, state, "
                                "digests, written_at) VALUES (?, ?, ?, ?, ?)",
                                [(worker, int(seq), data, digests if i == last else b"",
                                  now_ms) for i, (seq, data) in enumerate(deltas)])

    def load_checkpoint(self, worker: str) -> tuple[bytes, bytes, int] | None:
        """``worker``'s full checkpoint ``(state, digests, written_at)``, or None if it has
        none (its deltas, and the digests of the newest: :meth:`load_checkpoint_chain`)."""
        with self._db.tx("load engine checkpoint", write=False) as cur:
            row = cur.execute("SELECT state, digests, written_at FROM engine_checkpoints "
                              "WHERE worker = ?", (worker,)).one()
        if row is None:
            return None
        return bytes(row["state"]), bytes(row["digests"]), int(row["written_at"])

    def load_checkpoint_chain(self, worker: str
                              ) -> tuple[bytes, list[bytes], bytes, int] | None:
        """``worker``'s checkpoint ``(state, deltas in order, digests, written_at)`` read in
        one transaction, or None if it has none."""
        with self._db.tx("load engine checkpoint", write=False) as cur:
            row = cur.execute("SELECT state, digests, written_at FROM engine_checkpoints "
                              "WHERE worker = ?", (worker,)).one()
            deltas = cur.execute("SELECT state, digests, written_at FROM "
                                 "engine_checkpoint_deltas WHERE worker = ? ORDER BY seq",
                                 (worker,)).all()
        if row is None:
            return None
        newest = deltas[-1] if deltas else row
        return (bytes(row["state"]), [bytes(d["state"]) for d in deltas],
                bytes(newest["digests"]), int(newest["written_at"]))

    def delete_checkpoint(self, worker: str) -> bool:
        """Forget ``worker``'s checkpoint and its deltas; True if there was one."""
        with self._db.tx("delete engine checkpoint") as cur:
            cur.execute("DELETE FROM engine_checkpoint_deltas WHERE worker = ?", (worker,))
            return cur.execute("DELETE FROM engine_checkpoints WHERE worker = ?",
                               (worker,)).rowcount > 0
