"""Console reads of alarms: one alarm, its history, filtered pages, and the supervisor's
statistics. Every read that a region scopes uses :meth:`alarms.db.Where.regions`."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from alarms.db import Cursor, Database, StoreError, Where, as_list, count, int_ms
from alarms.schema import (
    CONDITION_STATES,
    DISPOSITIONS,
    FALSE_ALARM_DISPOSITIONS,
    WORKFLOW_STATES,
)

DAY_MS = 86_400_000
# The columns of an alarm as every read (and the lifecycle's answers) return it.
ALARM_COLUMNS = (
    "alarm_id, type, subject_id, device_id, zone_id, region, raised_at, recorded_at, "
    "cleared_at, state, workflow, late, evidence, cleared_evidence, acknowledged_by, "
    "acknowledged_at, closed_by, closed_at, disposition, note, escalated_at, device_kind, "
    "suspended, escalation_level"
)


def alarm_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """An alarm row as returned to callers: booleans and evidence decoded, ``escalated``."""
    if row is None:
        return None
    row["late"] = bool(row["late"])
    row["suspended"] = bool(row["suspended"])
    row["evidence"] = orjson.loads(row["evidence"]) if row["evidence"] else {}
    ce = row.pop("cleared_evidence")
    row["cleared_evidence"] = orjson.loads(ce) if ce else None
    row["escalated"] = row["escalated_at"] is not None
    return row


def _day(ms: int, day_offset_ms: int) -> str:
    """ISO date of the local day (UTC shifted by ``day_offset_ms``) that ``ms`` falls in."""
    return datetime.fromtimestamp((ms + day_offset_ms) / 1000, tz=UTC).date().isoformat()


def _state_filter(where: Where, states: list[str]) -> None:
    """Condition states (active, cleared) and workflow states (new, acknowledged, closed):
    values of one kind are alternatives, the two kinds must both hold."""
    unknown = [s for s in states if s not in CONDITION_STATES + WORKFLOW_STATES]
    if unknown:
        raise StoreError(f"unknown state {unknown[0]!r}; states are "
                         f"{', '.join(CONDITION_STATES + WORKFLOW_STATES)}")
    cond = [s for s in states if s in CONDITION_STATES]
    flow = [s for s in states if s in WORKFLOW_STATES]
    if cond:
        where.one_of("state", cond)
    if flow:
        where.one_of("workflow", flow)
    if not states:
        where.one_of("state", [])  # no state allowed: nothing matches


def _stats_rows(cur: Cursor, where: Where, day_offset_ms: int
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int], list[int]]:
    """Counts per (region, type, day number), per disposition of closed alarms, and the
    response times (ms from recorded_at) of acknowledged and of closed alarms."""
    # Counting is done by the database (GROUP BY); only the response times, needed for the
    # medians, come back row by row. Days: integer division of epoch ms (alarm times are
    # after 1970, where truncation and floor agree).
    groups = cur.execute(
        "SELECT region, type, (raised_at + ?) / 86400000 AS day_n, COUNT(*) AS n "
        f"FROM alarms{where.sql} GROUP BY 1, 2, 3",  # by position: one bound offset
        (day_offset_ms, *where.params)).all()
    closed_where = where.also("closed_at IS NOT NULL")
    disp_rows = cur.execute(f"SELECT disposition, COUNT(*) AS n FROM alarms{closed_where.sql} "
                            "GROUP BY disposition", closed_where.params).all()
    acked_where = where.also("acknowledged_at IS NOT NULL")
    ack = [int(r["d"]) for r in cur.execute(
        f"SELECT acknowledged_at - recorded_at AS d FROM alarms{acked_where.sql}",
        acked_where.params).all()]
    closed = [int(r["d"]) for r in cur.execute(
        f"SELECT closed_at - recorded_at AS d FROM alarms{closed_where.sql}",
        closed_where.params).all()]
    return groups, disp_rows, ack, closed


def _stats_summary(groups: list[dict[str, Any]], disp_rows: list[dict[str, Any]],
                   ack: list[int], closed: list[int]) -> dict[str, Any]:
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    by_region: dict[str, int] = defaultdict(int)
    by_type: dict[str, int] = defaultdict(int)
    by_day: dict[str, int] = defaultdict(int)
    for g in groups:
        day = _day(int(g["day_n"]) * DAY_MS, 0)
        n = int(g["n"])
        counts[(g["region"], g["type"], day)] += n
        by_region[g["region"]] += n
        by_type[g["type"]] += n
        by_day[day] += n
    dispositions: dict[str, int] = {d: 0 for d in DISPOSITIONS}
    for r in disp_rows:
        dispositions[r["disposition"]] = int(r["n"])
    n_closed = len(closed)
    share = {d: (c / n_closed if n_closed else None) for d, c in dispositions.items()}
    false_n = sum(dispositions[d] for d in FALSE_ALARM_DISPOSITIONS)
    return {
        "total": sum(by_region.values()),
        "counts": [{"region": k[0], "type": k[1], "day": k[2], "count": v}
                   for k, v in sorted(counts.items())],
        "by_region": dict(sorted(by_region.items())),
        "by_type": dict(sorted(by_type.items())),
        "by_day": dict(sorted(by_day.items())),
        "acknowledged": len(ack),
        "closed": n_closed,
        "median_ack_ms": statistics.median(ack) if ack else None,
        "median_close_ms": statistics.median(closed) if closed else None,
        "dispositions": dispositions,
        "disposition_share": share,
        "false_alarm_share": (false_n / n_closed) if n_closed else None,
    }


class AlarmQueries:
    """Alarm reads and statistics of :class:`alarms.store.AlarmStore`."""

    _db: Database

    def get_alarm(self, alarm_id: str) -> dict[str, Any] | None:
        """One alarm with its evidence decoded, or None."""
        with self._db.tx("get alarm", write=False) as cur:
            return alarm_row(cur.execute(f"SELECT {ALARM_COLUMNS} FROM alarms "
                                         "WHERE alarm_id = ?", (alarm_id,)).one())

    def actions(self, alarm_id: str) -> list[dict[str, Any]]:
        """The alarm's history of operator and system actions, oldest first."""
        with self._db.tx("alarm actions", write=False) as cur:
            return cur.execute("SELECT id, alarm_id, who, what, at, note, disposition "
                               "FROM alarm_actions WHERE alarm_id = ? ORDER BY id",
                               (alarm_id,)).all()

    def list_alarms(self, regions: Iterable[str] | None = None,
                    types: Iterable[str] | None = None,
                    states: Iterable[str] | None = None, *,
                    subject_id: str | None = None,
                    escalated: bool | None = None,
                    since_ms: int | None = None, until_ms: int | None = None,
                    before: tuple[int, str] | None = None,
                    limit: int = 200, offset: int = 0) -> list[dict[str, Any]]:
        """Alarms newest first (by ``raised_at``, then ``alarm_id``).

        Filters (None = no filter): ``regions``; ``types``; ``states`` mixing condition
        states (active, cleared) and workflow states (new, acknowledged, closed): values of
        one kind are alternatives, the two kinds must both hold (``["active", "new"]`` is
        "active and not yet acknowledged"); ``subject_id``; ``escalated``; ``since_ms`` ≤
        raised_at < ``until_ms``. Pages: pass the last row's ``(raised_at, alarm_id)`` as
        ``before`` (stable while new alarms arrive), or an ``offset``.
        """
        regions = as_list(regions, "regions")
        types = as_list(types, "types")
        states = as_list(states, "states")
        where = Where().regions(regions).one_of("type", types)
        if where.nothing:
            return []
        if states is not None:
            _state_filter(where, states)
            if where.nothing:
                return []
        if subject_id is not None:
            where.add("subject_id = ?", subject_id)
        if escalated is not None:
            where.add("escalated_at IS NOT NULL" if escalated else "escalated_at IS NULL")
        if since_ms is not None:
            where.add("raised_at >= ?", int_ms(since_ms, "since_ms"))
        if until_ms is not None:
            where.add("raised_at < ?", int_ms(until_ms, "until_ms"))
        if before is not None:
            b_at, b_id = before
            where.add("(raised_at < ? OR (raised_at = ? AND alarm_id < ?))",
                      int_ms(b_at, "before"), b_at, str(b_id))
        with self._db.tx("list alarms", write=False) as cur:
            rows = cur.execute(f"SELECT {ALARM_COLUMNS} FROM alarms{where.sql} "
                               "ORDER BY raised_at DESC, alarm_id DESC LIMIT ? OFFSET ?",
                               (*where.params, count(limit, "limit"),
                                count(offset, "offset"))).all()
        return [alarm_row(r) for r in rows]  # type: ignore[misc]

    def stats(self, regions: Iterable[str] | None = None, from_ms: int | None = None,
              to_ms: int | None = None, *, day_offset_ms: int = 0) -> dict[str, Any]:
        """The supervisor's numbers for alarms raised in [``from_ms``, ``to_ms``).

        Returns ``total``; ``counts`` (one row per region, type and day: ``{region, type,
        day, count}``, sorted); ``by_region``, ``by_type``, ``by_day``; ``acknowledged``,
        ``closed``; ``median_ack_ms`` and ``median_close_ms`` (from ``recorded_at``, the
        moment the alarm reached the store, to acknowledge/close; None when none);
        ``dispositions`` (count per disposition of closed alarms), ``disposition_share``
        (fraction of closed alarms) and ``false_alarm_share`` (the share closed as
        approved_leave_not_recorded, gps_drift or device_fault; None when none closed).

        ``day_offset_ms`` shifts day boundaries from UTC midnight to local midnight
        (China: 8 h = 28 800 000).
        """
        regions = as_list(regions, "regions")
        where = Where().regions(regions)
        if from_ms is not None:
            where.add("raised_at >= ?", int_ms(from_ms, "from_ms"))
        if to_ms is not None:
            where.add("raised_at < ?", int_ms(to_ms, "to_ms"))
        day_offset_ms = int_ms(day_offset_ms, "day_offset_ms")
        with self._db.tx("stats", write=False) as cur:
            rows = _stats_rows(cur, where, day_offset_ms)
        return {"from_ms": from_ms, "to_ms": to_ms, "regions": regions,
                "day_offset_ms": day_offset_ms, **_stats_summary(*rows)}
