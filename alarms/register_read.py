"""Reading the register as it was at a moment: a subject's entry, and the snapshot the
engine reads (zones FeatureCollection, subjects file; docs/register.md).

``at_ms`` None reads the current rows (``valid_to_ms IS NULL``, devices not returned,
leaves in their stored state); a time reads the rows valid then (``valid_from_ms <= at <
valid_to_ms``), devices issued then, leaves in the state their workflow had reached.
"""

from __future__ import annotations

from typing import Any

import orjson

from alarms.db import Cursor

SUBJECT_COLUMNS = ("subject_id, name, region, level, officer, note, state, ended_at, "
                   "end_reason, valid_from_ms")


def valid_at(at_ms: int | None, alias: str = "") -> tuple[str, list[int]]:
    """The condition (and its parameters) of a versioned row valid at ``at_ms``."""
    p = f"{alias}." if alias else ""
    if at_ms is None:
        return f"{p}valid_to_ms IS NULL", []
    return (f"{p}valid_from_ms <= ? AND ({p}valid_to_ms IS NULL OR {p}valid_to_ms > ?)",
            [at_ms, at_ms])


def subject_version(cur: Cursor, subject_id: str, at_ms: int | None) -> dict[str, Any] | None:
    cond, params = valid_at(at_ms)
    return cur.execute(f"SELECT {SUBJECT_COLUMNS} FROM reg_subject_versions "
                       f"WHERE subject_id = ? AND {cond}", (subject_id, *params)).one()


def devices_of(cur: Cursor, subject_id: str, at_ms: int | None) -> list[dict[str, Any]]:
    """The devices issued to the subject at ``at_ms`` (None: now), in issue order."""
    if at_ms is None:
        cond, params = "returned_at IS NULL", []
    else:
        cond, params = "issued_at <= ? AND (returned_at IS NULL OR returned_at > ?)", [at_ms,
                                                                                       at_ms]
    rows = cur.execute(f"SELECT device_id, kind, issued_at FROM reg_device_issues "
                       f"WHERE subject_id = ? AND {cond} ORDER BY issued_at, id",
                       (subject_id, *params)).all()
    return [{"device_id": r["device_id"], "kind": r["kind"], "issued_at": r["issued_at"]}
            for r in rows]


def _in_period(row: dict[str, Any], t_ms: int | None) -> bool:
    """Is ``t_ms`` inside the row's own effective period [from_ms, to_ms)? (None: yes)."""
    if t_ms is None:
        return True
    return ((row["from_ms"] is None or row["from_ms"] <= t_ms)
            and (row["to_ms"] is None or t_ms < row["to_ms"]))


def assignments_of(cur: Cursor, subject_id: str, at_ms: int | None) -> list[dict[str, Any]]:
    cond, params = valid_at(at_ms)
    rows = cur.execute(f"SELECT zone_id, role, reason, from_ms, to_ms FROM reg_assignments "
                       f"WHERE subject_id = ? AND {cond} ORDER BY role, position",
                       (subject_id, *params)).all()
    return [{"zone_id": r["zone_id"], "role": r["role"], "reason": r["reason"],
             "from": r["from_ms"], "to": r["to_ms"]} for r in rows]


LEAVE_COLUMNS = ("leave_id, subject_id, zones, start_ms, end_ms, reason, state, requested_by, "
                 "requested_at, decided_by, decided_at, decision_note, returned_by, returned_at")


def leave_state_at(row: dict[str, Any], at_ms: int | None) -> str:
    """The stored workflow state the leave had reached at ``at_ms`` (None: now)."""
    if at_ms is None:
        return row["state"]
    if row["decided_at"] is None or row["decided_at"] > at_ms:
        return "requested"
    if row["state"] in ("approved", "returned"):
        returned = row["returned_at"] is not None and row["returned_at"] <= at_ms
        return "returned" if returned else "approved"
    return row["state"]


def leave_dict(row: dict[str, Any], at_ms: int | None = None) -> dict[str, Any]:
    """A leave as the API shows it (stored workflow state at ``at_ms``)."""
    state = leave_state_at(row, at_ms)
    decided = state != "requested"
    returned = state == "returned"
    return {"leave_id": row["leave_id"], "subject_id": row["subject_id"], "state": state,
            "zones": orjson.loads(row["zones"]), "start": row["start_ms"],
            "end": row["end_ms"], "reason": row["reason"],
            "requested_by": row["requested_by"], "requested_at": row["requested_at"],
            "decided_by": row["decided_by"] if decided else None,
            "decided_at": row["decided_at"] if decided else None,
            "decision_note": row["decision_note"] if decided else None,
            "returned_by": row["returned_by"] if returned else None,
            "returned": row["returned_at"] if returned else None}


def leaves_of(cur: Cursor, subject_id: str, at_ms: int | None) -> list[dict[str, Any]]:
    """Every leave requested by ``at_ms``, as the API shows it, by start."""
    where, params = "subject_id = ?", [subject_id]
    if at_ms is not None:
        where += " AND requested_at <= ?"
        params.append(at_ms)
    rows = cur.execute(f"SELECT {LEAVE_COLUMNS} FROM reg_leaves WHERE {where} "
                       "ORDER BY start_ms, leave_id", params).all()
    return [leave_dict(r, at_ms) for r in rows]


def engine_leave(leave: dict[str, Any]) -> dict[str, Any]:
    """An approved leave as the subjects file gives it to the engine."""
    out = {"leave_id": leave["leave_id"], "start": leave["start"], "end": leave["end"],
           "zones": leave["zones"]}
    if leave["returned"] is not None:
        out["returned"] = leave["returned"]
    return out


def curfews_of(cur: Cursor, subject_id: str, at_ms: int | None) -> list[dict[str, Any]]:
    cond, params = valid_at(at_ms)
    rows = cur.execute("SELECT curfew_id, start_local, end_local, zone_id, days, from_ms, "
                       f"to_ms, reason FROM reg_curfews WHERE subject_id = ? AND {cond} "
                       "ORDER BY valid_from_ms, curfew_id", (subject_id, *params)).all()
    out = []
    for r in rows:
        c = {"curfew_id": r["curfew_id"], "start": r["start_local"], "end": r["end_local"],
             "zone": r["zone_id"], "days": orjson.loads(r["days"])}
        for key in ("from", "to"):
            if r[f"{key}_ms"] is not None:
                c[key] = r[f"{key}_ms"]
        if r["reason"] is not None:
            c["reason"] = r["reason"]
        out.append(c)
    return out


def suspensions_of(cur: Cursor, subject_id: str, at_ms: int | None) -> list[dict[str, Any]]:
    cond, params = valid_at(at_ms)
    rows = cur.execute("SELECT suspension_id, type, start_ms, end_ms, reason, created_by "
                       f"FROM reg_suspensions WHERE subject_id = ? AND {cond} "
                       "ORDER BY start_ms, suspension_id", (subject_id, *params)).all()
    return [{"suspension_id": r["suspension_id"], "type": r["type"], "start": r["start_ms"],
             "end": r["end_ms"], "reason": r["reason"], "by": r["created_by"]} for r in rows]


def subject_entry(cur: Cursor, version: dict[str, Any], at_ms: int | None,
                  period_ms: int | None) -> dict[str, Any]:
    """The subject's entry: the subjects-file keys (approved leaves only in ``leaves``)
    plus the register's (``state``, ``name`` ..., every leave in ``leave_requests``,
    ``assignments`` with reasons). ``period_ms``: the moment an assignment's own effective
    period is judged at (None: every current assignment counts)."""
    sid = version["subject_id"]
    assignments = assignments_of(cur, sid, at_ms)
    leaves = leaves_of(cur, sid, at_ms)
    created = cur.execute("SELECT created_at FROM reg_subjects WHERE subject_id = ?",
                          (sid,)).scalar()
    return {
        "subject_id": sid, "region": version["region"], "level": version["level"],
        "name": version["name"], "officer": version["officer"], "note": version["note"],
        "devices": [{"device_id": d["device_id"], "kind": d["kind"]}
                    for d in devices_of(cur, sid, at_ms)],
        "inclusion": [a["zone_id"] for a in assignments if a["role"] == "inclusion"
                      and _in_period({"from_ms": a["from"], "to_ms": a["to"]}, period_ms)],
        "exclusion": [a["zone_id"] for a in assignments if a["role"] == "exclusion"
                      and _in_period({"from_ms": a["from"], "to_ms": a["to"]}, period_ms)],
        "leaves": [engine_leave(lv) for lv in leaves if lv["state"] in ("approved", "returned")],
        "curfews": curfews_of(cur, sid, at_ms),
        "suspensions": suspensions_of(cur, sid, at_ms),
        "state": version["state"], "created_at": created, "ended_at": version["ended_at"],
        "end_reason": version["end_reason"], "version_from": version["valid_from_ms"],
        "assignments": assignments, "leave_requests": leaves,
        "contacts": contacts_of(cur, sid, at_ms),
    }


ENGINE_KEYS = ("subject_id", "region", "level", "name", "officer", "note", "devices",
               "inclusion", "exclusion", "leaves", "curfews", "suspensions")


def zone_features(cur: Cursor, at_ms: int | None) -> list[dict[str, Any]]:
    cond, params = valid_at(at_ms)
    rows = cur.execute(f"SELECT feature FROM reg_zones WHERE {cond} ORDER BY zone_id",
                       params).all()
    return [orjson.loads(r["feature"]) for r in rows]


def snapshot(cur: Cursor, at_ms: int | None, period_ms: int | None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(zones FeatureCollection, subjects file) at ``at_ms``: active subjects that have a
    device then (the engine has nothing to watch without one), approved leaves only."""
    cond, params = valid_at(at_ms)
    versions = cur.execute(f"SELECT {SUBJECT_COLUMNS} FROM reg_subject_versions "
                           f"WHERE state = 'active' AND {cond} ORDER BY subject_id",
                           params).all()
    subjects = []
    for v in versions:
        entry = subject_entry(cur, v, at_ms, period_ms)
        if not entry["devices"]:
            continue
        out = {k: entry[k] for k in ENGINE_KEYS if entry[k] is not None}
        for s in out["suspensions"]:
            del s["by"]
        subjects.append(out)
    zones = {"type": "FeatureCollection", "features": zone_features(cur, at_ms)}
    watched = {s["subject_id"] for s in subjects}
    for s in subjects:  # a pair on the first subject's entry, when both are watched
        others = [b for b in contacts_of(cur, s["subject_id"], at_ms, first_only=True)
                  if b in watched]
        if others:
            s["contacts"] = others
    protected = []
    for p in protected_persons(cur, at_ms):
        frm = [x for x in p["protected_from"] if x in watched]
        if frm:  # (protected from nobody the engine watches: nothing to check)
            protected.append({"person_id": p["person_id"], "region": p["region"],
                              "devices": [{"device_id": d, "kind": "victim"}
                                          for d in p["devices"]],
                              "protected_from": frm})
    out: dict[str, Any] = {"subjects": subjects}
    if protected:
        out["protected"] = protected
    return zones, out


def contacts_of(cur: Cursor, subject_id: str, at_ms: int | None, *,
                first_only: bool = False) -> list[str]:
    """The subjects ``subject_id`` may not meet (at ``at_ms``), sorted; ``first_only``:
    only the pairs where it is the first (smaller) id, each pair once."""
    cond, params = valid_at(at_ms)
    rows = cur.execute(f"SELECT subject_b AS other FROM reg_contacts WHERE subject_a = ? "
                       f"AND {cond}", (subject_id, *params)).all()
    if not first_only:
        rows += cur.execute(f"SELECT subject_a AS other FROM reg_contacts WHERE "
                            f"subject_b = ? AND {cond}", (subject_id, *params)).all()
    return sorted(r["other"] for r in rows)


PROTECTED_COLUMNS = ("person_id, name, region, devices, protected_from, note, end_reason, "
                     "changed_by, valid_from_ms, valid_to_ms")


def protected_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {"person_id": row["person_id"], "name": row["name"], "region": row["region"],
            "devices": orjson.loads(row["devices"]),
            "protected_from": orjson.loads(row["protected_from"]), "note": row["note"],
            "changed_by": row["changed_by"], "version_from": row["valid_from_ms"]}


def protected_persons(cur: Cursor, at_ms: int | None,
                      person_id: str | None = None) -> list[dict[str, Any]]:
    """The protected persons (at ``at_ms``), by person id; one of them with
    ``person_id``."""
    cond, params = valid_at(at_ms)
    extra, more = ("AND person_id = ? ", [person_id]) if person_id is not None else ("", [])
    rows = cur.execute(f"SELECT {PROTECTED_COLUMNS} FROM reg_protected_versions "
                       f"WHERE {cond} {extra}ORDER BY person_id", (*params, *more)).all()
    return [protected_dict(r) for r in rows]
