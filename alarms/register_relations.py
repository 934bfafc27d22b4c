"""The register's relations (issue #14; docs/register.md, "Relations"): the prohibited
contacts between subjects, and the protected persons (victims carrying a device of kind
``victim``) with the subjects they are protected from.

Both are versioned like a subject: a change closes the current row (``valid_to_ms``) and
opens another, so the snapshot at any past moment (replay) sees what held then. Every
change is one register transaction (a change-sequence row: ``emfence run --store``
reloads) with its audit row.

A protected person's data is kept apart from the subjects': the person is not a subject,
their devices are not issued through ``reg_device_issues``, and the console shows their
position to supervisors only (console/resources/protected.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from alarms.register_base import Change, RegisterBase, region_list
from alarms.register_check import RegisterError, check_id, check_text, not_found
from alarms.register_read import contacts_of, protected_persons


def _id_list(raw: Any, field: str, *, empty: bool) -> list[str]:
    """A list of ids, each once (in the given order)."""
    if not isinstance(raw, list) or (not raw and not empty):
        raise RegisterError("must be a " + ("" if empty else "non-empty ") + "list of ids",
                            field=field)
    out = [check_id(v, f"{field}[{k}]") for k, v in enumerate(raw)]
    return list(dict.fromkeys(out))


def check_protected(doc: Any) -> dict[str, Any]:
    """A protected person's document: ``person_id``, ``name`` (defaults to the id),
    ``region``, ``devices`` (device ids, or ``{device_id, kind: "victim"}`` objects as
    in the subjects file), ``protected_from`` (subject ids), ``note``."""
    if not isinstance(doc, dict):
        raise RegisterError("a protected person must be a JSON object")
    pid = check_id(doc.get("person_id"), "person_id")
    devices = doc.get("devices")
    if isinstance(devices, list):
        ids = []
        for k, d in enumerate(devices):
            if isinstance(d, dict):
                if d.get("kind", "victim") != "victim":
                    raise RegisterError(f"kind {d.get('kind')!r}: a protected person's device "
                                        "is of kind 'victim'", field=f"devices[{k}].kind")
                d = d.get("device_id")
            ids.append(d)
        devices = ids
    return {"person_id": pid,
            "name": check_text(doc.get("name"), "name") or pid,
            "region": check_id(doc.get("region"), "region"),
            "devices": _id_list(devices, "devices", empty=False),
            "protected_from": _id_list(doc.get("protected_from"), "protected_from",
                                       empty=False),
            "note": check_text(doc.get("note"), "note")}


class RegisterRelations(RegisterBase):
    """Contacts and protected persons of :class:`alarms.register.Register`."""

    # --- prohibited contacts ------------------------------------------------------------

    def contacts(self, subject_id: str, *, regions: Iterable[str] | None = None,
                 at_ms: int | None = None) -> list[str]:
        """The subjects ``subject_id`` may not meet, now or at ``at_ms``; 404 when the
        subject is unknown or outside ``regions``."""
        with self._db.tx("contacts", write=False) as cur:
            self._visible(cur, subject_id, regions, at_ms)
            return contacts_of(cur, subject_id, at_ms)

    def set_contacts(self, subject_id: str, others: Any, *, actor: str, now_ms: int,
                     reason: str | None = None,
                     regions: Iterable[str] | None = None) -> list[str]:
        """Make ``others`` (subject ids) the subject's prohibited contacts from now: pairs
        no longer listed end, new ones begin. The subject must be in ``regions``; the others
        may be anywhere (co-defendants are often supervised by different counties).
        Returns the new list."""
        wanted = _id_list(others, "contacts", empty=True)
        reason = check_text(reason, "reason")
        with self._change("set contacts", actor=actor, now_ms=now_ms, target=subject_id) as ch:
            self._active(self._visible(ch.cur, subject_id, regions, None, "subject_id"))
            for k, other in enumerate(wanted):
                self._check_contact(ch, subject_id, other, f"contacts[{k}]")
            before = contacts_of(ch.cur, subject_id, None)
            for other in sorted(set(before) - set(wanted)):
                a, b = sorted((subject_id, other))
                ch.cur.execute("UPDATE reg_contacts SET valid_to_ms = ? WHERE subject_a = ? "
                               "AND subject_b = ? AND valid_to_ms IS NULL", (ch.now_ms, a, b))
            for other in sorted(set(wanted) - set(before)):
                self._insert_contact(ch, subject_id, other, reason)
            after = contacts_of(ch.cur, subject_id, None)
            ch.audit("contacts.set", subject_id, before, after)
        return after

    def _check_contact(self, ch: Change, subject_id: str, other: str, field: str) -> None:
        """``other`` may be listed as ``subject_id``'s contact: another known subject."""
        if other == subject_id:
            raise RegisterError("a subject cannot be its own contact", field=field)
        self._visible(ch.cur, other, None, None, field)

    @staticmethod
    def _insert_contact(ch: Change, one: str, other: str, reason: str | None) -> None:
        a, b = sorted((one, other))
        ch.cur.execute("INSERT INTO reg_contacts (subject_a, subject_b, reason, created_by, "
                       "valid_from_ms) VALUES (?, ?, ?, ?, ?)",
                       (a, b, reason, ch.actor, ch.now_ms))

    # --- protected persons --------------------------------------------------------------

    def list_protected(self, *, regions: Iterable[str] | None = None,
                       at_ms: int | None = None) -> list[dict[str, Any]]:
        """The protected persons of ``regions`` (None: all), by person id."""
        allowed = region_list(regions)
        with self._db.tx("list protected", write=False) as cur:
            return [p for p in protected_persons(cur, at_ms)
                    if allowed is None or p["region"] in allowed]

    def get_protected(self, person_id: str, *, regions: Iterable[str] | None = None,
                      at_ms: int | None = None) -> dict[str, Any]:
        """One protected person; 404 when unknown (then) or outside ``regions``."""
        with self._db.tx("get protected", write=False) as cur:
            return self._protected(cur, person_id, regions, at_ms)

    @staticmethod
    def _protected(cur: Any, person_id: Any, regions: Iterable[str] | None,
                   at_ms: int | None = None) -> dict[str, Any]:
        found = protected_persons(cur, at_ms, str(person_id))
        allowed = region_list(regions)
        if not found or (allowed is not None and found[0]["region"] not in allowed):
            raise not_found("protected person", str(person_id), "person_id")
        return found[0]

    def add_protected(self, doc: Any, *, actor: str, now_ms: int,
                      regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Enrol a protected person (:func:`check_protected`); 409 when the id is a
        subject's or a current person's, or a device is already a subject's or another
        person's."""
        p = check_protected(doc)
        with self._change("add protected", actor=actor, now_ms=now_ms,
                          target=p["person_id"]) as ch:
            self._check_protected(ch, p, regions)
            self._insert_protected(ch, p)
            ch.audit("protected.add", p["person_id"], None, p)
            return self._protected(ch.cur, p["person_id"], None)

    def _check_protected(self, ch: Change, p: dict[str, Any], regions: Iterable[str] | None,
                         replacing: str | None = None) -> None:
        allowed = region_list(regions)
        if allowed is not None and p["region"] not in allowed:
            raise RegisterError(f"region {p['region']!r} is not one of yours", field="region",
                                status=403)
        cur = ch.cur
        if cur.execute("SELECT 1 FROM reg_subjects WHERE subject_id = ?",
                       (p["person_id"],)).one() is not None:
            raise RegisterError(f"{p['person_id']!r} is a subject's id", field="person_id",
                                status=409)
        if replacing is None and protected_persons(cur, None, p["person_id"]):
            raise RegisterError(f"protected person {p['person_id']!r} is in the register",
                                field="person_id", status=409)
        for k, sid in enumerate(p["protected_from"]):
            self._visible(cur, sid, None, None, f"protected_from[{k}]")
        others = {d: q["person_id"] for q in protected_persons(cur, None)
                  if q["person_id"] != replacing for d in q["devices"]}
        for k, did in enumerate(p["devices"]):
            owner = cur.execute("SELECT subject_id FROM reg_device_issues WHERE device_id = ? "
                                "AND returned_at IS NULL", (did,)).one()
            if owner is not None or did in others:
                who = owner["subject_id"] if owner is not None else others[did]
                raise RegisterError(f"device {did!r} is {who!r}'s", field=f"devices[{k}]",
                                    status=409)

    @staticmethod
    def _insert_protected(ch: Change, p: dict[str, Any]) -> None:
        ch.cur.execute(
            "INSERT INTO reg_protected_versions (person_id, name, region, devices, "
            "protected_from, note, changed_by, valid_from_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (p["person_id"], p["name"], p["region"], orjson.dumps(p["devices"]).decode(),
             orjson.dumps(p["protected_from"]).decode(), p["note"], ch.actor, ch.now_ms))

    def update_protected(self, person_id: str, doc: Any, *, actor: str, now_ms: int,
                         regions: Iterable[str] | None = None) -> dict[str, Any]:
        """Replace a protected person's data (the whole document) from now."""
        p = check_protected({**doc, "person_id": person_id} if isinstance(doc, dict) else doc)
        with self._change("update protected", actor=actor, now_ms=now_ms,
                          target=person_id) as ch:
            before = self._protected(ch.cur, person_id, regions)
            self._check_protected(ch, p, regions, replacing=person_id)
            ch.cur.execute("UPDATE reg_protected_versions SET valid_to_ms = ? "
                           "WHERE person_id = ? AND valid_to_ms IS NULL", (ch.now_ms, person_id))
            self._insert_protected(ch, p)
            ch.audit("protected.update", person_id, before, p)
            return self._protected(ch.cur, person_id, None)

    def end_protected(self, person_id: str, *, actor: str, now_ms: int, reason: str,
                      regions: Iterable[str] | None = None) -> None:
        """End a person's protection from now (the order lapsed or was lifted)."""
        reason = check_text(reason, "reason", required=True)
        with self._change("end protected", actor=actor, now_ms=now_ms,
                          target=person_id) as ch:
            before = self._protected(ch.cur, person_id, regions)
            ch.cur.execute("UPDATE reg_protected_versions SET valid_to_ms = ?, end_reason = ? "
                           "WHERE person_id = ? AND valid_to_ms IS NULL",
                           (ch.now_ms, reason, person_id))
            ch.audit("protected.end", person_id, before, {"reason": reason})

    # --- the subjects file's relations (import) -----------------------------------------

    def _import_relations(self, ch: Change, subjects: dict[str, Any]) -> dict[str, int]:
        """The file's ``contacts`` and top-level ``protected`` list: a pair or a person
        already there (the same) is kept; a person there with other data is refused."""
        counts = self._import_contacts(ch, subjects)
        counts.update(self._import_protected(ch, subjects))
        return counts

    def _import_contacts(self, ch: Change, subjects: dict[str, Any]) -> dict[str, int]:
        """The entries' ``contacts``, row by row (the bulk path: alarms.register_bulk)."""
        counts = {"contacts_added": 0}
        for i, raw in enumerate(subjects["subjects"]):
            sid = raw.get("subject_id")
            have = set(contacts_of(ch.cur, sid, None))
            for k, other in enumerate(_id_list(raw.get("contacts") or [],
                                               f"subjects[{i}].contacts", empty=True)):
                self._check_contact(ch, sid, other, f"subjects[{i}].contacts[{k}]")
                if other not in have:
                    self._insert_contact(ch, sid, other, "imported")
                    have.add(other)
                    counts["contacts_added"] += 1
        return counts

    def _import_protected(self, ch: Change, subjects: dict[str, Any]) -> dict[str, int]:
        """The file's top-level ``protected`` list (a few persons: row by row on both
        paths)."""
        counts = {"protected_added": 0, "protected_kept": 0}
        persons = subjects.get("protected") or []
        if not isinstance(persons, list):
            raise RegisterError("must be a list", field="protected")
        for i, raw in enumerate(persons):
            try:
                p = check_protected(raw)
                there = protected_persons(ch.cur, None, p["person_id"])
                if there:
                    same = {k: there[0][k] for k in ("region", "devices", "protected_from")}
                    if same != {k: p[k] for k in same}:
                        raise RegisterError(f"protected person {p['person_id']!r} is in the "
                                            "register with other data", status=409)
                    counts["protected_kept"] += 1
                    continue
                self._check_protected(ch, p, None)
            except RegisterError as exc:
                field = f"protected[{i}]" + (f".{exc.field}" if exc.field else "")
                raise RegisterError(exc.reason, field=field, status=exc.status) from None
            self._insert_protected(ch, p)
            counts["protected_added"] += 1
        return counts
