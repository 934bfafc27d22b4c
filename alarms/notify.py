"""What a notification is, and which ones an alarm event causes (the planner).

The store calls its planner (:func:`alarms.store.open_store`'s ``notification_planner``)
with the alarm events it is recording, inside the transaction that records them, and
writes the :class:`Notification` rows it returns in that same transaction: an event is
never stored without its notifications, nor a notification without its event.
:mod:`alarms.notify_outbox` delivers them. docs/notifications.md is the reader's guide.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# The alarm events that notify, and the escalation level each is sent at (an
# ``escalated`` event says its own: 2, then 3; see event_level).
EVENT_LEVELS = {"raised": 1, "cleared": 1, "escalated": 2}
# The recipient name of the system integration (the webhook has no person behind it).
WEBHOOK_RECIPIENT = "webhook"


@dataclass(frozen=True)
class Notification:
    """One message to send: ``body`` (bytes) to ``recipient`` over ``channel``."""

    delivery_id: str
    alarm_id: str
    event: str
    region: str
    channel: str
    recipient: str
    level: int
    body: bytes


@dataclass(frozen=True)
class Recipient:
    """A person a people-facing channel (e-mail, SMS) reaches: ``person_id`` is the
    roster's id (the notification's ``recipient``), ``lang`` the template language
    (``zh`` default, ``en``); ``email``/``phone`` None when the person has none."""

    person_id: str
    name: str
    email: str | None = None
    phone: str | None = None
    lang: str = "zh"


# (the recording transaction's cursor, events being recorded, now_ms) -> the
# notifications they cause; the cursor lets a planner read the roster in that transaction
Planner = Callable[[Any, Sequence[Mapping[str, Any]], int], list[Notification]]
# (cursor, one alarm event, its escalation level) -> the people to tell at that level
Resolver = Callable[[Any, Mapping[str, Any], int], list[Recipient]]


def event_level(ev: Mapping[str, Any]) -> int | None:
    """The escalation level an alarm event notifies at: an ``escalated`` event's own
    ``level`` (2 when it has none, as before the ladder), else :data:`EVENT_LEVELS`'s;
    None for an event that notifies nobody."""
    level = EVENT_LEVELS.get(ev["event"])
    if ev["event"] == "escalated":
        level = int(ev.get("level") or level)
    return level


def delivery_id(alarm_id: str, event: str, channel: str, recipient: str,
                level: int | None = None) -> str:
    """The stable id of one event x recipient x channel (32 hex digits): the same inputs
    give the same id in every process, so a receiver can drop a duplicate by it.
    ``level`` tells the ladder's escalations apart: a level above 2 (the second
    escalation of one alarm) is part of the key; levels 1 and 2 keep the id they had
    before the ladder."""
    key = f"{alarm_id}\x00{event}\x00{channel}\x00{recipient}"
    if level is not None and level > 2:
        key += f"\x00{level}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def signature(body: bytes, secret: bytes) -> str:
    """The ``X-Emfence-Signature`` header value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def webhook_planner(cur: Any, events: Sequence[Mapping[str, Any]], now_ms: int
                    ) -> list[Notification]:
    """One webhook notification per raised, cleared and escalated event: the event as
    published, plus ``recipient`` and ``level``."""
    out = []
    for ev in events:
        level = event_level(ev)
        if level is None:
            continue
        body = orjson.dumps({**ev, "recipient": WEBHOOK_RECIPIENT, "level": level})
        out.append(Notification(
            delivery_id(ev["alarm_id"], ev["event"], "webhook", WEBHOOK_RECIPIENT, level),
            ev["alarm_id"], ev["event"], ev["region"], "webhook", WEBHOOK_RECIPIENT,
            level, body))
    return out
