"""Leave, curfews and alert suspensions in the register.

The leave workflow (docs/register.md)::

    requested --approve (supervisor/admin, not the requester)--> approved
    requested --refuse  (supervisor/admin, not the requester)--> refused
    requested --cancel, or the subject's supervision ends-----> cancelled
    approved  --return (销假, an officer)-----------------------> returned

An approved leave is seen at a moment as ``approved`` before its window opens,
``active`` while it is open and ``ended`` after its end (the engine decides whether the
subject is overdue). Only approved (and returned) leaves reach the engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from alarms.db import Cursor, int_ms
from alarms.register_base import Change, RegisterBase, region_list
from alarms.register_check import (
    RegisterError,
    check_curfew,
    check_role,
    check_suspension,
    check_text,
    check_window,
    check_zone_list,
    not_found,
)
from alarms.register_read import (
    LEAVE_COLUMNS,
    curfews_of,
    leave_dict,
    suspensions_of,
)

LEAVE_VIEW_STATES = ("requested", "refused", "approved", "active", "ended", "returned",
                     "cancelled")
# the end of a leave's window: its end, or its registered return when that came first
_WINDOW_END = ("CASE WHEN state = 'returned' AND returned_at < end_ms THEN returned_at "
               "ELSE end_ms END")


def leave_view(leave: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """The leave with ``state`` as seen at ``now_ms`` (approved -> approved / active /
    ended by its window)."""
    if leave["state"] == "approved":
        if now_ms < leave["start"]:
            state = "approved"
        elif now_ms <= leave["end"]:
            state = "active"
        else:
            state = "ended"
        return {**leave, "state": state}
    return leave


def _overlapping(cur: Cursor, subject_id: str, start_ms: int, end_ms: int,
                 leave_id: str | None) -> str | None:
    """An approved leave of the subject whose window meets [start_ms, end_ms] (inclusive,
    as the engine reads windows), other than ``leave_id``."""
    return cur.execute(f"SELECT leave_id FROM reg_leaves WHERE subject_id = ? AND state IN "
                       f"('approved', 'returned') AND leave_id <> ? AND start_ms <= ? AND "
                       f"{_WINDOW_END} >= ? ORDER BY start_ms",
                       (subject_id, leave_id or "", end_ms, start_ms)).scalar()


class RegisterLeaves(RegisterBase):
    """Leave, curfews and suspensions of :class:`alarms.register.Register`."""

    def request_leave(self, subject_id: str, *, zones: list[str], start_ms: Any, end_ms: Any,
                      reason: str | None, actor: str, now_ms: int,
                      regions: Iterable[str] | None = None, max_days: int = 30
                      ) -> dict[str, Any]:
        """An officer requests leave: ``zones`` allowed in [start_ms, end_ms] (epoch ms or
        ISO 8601 with offset). 400 ``end`` when it ends before it starts or lasts more
        than ``max_days``; 400 ``zones[i]`` unknown zone; 409 overlapping an approved
        leave of the subject; 404 unknown subject. Returns the leave, state requested."""
        zone_ids = check_zone_list(zones)
        start, end = check_window(start_ms, end_ms, max_days)
        why = check_text(reason, "reason")
        with self._change("request leave", actor=actor, now_ms=now_ms, target=subject_id) as ch:
            cur = ch.cur
            self._active(self._visible(cur, subject_id, regions))
            self._check_zones_exist(cur, zone_ids, "zones")
            other = _overlapping(cur, subject_id, start, end, None)
            if other is not None:
                raise RegisterError(f"overlaps the approved leave {other!r}", field="start",
                                    status=409)
            leave_id = self._new_id(cur, "reg_leaves", "leave_id", "L", ch.seq)
            cur.execute("INSERT INTO reg_leaves (leave_id, subject_id, zones, start_ms, end_ms, "
                        "reason, state, requested_by, requested_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, 'requested', ?, ?)",
                        (leave_id, subject_id, orjson.dumps(zone_ids).decode(), start, end, why,
                         ch.actor, ch.now_ms))
            leave = self._leave(cur, leave_id)
            ch.audit("leave.request", leave_id, None, leave)
        return leave

    @staticmethod
    def _leave(cur: Cursor, leave_id: str) -> dict[str, Any]:
        row = cur.execute(f"SELECT {LEAVE_COLUMNS} FROM reg_leaves WHERE leave_id = ?",
                          (leave_id,)).one()
        if row is None:
            raise not_found("leave", leave_id, "leave_id")
        return leave_dict(row)

    def _leave_step(self, op: str, leave_id: str, ch: Change, regions: Iterable[str] | None,
                    *, decide: bool) -> dict[str, Any]:
        """The leave a step acts on: 404 unknown or outside ``regions``; a decision by its
        requester 403; a leave not in the state the step starts from 409."""
        if not isinstance(leave_id, str):
            raise not_found("leave", str(leave_id), "leave_id")
        leave = self._leave(ch.cur, leave_id)
        self._visible(ch.cur, leave["subject_id"], regions, field="leave_id")
        if decide and leave["requested_by"] == ch.actor:
            raise RegisterError("a leave is decided by someone other than its requester",
                                status=403)
        start_state = "requested" if decide else "approved"
        if leave["state"] != start_state:
            raise RegisterError(f"cannot {op} a leave that is {leave['state']} (only one "
                                f"that is {start_state})", status=409)
        return leave

    def approve_leave(self, leave_id: str, *, actor: str, role: str, now_ms: int,
                      regions: Iterable[str] | None = None) -> dict[str, Any]:
        """A supervisor or an admin (never the requester: 403; an operator: 403) approves
        a requested leave (409 otherwise, or when it now overlaps an approved one)."""
        check_role(role, "approve leave")
        with self._change("approve leave", actor=actor, now_ms=now_ms, target=leave_id) as ch:
            before = self._leave_step("approve", leave_id, ch, regions, decide=True)
            self._active(self._visible(ch.cur, before["subject_id"], None))
            other = _overlapping(ch.cur, before["subject_id"], before["start"], before["end"],
                                 leave_id)
            if other is not None:
                raise RegisterError(f"overlaps the approved leave {other!r}", status=409)
            ch.cur.execute("UPDATE reg_leaves SET state = 'approved', decided_by = ?, "
                           "decided_at = ? WHERE leave_id = ?", (ch.actor, ch.now_ms, leave_id))
            after = self._leave(ch.cur, leave_id)
            ch.audit("leave.approve", leave_id, before, after)
        return after

    def refuse_leave(self, leave_id: str, *, actor: str, role: str, now_ms: int,
                     reason: str | None = None, regions: Iterable[str] | None = None
                     ) -> dict[str, Any]:
        """A supervisor or an admin (not the requester) refuses a requested leave."""
        check_role(role, "refuse leave")
        why = check_text(reason, "reason")
        with self._change("refuse leave", actor=actor, now_ms=now_ms, target=leave_id) as ch:
            before = self._leave_step("refuse", leave_id, ch, regions, decide=True)
            ch.cur.execute("UPDATE reg_leaves SET state = 'refused', decided_by = ?, "
                           "decided_at = ?, decision_note = ? WHERE leave_id = ?",
                           (ch.actor, ch.now_ms, why, leave_id))
            after = self._leave(ch.cur, leave_id)
            ch.audit("leave.refuse", leave_id, before, after)
        return after

    def return_leave(self, leave_id: str, *, actor: str, now_ms: int,
                     regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Register the subject's return (销假) now: the leave's window ends at ``now_ms``
        if that is before its end. 409 unless the leave is approved."""
        with self._change("return leave", actor=actor, now_ms=now_ms, target=leave_id) as ch:
            before = self._leave_step("return", leave_id, ch, regions, decide=False)
            ch.cur.execute("UPDATE reg_leaves SET state = 'returned', returned_by = ?, "
                           "returned_at = ? WHERE leave_id = ?", (ch.actor, ch.now_ms, leave_id))
            after = self._leave(ch.cur, leave_id)
            ch.audit("leave.return", leave_id, before, after)
        return after

    def cancel_leave(self, leave_id: str, *, actor: str, now_ms: int,
                     reason: str | None = None, regions: Iterable[str] | None = None
                     ) -> dict[str, Any]:
        """Withdraw a leave request that nobody has decided yet (409 otherwise)."""
        why = check_text(reason, "reason")
        with self._change("cancel leave", actor=actor, now_ms=now_ms, target=leave_id) as ch:
            if not isinstance(leave_id, str):
                raise not_found("leave", str(leave_id), "leave_id")
            before = self._leave(ch.cur, leave_id)
            self._visible(ch.cur, before["subject_id"], regions, field="leave_id")
            if before["state"] != "requested":
                raise RegisterError(f"cannot cancel a leave that is {before['state']} (only "
                                    "one that is requested)", status=409)
            ch.cur.execute("UPDATE reg_leaves SET state = 'cancelled', decided_by = ?, "
                           "decided_at = ?, decision_note = ? WHERE leave_id = ?",
                           (ch.actor, ch.now_ms, why, leave_id))
            after = self._leave(ch.cur, leave_id)
            ch.audit("leave.cancel", leave_id, before, after)
        return after

    def list_leaves(self, *, state: str | None = None, regions: Iterable[str] | None = None,
                    subject_id: str | None = None, now_ms: int) -> list[dict[str, Any]]:
        """Leaves (by start) with their state as seen at ``now_ms`` (one of
        :data:`LEAVE_VIEW_STATES`), each with the subject's ``region`` and ``name``;
        ``state="requested"`` is the approval queue."""
        if state is not None and state not in LEAVE_VIEW_STATES:
            raise RegisterError(f"{state!r} is not one of {', '.join(LEAVE_VIEW_STATES)}",
                                field="state")
        now = int_ms(now_ms, "now_ms")
        allowed = region_list(regions)
        where, params = "v.valid_to_ms IS NULL", []
        if subject_id is not None:
            where += " AND l.subject_id = ?"
            params.append(subject_id)
        cols = ", ".join(f"l.{c.strip()}" for c in LEAVE_COLUMNS.split(","))
        with self._db.tx("list leaves", write=False) as cur:
            rows = cur.execute(f"SELECT {cols}, v.region, v.name AS subject_name FROM reg_leaves l "
                               "JOIN reg_subject_versions v ON v.subject_id = l.subject_id "
                               f"WHERE {where} ORDER BY l.start_ms, l.leave_id", params).all()
        out = []
        for r in rows:
            if allowed is not None and r["region"] not in allowed:
                continue
            leave = leave_view(leave_dict(r), now)
            if state is None or leave["state"] == state:
                out.append({**leave, "region": r["region"], "subject_name": r["subject_name"]})
        return out

    # --- curfews and suspensions --------------------------------------------------------

    def add_curfew(self, subject_id: str, curfew: dict[str, Any], *, actor: str, now_ms: int,
                   regions: Iterable[str] | None = None) -> dict[str, Any]:
        """A recurring window (local time, ``register.timezone``) in which the subject must
        be inside ``zone``: ``{start: "22:00", end: "06:00", zone, days, from, to,
        reason}``. Returns it with its ``curfew_id``."""
        c = check_curfew(curfew)
        with self._change("add curfew", actor=actor, now_ms=now_ms, target=subject_id) as ch:
            self._active(self._visible(ch.cur, subject_id, regions))
            self._check_zones_exist(ch.cur, [c["zone_id"]], "zone", indexed=False)
            curfew_id = self._insert_curfew(ch, subject_id, c)
            after = next(x for x in curfews_of(ch.cur, subject_id, None)
                         if x["curfew_id"] == curfew_id)
            ch.audit("curfew.add", curfew_id, None, {"subject_id": subject_id, **after})
        return after

    def _insert_curfew(self, ch: Change, subject_id: str, c: dict[str, Any],
                       curfew_id: str | None = None) -> str:
        if curfew_id is None:
            curfew_id = self._new_id(ch.cur, "reg_curfews", "curfew_id", "C", ch.seq)
        elif ch.cur.execute("SELECT 1 FROM reg_curfews WHERE curfew_id = ?",
                            (curfew_id,)).one():
            raise RegisterError(f"curfew {curfew_id!r} already exists", status=409)
        ch.cur.execute("INSERT INTO reg_curfews (curfew_id, subject_id, start_local, end_local, "
                       "zone_id, days, from_ms, to_ms, reason, created_by, valid_from_ms) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (curfew_id, subject_id, c["start_local"], c["end_local"], c["zone_id"],
                        orjson.dumps(c["days"]).decode(), c["from_ms"], c["to_ms"],
                        c["reason"], ch.actor, ch.now_ms))
        return curfew_id

    def add_suspension(self, subject_id: str, suspension: dict[str, Any], *, actor: str,
                       role: str, now_ms: int, regions: Iterable[str] | None = None,
                       max_days: int = 30) -> dict[str, Any]:
        """A supervisor or an admin (an operator: 403) suspends one alarm type for the
        subject: ``{type, start, end, reason}``, at most ``max_days`` long. Alarms in it
        are still recorded, marked suspended, never escalated."""
        check_role(role, "suspend alarms")
        s = check_suspension(suspension, max_days)
        with self._change("add suspension", actor=actor, now_ms=now_ms,
                          target=subject_id) as ch:
            self._active(self._visible(ch.cur, subject_id, regions))
            suspension_id = self._insert_suspension(ch, subject_id, s)
            after = next(x for x in suspensions_of(ch.cur, subject_id, None)
                         if x["suspension_id"] == suspension_id)
            ch.audit("suspension.add", suspension_id, None, {"subject_id": subject_id, **after})
        return after

    def _insert_suspension(self, ch: Change, subject_id: str, s: dict[str, Any],
                           suspension_id: str | None = None) -> str:
        if suspension_id is None:
            suspension_id = self._new_id(ch.cur, "reg_suspensions", "suspension_id", "P",
                                         ch.seq)
        elif ch.cur.execute("SELECT 1 FROM reg_suspensions WHERE suspension_id = ?",
                            (suspension_id,)).one():
            raise RegisterError(f"suspension {suspension_id!r} already exists", status=409)
        ch.cur.execute("INSERT INTO reg_suspensions (suspension_id, subject_id, type, start_ms, "
                       "end_ms, reason, created_by, valid_from_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (suspension_id, subject_id, s["type"], s["start_ms"], s["end_ms"],
                        s["reason"], ch.actor, ch.now_ms))
        return suspension_id

    def _end_versioned(self, table: str, column: str, ident: str, what: str, *, actor: str,
                       now_ms: int, regions: Iterable[str] | None,
                       read: Any) -> dict[str, Any]:
        """Close the current row ``ident`` of ``table`` now (it stays readable at earlier
        moments); 404 when there is none the caller sees."""
        with self._change(f"end {what}", actor=actor, now_ms=now_ms, target=str(ident)) as ch:
            row = ch.cur.execute(f"SELECT subject_id FROM {table} WHERE {column} = ? "
                                 "AND valid_to_ms IS NULL", (ident,)).one()
            if row is None:
                raise not_found(what, str(ident), column)
            self._visible(ch.cur, row["subject_id"], regions, field=column)
            before = next(x for x in read(ch.cur, row["subject_id"], None)
                          if x[column] == ident)
            ch.cur.execute(f"UPDATE {table} SET valid_to_ms = ? WHERE {column} = ? "
                           "AND valid_to_ms IS NULL", (ch.now_ms, ident))
            ch.audit(f"{what}.end", str(ident), {"subject_id": row["subject_id"], **before},
                     None)
        return {"subject_id": row["subject_id"], **before, "ended_at": ch.now_ms}

    def end_curfew(self, curfew_id: str, *, actor: str, now_ms: int,
                   regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Lift a curfew from now on; 404 when there is no such current curfew."""
        return self._end_versioned("reg_curfews", "curfew_id", curfew_id, "curfew",
                                   actor=actor, now_ms=now_ms, regions=regions,
                                   read=curfews_of)

    def end_suspension(self, suspension_id: str, *, actor: str, role: str, now_ms: int,
                       regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Withdraw an alert suspension from now on (a supervisor or an admin: 403
        otherwise; 404 when there is no such current suspension)."""
        check_role(role, "end suspensions")
        return self._end_versioned("reg_suspensions", "suspension_id", suspension_id,
                                   "suspension", actor=actor, now_ms=now_ms, regions=regions,
                                   read=suspensions_of)
