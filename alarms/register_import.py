"""Bulk import of today's files into the register: a zones file and a subjects file
(docs/zones.md, docs/replay.md), zones first, in one transaction.

Importing the same files again changes nothing: a zone or subject already in the
register with the same content is left as it is; one with other content is refused
(409) naming it, and nothing of the import is applied.
"""

from __future__ import annotations

from typing import Any

import orjson

from alarms.register_base import Change, RegisterBase
from alarms.register_bulk import (
    FLUSH_ROWS,
    Known,
    Lookup,
    Rows,
    contact_rows,
    enrol_rows,
    extras_rows,
)
from alarms.register_check import (
    RegisterError,
    check_curfew,
    check_subject,
    check_suspension,
    check_text,
    check_time,
    check_zone_list,
)
from alarms.register_read import subject_entry, subject_version
from alarms.register_zones import RegisterZones, check_feature


def _within(exc: RegisterError, prefix: str) -> RegisterError:
    """``exc`` with its field named inside ``prefix`` (``subjects[3].devices[0]...``)."""
    field = f"{prefix}.{exc.field}" if exc.field else prefix
    return RegisterError(exc.reason, field=field, status=exc.status)


def _file_form(entry: dict[str, Any]) -> dict[str, Any]:
    """What a subjects-file entry says, in one comparable shape (times in ms)."""
    return {
        "region": entry["region"], "level": entry["level"],
        "devices": sorted((d["device_id"], d.get("kind", "bracelet"))
                          for d in entry.get("devices") or []),
        "inclusion": [a if isinstance(a, str) else a["zone_id"]
                      for a in entry.get("inclusion") or []],
        "exclusion": [a if isinstance(a, str) else a["zone_id"]
                      for a in entry.get("exclusion") or []],
        "leaves": sorted((check_time(lv.get("start"), "start"), check_time(lv.get("end"), "end"),
                          tuple(lv.get("zones") or ()),
                          check_time(lv.get("returned"), "returned", required=False))
                         for lv in entry.get("leaves") or []),
        "curfews": sorted((c.get("start"), c.get("end"), c.get("zone"),
                           tuple(c.get("days") or ("mon", "tue", "wed", "thu", "fri", "sat",
                                                   "sun")),
                           check_time(c.get("from"), "from", required=False),
                           check_time(c.get("to"), "to", required=False))
                          for c in entry.get("curfews") or []),
        "suspensions": sorted((s.get("type"), check_time(s.get("start"), "start"),
                               check_time(s.get("end"), "end"))
                              for s in entry.get("suspensions") or []),
    }


def _checked_zone(i: int, feature: Any, default_crs: str) -> dict[str, Any]:
    """The file's ``features[i]`` checked (``coord_sys`` from the collection by default)."""
    if isinstance(feature, dict) and isinstance(feature.get("properties"), dict):
        props = feature["properties"]
        if "coord_sys" not in props:
            feature = {**feature, "properties": {**props, "coord_sys": default_crs}}
    try:
        return check_feature(feature, strict=False, require_name=False)
    except RegisterError as exc:
        raise _within(exc, f"features[{i}]") from None


def _same_zone(i: int, z: dict[str, Any], stored: str | None) -> bool:
    """True when the register holds ``z`` already (``stored``: its feature there, or
    None); 409 when it holds another geometry under that id."""
    if stored is None:
        return False
    if orjson.loads(stored)["geometry"] == z["feature"]["geometry"]:
        return True
    raise RegisterError(f"zone {z['zone_id']!r} is in the register with another "
                        "geometry", field=f"features[{i}]", status=409)


def _zone_guess(feature: Any) -> str:
    """The zone id a feature probably has (unchecked; a look-up starts from it)."""
    if not isinstance(feature, dict):
        return ""
    props = feature.get("properties")
    raw = props.get("zone_id", feature.get("id")) if isinstance(props, dict) else None
    return str(raw).strip()


class RegisterImport(RegisterZones, RegisterBase):
    """``import_files`` of :class:`alarms.register.Register`."""

    def import_files(self, zones: dict[str, Any], subjects: dict[str, Any], *, actor: str,
                     now_ms: int, max_days: int = 366, bulk: bool = True) -> dict[str, int]:
        """Import a zones FeatureCollection and a subjects file (parsed) in one
        transaction. Leaves in the file are approved leaves (approved by ``actor`` now).
        Returns counts: ``zones_added``, ``zones_kept``, ``subjects_added``,
        ``subjects_kept``, ``contacts_added``, ``protected_added``, ``protected_kept``.
        :class:`RegisterError` naming the zone or subject otherwise. ``bulk`` (default):
        the same checks and rows, written in multi-row statements (alarms.register_bulk);
        False: row by row, the reference the bulk path is tested against."""
        if not isinstance(zones, dict) or not isinstance(zones.get("features"), list):
            raise RegisterError("expected a GeoJSON FeatureCollection", field="zones")
        if not isinstance(subjects, dict) or not isinstance(subjects.get("subjects"), list):
            raise RegisterError('expected an object {"subjects": [...]}', field="subjects")
        counts = dict.fromkeys(("zones_added", "zones_kept", "subjects_added",
                                "subjects_kept"), 0)
        with self._change("import", actor=actor, now_ms=now_ms, target=None) as ch:
            if bulk:
                counts.update(self._import_bulk(ch, zones, subjects, max_days))
                ch.audit("import", None, None, counts)
                return counts
            default_crs = zones.get("coord_sys", "wgs84")
            for i, feature in enumerate(zones["features"]):
                counts["zones_added" if self._import_zone(ch, i, feature, default_crs)
                       else "zones_kept"] += 1
            for i, raw in enumerate(subjects["subjects"]):
                counts["subjects_added" if self._import_subject(ch, i, raw, max_days)
                       else "subjects_kept"] += 1
            # contacts and protected persons (alarms.register_relations)
            counts.update(self._import_relations(ch, subjects))  # type: ignore[attr-defined]
            ch.audit("import", None, None, counts)
        return counts

    def _import_zone(self, ch: Change, i: int, feature: Any, default_crs: str) -> bool:
        """Add one feature; False when the same zone is there already."""
        z = _checked_zone(i, feature, default_crs)
        row = ch.cur.execute("SELECT feature FROM reg_zones WHERE zone_id = ?",
                             (z["zone_id"],)).one()
        if _same_zone(i, z, None if row is None else row["feature"]):
            return False
        self._insert_zone(ch.cur, z, "import", ch.actor, ch.now_ms)
        return True

    def _import_bulk(self, ch: Change, zones: dict[str, Any], subjects: dict[str, Any],
                     max_days: int) -> dict[str, int]:
        """``import_files``'s work on the bulk path (alarms.register_bulk)."""
        rows, feats = Rows(), zones["features"]
        there = Lookup(ch.cur, "SELECT zone_id AS k, feature AS v FROM reg_zones "
                       "WHERE zone_id IN {}", [_zone_guess(f) for f in feats])
        added = 0
        for i, feature in enumerate(feats):
            z = _checked_zone(i, feature, zones.get("coord_sys", "wgs84"))
            if not _same_zone(i, z, there.get(z["zone_id"])):
                text = orjson.dumps(z["feature"]).decode()
                rows.add("reg_zones", (z["zone_id"], z["name"], z["kind"], z["coord_sys"],
                                       z["radius_m"], "import", text, ch.actor, ch.now_ms))
                there.put(z["zone_id"], text)
                added += 1
        counts = {"zones_added": added, "zones_kept": len(feats) - added}
        rows.flush(ch.cur)
        entries, added = subjects["subjects"], 0
        known = Known(ch.cur, ch.seq, entries)
        for i, raw in enumerate(entries):
            new = self._bulk_subject(ch, i, raw, max_days, known, rows)
            if new is None:  # in the register already, or twice in the file
                rows.flush(ch.cur)
                new = self._import_subject(ch, i, raw, max_days)
                if new:
                    known.learn_subject(ch.cur, raw["subject_id"])
            added += new
            rows.flush(ch.cur, over=FLUSH_ROWS)
        rows.flush(ch.cur)
        counts.update(subjects_added=added, subjects_kept=len(entries) - added,
                      contacts_added=contact_rows(ch, entries, rows))
        rows.flush(ch.cur)
        counts.update(self._import_protected(ch, subjects))  # type: ignore[attr-defined]
        return counts

    @staticmethod
    def _bulk_subject(ch: Change, i: int, raw: Any, max_days: int, known: Known,
                      rows: Rows) -> bool | None:
        """``_import_subject`` as buffered rows; None when the entry's subject is in the
        register (or was added earlier in this import): that takes the row-by-row path."""
        try:
            d = check_subject(raw, require_name=False)
            _file_form(raw)
        except RegisterError as exc:
            raise _within(exc, f"subjects[{i}]") from None
        if known.subjects.get(d["subject_id"]) is not None:
            return None
        try:
            enrol_rows(ch, d, known, rows)
            extras_rows(ch, d["subject_id"], raw, max_days, known, rows)
        except RegisterError as exc:
            raise _within(exc, f"subjects[{i}]") from None
        return True

    def _import_subject(self, ch: Change, i: int, raw: Any, max_days: int) -> bool:
        """Enrol one subjects-file entry; False when it is there already, the same."""
        try:
            d = check_subject(raw, require_name=False)
            wanted = _file_form(raw)
        except RegisterError as exc:
            raise _within(exc, f"subjects[{i}]") from None
        version = subject_version(ch.cur, d["subject_id"], None)
        if version is not None:
            if _file_form(subject_entry(ch.cur, version, None, None)) == wanted:
                return False
            raise RegisterError(f"subject {d['subject_id']!r} is in the register with other "
                                "data (change it in the console, or end it first)",
                                field=f"subjects[{i}]", status=409)
        try:
            self._enrol(ch, d)  # type: ignore[attr-defined]
            self._import_extras(ch, d["subject_id"], raw, max_days)
        except RegisterError as exc:
            raise _within(exc, f"subjects[{i}]") from None
        return True

    def _import_extras(self, ch: Change, sid: str, raw: dict[str, Any], max_days: int) -> None:
        """The entry's leaves (approved), curfews and suspensions."""
        for k, lv in enumerate(raw.get("leaves") or []):
            if not isinstance(lv, dict):
                raise RegisterError("must be an object", field=f"leaves[{k}]")
            zone_ids = check_zone_list(lv.get("zones"), f"leaves[{k}].zones")
            self._check_zones_exist(ch.cur, zone_ids, f"leaves[{k}].zones")
            start = check_time(lv.get("start"), f"leaves[{k}].start")
            end = check_time(lv.get("end"), f"leaves[{k}].end")
            if end < start:  # type: ignore[operator]
                raise RegisterError("must not be before start", field=f"leaves[{k}].end")
            returned = check_time(lv.get("returned"), f"leaves[{k}].returned", required=False)
            leave_id = lv.get("leave_id")
            if leave_id is None or ch.cur.execute("SELECT 1 FROM reg_leaves WHERE leave_id = ?",
                                                  (str(leave_id),)).one():
                leave_id = self._new_id(ch.cur, "reg_leaves", "leave_id", "L", ch.seq)
            ch.cur.execute(
                "INSERT INTO reg_leaves (leave_id, subject_id, zones, start_ms, end_ms, reason, "
                "state, requested_by, requested_at, decided_by, decided_at, returned_by, "
                "returned_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (str(leave_id), sid, orjson.dumps(zone_ids).decode(), start, end,
                 check_text(lv.get("reason"), f"leaves[{k}].reason"),
                 "approved" if returned is None else "returned", ch.actor, ch.now_ms,
                 ch.actor, ch.now_ms, None if returned is None else ch.actor, returned))
        for k, c in enumerate(raw.get("curfews") or []):
            checked = check_curfew(c, f"curfews[{k}].")
            self._check_zones_exist(ch.cur, [checked["zone_id"]], f"curfews[{k}].zone",
                                    indexed=False)
            given = c.get("curfew_id")
            self._insert_curfew(ch, sid, checked,  # type: ignore[attr-defined]
                                None if given is None else str(given))
        for k, s in enumerate(raw.get("suspensions") or []):
            if isinstance(s, dict) and not s.get("reason"):
                s = {**s, "reason": "imported"}
            given = s.get("suspension_id") if isinstance(s, dict) else None
            self._insert_suspension(ch, sid,  # type: ignore[attr-defined]
                                    check_suspension(s, max_days, f"suspensions[{k}]."),
                                    None if given is None else str(given))
