"""The text of people's notifications (e-mail, SMS): Chinese by default, English on
request, the least personal data that lets the officer act: the alarm type, the subject's
name (the subject id when the register has none), the zone, the distance where the rule
measured one, the local time with its zone, and a link to the alarm in the console.

Pure functions of their arguments (the caller passes names, the zone and the link), so a
message is the same in every process and replay. docs/notifications.md shows examples.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contract import WARNING_TYPES

# Every alarm type's label (zh, en); a test holds these to contract.ALARM_TYPES.
LABELS: dict[str, tuple[str, str]] = {
    "outbound": ("越界", "Out of area"),
    "exclusion": ("进入禁区", "Exclusion zone entered"),
    "offline": ("离线", "Offline"),
    "tamper": ("防拆", "Tamper"),
    "low_battery": ("低电量", "Low battery"),
    "leave_overdue": ("请假逾期", "Leave overdue"),
    "curfew": ("违反宵禁", "Curfew"),
    "separation": ("人机分离", "Device separation"),
    "no_fix": ("无定位", "No position"),
    "power_off": ("关机", "Power off"),
    "approach": ("接近禁区", "Approaching zone"),
    "proximity": ("接近被保护人", "Near protected person"),
    "contact": ("违禁接触", "Prohibited contact"),
}
LANGS = ("zh", "en")


@dataclass(frozen=True)
class Message:
    """A rendered notification: ``subject`` (the e-mail subject; the SMS text's head),
    ``text`` (the whole message, link included)."""

    subject: str
    text: str


def label(alarm_type: str, lang: str) -> str:
    zh, en = LABELS.get(alarm_type, (alarm_type, alarm_type))
    return zh if lang == "zh" else en


def _kind(alarm_type: str, lang: str) -> str:
    """告警 / 预警 (alarm / warning) after the label."""
    warning = alarm_type in WARNING_TYPES
    if lang == "zh":
        return "预警" if warning else "告警"
    return "warning" if warning else "alarm"


def local_time(at_ms: int, timezone: str, *, with_date: bool = False) -> str:
    """``02:14 UTC+08:00`` (``11-28 02:14 UTC+08:00`` with the date) in ``timezone``."""
    t = dt.datetime.fromtimestamp(at_ms / 1000, tz=zoneinfo.ZoneInfo(timezone))
    off = t.strftime("%z")
    zone = f"UTC{off[:3]}:{off[3:]}"
    return t.strftime("%m-%d %H:%M" if with_date else "%H:%M") + f" {zone}"


def distance(distance_m: float, lang: str) -> str:
    if distance_m >= 1000:
        km = f"{distance_m / 1000:.1f}"
        return f"{km} 公里" if lang == "zh" else f"{km} km"
    return f"{distance_m:.0f} 米" if lang == "zh" else f"{distance_m:.0f} m"


def _detail(ev: Mapping[str, Any], zone: str | None, lang: str) -> str:
    """What the rule saw, in a few words (empty when the type says it all)."""
    t = ev["type"]
    dist = ev.get("distance_m")
    far = f" {distance(float(dist), lang)}" if isinstance(dist, (int, float)) else ""
    if t in ("outbound", "leave_overdue", "curfew") and zone:
        return f" 离开{zone}{far}" if lang == "zh" else f" left {zone}{far}"
    if t == "exclusion" and zone:
        return f" 进入{zone}" if lang == "zh" else f" entered {zone}"
    if t == "approach" and zone:
        return f" 接近{zone}{far}" if lang == "zh" else f" near {zone}{far}"
    return ""


def render(ev: Mapping[str, Any], level: int, lang: str, *, who: str, zone: str | None,
           timezone: str, link: str | None) -> Message:
    """The message for one alarm event: ``raised`` (level 1), ``escalated`` (its level),
    ``cleared`` or ``acknowledged`` (taken over by ``ev["by"]``). ``who`` is the
    subject's name or id, ``zone`` the zone's name (None: not shown), ``link`` the
    console's address of the alarm (None: none)."""
    zh = lang == "zh"
    name = label(ev["type"], lang) + ("" if not zh else _kind(ev["type"], lang))
    if not zh:
        name = f"{name} {_kind(ev['type'], lang)}"
    event = ev["event"]
    # an escalation tells since when the alarm waits (raised_at), the others their time
    when = local_time(int(ev.get("raised_at", ev["at"]) if event == "escalated"
                          else ev["at"]), timezone)
    if event == "raised":
        head = f"【{name}】" if zh else f"[{name}]"
        body = f"{who}{_detail(ev, zone, lang)}，{when}，请核查" if zh else \
            f"{who}{_detail(ev, zone, lang)}, {when}, please check"
    elif event == "escalated":
        head = f"【{name}·{level}级】" if zh else f"[{name}, level {level}]"
        body = f"{who}{_detail(ev, zone, lang)}，{when} 起无人确认，请处置" if zh else \
            f"{who}{_detail(ev, zone, lang)}, unacknowledged since {when}, please act"
    elif event == "cleared":
        head = f"【{name}解除】" if zh else f"[{name} cleared]"
        body = f"{who}，{when}" if zh else f"{who}, {when}"
    elif event == "acknowledged":
        by = str(ev.get("by", ""))
        head = f"【{name}已接管】" if zh else f"[{name} taken over]"
        body = f"{who}，已由 {by} 接管，{when}" if zh else f"{who}, taken over by {by}, {when}"
    else:
        raise ValueError(f"no message for the event {event!r}")
    text = head + ("" if zh else " ") + body + (f" {link}" if link else "")
    return Message(head, text)


def summary(rows: Sequence[Mapping[str, Any]], lang: str, *, region_names: Mapping[str, str],
            timezone: str, first_ms: int, last_ms: int, link: str | None) -> Message:
    """One message instead of many (a storm): counts per region and type, e.g.
    "【告警汇总】卧龙区 300 条离线告警，11-28 02:10 UTC+08:00 至 02:14，请登录平台查看".
    ``rows`` are the summarized messages' ``{region, type}``."""
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (str(r["region"]), str(r["type"]))
        counts[key] = counts.get(key, 0) + 1
    zh = lang == "zh"
    parts = []
    for (region, t), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        where = region_names.get(region, region)
        parts.append(f"{where} {n} 条{label(t, lang)}{_kind(t, lang)}" if zh else
                     f"{where}: {n} {label(t, lang)} {_kind(t, lang)}{'s' if n > 1 else ''}")
    span = (f"{local_time(first_ms, timezone, with_date=True)} 至 "
            f"{local_time(last_ms, timezone)}") if zh else (
            f"{local_time(first_ms, timezone, with_date=True)} to "
            f"{local_time(last_ms, timezone)}")
    head = "【告警汇总】" if zh else "[Alarm summary] "
    text = head + ("，".join(parts) + f"，{span}，请登录平台查看" if zh else
                   "; ".join(parts) + f"; {span}; please see the console")
    return Message(head.strip(), text + (f" {link}" if link else ""))
