"""Builders for the roster tests: people, local times in Asia/Shanghai, and a planner that
tells the roster's people through a test channel (the e-mail and SMS channels are built
elsewhere; they are given the same Recipients)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from alarms.notify import Notification, delivery_id, event_level, webhook_planner
from alarms.roster import roster_resolver

SHANGHAI = ZoneInfo("Asia/Shanghai")
REGION = "411303"


def local_ms(y: int, mo: int, d: int, h: int, mi: int = 0, tz: ZoneInfo = SHANGHAI) -> int:
    """Epoch ms of a wall-clock time in ``tz``."""
    return int(datetime(y, mo, d, h, mi, tzinfo=tz).timestamp() * 1000)


def person(pid: str, role: str, *, region: str = REGION, shifts: list | None = None,
           **extra: Any) -> dict[str, Any]:
    doc = {"person_id": pid, "region": region, "name": f"name of {pid}", "role": role,
           "phone": "+86 138 0000 0000", "shifts": shifts or []}
    return {**doc, **extra}


def people_planner(cur: Any, events, now_ms: int) -> list[Notification]:
    """The webhook's notifications plus one ``test`` notification per roster recipient of
    each event at its level, resolved in the recording transaction."""
    out = webhook_planner(cur, events, now_ms)
    for ev in events:
        level = event_level(ev)
        if level is None:
            continue
        for r in roster_resolver(cur, ev, level):
            out.append(Notification(
                delivery_id(ev["alarm_id"], ev["event"], "test", r.person_id, level),
                ev["alarm_id"], ev["event"], ev["region"], "test", r.person_id, level,
                r.name.encode()))
    return out
