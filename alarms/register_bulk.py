"""The register import's bulk path (``import_files(..., bulk=True)``, the default).

The row-by-row path (alarms.register_import) asks the database a few questions and
writes a few rows for every zone and subject: ~70 statements a subject, 283 s for
20 000 subjects on PostgreSQL. This path asks the same questions in chunks of ids the
files name (:class:`Lookup`), keeps the answers up to date as it goes, and writes the
rows as multi-row INSERTs (:class:`Rows`) in the same one transaction: the same checks
in the same order, so the same first error (file, position, reason) and the same rows.

A subject already in the register (importing again) or named twice in the file takes
the row-by-row path: the buffered rows are written first, then that entry alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from alarms.db import ROWS_PER_INSERT, Cursor, chunks, placeholders, values
from alarms.register_base import Change
from alarms.register_check import (
    RegisterError,
    check_curfew,
    check_suspension,
    check_text,
    check_time,
    check_zone_list,
    not_found,
)
from alarms.register_relations import _id_list

# Columns of the rows an import writes, tables in the order their references need.
COLUMNS: dict[str, tuple[str, ...]] = {
    "reg_zones": ("zone_id", "name", "kind", "coord_sys", "radius_m", "source", "feature",
                  "created_by", "valid_from_ms"),
    "reg_subjects": ("subject_id", "created_at", "created_by"),
    "reg_subject_versions": ("subject_id", "name", "region", "level", "officer", "note",
                             "state", "ended_at", "end_reason", "changed_by", "valid_from_ms"),
    "reg_assignments": ("subject_id", "zone_id", "role", "position", "reason", "from_ms",
                        "to_ms", "valid_from_ms"),
    "reg_devices": ("device_id", "kind", "created_at"),
    "reg_device_issues": ("device_id", "subject_id", "kind", "issued_at", "issued_by"),
    "reg_leaves": ("leave_id", "subject_id", "zones", "start_ms", "end_ms", "reason", "state",
                   "requested_by", "requested_at", "decided_by", "decided_at", "returned_by",
                   "returned_at"),
    "reg_curfews": ("curfew_id", "subject_id", "start_local", "end_local", "zone_id", "days",
                    "from_ms", "to_ms", "reason", "created_by", "valid_from_ms"),
    "reg_suspensions": ("suspension_id", "subject_id", "type", "start_ms", "end_ms", "reason",
                        "created_by", "valid_from_ms"),
    "reg_contacts": ("subject_a", "subject_b", "reason", "created_by", "valid_from_ms"),
}
# rows held before they are written (memory: a few hundred bytes a row)
FLUSH_ROWS = 100_000
# what the row-by-row path does to a device seen before (returned, issued again)
_UPSERT = {"reg_devices": " ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind"}


class Rows:
    """Rows waiting to be written, per table; :meth:`flush` writes them in file order."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in COLUMNS}
        self.waiting = 0

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        self.rows[table].append(row)
        self.waiting += 1

    def flush(self, cur: Cursor, *, over: int = 0) -> None:
        """Write the waiting rows (``over``: only when more than that many wait; a
        national file's rows are written as the import goes, not held to the end)."""
        if self.waiting <= over:
            return
        self.waiting = 0
        for table, cols in COLUMNS.items():
            rows = self.rows[table]
            head = f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
            for part in chunks(rows, ROWS_PER_INSERT):
                cur.execute(head + values(len(part), len(cols)) + _UPSERT.get(table, ""),
                            [v for row in part for v in row])
            rows.clear()


class Lookup:
    """key -> value answers of one query (``{}`` in its SQL: the ``IN`` list), asked in
    chunks for the keys a file names and one by one for any other; :meth:`put` keeps
    them true as the import writes. ``prefix``: keys starting with it are all fetched."""

    def __init__(self, cur: Cursor, sql: str, keys: Iterable[str]):
        self._cur, self._sql = cur, sql
        self._answers: dict[str, Any] = {}
        self._asked: set[str] = set()
        self._prefix: str | None = None
        self.fetch(keys)

    def fetch(self, keys: Iterable[str]) -> None:
        new = [k for k in dict.fromkeys(keys) if k not in self._asked]
        for part in chunks(new):
            for r in self._cur.execute(self._sql.format(placeholders(len(part))), part).all():
                self._answers[r["k"]] = r["v"]
            self._asked.update(part)

    def fetch_prefix(self, table: str, column: str, prefix: str) -> None:
        """Every ``column`` value of ``table`` that starts with ``prefix``."""
        for r in self._cur.execute(f"SELECT {column} AS k FROM {table} WHERE "
                                   f"substr({column}, 1, ?) = ?", (len(prefix), prefix)).all():
            self._answers[r["k"]] = 1
        self._prefix = prefix

    def get(self, key: str) -> Any:
        if key not in self._asked and not (self._prefix and key.startswith(self._prefix)):
            self.fetch([key])
        return self._answers.get(key)

    def put(self, key: str, value: Any = 1) -> None:
        self._asked.add(key)
        self._answers[key] = value


def _ids(items: Any, key: str) -> list[str]:
    """``key`` of each object in ``items`` (when it is a list), as text, unchecked."""
    if not isinstance(items, list):
        return []
    return [str(x[key]).strip() for x in items if isinstance(x, dict) and x.get(key) is not None]


def _zone_refs(raw: dict[str, Any]) -> list[str]:
    """The zone ids an entry names (unchecked: a guess the look-ups start from)."""
    out = []
    for role in ("inclusion", "exclusion"):
        items = raw.get(role)
        if isinstance(items, list):
            out += [str(a).strip() for a in items if isinstance(a, (str, int))]
            out += _ids(items, "zone_id")
    for lv in raw.get("leaves") or []:
        if isinstance(lv, dict) and isinstance(lv.get("zones"), list):
            out += [str(z).strip() for z in lv["zones"]]
    out += _ids(raw.get("curfews"), "zone")
    return out


# ids a subjects-file entry may give its records: (table, column, prefix of a new id)
_TAKEN = {"leaves": ("reg_leaves", "leave_id", "L"),
          "curfews": ("reg_curfews", "curfew_id", "C"),
          "suspensions": ("reg_suspensions", "suspension_id", "P")}


class Known:
    """What the register holds that an import's checks ask about, for the ids the files
    name: fetched once, in chunks, then kept up to date by the import itself."""

    def __init__(self, cur: Cursor, seq: int, entries: list[Any]):
        raws = [r for r in entries if isinstance(r, dict)]
        self.seq = seq
        self.subjects = Lookup(cur, "SELECT subject_id AS k, 1 AS v FROM reg_subjects "
                               "WHERE subject_id IN {}",
                               [str(r.get("subject_id")) for r in raws])
        self.zones_now = Lookup(cur, "SELECT zone_id AS k, 1 AS v FROM reg_zones "
                                "WHERE valid_to_ms IS NULL AND zone_id IN {}",
                                [z for r in raws for z in _zone_refs(r)])
        self.holders = Lookup(cur, "SELECT device_id AS k, subject_id AS v FROM "
                              "reg_device_issues WHERE returned_at IS NULL AND device_id IN {}",
                              [d for r in raws for d in _ids(r.get("devices"), "device_id")])
        self.taken: dict[str, Lookup] = {}
        for key, (table, column, prefix) in _TAKEN.items():
            given = [i for r in raws for i in _ids(r.get(key), column)]
            self.taken[key] = Lookup(cur, f"SELECT {column} AS k, 1 AS v FROM {table} "
                                     f"WHERE {column} IN {{}}", given)
            self.taken[key].fetch_prefix(table, column, f"{prefix}-{seq}")
        self._next: dict[str, int] = {}

    def new_id(self, key: str) -> str:
        """What ``RegisterBase._new_id`` would choose: ``prefix-seq``, else the first free
        ``prefix-seq-k``."""
        lookup, base = self.taken[key], f"{_TAKEN[key][2]}-{self.seq}"
        k = self._next.get(base, 0)
        while lookup.get(base if k == 0 else f"{base}-{k}") is not None:
            k += 1
        self._next[base] = k
        return base if k == 0 else f"{base}-{k}"

    def check_zones(self, zone_ids: list[str], field: str, *, indexed: bool = True) -> None:
        """As ``RegisterBase._check_zones_exist``."""
        for i, z in enumerate(zone_ids):
            if self.zones_now.get(z) is None:
                raise RegisterError(f"unknown zone {z!r}",
                                    field=f"{field}[{i}]" if indexed else field)

    def learn_subject(self, cur: Cursor, sid: str) -> None:
        """What the row-by-row path wrote for ``sid``."""
        self.subjects.put(sid)
        for r in cur.execute("SELECT device_id FROM reg_device_issues WHERE subject_id = ? "
                             "AND returned_at IS NULL", (sid,)).all():
            self.holders.put(r["device_id"], sid)
        for key, (table, column, _) in _TAKEN.items():
            for r in cur.execute(f"SELECT {column} AS k FROM {table} WHERE subject_id = ?",
                                 (sid,)).all():
                self.taken[key].put(r["k"])


def enrol_rows(ch: Change, d: dict[str, Any], known: Known, rows: Rows) -> None:
    """``Register._enrol`` of a checked subject new to the register, as buffered rows."""
    sid, now, actor = d["subject_id"], ch.now_ms, ch.actor
    for role in ("inclusion", "exclusion"):
        known.check_zones([a["zone_id"] for a in d[role]], role)
    rows.add("reg_subjects", (sid, now, actor))
    rows.add("reg_subject_versions", (sid, d["name"], d["region"], d["level"], d["officer"],
                                      d["note"], "active", None, None, actor, now))
    for role in ("inclusion", "exclusion"):
        for pos, a in enumerate(d[role]):
            rows.add("reg_assignments", (sid, a["zone_id"], role, pos, a["reason"],
                                         a["from_ms"], a["to_ms"], now))
    for k, (device_id, kind) in enumerate(d["devices"]):
        holder = known.holders.get(device_id)
        if holder is not None:
            raise RegisterError(f"device {device_id!r} is issued to subject {holder!r}; "
                                "return it first", field=f"devices[{k}].device_id", status=409)
        rows.add("reg_devices", (device_id, kind, now))
        rows.add("reg_device_issues", (device_id, sid, kind, now, actor))
        known.holders.put(device_id, sid)
    known.subjects.put(sid)


def leave_rows(ch: Change, sid: str, raw: dict[str, Any], known: Known, rows: Rows) -> None:
    """The entry's leaves (approved), as ``RegisterImport._import_extras`` writes them."""
    for k, lv in enumerate(raw.get("leaves") or []):
        if not isinstance(lv, dict):
            raise RegisterError("must be an object", field=f"leaves[{k}]")
        zone_ids = check_zone_list(lv.get("zones"), f"leaves[{k}].zones")
        known.check_zones(zone_ids, f"leaves[{k}].zones")
        start = check_time(lv.get("start"), f"leaves[{k}].start")
        end = check_time(lv.get("end"), f"leaves[{k}].end")
        if end < start:  # type: ignore[operator]
            raise RegisterError("must not be before start", field=f"leaves[{k}].end")
        returned = check_time(lv.get("returned"), f"leaves[{k}].returned", required=False)
        leave_id = lv.get("leave_id")
        if leave_id is None or known.taken["leaves"].get(str(leave_id)) is not None:
            leave_id = known.new_id("leaves")
        rows.add("reg_leaves", (
            str(leave_id), sid, orjson.dumps(zone_ids).decode(), start, end,
            check_text(lv.get("reason"), f"leaves[{k}].reason"),
            "approved" if returned is None else "returned", ch.actor, ch.now_ms,
            ch.actor, ch.now_ms, None if returned is None else ch.actor, returned))
        known.taken["leaves"].put(str(leave_id))


def _own_id(known: Known, key: str, given: Any, what: str) -> str:
    """The id of a new curfew or suspension, as ``_insert_curfew`` picks it."""
    if given is None:
        ident = known.new_id(key)
    elif known.taken[key].get(str(given)) is not None:
        raise RegisterError(f"{what} {str(given)!r} already exists", status=409)
    else:
        ident = str(given)
    known.taken[key].put(ident)
    return ident


def extras_rows(ch: Change, sid: str, raw: dict[str, Any], max_days: int, known: Known,
                rows: Rows) -> None:
    """Leaves, curfews and suspensions of one new entry, as buffered rows."""
    leave_rows(ch, sid, raw, known, rows)
    for k, c in enumerate(raw.get("curfews") or []):
        checked = check_curfew(c, f"curfews[{k}].")
        known.check_zones([checked["zone_id"]], f"curfews[{k}].zone", indexed=False)
        ident = _own_id(known, "curfews", c.get("curfew_id"), "curfew")
        rows.add("reg_curfews", (ident, sid, checked["start_local"], checked["end_local"],
                                 checked["zone_id"], orjson.dumps(checked["days"]).decode(),
                                 checked["from_ms"], checked["to_ms"], checked["reason"],
                                 ch.actor, ch.now_ms))
    for k, s in enumerate(raw.get("suspensions") or []):
        if isinstance(s, dict) and not s.get("reason"):
            s = {**s, "reason": "imported"}
        given = s.get("suspension_id") if isinstance(s, dict) else None
        checked = check_suspension(s, max_days, f"suspensions[{k}].")
        ident = _own_id(known, "suspensions", given, "suspension")
        rows.add("reg_suspensions", (ident, sid, checked["type"], checked["start_ms"],
                                     checked["end_ms"], checked["reason"], ch.actor,
                                     ch.now_ms))


def contact_rows(ch: Change, entries: list[dict[str, Any]], rows: Rows) -> int:
    """The entries' ``contacts`` as ``RegisterRelations._import_contacts`` adds them
    (all entries are in the register by now); returns how many pairs were added."""
    listing = [r for r in entries if r.get("contacts")]
    sids = [r.get("subject_id") for r in listing]
    pairs: set[tuple[str, str]] = set()
    for side in ("subject_a", "subject_b"):
        for part in chunks(sids):
            pairs.update((r["subject_a"], r["subject_b"]) for r in ch.cur.execute(
                "SELECT subject_a, subject_b FROM reg_contacts WHERE valid_to_ms IS NULL "
                f"AND {side} IN {placeholders(len(part))}", part).all())
    current = Lookup(ch.cur, "SELECT subject_id AS k, 1 AS v FROM reg_subject_versions "
                     "WHERE valid_to_ms IS NULL AND subject_id IN {}",
                     [str(o) for r in listing if isinstance(r["contacts"], list)
                      for o in r["contacts"]])
    added = 0
    for i, raw in enumerate(entries):
        sid = raw.get("subject_id")
        for k, other in enumerate(_id_list(raw.get("contacts") or [],
                                           f"subjects[{i}].contacts", empty=True)):
            field = f"subjects[{i}].contacts[{k}]"
            if other == sid:
                raise RegisterError("a subject cannot be its own contact", field=field)
            if current.get(other) is None:
                raise not_found("subject", other, field)
            pair = (min(sid, other), max(sid, other))
            if pair not in pairs:
                rows.add("reg_contacts", (*pair, "imported", ch.actor, ch.now_ms))
                pairs.add(pair)
                added += 1
    return added

