"""The status board's reads (issue #16; docs/console-api.md, "The status board"): every
current subject of some regions with its devices' newest fix and status, its open
alarms and whether it is on approved leave now, in a fixed number of queries whatever
the number of subjects (one each for the register's subjects with their devices, the
positions, the statuses, the open alarms, the leaves and the curfews: six, never one per
subject). Each reads only the columns the board shows, region-filtered in SQL, as tuples:
with 10 000 subjects this is the first screen's longest call
(benchmarks/console_first_screen.py).

A subject is in ``curfew`` while one of its register curfews has a window covering now
(local time in ``register.timezone``, windows may cross midnight: the engine's own
:func:`engine.schedules.windows_of`) and nothing stronger holds; an open ``curfew``
alarm (a violation: away from the curfew zone in its window) says ``curfew`` too and
outranks everything.

Online is what the operator acts on: a device is offline while an ``offline`` (or
``no_fix``/``power_off``) alarm of it is open, online when it has been heard from and
has no such alarm, unknown (None) when nothing was ever received from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from alarms.db import Where, as_list
from engine.schedules import DAYS, Curfew, windows_of

# Most serious first: the type the board shows beside a subject's open-alarm count.
SEVERITY = ("tamper", "exclusion", "outbound", "leave_overdue", "curfew", "contact",
            "proximity", "separation", "power_off", "offline", "no_fix", "low_battery",
            "approach")
OFFLINE_TYPES = ("offline", "no_fix", "power_off")
ZONE_STATES = ("inside", "outside", "on_leave", "curfew", "unknown")


def _rank(kind: str) -> int:
    return SEVERITY.index(kind) if kind in SEVERITY else len(SEVERITY)


def _zone_state(types: set[str], on_leave: bool, in_curfew: bool, located: bool) -> str:
    """Strongest first: a curfew violation (open curfew alarm), away (an open outbound,
    exclusion or leave-overdue alarm), on approved leave, in a curfew window now (at
    home, as far as the engine knows: no curfew alarm), inside, unknown (never located)."""
    if "curfew" in types:
        return "curfew"
    if types & {"outbound", "exclusion", "leave_overdue"}:
        return "outside"
    if on_leave:
        return "on_leave"
    if not located:
        return "unknown"
    return "curfew" if in_curfew else "inside"


def _hhmm_min(text: str) -> int:
    return int(text[:2]) * 60 + int(text[3:5])


def _curfew(row: dict[str, Any]) -> Curfew:
    """A register curfew row as the engine's schedule reads it."""
    days = tuple(sorted(DAYS.index(d) for d in orjson.loads(row["days"])))
    return Curfew(row["curfew_id"], _hhmm_min(row["start_local"]), _hhmm_min(row["end_local"]),
                  row["zone_id"], days, row["from_ms"], row["to_ms"])


class BoardStore:
    """``board`` of the alarm store."""

    _db: Any
    _tracks_db: Any

    def _subjects(self, regions: list[str] | None) -> list[tuple[Any, ...]]:
        """``(subject_id, name, level, officer, region, device_id, kind)`` of every active
        subject of ``regions``, one row per device issued now (``device_id`` None without
        any), by subject id then issue."""
        where = Where("s.valid_to_ms IS NULL", "s.state = ?", params=["active"])
        where.one_of("s.region", regions)
        with self._db.tx("board subjects", write=False) as cur:
            cur.execute("SELECT s.subject_id, s.name, s.level, s.officer, s.region, "
                        "d.device_id, d.kind FROM reg_subject_versions s "
                        "LEFT JOIN reg_device_issues d ON d.subject_id = s.subject_id "
                        f"AND d.returned_at IS NULL{where.sql} "
                        "ORDER BY s.subject_id, d.issued_at, d.id", where.params)
            return cur.cur.fetchall()

    def _by_device(self, db: Any, columns: str, table: str,
                   regions: list[str] | None) -> dict[str, tuple[Any, ...]]:
        """``device_id -> (columns...)`` of ``table`` (positions, device_status)."""
        where = Where().regions(regions)
        with db.tx(f"board {table}", write=False) as cur:
            cur.execute(f"SELECT device_id, {columns} FROM {table}{where.sql}", where.params)
            return {r[0]: r[1:] for r in cur.cur.fetchall()}

    def _open_alarms(self, regions: list[str] | None) -> dict[str, list[tuple[str, str]]]:
        """``subject_id -> [(device_id, type)]`` of the alarms not closed."""
        where = Where().regions(regions)
        where.add("workflow <> 'closed'")  # literal: the partial index alarms_open
        out: dict[str, list[tuple[str, str]]] = {}
        with self._db.tx("board alarms", write=False) as cur:
            cur.execute(f"SELECT subject_id, device_id, type FROM alarms{where.sql}",
                        where.params)
            for subject_id, device_id, kind in cur.cur.fetchall():
                out.setdefault(subject_id, []).append((device_id, kind))
        return out

    def _leaves_now(self, now_ms: int) -> set[str]:
        with self._db.tx("board leaves", write=False) as cur:
            rows = cur.execute("SELECT subject_id FROM reg_leaves WHERE state = ? AND "
                               "start_ms <= ? AND end_ms > ?",
                               ("approved", now_ms, now_ms)).all()
        return {r["subject_id"] for r in rows}

    def _curfews_now(self, now_ms: int, timezone: str) -> set[str]:
        """Subjects with a current register curfew whose window covers ``now_ms``."""
        with self._db.tx("board curfews", write=False) as cur:
            rows = cur.execute("SELECT curfew_id, subject_id, start_local, end_local, zone_id, "
                               "days, from_ms, to_ms FROM reg_curfews "
                               "WHERE valid_to_ms IS NULL").all()
        if not rows:
            return set()
        tz = ZoneInfo(timezone)
        return {r["subject_id"] for r in rows
                if windows_of(_curfew(r), now_ms, now_ms + 1, tz)}

    def board(self, regions: Iterable[str] | None, now_ms: int, *,
              timezone: str = "Asia/Shanghai") -> list[dict[str, Any]]:
        """The board's rows (docs/console-api.md, "The status board"), by subject id:
        active subjects of ``regions`` (None: all); curfew windows in local time of
        ``timezone`` (``register.timezone``)."""
        regions = as_list(regions, "regions")
        if regions is not None and not regions:
            return []
        subjects = self._subjects(regions)
        fixes = self._by_device(self._tracks_db, "ts, received_at", "positions", regions)
        status = self._by_device(self._db, "battery_pct, strap, power, received_at",
                                 "device_status", regions)
        alarms = self._open_alarms(regions)
        leave = self._leaves_now(now_ms)
        curfew = self._curfews_now(now_ms, timezone)
        out: list[dict[str, Any]] = []
        offline: set[str] = set()
        for sid, name, level, officer, region, device_id, kind in subjects:
            if not out or out[-1]["subject_id"] != sid:
                mine = alarms.get(sid, [])
                offline = {d for d, k in mine if k in OFFLINE_TYPES}
                out.append({"subject_id": sid, "name": name, "level": level,
                            "officer": officer, "region": region, "devices": [],
                            "alarms": mine})
            if device_id is not None:
                out[-1]["devices"].append(_device(device_id, kind, fixes.get(device_id),
                                                  status.get(device_id), offline))
        for row in out:
            sid = row["subject_id"]
            _judge(row, row.pop("alarms"), sid in leave, sid in curfew)
        return out


def _device(device_id: str, kind: str, fix: tuple[Any, ...] | None,
            st: tuple[Any, ...] | None, offline: set[str]) -> dict[str, Any]:
    """A device of a row: its newest fix ``(ts, received_at)``, its newest status
    ``(battery_pct, strap, power, received_at)``; ``offline``: the subject's devices with
    an open offline-type alarm."""
    fix_ts, fix_rx = fix if fix is not None else (None, None)
    battery, strap, power, st_rx = st if st is not None else (None, None, None, None)
    last_rx = fix_rx if st_rx is None else st_rx if fix_rx is None else max(fix_rx, st_rx)
    online = None if last_rx is None else device_id not in offline
    return {"device_id": device_id, "kind": kind, "online": online,
            "last_fix_ts_ms": fix_ts, "last_rx_ms": last_rx, "battery_pct": battery,
            "strap": strap, "power": power}


def _judge(row: dict[str, Any], alarms: list[tuple[str, str]], on_leave: bool,
           in_curfew: bool) -> None:
    """The row's zone state and alarm summary from its open alarms ``(device, type)``."""
    types = {kind for _, kind in alarms}
    located = any(d["last_fix_ts_ms"] is not None for d in row["devices"])
    row["zone_state"] = _zone_state(types, on_leave, in_curfew, located)
    row["open_alarms"] = len(alarms)
    row["top_alarm"] = min(types, key=_rank) if types else None
