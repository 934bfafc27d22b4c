"""The supervision register, kept in the store: subjects, devices, zones, assignments,
leave, curfews and alert suspensions (docs/register.md).

``store.register`` is a :class:`Register`. Every mutating method is one transaction
that takes the register lock, bumps the change sequence (:meth:`Register.change_seq`,
what running engines poll), writes one audit row with ``before`` and ``after``, and
takes ``actor`` (account name) and ``now_ms``. ``regions`` (region codes, None = all)
limits what the caller sees and changes: a subject outside them is not found (404).
Errors are :class:`RegisterError` with the request ``field`` at fault and a ``status``.

Every record is effective-dated (alarms.register_schema), so :meth:`Register.snapshot`
and :meth:`Register.get_subject` read the register as it was at any past moment.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from alarms.db import Cursor, int_ms
from alarms.lifecycle import close_subject_alarms
from alarms.register_base import Change, RegisterBase, region_list
from alarms.register_check import (
    RegisterError,
    check_assignments,
    check_id,
    check_kind,
    check_level,
    check_subject,
    check_text,
    not_found,
)
from alarms.register_import import RegisterImport
from alarms.register_leave import RegisterLeaves
from alarms.register_read import SUBJECT_COLUMNS, snapshot, subject_entry
from alarms.register_relations import RegisterRelations
from alarms.register_schema import SUBJECT_STATES

__all__ = ["Register", "RegisterError"]

_PATCHABLE = ("name", "officer", "note", "level", "region", "inclusion", "exclusion")


def _insert_version(cur: Cursor, v: dict[str, Any], actor: str, now_ms: int) -> None:
    cur.execute("INSERT INTO reg_subject_versions (subject_id, name, region, level, officer, "
                "note, state, ended_at, end_reason, changed_by, valid_from_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (v["subject_id"], v["name"], v["region"], v["level"], v["officer"], v["note"],
                 v.get("state", "active"), v.get("ended_at"), v.get("end_reason"), actor,
                 now_ms))


def _replace_version(cur: Cursor, old: dict[str, Any], new: dict[str, Any], actor: str,
                     now_ms: int) -> None:
    cur.execute("UPDATE reg_subject_versions SET valid_to_ms = ? "
                "WHERE subject_id = ? AND valid_to_ms IS NULL", (now_ms, old["subject_id"]))
    _insert_version(cur, {**old, **new}, actor, now_ms)


def _insert_assignments(cur: Cursor, sid: str, role: str, items: list[dict[str, Any]],
                        now_ms: int) -> None:
    for pos, a in enumerate(items):
        cur.execute("INSERT INTO reg_assignments (subject_id, zone_id, role, position, reason, "
                    "from_ms, to_ms, valid_from_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, a["zone_id"], role, pos, a["reason"], a["from_ms"], a["to_ms"],
                     now_ms))


def _check_officer(cur: Cursor, officer: str | None) -> None:
    """The officer in charge is a console account."""
    if officer is not None and cur.execute("SELECT 1 FROM users WHERE name = ?",
                                           (officer,)).one() is None:
        raise RegisterError(f"no account {officer!r}", field="officer")


def _check_region(region: str, regions: Iterable[str] | None, field: str = "region") -> None:
    allowed = region_list(regions)
    if allowed is not None and region not in allowed:
        raise RegisterError(f"region {region!r} is not one of yours", field=field, status=403)


class Register(RegisterImport, RegisterLeaves, RegisterRelations, RegisterBase):
    """The register; see the module doc. Build it through ``AlarmStore.register``."""

    # --- reading ------------------------------------------------------------------------

    def list_subjects(self, *, regions: Iterable[str] | None = None, q: str | None = None,
                      state: str | None = None) -> list[dict[str, Any]]:
        """Current subjects, by id: ``{subject_id, name, region, level, officer, note,
        state, ended_at, devices}``; ``q`` matches id or name (case-insensitive),
        ``state`` is active or ended."""
        if state is not None and state not in SUBJECT_STATES:
            raise RegisterError(f"{state!r} is not one of {', '.join(SUBJECT_STATES)}",
                                field="state")
        allowed = region_list(regions)
        with self._db.tx("list subjects", write=False) as cur:
            rows = cur.execute(f"SELECT {SUBJECT_COLUMNS} FROM reg_subject_versions "
                               "WHERE valid_to_ms IS NULL ORDER BY subject_id").all()
            devices = cur.execute("SELECT subject_id, device_id, kind FROM reg_device_issues "
                                  "WHERE returned_at IS NULL ORDER BY issued_at, id").all()
        by_subject: dict[str, list[dict[str, str]]] = {}
        for d in devices:
            by_subject.setdefault(d["subject_id"], []).append(
                {"device_id": d["device_id"], "kind": d["kind"]})
        needle = q.strip().lower() if isinstance(q, str) and q.strip() else None
        out = []
        for r in rows:
            if allowed is not None and r["region"] not in allowed:
                continue
            if state is not None and r["state"] != state:
                continue
            if needle and needle not in r["subject_id"].lower() and needle not in r["name"].lower():
                continue
            r.pop("valid_from_ms")
            r.pop("end_reason")
            out.append({**r, "devices": by_subject.get(r["subject_id"], [])})
        return out

    def get_subject(self, subject_id: str, *, regions: Iterable[str] | None = None,
                    at_ms: int | None = None) -> dict[str, Any]:
        """The subject's entry (the subjects-file keys, ``state``, ``name``, ``officer``,
        ``note``, ``created_at``, ``ended_at``, every leave in ``leave_requests``) now or
        as it was at ``at_ms``. 404 when unknown (then) or outside ``regions``."""
        at = None if at_ms is None else int_ms(at_ms, "at_ms")
        with self._db.tx("get subject", write=False) as cur:
            return subject_entry(cur, self._visible(cur, subject_id, regions, at), at, None)

    def snapshot(self, at_ms: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(zones FeatureCollection, subjects file) as the register was at ``at_ms`` (None:
        now): the formats ``load_zones`` and ``load_registry`` read. Active subjects with a
        device issued then, approved leaves only; an assignment counts while its own
        effective period (``from``/``to``) holds at that moment (None: the clock's now)."""
        at = None if at_ms is None else int_ms(at_ms, "at_ms")
        period = time.time_ns() // 1_000_000 if at is None else at
        with self._db.tx("register snapshot", write=False) as cur:
            return snapshot(cur, at, period)

    def change_seq(self) -> int:
        """The register's change sequence: larger after every committed change (0: none)."""
        with self._db.tx("register change seq", write=False) as cur:
            return int(cur.execute("SELECT MAX(seq) FROM reg_changes").scalar() or 0)

    def change_times(self, from_ms: int, to_ms: int) -> list[int]:
        """Distinct times (ascending) in [from_ms, to_ms] when the register changed: its
        transactions, and where an assignment's own effective period begins or ends."""
        lo, hi = int_ms(from_ms, "from_ms"), int_ms(to_ms, "to_ms")
        with self._db.tx("register change times", write=False) as cur:
            rows = cur.execute(
                "SELECT at AS t FROM reg_changes WHERE at BETWEEN ? AND ? "
                "UNION SELECT from_ms FROM reg_assignments WHERE from_ms BETWEEN ? AND ? "
                "UNION SELECT to_ms FROM reg_assignments WHERE to_ms BETWEEN ? AND ?",
                (lo, hi, lo, hi, lo, hi)).all()
        return sorted({int(r["t"]) for r in rows})

    # --- subjects -----------------------------------------------------------------------

    def create_subject(self, doc: dict[str, Any], *, actor: str, now_ms: int,
                       regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Enrol a subject (the subjects-file entry plus ``name``, optional ``officer``, a
        console account, and ``note``); its devices are issued now. 409 when the id
        exists or a device is issued to someone; 400 naming the field for bad input; 403
        outside ``regions``."""
        d = check_subject(doc)
        _check_region(d["region"], regions)
        with self._change("create subject", actor=actor, now_ms=now_ms,
                          target=d["subject_id"]) as ch:
            _check_officer(ch.cur, d["officer"])
            entry = self._enrol(ch, d)
            ch.audit("subject.create", d["subject_id"], None, entry)
        return entry

    def _enrol(self, ch: Change, d: dict[str, Any]) -> dict[str, Any]:
        """Write a checked subject document in ``ch``; returns its entry."""
        cur, sid = ch.cur, d["subject_id"]
        if cur.execute("SELECT 1 FROM reg_subjects WHERE subject_id = ?", (sid,)).one():
            raise RegisterError(f"subject {sid!r} already exists", field="subject_id",
                                status=409)
        for role in ("inclusion", "exclusion"):
            self._check_zones_exist(cur, [a["zone_id"] for a in d[role]], role)
        cur.execute("INSERT INTO reg_subjects (subject_id, created_at, created_by) "
                    "VALUES (?, ?, ?)", (sid, ch.now_ms, ch.actor))
        _insert_version(cur, d, ch.actor, ch.now_ms)
        for role in ("inclusion", "exclusion"):
            _insert_assignments(cur, sid, role, d[role], ch.now_ms)
        for k, (device_id, kind) in enumerate(d["devices"]):
            self._issue(cur, sid, device_id, kind, ch, f"devices[{k}].device_id")
        return subject_entry(cur, self._visible(cur, sid, None), None, None)

    def patch_subject(self, subject_id: str, changes: dict[str, Any], *, actor: str,
                      now_ms: int, regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Change any of name, officer, note, level, region, inclusion, exclusion; the old
        version stays readable at earlier times. 400 naming an unknown key or bad value."""
        if not isinstance(changes, dict) or not changes:
            raise RegisterError("give at least one of " + ", ".join(_PATCHABLE))
        for key in changes:
            if key not in _PATCHABLE:
                raise RegisterError(f"cannot be changed here (one of {', '.join(_PATCHABLE)})",
                                    field=str(key))
        new = self._checked_changes(changes)
        if "region" in new:
            _check_region(new["region"], regions)
        with self._change("patch subject", actor=actor, now_ms=now_ms,
                          target=subject_id) as ch:
            old = self._visible(ch.cur, subject_id, regions)
            self._active(old)
            before = subject_entry(ch.cur, old, None, None)
            if "officer" in new:
                _check_officer(ch.cur, new["officer"])
            fields = {k: v for k, v in new.items() if k not in ("inclusion", "exclusion")}
            if fields:
                _replace_version(ch.cur, old, fields, ch.actor, ch.now_ms)
            for role in ("inclusion", "exclusion"):
                if role in new:
                    self._check_zones_exist(ch.cur, [a["zone_id"] for a in new[role]], role)
                    ch.cur.execute("UPDATE reg_assignments SET valid_to_ms = ? WHERE "
                                   "subject_id = ? AND role = ? AND valid_to_ms IS NULL",
                                   (ch.now_ms, subject_id, role))
                    _insert_assignments(ch.cur, subject_id, role, new[role], ch.now_ms)
            after = subject_entry(ch.cur, self._visible(ch.cur, subject_id, None), None, None)
            ch.audit("subject.patch", subject_id, before, after)
        return after

    @staticmethod
    def _checked_changes(changes: dict[str, Any]) -> dict[str, Any]:
        new: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "name":
                new[key] = check_text(value, "name", required=True)
            elif key == "note":
                new[key] = check_text(value, "note")
            elif key == "officer":
                if value is not None and (not isinstance(value, str) or not value.strip()):
                    raise RegisterError(f"{value!r} is not an account name", field="officer")
                new[key] = value
            elif key == "level":
                new[key] = check_level(value)
            elif key == "region":
                new[key] = check_id(value, "region")
            else:
                new[key] = check_assignments(value, key)
        return new

    def end_subject(self, subject_id: str, *, actor: str, now_ms: int, reason: str,
                    regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Supervision over: state ``ended``, every device returned, pending leave
        requests cancelled, every alarm of the subject not yet closed filed with the
        disposition ``supervision_ended``. 409 when it already ended."""
        why = check_text(reason, "reason", required=True)
        with self._change("end subject", actor=actor, now_ms=now_ms, target=subject_id) as ch:
            cur = ch.cur
            old = self._visible(cur, subject_id, regions)
            self._active(old)
            before = subject_entry(cur, old, None, None)
            _replace_version(cur, old, {"state": "ended", "ended_at": ch.now_ms,
                                        "end_reason": why}, ch.actor, ch.now_ms)
            cur.execute("UPDATE reg_device_issues SET returned_at = ?, returned_by = ? "
                        "WHERE subject_id = ? AND returned_at IS NULL",
                        (ch.now_ms, ch.actor, subject_id))
            cur.execute("UPDATE reg_leaves SET state = 'cancelled', decided_by = ?, "
                        "decided_at = ?, decision_note = ? WHERE subject_id = ? "
                        "AND state = 'requested'", (ch.actor, ch.now_ms, why, subject_id))
            closed = close_subject_alarms(cur, self._db, subject_id, ch.actor, ch.now_ms, why)
            after = subject_entry(cur, self._visible(cur, subject_id, None), None, None)
            ch.audit("subject.end", subject_id, before, {**after, "alarms_closed": closed})
        return {**after, "alarms_closed": closed}

    # --- devices ------------------------------------------------------------------------

    @staticmethod
    def _issue(cur: Cursor, sid: str, device_id: str, kind: str, ch: Change, field: str) -> None:
        holder = cur.execute("SELECT subject_id FROM reg_device_issues WHERE device_id = ? "
                             "AND returned_at IS NULL", (device_id,)).scalar()
        if holder is not None:
            raise RegisterError(f"device {device_id!r} is issued to subject {holder!r}; "
                                "return it first", field=field, status=409)
        cur.execute("INSERT INTO reg_devices (device_id, kind, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind",
                    (device_id, kind, ch.now_ms))
        cur.execute("INSERT INTO reg_device_issues (device_id, subject_id, kind, issued_at, "
                    "issued_by) VALUES (?, ?, ?, ?, ?)", (device_id, sid, kind, ch.now_ms,
                                                         ch.actor))

    def issue_device(self, subject_id: str, device_id: str, kind: str, *, actor: str,
                     now_ms: int, regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Issue a device to an active subject now; 409 naming ``device_id`` when it is
        issued to anyone. Returns the subject's entry."""
        device_id = check_id(device_id, "device_id")
        kind = check_kind(kind)
        with self._change("issue device", actor=actor, now_ms=now_ms, target=device_id) as ch:
            version = self._visible(ch.cur, subject_id, regions)
            self._active(version)
            self._issue(ch.cur, subject_id, device_id, kind, ch, "device_id")
            after = subject_entry(ch.cur, version, None, None)
            ch.audit("device.issue", device_id, None,
                     {"subject_id": subject_id, "device_id": device_id, "kind": kind})
        return after

    def return_device(self, device_id: str, *, actor: str, now_ms: int,
                      regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Take a device back now; 404 when it is not issued (to a subject the caller
        sees). Returns ``{device_id, kind, subject_id, issued_at, returned_at}``."""
        device_id = check_id(device_id, "device_id")
        with self._change("return device", actor=actor, now_ms=now_ms, target=device_id) as ch:
            row = ch.cur.execute("SELECT id, subject_id, kind, issued_at FROM reg_device_issues "
                                 "WHERE device_id = ? AND returned_at IS NULL",
                                 (device_id,)).one()
            if row is None:
                raise not_found("issued device", device_id, "device_id")
            self._visible(ch.cur, row["subject_id"], regions, field="device_id")
            ch.cur.execute("UPDATE reg_device_issues SET returned_at = ?, returned_by = ? "
                           "WHERE id = ?", (ch.now_ms, ch.actor, row["id"]))
            out = {"device_id": device_id, "kind": row["kind"], "subject_id": row["subject_id"],
                   "issued_at": row["issued_at"], "returned_at": ch.now_ms}
            ch.audit("device.return", device_id, {**out, "returned_at": None}, out)
        return out

    def device_history(self, device_id: str) -> list[dict[str, Any]]:
        """Every issue of the device, oldest first."""
        with self._db.tx("device history", write=False) as cur:
            return cur.execute("SELECT device_id, subject_id, kind, issued_at, issued_by, "
                               "returned_at, returned_by FROM reg_device_issues "
                               "WHERE device_id = ? ORDER BY issued_at, id", (device_id,)).all()
