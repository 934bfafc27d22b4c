"""The alarm lifecycle: what operators and the escalation timer may do to an alarm.

An alarm has a condition (active / cleared, moved only by the engine's events, see
:mod:`alarms.events`) and, independently, an operator workflow (new / acknowledged /
closed), moved only by the steps in :data:`TRANSITIONS`: (workflow before, action) →
(workflow after, event published, action row, audit action). An action not allowed in
the alarm's workflow state is refused with the reason :data:`REFUSALS` gives.

Every step is one transaction: a conditional ``UPDATE ... WHERE workflow = <before>``
claims the alarm (of two operators or two workers racing, exactly one UPDATE matches),
then the action row, the published event and the audit row are written beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from alarms.db import Cursor, Database, Where, int_ms
from alarms.events import append_event
from alarms.queries import ALARM_COLUMNS, alarm_row
from alarms.roster_schema import TOP_LEVEL
from alarms.schema import DISPOSITIONS
from alarms.users import audit_row
from contract.errors import EmfenceError


class AlarmActionError(EmfenceError, ValueError):
    """An operator action is not allowed: ``alarm_id`` and a human ``reason``."""

    def __init__(self, alarm_id: str, reason: str):
        self.alarm_id = alarm_id
        self.reason = reason
        super().__init__(f"alarm {alarm_id!r}: {reason}")


class Step(NamedTuple):
    after: str          # workflow state after the step
    event: str | None   # event appended to the log and published (None: not published)
    what: str           # the alarm_actions row's `what`
    audit: str          # the audit row's action


# (workflow before, action) -> the step. Anything not listed is refused.
TRANSITIONS: dict[tuple[str, str], Step] = {
    ("new", "acknowledge"): Step("acknowledged", "acknowledged", "acknowledge",
                                 "alarm.acknowledge"),
    ("acknowledged", "close"): Step("closed", "closed", "close", "alarm.close"),
    # escalation climbs the ladder (escalated_at at level 2, escalation_level 2 then 3)
    # and leaves the workflow as it is
    ("new", "escalate"): Step("new", "escalated", "escalated", "alarm.escalate"),
    # a note is history, not a change: allowed in every state, never published
    ("new", "note"): Step("new", None, "note", "alarm.note"),
    ("acknowledged", "note"): Step("acknowledged", None, "note", "alarm.note"),
    ("closed", "note"): Step("closed", None, "note", "alarm.note"),
    # the register ends a subject's supervision: its open alarms are filed, new or
    # acknowledged, with the disposition supervision_ended (alarms.register.end_subject)
    ("new", "end_supervision"): Step("closed", "closed", "close", "alarm.close"),
    ("acknowledged", "end_supervision"): Step("closed", "closed", "close", "alarm.close"),
}
# (workflow the alarm is in, action refused) -> the reason, formatted with the alarm's row.
REFUSALS: dict[tuple[str, str], str] = {
    ("acknowledged", "acknowledge"): "already acknowledged by {acknowledged_by} "
                                     "(only a new alarm can be acknowledged)",
    ("closed", "acknowledge"): "already closed by {acknowledged_by} "
                               "(only a new alarm can be acknowledged)",
    ("new", "close"): "must be acknowledged before it is closed",
    ("closed", "close"): "already closed by {closed_by}",
}


def _steps_by_action() -> dict[str, list[tuple[str, Step]]]:
    """For each action, the states it is allowed in and the step it takes from each."""
    out: dict[str, list[tuple[str, Step]]] = {}
    for (before, action), step in TRANSITIONS.items():
        out.setdefault(action, []).append((before, step))
    return out


_STEPS = _steps_by_action()


@lru_cache(maxsize=256)
def _update_sql(columns: tuple[str, ...], where_sql: str) -> str:
    """The claim's UPDATE, conditional on the workflow state (built once per shape: it is
    on every operator action)."""
    return ("UPDATE alarms SET " + ", ".join(f"{c} = ?" for c in columns) + where_sql
            + (" AND " if where_sql else " WHERE ") + f"workflow = ? RETURNING {ALARM_COLUMNS}")


def _claim(cur: Cursor, action: str, sets: dict[str, Any], where: Where
           ) -> list[tuple[Step, dict[str, Any]]]:
    """Move the alarms ``where`` selects by ``action``: each alarm claimed, as updated,
    with the step that moved it.

    One conditional UPDATE per state the action is allowed in (today one each; no action
    leads into another state it is allowed in, so none moves an alarm twice). The
    condition on the workflow is what makes racing callers safe: of two transactions
    claiming one alarm, the second finds it moved and matches nothing.
    """
    claimed = []
    where_sql = where.sql
    for before, step in _STEPS[action]:
        assignments = ({"workflow": step.after} if step.after != before else {}) | sets
        rows = cur.execute(_update_sql(tuple(assignments), where_sql),
                           (*assignments.values(), *where.params, before)).all()
        claimed += [(step, row) for row in rows]
    return claimed


def _refusal(alarm: dict[str, Any], action: str) -> AlarmActionError:
    reason = REFUSALS.get((alarm["workflow"], action),
                          f"cannot {action} an alarm that is {alarm['workflow']}")
    return AlarmActionError(alarm["alarm_id"], reason.format(**alarm))


def _lifecycle_event(cur: Cursor, alarm: dict[str, Any], event: str, now_ms: int,
                     extra: dict[str, Any]) -> dict[str, Any]:
    """Append a lifecycle event about ``alarm``; returns it as published."""
    payload = {
        "event": event, "alarm_id": alarm["alarm_id"], "type": alarm["type"],
        "subject_id": alarm["subject_id"], "device_id": alarm["device_id"],
        "zone_id": alarm["zone_id"], "region": alarm["region"], "at": now_ms,
        "late": bool(alarm["late"]), **extra,
    }
    level = int(extra.get("level", 0)) if event == "escalated" else 0
    append_event(cur, alarm["alarm_id"], event, alarm["region"], alarm["type"],
                 orjson.dumps(payload), now_ms, level)
    return payload


def _stop_ladder(cur: Cursor, alarm: dict[str, Any], event: str, now_ms: int) -> None:
    """An acknowledged or closed alarm climbs no further: its pending notifications for
    levels above the one it reached are cancelled (never sent)."""
    cur.execute("UPDATE notifications SET state = 'cancelled', next_at = ?, last_error = ? "
                "WHERE alarm_id = ? AND state = 'pending' AND level > ?",
                (now_ms, f"alarm {event} at level {alarm['escalation_level']}",
                 alarm["alarm_id"], int(alarm["escalation_level"])))


def _record_step(cur: Cursor, step: Step, alarm: dict[str, Any], who: str, now_ms: int, *,
                 note: str | None = None, disposition: str | None = None,
                 event_extra: dict[str, Any] | None = None,
                 audit_detail: dict[str, Any], ip: str | None) -> dict[str, Any] | None:
    """What every step writes beside the claim: its event (if it has one), the action row
    and the audit row. Returns the event as published."""
    published = None
    if step.event is not None:
        published = _lifecycle_event(cur, alarm, step.event, now_ms, event_extra or {})
        if step.event in ("acknowledged", "closed"):
            _stop_ladder(cur, alarm, step.event, now_ms)
    cur.execute("INSERT INTO alarm_actions (alarm_id, who, what, at, note, disposition) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (alarm["alarm_id"], who, step.what, now_ms, note, disposition))
    audit_row(cur, who, step.audit, alarm["alarm_id"], audit_detail, now_ms, ip)
    return published


def _check_actor(alarm_id: str, user: Any) -> None:
    if not isinstance(user, str) or not user.strip():
        raise AlarmActionError(alarm_id, "the acting user must be named")


def close_subject_alarms(cur: Cursor, db: Database, subject_id: str, who: str, now_ms: int,
                         note: str | None) -> list[str]:
    """File every alarm of ``subject_id`` not yet closed with the disposition
    ``supervision_ended``, in the caller's transaction (events, action and audit rows as
    an operator's close writes them). Returns the alarm ids, oldest first."""
    db.lock_event_log(cur)
    sets = {"closed_by": who, "closed_at": now_ms, "disposition": "supervision_ended",
            "note": note}
    claimed = _claim(cur, "end_supervision", sets,
                     Where("subject_id = ?", params=[subject_id]))
    claimed.sort(key=lambda c: (c[1]["raised_at"], c[1]["alarm_id"]))
    for step, alarm in claimed:
        _record_step(cur, step, alarm, who, now_ms, note=note, disposition="supervision_ended",
                     event_extra={"by": who, "disposition": "supervision_ended"},
                     audit_detail={"disposition": "supervision_ended", "note": note,
                                   "region": alarm["region"]}, ip=None)
    return [alarm["alarm_id"] for _, alarm in claimed]


class AlarmLifecycle:
    """The operator and escalation actions of :class:`alarms.store.AlarmStore`."""

    _db: Database
    # alarms.notify_store.NotificationStore (see alarms.events.EventLog)
    _plan_notifications: Callable[[Cursor, Sequence[Mapping[str, Any]], int], int]

    def _step(self, op: str, action: str, alarm_id: str, sets: dict[str, Any], who: str,
              now_ms: int, **record: Any) -> dict[str, Any]:
        """Claim one alarm for ``action`` and record the step, in one transaction; returns
        the alarm as updated. :class:`AlarmActionError` if unknown or refused."""
        with self._db.tx(op) as cur:
            self._db.lock_event_log(cur)
            claimed = _claim(cur, action, sets, Where("alarm_id = ?", params=[alarm_id]))
            if not claimed:
                alarm = cur.execute(f"SELECT {ALARM_COLUMNS} FROM alarms WHERE alarm_id = ?",
                                    (alarm_id,)).one()
                if alarm is None:
                    raise AlarmActionError(alarm_id, "no such alarm")
                raise _refusal(alarm, action)
            step, alarm = claimed[0]
            record["audit_detail"] = {**record["audit_detail"], "region": alarm["region"]}
            published = _record_step(cur, step, alarm, who, now_ms, **record)
            if published is not None and published["event"] == "acknowledged":
                # "taken over by ..." to the people already told (alarms.notify_people)
                self._plan_notifications(cur, [published], now_ms)
        return alarm_row(alarm)  # type: ignore[return-value]

    def acknowledge(self, alarm_id: str, user: str, note: str | None, now_ms: int, *,
                    ip: str | None = None) -> dict[str, Any]:
        """An operator takes the alarm: workflow new → acknowledged.

        Appends an ``acknowledged`` event (published, so other consoles update), an action
        and an audit row, in one transaction. Raises :class:`AlarmActionError` for an
        unknown alarm or one already acknowledged or closed (two operators racing: exactly
        one wins). Returns the updated alarm.
        """
        now_ms = int_ms(now_ms, "now_ms")
        _check_actor(alarm_id, user)
        return self._step("acknowledge", "acknowledge", alarm_id,
                          {"acknowledged_by": user, "acknowledged_at": now_ms}, user, now_ms,
                          note=note, event_extra={"by": user}, audit_detail={"note": note},
                          ip=ip)

    def close_alarm(self, alarm_id: str, user: str, disposition: str, note: str | None,
                    now_ms: int, *, ip: str | None = None) -> dict[str, Any]:
        """File the alarm: workflow acknowledged → closed, with a disposition and a note.

        ``disposition`` is one of :data:`alarms.schema.DISPOSITIONS`; ``other`` needs a
        note saying what it was. The condition (active/cleared) is independent: an operator
        may close an alarm whose condition is still active. Appends a ``closed`` event, an
        action and an audit row, in one transaction. Raises :class:`AlarmActionError`.
        (``close()`` is not this: it closes the store's connections.)
        """
        now_ms = int_ms(now_ms, "now_ms")
        _check_actor(alarm_id, user)
        if disposition not in DISPOSITIONS:
            raise AlarmActionError(alarm_id, f"disposition must be one of "
                                   f"{', '.join(DISPOSITIONS)}, got {disposition!r}")
        if disposition == "other" and not (note and note.strip()):
            raise AlarmActionError(alarm_id, "disposition 'other' needs a note saying what it was")
        return self._step("close alarm", "close", alarm_id,
                          {"closed_by": user, "closed_at": now_ms, "disposition": disposition,
                           "note": note}, user, now_ms,
                          note=note, disposition=disposition,
                          event_extra={"by": user, "disposition": disposition},
                          audit_detail={"disposition": disposition, "note": note}, ip=ip)

    def add_note(self, alarm_id: str, user: str, note: str, now_ms: int, *,
                 ip: str | None = None) -> None:
        """Add a note to an alarm's history (any workflow state); audited."""
        now_ms = int_ms(now_ms, "now_ms")
        _check_actor(alarm_id, user)
        if not isinstance(note, str) or not note.strip():
            raise AlarmActionError(alarm_id, "a note must not be empty")
        with self._db.tx("add note") as cur:
            alarm = cur.execute("SELECT alarm_id, workflow, region FROM alarms "
                                "WHERE alarm_id = ?", (alarm_id,)).one()
            if alarm is None:
                raise AlarmActionError(alarm_id, "no such alarm")
            step = TRANSITIONS.get((alarm["workflow"], "note"))
            if step is None:
                raise _refusal(alarm, "note")
            _record_step(cur, step, alarm, user, now_ms, note=note,
                         audit_detail={"note": note, "region": alarm["region"]}, ip=ip)

    def escalate_due(self, now_ms: int, after_ms: int, regions: Iterable[str] | None = None,
                     *, top_level: int = 2) -> list[dict[str, Any]]:
        """Climb the escalation ladder: an alarm nobody acknowledged within ``after_ms`` of
        being recorded goes to level 2, and ``after_ms`` after reaching a level to the
        next, up to ``top_level`` (2: escalate once, the behaviour before the ladder; the
        escalation loop climbs to :data:`alarms.roster_schema.TOP_LEVEL`, 3).

        The first window starts at ``recorded_at`` (when the store learned of the raise),
        not the fix time, so a late store-and-forward alarm still gives the operator the
        full window. The condition state does not matter: a cleared alarm still needs an
        operator; an acknowledged or closed one climbs no further. An alarm climbs at most
        one level per call, and each level exactly once, even with several workers on one
        PostgreSQL (a conditional UPDATE claims it). Appends one ``escalated`` event per
        alarm and level (with ``raised_at``, ``after_ms`` and ``level``) plus an action and
        an audit row by ``system``, in one transaction. Returns the escalated events as
        published.
        """
        now_ms = int_ms(now_ms, "now_ms")
        after_ms = int_ms(after_ms, "after_ms")
        if isinstance(top_level, bool) or top_level not in range(2, TOP_LEVEL + 1):
            raise ValueError(f"top_level must be 2..{TOP_LEVEL}, got {top_level!r}")
        # A suspended alarm (a supervisor's alert suspension covered it) is recorded and
        # shown, never escalated.
        wheres = {level: _climb_where(level, now_ms - after_ms).regions(regions)
                  for level in range(2, top_level + 1)}
        if wheres[2].nothing:
            return []
        out: list[dict[str, Any]] = []
        with self._db.tx("escalate") as cur:
            self._db.lock_event_log(cur)
            claimed = []
            # the highest level first, so an alarm climbs one level per call
            for level in sorted(wheres, reverse=True):
                sets = {"escalation_level": level, "escalation_level_at": now_ms}
                if level == 2:
                    sets["escalated_at"] = now_ms
                claimed += [(level, step, alarm)
                            for step, alarm in _claim(cur, "escalate", sets, wheres[level])]
            claimed.sort(key=lambda c: (c[2]["recorded_at"], c[2]["alarm_id"], c[0]))
            for level, step, alarm in claimed:
                out.append(_record_step(  # type: ignore[arg-type]
                    cur, step, alarm, "system", now_ms,
                    event_extra={"raised_at": alarm["raised_at"], "after_ms": after_ms,
                                  "level": level},
                    audit_detail={"region": alarm["region"], "after_ms": after_ms,
                                  "level": level}, ip=None))
            # the notifications these escalations cause, in the same transaction
            self._plan_notifications(cur, out, now_ms)
        return out


def _climb_where(level: int, due_ms: int) -> Where:
    """The alarms due to climb to ``level`` (2: never escalated, recorded by ``due_ms``;
    higher: at the level below since ``due_ms``); never a suspended one."""
    if level == 2:
        return Where("escalated_at IS NULL", "suspended = 0", "recorded_at <= ?",
                     params=[due_ms])
    return Where("escalation_level = ?", "suspended = 0", "escalation_level_at <= ?",
                 params=[level - 1, due_ms])
