"""The register's error and its input checks: each bad field is named as the request
names it (``end``, ``zones[1]``, ``devices[0].device_id``), with a status a console
answers with (400 invalid, 403 forbidden, 404 unknown, 409 conflict)."""

from __future__ import annotations

import re
from typing import Any

from contract.alarms import ALARM_TYPES, SUBJECT_DEVICE_KINDS
from contract.errors import EmfenceError
from emfence.config import LEVELS
from engine.registry import ID_RE, parse_time_ms

DAY_MS = 86_400_000
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_TEXT_MAX = 2000


class RegisterError(EmfenceError, ValueError):
    """A register request cannot be done: ``reason``, the request ``field`` at fault (or
    None) and the HTTP-like ``status`` (400 invalid, 403 forbidden, 404 unknown, 409
    conflict)."""

    def __init__(self, reason: str, *, field: str | None = None, status: int = 400):
        self.reason = reason
        self.field = field
        self.status = status
        super().__init__(f"{field}: {reason}" if field else reason)


def not_found(what: str, ident: str, field: str | None = None) -> RegisterError:
    return RegisterError(f"no such {what} {ident!r}", field=field, status=404)


def check_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise RegisterError(f"{value!r} is not an id ([A-Za-z0-9_-], 1-64 characters)",
                            field=field)
    return value


def check_text(value: Any, field: str, *, required: bool = False) -> str | None:
    """Free text (a name, a reason, a note): a string of at most 2000 characters."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RegisterError("is required", field=field)
        return None
    if not isinstance(value, str) or len(value) > _TEXT_MAX:
        raise RegisterError(f"must be text of at most {_TEXT_MAX} characters", field=field)
    return value.strip()


def check_time(value: Any, field: str, *, required: bool = True) -> int | None:
    """Epoch ms from an integer or ISO 8601 with a UTC offset."""
    if value is None and not required:
        return None
    try:
        return parse_time_ms(value, field)
    except (TypeError, ValueError) as exc:
        raise RegisterError(str(exc).removeprefix(f"{field}: "), field=field) from None


def check_level(value: Any, field: str = "level") -> str:
    if value not in LEVELS:
        raise RegisterError(f"{value!r} is not one of {', '.join(LEVELS)}", field=field)
    return value


def check_role(role: Any, what: str) -> None:
    """Only a supervisor or an admin decides ``what``."""
    if role not in ("supervisor", "admin"):
        raise RegisterError(f"only a supervisor or an admin may {what} (role {role!r})",
                            status=403)


def check_actor(actor: Any) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise RegisterError("the acting account must be named", field="actor")
    return actor


def check_devices(raw: Any, field: str = "devices") -> list[tuple[str, str]]:
    """[(device_id, kind)] of a subject document's ``devices`` (absent: none)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RegisterError("must be a list of {device_id, kind}", field=field)
    out: list[tuple[str, str]] = []
    for k, dev in enumerate(raw):
        if not isinstance(dev, dict):
            raise RegisterError("must be an object {device_id, kind}", field=f"{field}[{k}]")
        did = check_id(dev.get("device_id"), f"{field}[{k}].device_id")
        out.append((did, check_kind(dev.get("kind", "bracelet"), f"{field}[{k}].kind")))
        if did in [d for d, _ in out[:-1]]:
            raise RegisterError(f"device {did!r} is listed twice", field=f"{field}[{k}].device_id")
    return out


def check_kind(kind: Any, field: str = "kind") -> str:
    if kind not in SUBJECT_DEVICE_KINDS:
        raise RegisterError(f"{kind!r} is not one of {', '.join(SUBJECT_DEVICE_KINDS)}",
                            field=field)
    return kind


def check_assignments(raw: Any, field: str) -> list[dict[str, Any]]:
    """A subject's inclusion or exclusion list: zone ids, or objects ``{zone_id, reason,
    from, to}`` (the court order's number, the order's effective period)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RegisterError("must be a list of zone ids", field=field)
    out: list[dict[str, Any]] = []
    for k, item in enumerate(raw):
        where = f"{field}[{k}]"
        if isinstance(item, str):
            item = {"zone_id": item}
        if not isinstance(item, dict):
            raise RegisterError("must be a zone id or {zone_id, reason, from, to}", field=where)
        a = {"zone_id": check_zone_id(item.get("zone_id"), where),
             "reason": check_text(item.get("reason"), f"{where}.reason"),
             "from_ms": check_time(item.get("from"), f"{where}.from", required=False),
             "to_ms": check_time(item.get("to"), f"{where}.to", required=False)}
        if a["from_ms"] is not None and a["to_ms"] is not None and a["to_ms"] <= a["from_ms"]:
            raise RegisterError("must be after 'from'", field=f"{where}.to")
        if a["zone_id"] not in [x["zone_id"] for x in out]:  # a repeat adds nothing
            out.append(a)
    return out


def check_zone_id(value: Any, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise RegisterError(f"{value!r} is not a zone id", field=field)
    return str(value).strip()


def check_zone_list(raw: Any, field: str = "zones") -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise RegisterError("must be a non-empty list of zone ids", field=field)
    out = [check_zone_id(z, f"{field}[{i}]") for i, z in enumerate(raw)]
    return list(dict.fromkeys(out))


def check_window(start: Any, end: Any, max_days: int, *, prefix: str = ""
                 ) -> tuple[int, int]:
    """(start_ms, end_ms) of a leave or a suspension: end after start, at most
    ``max_days`` long; errors name ``end``."""
    start_ms = check_time(start, f"{prefix}start")
    end_ms = check_time(end, f"{prefix}end")
    assert start_ms is not None and end_ms is not None
    if end_ms <= start_ms:
        raise RegisterError("must be after start", field=f"{prefix}end")
    if end_ms - start_ms > max_days * DAY_MS:
        raise RegisterError(f"longer than {max_days} days after start (the longest allowed, "
                            "register.leave_max_days)", field=f"{prefix}end")
    return start_ms, end_ms


def check_curfew(raw: Any, prefix: str = "") -> dict[str, Any]:
    """A curfew ``{start: "22:00", end: "06:00", zone, days, from, to, reason}``; fields
    are named ``prefix + key``."""
    if not isinstance(raw, dict):
        raise RegisterError("must be an object {start, end, zone, days}",
                            field=prefix.rstrip(".") or None)
    out: dict[str, Any] = {}
    for key in ("start", "end"):
        value = raw.get(key)
        if not isinstance(value, str) or not _HHMM.match(value):
            raise RegisterError(f"{value!r} is not a local time HH:MM", field=f"{prefix}{key}")
        out[f"{key}_local"] = value
    if out["start_local"] == out["end_local"]:
        raise RegisterError("must differ from start", field=f"{prefix}end")
    out["zone_id"] = check_zone_id(raw.get("zone"), f"{prefix}zone")
    days = raw.get("days", list(WEEKDAYS))
    if (not isinstance(days, list) or not days
            or any(d not in WEEKDAYS for d in days)):
        raise RegisterError(f"must be a non-empty list of {', '.join(WEEKDAYS)}",
                            field=f"{prefix}days")
    out["days"] = [d for d in WEEKDAYS if d in days]
    out["from_ms"] = check_time(raw.get("from"), f"{prefix}from", required=False)
    out["to_ms"] = check_time(raw.get("to"), f"{prefix}to", required=False)
    if out["from_ms"] is not None and out["to_ms"] is not None and out["to_ms"] <= out["from_ms"]:
        raise RegisterError("must be after 'from'", field=f"{prefix}to")
    out["reason"] = check_text(raw.get("reason"), f"{prefix}reason")
    return out


def check_suspension(raw: Any, max_days: int, prefix: str = "") -> dict[str, Any]:
    """An alert suspension ``{type, start, end, reason}``: bounded, with a reason."""
    if not isinstance(raw, dict):
        raise RegisterError("must be an object {type, start, end, reason}",
                            field=prefix.rstrip(".") or None)
    kind = raw.get("type")
    if kind not in ALARM_TYPES:
        raise RegisterError(f"{kind!r} is not an alarm type ({', '.join(ALARM_TYPES)})",
                            field=f"{prefix}type")
    start_ms, end_ms = check_window(raw.get("start"), raw.get("end"), max_days, prefix=prefix)
    return {"type": kind, "start_ms": start_ms, "end_ms": end_ms,
            "reason": check_text(raw.get("reason"), f"{prefix}reason", required=True)}


def check_subject(doc: Any, *, require_name: bool = True) -> dict[str, Any]:
    """A subject document (the subjects-file entry plus name, officer, note), checked;
    ``devices`` as (id, kind) pairs, ``inclusion``/``exclusion`` as assignments."""
    if not isinstance(doc, dict):
        raise RegisterError("a subject must be a JSON object")
    sid = check_id(doc.get("subject_id"), "subject_id")
    name = check_text(doc.get("name"), "name", required=require_name) or sid
    officer = doc.get("officer")
    if officer is not None and (not isinstance(officer, str) or not officer.strip()):
        raise RegisterError(f"{officer!r} is not an account name", field="officer")
    return {"subject_id": sid, "name": name,
            "region": check_id(doc.get("region"), "region"),
            "level": check_level(doc.get("level")),
            "officer": officer, "note": check_text(doc.get("note"), "note"),
            "devices": check_devices(doc.get("devices")),
            "inclusion": check_assignments(doc.get("inclusion"), "inclusion"),
            "exclusion": check_assignments(doc.get("exclusion"), "exclusion")}


def check_import_leave(lv: Any, k: int, zones_exist) -> tuple[list[str], int, int, int | None]:
    """Entry ``k`` of an imported subject's ``leaves``: (zone ids, start, end, returned or
    None), epoch ms; ``zones_exist(zone_ids, field)`` raises for a zone not in the
    register. Errors name ``leaves[k]...``."""
    if not isinstance(lv, dict):
        raise RegisterError("must be an object", field=f"leaves[{k}]")
    zone_ids = check_zone_list(lv.get("zones"), f"leaves[{k}].zones")
    zones_exist(zone_ids, f"leaves[{k}].zones")
    start = check_time(lv.get("start"), f"leaves[{k}].start")
    end = check_time(lv.get("end"), f"leaves[{k}].end")
    if end < start:  # type: ignore[operator]
        raise RegisterError("must not be before start", field=f"leaves[{k}].end")
    returned = check_time(lv.get("returned"), f"leaves[{k}].returned", required=False)
    return zone_ids, start, end, returned  # type: ignore[return-value]
