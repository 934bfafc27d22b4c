"""The status board's reads (issue #16; docs/console-api.md, "The status board"): every
current subject of some regions with its devices' newest fix and status, its open
alarms and whether it is on approved leave now, in a fixed number of queries whatever
the number of subjects (two for the register, one each for positions, statuses, open
alarms, leaves and curfews: seven, never one per subject).

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

from alarms.db import Where
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

    def _open_alarms(self, regions: Iterable[str] | None) -> list[dict[str, Any]]:
        where = Where().regions(regions)
        if where.nothing:
            return []
        where.add("workflow <> ?", "closed")
        with self._db.tx("board alarms", write=False) as cur:
            return cur.execute(f"SELECT subject_id, device_id, type FROM alarms{where.sql}",
                               where.params).all()

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
        regions = None if regions is None else list(regions)
        subjects = self.register.list_subjects(regions=regions, state="active")
        fixes = {p["device_id"]: p for p in self.last_positions(regions)}
        status = {s["device_id"]: s for s in self.device_status(regions)}
        alarms: dict[str, list[dict[str, Any]]] = {}
        for a in self._open_alarms(regions):
            alarms.setdefault(a["subject_id"], []).append(a)
        leave = self._leaves_now(now_ms)
        curfew = self._curfews_now(now_ms, timezone)
        return [_row(s, fixes, status, alarms.get(s["subject_id"], []),
                     s["subject_id"] in leave, s["subject_id"] in curfew) for s in subjects]


def _device(d: dict[str, Any], fix: dict[str, Any] | None, st: dict[str, Any] | None,
            offline: set[str]) -> dict[str, Any]:
    rx = [v for v in ((fix or {}).get("received_at"), (st or {}).get("received_at"))
          if v is not None]
    last_rx = max(rx) if rx else None
    online = None if last_rx is None else d["device_id"] not in offline
    return {"device_id": d["device_id"], "kind": d["kind"], "online": online,
            "last_fix_ts_ms": None if fix is None else fix["ts"], "last_rx_ms": last_rx,
            "battery_pct": None if st is None else st["battery_pct"],
            "strap": None if st is None else st["strap"],
            "power": None if st is None else st["power"]}


def _row(s: dict[str, Any], fixes: dict[str, Any], status: dict[str, Any],
         alarms: list[dict[str, Any]], on_leave: bool, in_curfew: bool) -> dict[str, Any]:
    offline = {a["device_id"] for a in alarms if a["type"] in OFFLINE_TYPES}
    devices = [_device(d, fixes.get(d["device_id"]), status.get(d["device_id"]), offline)
               for d in s["devices"]]
    types = {a["type"] for a in alarms}
    top = min(types, key=_rank) if types else None
    located = any(d["last_fix_ts_ms"] is not None for d in devices)
    return {"subject_id": s["subject_id"], "name": s["name"], "level": s["level"],
            "officer": s["officer"], "region": s["region"], "devices": devices,
            "zone_state": _zone_state(types, on_leave, in_curfew, located),
            "open_alarms": len(alarms), "top_alarm": top}
