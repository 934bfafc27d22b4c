"""The duty roster (``store.roster``) and the resolver that reads it: who an alarm's
notifications reach at each level of the escalation ladder (docs/notifications.md).

Per region, people with a role on the ladder (:data:`ROLE_LEVELS`): at level 1 the
subject's officer in charge (the roster person whose ``account`` is the register's
``officer`` of the subject, else the region's ``default_officer``) and the duty operator
on shift; at level 2 the squadron leader; at level 3 the brigade / bureau. A person with
shifts is told only on shift; one without shifts always.

Shifts are in local time (``register.timezone``): ``{days, start, end}``, ``days`` the
weekdays a shift *starts* on; an ``end`` not after ``start`` ends the next day (an
overnight shift; ``start == end`` is 24 hours). Changes are for supervisors and admins,
of their own regions, and audited (``roster.put`` / ``roster.delete``, with ``before``
and ``after``). A bad request raises :class:`RosterError` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from alarms.db import Cursor, Database, int_ms
from alarms.notify import Recipient, Resolver
from alarms.register_check import (
    _HHMM,
    WEEKDAYS,
    RegisterError,
    check_actor,
    check_id,
    check_role,
    check_text,
)
from alarms.register_read import subject_version
from alarms.roster_schema import LANGS, ROLE_LEVELS, ROLES
from alarms.schema import REGION_CODE
from alarms.users import audit_row

DEFAULT_TIMEZONE = "Asia/Shanghai"
PERSON_KEYS = ("person_id", "region", "name", "role", "phone", "email", "lang", "account",
               "note", "shifts")
_PHONE = re.compile(r"^\+?[0-9][0-9 -]{4,19}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_COLUMNS = ("person_id, region, name, role, phone, email, lang, account, note, updated_by, "
            "updated_at")


class RosterError(RegisterError):
    """A roster request cannot be done: ``reason``, the ``field`` at fault and the
    HTTP-like ``status`` (the console answers it as it answers the register's)."""


# --- checks --------------------------------------------------------------------------------


def _wrap(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except RosterError:
        raise
    except RegisterError as exc:
        raise RosterError(exc.reason, field=exc.field, status=exc.status) from None


def check_shift(raw: Any, field: str) -> dict[str, Any]:
    """One shift ``{days, start, end}`` (``days`` defaults to every day)."""
    if not isinstance(raw, dict):
        raise RosterError("must be an object {days, start, end}", field=field)
    unknown = sorted(set(raw) - {"days", "start", "end"})
    if unknown:
        raise RosterError(f"unknown key {unknown[0]!r}", field=f"{field}.{unknown[0]}")
    out: dict[str, Any] = {}
    for key in ("start", "end"):
        value = raw.get(key)
        if not isinstance(value, str) or not _HHMM.match(value):
            raise RosterError(f"{value!r} is not a local time HH:MM", field=f"{field}.{key}")
        out[key] = value
    days = raw.get("days", list(WEEKDAYS))
    if not isinstance(days, list) or not days or any(d not in WEEKDAYS for d in days):
        raise RosterError(f"must be a non-empty list of {', '.join(WEEKDAYS)}",
                          field=f"{field}.days")
    out["days"] = [d for d in WEEKDAYS if d in days]
    return out


def check_person(doc: Any) -> dict[str, Any]:
    """A roster person document, checked: every bad field named."""
    if not isinstance(doc, dict):
        raise RosterError("a roster person must be a JSON object")
    unknown = sorted(set(doc) - set(PERSON_KEYS))
    if unknown:
        raise RosterError(f"unknown key {unknown[0]!r}", field=unknown[0])
    p: dict[str, Any] = {"person_id": _wrap(check_id, doc.get("person_id"), "person_id")}
    region = doc.get("region")
    if not isinstance(region, str) or not REGION_CODE.match(region):
        raise RosterError(f"{region!r} is not a region code", field="region")
    p["region"] = region
    p["name"] = _wrap(check_text, doc.get("name"), "name", required=True)
    if doc.get("role") not in ROLES:
        raise RosterError(f"{doc.get('role')!r} is not one of {', '.join(ROLES)}",
                          field="role")
    p["role"] = doc["role"]
    for key, pattern in (("phone", _PHONE), ("email", _EMAIL)):
        value = doc.get(key) or None
        if value is not None and (not isinstance(value, str) or not pattern.match(value)):
            what = "an e-mail address" if key == "email" else "a phone number"
            raise RosterError(f"{value!r} is not {what}", field=key)
        p[key] = value
    p["lang"] = doc.get("lang") or "zh"
    if p["lang"] not in LANGS:
        raise RosterError(f"{p['lang']!r} is not one of {', '.join(LANGS)}", field="lang")
    account = doc.get("account") or None
    if account is not None and not isinstance(account, str):
        raise RosterError(f"{account!r} is not an account name", field="account")
    if p["role"] == "officer" and account is None:
        raise RosterError("an officer in charge needs the console account the register "
                          "names as a subject's officer", field="account")
    p["account"] = account
    p["note"] = _wrap(check_text, doc.get("note"), "note")
    shifts = doc.get("shifts") or []
    if not isinstance(shifts, list):
        raise RosterError("must be a list of {days, start, end}", field="shifts")
    p["shifts"] = [check_shift(s, f"shifts[{i}]") for i, s in enumerate(shifts)]
    if not (p["phone"] or p["email"]):
        raise RosterError("give a phone number or an e-mail address (or both)", field="phone")
    return p


def check_timezone(name: Any) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (TypeError, ValueError, KeyError, OSError):
        raise RosterError(f"{name!r} is not an IANA time zone", field="timezone") from None


# --- shifts --------------------------------------------------------------------------------


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def on_shift(shifts: Iterable[Mapping[str, Any]], local: datetime) -> bool:
    """Is the local wall-clock time ``local`` inside one of ``shifts``? An overnight
    shift (end not after start) belongs to the day it starts on."""
    day, yesterday = WEEKDAYS[local.weekday()], WEEKDAYS[(local.weekday() - 1) % 7]
    m = local.hour * 60 + local.minute
    for s in shifts:
        start, end = _minutes(s["start"]), _minutes(s["end"])
        if start < end:
            if day in s["days"] and start <= m < end:
                return True
        elif (day in s["days"] and m >= start) or (yesterday in s["days"] and m < end):
            return True
    return False


def told_now(shifts: list[Mapping[str, Any]], at_ms: int, tz: ZoneInfo) -> bool:
    """Is a person with ``shifts`` told at ``at_ms``? (No shifts: always.)"""
    if not shifts:
        return True
    return on_shift(shifts, datetime.fromtimestamp(at_ms / 1000, tz))


# --- reading -------------------------------------------------------------------------------


def _shifts(cur: Cursor, person_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {p: [] for p in person_ids}
    if not person_ids:
        return out
    rows = cur.execute("SELECT person_id, days, start_local, end_local FROM roster_shifts "
                       "WHERE person_id IN (" + ", ".join("?" * len(person_ids)) + ") "
                       "ORDER BY id", person_ids).all()
    for r in rows:
        out[r["person_id"]].append({"days": r["days"].split(","), "start": r["start_local"],
                                    "end": r["end_local"]})
    return out


def read_people(cur: Cursor, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """Roster people (with ``level`` and ``shifts``), by region, level and id."""
    rows = cur.execute(f"SELECT {_COLUMNS} FROM roster_people{where}", list(params)).all()
    shifts = _shifts(cur, [r["person_id"] for r in rows])
    for r in rows:
        r["level"] = ROLE_LEVELS[r["role"]]
        r["shifts"] = shifts[r["person_id"]]
    rows.sort(key=lambda r: (r["region"], r["level"], ROLES.index(r["role"]), r["person_id"]))
    return rows


def recipients(cur: Cursor, region: str, level: int, at_ms: int, tz: ZoneInfo,
               subject_id: str | None = None) -> list[dict[str, Any]]:
    """The roster people of ``region`` told at ``level`` at ``at_ms`` (level 1: the
    subject's officer in charge, else the default officer, and the duty operator)."""
    people = [p for p in read_people(cur, " WHERE region = ?", [region])
              if p["level"] == level and told_now(p["shifts"], at_ms, tz)]
    if level != 1:
        return people
    officer = None
    if subject_id is not None:
        version = subject_version(cur, subject_id, at_ms)
        officer = version["officer"] if version else None
    in_charge = [p for p in people if p["role"] == "officer" and officer is not None
                 and p["account"] == officer]
    if not in_charge:
        in_charge = [p for p in people if p["role"] == "default_officer"]
    return in_charge + [p for p in people if p["role"] == "duty"]


def roster_resolver(cur: Any, event: Mapping[str, Any], level: int, *,
                    timezone: str = DEFAULT_TIMEZONE) -> list[Recipient]:
    """The :data:`alarms.notify.Resolver`: the people to tell of ``event`` at ``level``,
    read from the roster in the caller's transaction, on shift at the event's ``at``
    (local time in ``timezone``, ``register.timezone``). Use :func:`resolver_for` to bind
    another zone."""
    tz = check_timezone(timezone)
    people = recipients(cur, event["region"], int(level), int(event["at"]), tz,
                        event.get("subject_id"))
    seen: set[str] = set()
    out = []
    for p in people:
        if p["person_id"] not in seen:
            seen.add(p["person_id"])
            out.append(Recipient(p["person_id"], p["name"], p["email"], p["phone"], p["lang"]))
    return out


def resolver_for(timezone: str) -> Resolver:
    """:func:`roster_resolver` for shifts in ``timezone`` (checked now)."""
    check_timezone(timezone)
    return partial(roster_resolver, timezone=timezone)


# --- the store API -------------------------------------------------------------------------


def _visible(person: dict[str, Any] | None, person_id: str,
             regions: Iterable[str] | None) -> dict[str, Any]:
    if person is None or (regions is not None and person["region"] not in set(regions)):
        raise RosterError(f"no such roster person {person_id!r}", field="person_id",
                          status=404)
    return person


class Roster:
    """``store.roster``: the duty roster, read and changed in transactions of its own."""

    def __init__(self, db: Database):
        self._db = db

    def people(self, regions: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every roster person of ``regions`` (None: all), by region, level and id."""
        allowed = None if regions is None else sorted(set(regions))
        if allowed == []:
            return []
        where = "" if allowed is None else (
            " WHERE region IN (" + ", ".join("?" * len(allowed)) + ")")
        with self._db.tx("roster people", write=False) as cur:
            return read_people(cur, where, allowed or [])

    def person(self, person_id: str, regions: Iterable[str] | None = None) -> dict[str, Any]:
        """One roster person; 404 when unknown or outside ``regions``."""
        with self._db.tx("roster person", write=False) as cur:
            found = read_people(cur, " WHERE person_id = ?", [person_id])
        return _visible(found[0] if found else None, person_id, regions)

    def told_at(self, region: str, at_ms: int, *, timezone: str = DEFAULT_TIMEZONE,
                subject_id: str | None = None) -> dict[int, list[dict[str, Any]]]:
        """Who would be told of an alarm of ``region`` at ``at_ms``, level by level."""
        at_ms = int_ms(at_ms, "at_ms")
        tz = check_timezone(timezone)
        with self._db.tx("roster told", write=False) as cur:
            return {level: recipients(cur, region, level, at_ms, tz, subject_id)
                    for level in sorted(set(ROLE_LEVELS.values()))}

    def put_person(self, doc: Any, *, actor: str, role: str, now_ms: int,
                   regions: Iterable[str] | None = None, ip: str | None = None
                   ) -> tuple[dict[str, Any], bool]:
        """Create or replace a roster person (with their shifts); returns (the person,
        created). Supervisors and admins only, within their ``regions``; audited."""
        actor = _wrap(check_actor, actor)
        _wrap(check_role, role, "change the duty roster")
        now_ms = int_ms(now_ms, "now_ms")
        p = check_person(doc)
        if regions is not None and p["region"] not in set(regions):
            raise RosterError(f"region {p['region']!r} is not one of yours", field="region",
                              status=403)
        with self._db.tx("roster put") as cur:
            before = read_people(cur, " WHERE person_id = ?", [p["person_id"]])
            if before:
                _visible(before[0], p["person_id"], regions)
            if p["account"] is not None and cur.execute(
                    "SELECT 1 FROM users WHERE name = ?", (p["account"],)).one() is None:
                raise RosterError(f"no account {p['account']!r}", field="account")
            self._write(cur, p, actor, now_ms, replace=bool(before))
            after = read_people(cur, " WHERE person_id = ?", [p["person_id"]])[0]
            audit_row(cur, actor, "roster.put", p["person_id"],
                      {"region": p["region"], "before": before[0] if before else None,
                       "after": after}, now_ms, ip)
        return after, not before

    @staticmethod
    def _write(cur: Cursor, p: dict[str, Any], actor: str, now_ms: int, *,
               replace: bool) -> None:
        values = (p["region"], p["name"], p["role"], p["phone"], p["email"], p["lang"],
                  p["account"], p["note"], actor, now_ms, p["person_id"])
        if replace:
            cur.execute("UPDATE roster_people SET region = ?, name = ?, role = ?, phone = ?, "
                        "email = ?, lang = ?, account = ?, note = ?, updated_by = ?, "
                        "updated_at = ? WHERE person_id = ?", values)
            cur.execute("DELETE FROM roster_shifts WHERE person_id = ?", (p["person_id"],))
        else:
            cur.execute("INSERT INTO roster_people (region, name, role, phone, email, lang, "
                        "account, note, updated_by, updated_at, person_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        for s in p["shifts"]:
            cur.execute("INSERT INTO roster_shifts (person_id, days, start_local, end_local) "
                        "VALUES (?, ?, ?, ?)",
                        (p["person_id"], ",".join(s["days"]), s["start"], s["end"]))

    def delete_person(self, person_id: str, *, actor: str, role: str, now_ms: int,
                      regions: Iterable[str] | None = None, ip: str | None = None
                      ) -> dict[str, Any]:
        """Take a person off the roster (their shifts too); returns them as they were.
        Supervisors and admins only, within their ``regions``; audited."""
        actor = _wrap(check_actor, actor)
        _wrap(check_role, role, "change the duty roster")
        now_ms = int_ms(now_ms, "now_ms")
        with self._db.tx("roster delete") as cur:
            found = read_people(cur, " WHERE person_id = ?", [person_id])
            before = _visible(found[0] if found else None, person_id, regions)
            cur.execute("DELETE FROM roster_shifts WHERE person_id = ?", (person_id,))
            cur.execute("DELETE FROM roster_people WHERE person_id = ?", (person_id,))
            audit_row(cur, actor, "roster.delete", person_id,
                      {"region": before["region"], "before": before, "after": None},
                      now_ms, ip)
        return before
