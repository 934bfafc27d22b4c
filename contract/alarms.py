"""Alarm types, the alarm identity and the alarm event (wire contract v1, docs/internals.md).

An alarm event is a plain dict (it goes to orjson as it is, and replay output must stay
byte-stable), always built by :func:`alarm_event` so that its keys come in one order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

# The alarm types; the engine's type codes are indices into this tuple
# (engine.kernels.T_OUTBOUND ...), the store's CHECK constraint lists the same names.
ALARM_TYPES = ("outbound", "exclusion", "offline", "tamper", "low_battery", "leave_overdue",
               "curfew", "separation", "no_fix", "power_off", "approach", "proximity", "contact")
# Types that are warnings (a pre-warning before a violation), shown as such, not alarms.
WARNING_TYPES = ("approach",)
# The two events the engine emits (the store adds escalated, acknowledged, closed).
ENGINE_EVENTS = ("raised", "cleared")
# Types whose events carry evidence (lat, lon, distance_m, acc).
EVIDENCE_TYPES = ("outbound", "exclusion", "leave_overdue", "curfew", "approach")
# The kinds of device a subject wears or carries (the subjects file's ``devices[].kind``,
# the register's devices, the alarm's ``device_kind``); "victim" is a protected person's
# device (the subjects file's ``protected`` list), never a subject's.
DEVICE_KINDS = ("bracelet", "phone", "victim")
# The kinds a subject's own device may be (the register and the subjects file refuse
# "victim" there).
SUBJECT_DEVICE_KINDS = ("bracelet", "phone")


class AlarmEvent(TypedDict):
    """One alarm event, keys in this order; the evidence keys only for EVIDENCE_TYPES."""

    event: str
    alarm_id: str
    type: str
    subject_id: str
    device_id: str
    zone_id: str | None
    region: str
    at: int
    late: bool
    lat: NotRequired[float]
    lon: NotRequired[float]
    distance_m: NotRequired[float]
    acc: NotRequired[float]
    # Further evidence, after the four above, in the order the rule gives it (docs/rules.md
    # names each type's keys), e.g. ``battery_pct``, ``strap``, ``last_rx_ms``, ``devices``.


def alarm_id(device_id: str, type_name: str, zone_id: str | None, episode_at_ms: int,
             late: bool) -> str:
    """Deterministic alarm id: the same episode gives the same id for its raised and
    cleared events, in every run and across restarts. The episode is identified by
    device, type, zone and the ``at`` of its raised event (and whether it is a late
    pair, which never shares an id with a live episode)."""
    key = f"{device_id}\x1f{type_name}\x1f{zone_id or ''}\x1f{episode_at_ms}\x1f{int(late)}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def alarm_event(raised: bool, type_name: str, subject_id: str, device_id: str,
                zone_id: str | None, region: str, at_ms: int, episode_at_ms: int, late: bool,
                evidence: tuple[float, float, float, float] | None = None,
                extra: Mapping[str, Any] | None = None) -> AlarmEvent:
    """The alarm event of one raise or clear: ``at_ms`` when it happened (epoch ms),
    ``episode_at_ms`` the ``at`` of the episode's raise (with device, type, zone and
    ``late`` it makes the :func:`alarm_id`); ``evidence`` is ``(lat, lon, distance_m,
    acc)`` (WGS-84 degrees, metres), given for EVIDENCE_TYPES only; distance_m is
    rounded to 0.1 m. ``extra`` adds further evidence keys after those, in its order
    (it must not name a key the event already has)."""
    ev: AlarmEvent = {
        "event": "raised" if raised else "cleared",
        "alarm_id": alarm_id(device_id, type_name, zone_id, episode_at_ms, late),
        "type": type_name,
        "subject_id": subject_id,
        "device_id": device_id,
        "zone_id": zone_id,
        "region": region,
        "at": at_ms,
        "late": late,
    }
    if evidence is not None:
        lat, lon, dist, acc = evidence
        ev["lat"] = lat
        ev["lon"] = lon
        ev["distance_m"] = round(dist, 1)
        ev["acc"] = acc
    if extra:
        clash = set(extra).intersection(ev)
        if clash:
            raise ValueError(f"extra evidence may not replace {sorted(clash)}")
        ev.update(extra)  # type: ignore[typeddict-item]
    return ev
