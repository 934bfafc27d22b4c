"""The people-facing channels' planner: e-mail and SMS to the people the roster names.

:func:`people_planner` turns a :data:`alarms.notify.Resolver` (the duty roster: who is
told of an alarm event at an escalation level) into a :data:`alarms.notify.Planner`: one
notification per recipient and channel the recipient has an address for, its text from
:mod:`alarms.notify_templates` in the recipient's language. A ``raised`` event is sent
at level 1, an ``escalated`` one at its ``level`` (2 when the event names none); a
``cleared`` or ``acknowledged`` event ("taken over by ...") goes to everyone already told
of that alarm, over the channel they were told on. The row's body is the rendered
message as JSON (``to``, ``lang``, ``type``, ``subject``, ``text``): the sender
(:mod:`alarms.notify_senders`) makes the e-mail or the gateway request from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from alarms.notify import Notification, Planner, Resolver, delivery_id
from alarms.notify_templates import render

PEOPLE_CHANNELS = ("email", "sms")
# Events that reach people, and the ones that end the story for those already told.
_LADDER_EVENTS = ("raised", "escalated")
_CLOSING_EVENTS = ("cleared", "acknowledged")


@dataclass(frozen=True)
class MessageSettings:
    """What the text needs besides the event: the default language (a recipient without
    one), the local time zone (``register.timezone``), ``console.public_url`` (empty: no
    link), region codes' names, and whether cleared / taken-over messages are sent."""

    lang: str = "zh"
    timezone: str = "Asia/Shanghai"
    public_url: str = ""
    region_names: Mapping[str, str] = field(default_factory=dict)
    closing_messages: bool = True


def alarm_link(public_url: str, alarm_id: str) -> str | None:
    """The console's address of one alarm (the page opens it from ``#alarm=<id>``)."""
    if not public_url:
        return None
    return f"{public_url.rstrip('/')}/#alarm={quote(alarm_id, safe='')}"


def _subject_name(cur: Any, subject_id: str) -> str:
    """The register's current name of the subject, else the subject id."""
    row = cur.execute("SELECT name FROM reg_subject_versions WHERE subject_id = ? AND "
                      "valid_to_ms IS NULL ORDER BY valid_from_ms DESC LIMIT 1",
                      (subject_id,)).one()
    return str(row["name"]) if row and row["name"] else subject_id


def _zone_name(cur: Any, zone_id: str | None) -> str | None:
    if not zone_id:
        return None
    row = cur.execute("SELECT name FROM reg_zones WHERE zone_id = ? AND valid_to_ms IS NULL",
                      (zone_id,)).one()
    return str(row["name"]) if row and row["name"] else zone_id


# (channel, person_id, address, lang) of one message to send
Target = tuple[str, str, str, str]


def _told(cur: Any, alarm_id: str, channels: Sequence[str]) -> tuple[list[Target], int]:
    """Who was told of ``alarm_id`` over ``channels`` (each once), and the highest level."""
    marks = ", ".join("?" for _ in channels)
    rows = cur.execute("SELECT channel, recipient, level, body FROM notifications WHERE "
                       f"alarm_id = ? AND channel IN ({marks}) AND event IN "
                       "('raised', 'escalated') ORDER BY id", (alarm_id, *channels)).all()
    out: dict[tuple[str, str], Target] = {}
    level = 1
    for r in rows:
        body = orjson.loads(bytes(r["body"]))
        out.setdefault((r["channel"], r["recipient"]),
                       (r["channel"], r["recipient"], body["to"], body["lang"]))
        level = max(level, int(r["level"]))
    return list(out.values()), level


def people_planner(resolver: Resolver, channels: Sequence[str],
                   settings: MessageSettings = MessageSettings()) -> Planner:
    """The planner of e-mail and/or SMS (``channels``) notifications to the people
    ``resolver`` names (see the module doc)."""
    bad = sorted(set(channels) - set(PEOPLE_CHANNELS))
    if bad or not channels:
        raise ValueError(f"people channels are {PEOPLE_CHANNELS}, got {list(channels)}")
    chans = tuple(c for c in PEOPLE_CHANNELS if c in channels)

    def targets(cur: Any, ev: Mapping[str, Any], told: dict[str, tuple[list[Target], int]]
                ) -> tuple[list[Target], int]:
        if ev["event"] in _CLOSING_EVENTS:
            if ev["alarm_id"] in told:  # told earlier in this same transaction
                return told[ev["alarm_id"]]
            return _told(cur, ev["alarm_id"], chans)
        level = 1 if ev["event"] == "raised" else int(ev.get("level", 2))
        out = []
        for r in resolver(cur, ev, level):
            lang = r.lang if r.lang in ("zh", "en") else settings.lang
            for ch in chans:
                addr = r.email if ch == "email" else r.phone
                if addr:
                    out.append((ch, r.person_id, addr, lang))
        prev, prev_level = told.get(ev["alarm_id"], ([], 1))
        told[ev["alarm_id"]] = (prev + [t for t in out if t not in prev],
                                max(prev_level, level))
        return out, level

    def plan(cur: Any, events: Sequence[Mapping[str, Any]], now_ms: int
             ) -> list[Notification]:
        out: list[Notification] = []
        told: dict[str, tuple[list[Target], int]] = {}
        for ev in events:
            event = ev["event"]
            if event not in _LADDER_EVENTS and not (
                    event in _CLOSING_EVENTS and settings.closing_messages):
                continue
            sent_to, level = targets(cur, ev, told)
            if not sent_to:
                continue
            who = _subject_name(cur, ev["subject_id"])
            zone = _zone_name(cur, ev.get("zone_id"))
            link = alarm_link(settings.public_url, ev["alarm_id"])
            for ch, person, addr, lang in sent_to:
                msg = render(ev, level, lang, who=who, zone=zone,
                             timezone=settings.timezone, link=link)
                body = orjson.dumps({"to": addr, "lang": lang, "type": ev["type"],
                                     "subject": msg.subject, "text": msg.text})
                out.append(Notification(
                    delivery_id(ev["alarm_id"], f"{event}@{level}", ch, person),
                    ev["alarm_id"], event, ev["region"], ch, person, level, body))
        return out

    return plan


def combine(*planners: Planner | None) -> Planner | None:
    """One planner that writes every given planner's notifications (None: none given)."""
    given = [p for p in planners if p is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]

    def plan(cur: Any, events: Sequence[Mapping[str, Any]], now_ms: int
             ) -> list[Notification]:
        return [n for p in given for n in p(cur, events, now_ms)]

    return plan
