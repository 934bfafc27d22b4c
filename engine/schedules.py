"""Curfews and alert suspensions of the subjects file, and curfew windows in epoch ms.

A curfew is a recurring window in local time (``register.timezone``): it starts at
``start`` ("HH:MM") on each listed weekday and ends at ``end`` the same day, or the next
day when ``end`` <= ``start``. :func:`curfew_windows` turns the curfews into
``[start_ms, end_ms)`` windows over a span of epoch ms with ``zoneinfo``, so a window
across a daylight-saving change has its true length; the kernels only ever see these
numbers (``RegistryArrays.cw_off`` / ``cw``), never a clock or a time zone.

A suspension: alarms of ``type`` for the subject whose ``at`` is in ``[start, end]`` are
emitted and recorded with ``"suspended": true``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np

from contract.alarms import ALARM_TYPES

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_DAY_MS = 86_400_000


class Curfew(NamedTuple):
    curfew_id: str | None
    start_min: int  # minutes after local midnight
    end_min: int  # minutes after local midnight; <= start_min: the next day
    zone: str
    days: tuple[int, ...]  # weekdays the window starts on, 0 = Monday
    from_ms: int | None  # effective period [from, to): windows are clipped to it
    to_ms: int | None


class Suspension(NamedTuple):
    type: str
    start_ms: int  # inclusive
    end_ms: int  # inclusive


def _hhmm(value: Any, what: str) -> int:
    if not isinstance(value, str) or not HHMM_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a local time HH:MM (00:00 to 23:59)")
    return int(value[:2]) * 60 + int(value[3:])


def parse_curfew(raw: Any, what: str, parse_time_ms) -> tuple[Curfew, str]:
    """One ``curfews[k]`` entry (``what`` names it); returns (curfew, its zone id to check).
    Raises ``ValueError`` or ``TypeError`` naming the field."""
    if not isinstance(raw, dict):
        raise TypeError(f"{what} is not an object")
    cid = raw.get("curfew_id")
    if cid is not None and not isinstance(cid, str):
        raise TypeError(f"{what}.curfew_id {cid!r} is not a string")
    start = _hhmm(raw.get("start"), f"{what}.start")
    end = _hhmm(raw.get("end"), f"{what}.end")
    zone = raw.get("zone")
    if not isinstance(zone, str):
        raise TypeError(f"{what}.zone {zone!r} is not a zone id")
    days_raw = raw.get("days", list(DAYS))
    if (not isinstance(days_raw, list) or not days_raw
            or not all(isinstance(d, str) and d in DAYS for d in days_raw)):
        raise ValueError(f"{what}.days {days_raw!r} is not a non-empty list of "
                         f"{', '.join(DAYS)}")
    days = tuple(sorted({DAYS.index(d) for d in days_raw}))
    from_ms = to_ms = None
    if raw.get("from") is not None:
        from_ms = parse_time_ms(raw["from"], f"{what}.from")
    if raw.get("to") is not None:
        to_ms = parse_time_ms(raw["to"], f"{what}.to")
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        raise ValueError(f"{what}.to ({to_ms}) is not after its from ({from_ms})")
    return Curfew(cid, start, end, zone, days, from_ms, to_ms), zone


def parse_suspension(raw: Any, what: str, parse_time_ms) -> Suspension:
    """One ``suspensions[k]`` entry; ``ValueError`` / ``TypeError`` naming the field."""
    if not isinstance(raw, dict):
        raise TypeError(f"{what} is not an object")
    typ = raw.get("type")
    if typ not in ALARM_TYPES:
        raise ValueError(f"{what}.type {typ!r} is not one of {', '.join(ALARM_TYPES)}")
    start = parse_time_ms(raw.get("start"), f"{what}.start")
    end = parse_time_ms(raw.get("end"), f"{what}.end")
    if end < start:
        raise ValueError(f"{what} ends ({end}) before it starts ({start})")
    return Suspension(typ, start, end)


def _epoch_ms(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * _DAY_MS + delta.seconds * 1000 + delta.microseconds // 1000


def windows_of(curfew: Curfew, lo_ms: int, hi_ms: int, tz: ZoneInfo) -> list[tuple[int, int]]:
    """The ``[start_ms, end_ms)`` windows of ``curfew`` that overlap ``[lo_ms, hi_ms)``, in
    order, clipped to the curfew's effective period. A local start or end that does not
    exist (the hour skipped when daylight saving begins) is read as zoneinfo does
    (``fold=0``: the offset before the change)."""
    first = datetime.fromtimestamp(lo_ms / 1000, tz).date() - timedelta(days=2)
    last = datetime.fromtimestamp(hi_ms / 1000, tz).date() + timedelta(days=1)
    out = []
    day = first
    while day <= last:
        if day.weekday() in curfew.days:
            out.extend(_window(curfew, day, tz, lo_ms, hi_ms))
        day += timedelta(days=1)
    return out


def _window(curfew: Curfew, day: date, tz: ZoneInfo, lo_ms: int, hi_ms: int
            ) -> list[tuple[int, int]]:
    start_t = time(curfew.start_min // 60, curfew.start_min % 60)
    end_t = time(curfew.end_min // 60, curfew.end_min % 60)
    end_day = day + timedelta(days=1) if curfew.end_min <= curfew.start_min else day
    start = _epoch_ms(datetime.combine(day, start_t, tzinfo=tz))
    end = _epoch_ms(datetime.combine(end_day, end_t, tzinfo=tz))
    if curfew.from_ms is not None:
        start = max(start, curfew.from_ms)
    if curfew.to_ms is not None:
        end = min(end, curfew.to_ms)
    if start >= end or end <= lo_ms or start >= hi_ms:
        return []
    return [(start, end)]


def curfew_windows(subject_curfews: list[tuple[Curfew, ...]], zone_index: dict[str, int],
                   lo_ms: int, hi_ms: int, tz_name: str) -> tuple[np.ndarray, np.ndarray]:
    """CSR arrays of every subject's curfew windows overlapping ``[lo_ms, hi_ms)``:
    ``cw_off`` int32[n_subjects+1] and ``cw`` int64[n, 3] rows (start_ms, end_ms, zone
    index), each subject's rows ordered by start (then by the curfew's order)."""
    tz = ZoneInfo(tz_name)
    rows: list[tuple[int, int, int]] = []
    off = np.zeros(len(subject_curfews) + 1, dtype=np.int32)
    for s, curfews in enumerate(subject_curfews):
        mine = []
        for k, cf in enumerate(curfews):
            z = zone_index[cf.zone]
            mine.extend((start, k, end, z) for start, end in windows_of(cf, lo_ms, hi_ms, tz))
        mine.sort()
        rows.extend((start, end, z) for start, _, end, z in mine)
        off[s + 1] = len(rows)
    cw = np.array(rows, dtype=np.int64).reshape(len(rows), 3)
    return off, cw
