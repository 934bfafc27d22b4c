"""Each engine worker's checkpoint in the store: its rule state and the redelivery digests
that state covers, one row per worker (``emfence run --name``), replaced whole."""

from __future__ import annotations

from collections.abc import Callable

from alarms.db import Cursor, Database, int_ms


class CheckpointStore:
    """Engine checkpoints of :class:`alarms.store.AlarmStore`."""

    _db: Database
    # alarms.leases.LeaseStore: the holder's epoch fence (a no-op without one)
    _fenced: Callable[[Cursor, str], None]

    def save_checkpoint(self, worker: str, state: bytes, digests: bytes, now_ms: int) -> None:
        """Keep ``worker``'s engine checkpoint (``state``: the bytes of a checkpoint file)
        and the redelivery digests it covers, replacing the previous ones in one
        transaction: a reader sees both old or both new, never a mix."""
        now_ms = int_ms(now_ms, "now_ms")
        with self._db.tx("save engine checkpoint") as cur:
            self._fenced(cur, "save engine checkpoint")
            cur.execute("INSERT INTO engine_checkpoints (worker, state, digests, written_at) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (worker) DO UPDATE SET "
                        "state = excluded.state, digests = excluded.digests, "
                        "written_at = excluded.written_at",
                        (worker, state, digests, now_ms))

    def load_checkpoint(self, worker: str) -> tuple[bytes, bytes, int] | None:
        """``worker``'s checkpoint ``(state, digests, written_at)``, or None if it has none."""
        with self._db.tx("load engine checkpoint", write=False) as cur:
            row = cur.execute("SELECT state, digests, written_at FROM engine_checkpoints "
                              "WHERE worker = ?", (worker,)).one()
        if row is None:
            return None
        return bytes(row["state"]), bytes(row["digests"]), int(row["written_at"])

    def delete_checkpoint(self, worker: str) -> bool:
        """Forget ``worker``'s checkpoint; True if there was one."""
        with self._db.tx("delete engine checkpoint") as cur:
            return cur.execute("DELETE FROM engine_checkpoints WHERE worker = ?",
                               (worker,)).rowcount > 0
