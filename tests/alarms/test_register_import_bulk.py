"""The register import's bulk path (alarms.register_bulk) held against the row-by-row
path: random small files (hypothesis), imported both ways into two empty stores of the
same backend, give the same counts or the same error (reason, field, status), and the
same content in every register table and the audit log (ids aside)."""

from __future__ import annotations

import contextlib
import copy
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarms import open_store, register_import
from alarms.register_check import RegisterError
from tests.alarms.register_helpers import DAY, REGISTER_TABLES, T0, circle, square

ZONE_IDS = ("z1", "z2", "z3")
SUBJECT_IDS = ("S1", "S2", "S3", "S4")
DEVICE_IDS = ("B1", "B2", "P1", "P2")
RECORD_IDS = ("L-1", "L-2", "L-2-1", "C-2", "P-2", "x-1")


@contextlib.contextmanager
def _two_stores(store_url: str, request, tmp_path):
    """Two empty stores of ``store_url``'s backend (a second SQLite file, or a second
    fresh PostgreSQL database dropped afterwards)."""
    if store_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path / 'other.db'}"
        with open_store(store_url) as a, open_store(other) as b:
            yield a, b
        return
    import psycopg
    from psycopg import sql

    server = request.getfixturevalue("pg_server_url")
    name = f"emfence_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        with open_store(store_url) as a, open_store(server.rpartition("/")[0] + "/" + name) as b:
            yield a, b
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)")
                         .format(sql.Identifier(name)))


def _wipe(store) -> None:
    """The register and the audit log emptied, their id counters back to the start."""
    with store._db.tx("test wipe") as cur:
        if store._db.sql("?") == "?":  # SQLite
            for t in reversed(REGISTER_TABLES):
                cur.execute(f"DELETE FROM {t}")
            cur.execute("DELETE FROM sqlite_sequence")
        else:
            cur.execute(f"TRUNCATE {', '.join(REGISTER_TABLES)} RESTART IDENTITY CASCADE")


def _content(store) -> dict[str, list[tuple]]:
    """Every row of every register table and the audit log, ``id`` left out, in id order
    (a subject's devices are listed in issue order, that is by id)."""
    out = {}
    with store._db.tx("test content", write=False) as cur:
        for t in REGISTER_TABLES:
            rows = cur.execute(f"SELECT * FROM {t}").all()
            if rows and "id" in rows[0]:
                rows.sort(key=lambda r: r["id"])
                out[t] = [tuple(sorted((k, v) for k, v in r.items() if k != "id"))
                          for r in rows]
            else:
                out[t] = sorted(tuple(sorted(r.items())) for r in rows)
    return out


# mostly good input, each kind of mistake now and then
_zone_ref = st.sampled_from(ZONE_IDS * 4 + ("nowhere",))
_odd_feature = st.sampled_from((
    square("z1"),  # the same again: kept
    square("z1", d=0.02),  # another geometry under an id in use: 409
    circle("z4", radius_m=150.0),
    {"type": "Feature", "properties": {"zone_id": "z5"},
     "geometry": {"type": "Polygon", "coordinates": []}}))
_maybe_id = st.one_of(st.none(), st.sampled_from(RECORD_IDS))
_leave = st.builds(
    lambda zones, a, b, lid, ret: {"zones": zones, "start": T0 + a * DAY,
                                   "end": T0 + (a + b) * DAY,
                                   **({"leave_id": lid} if lid else {}),
                                   **({"returned": T0 + (a + b) * DAY} if ret else {})},
    st.lists(_zone_ref, min_size=1, max_size=2), st.integers(0, 3),
    st.sampled_from((1, 2, 5) * 3 + (-1,)), _maybe_id, st.booleans())
_curfew = st.builds(
    lambda zone, end, cid: {"start": "22:00", "end": end, "zone": zone,
                            **({"curfew_id": cid} if cid else {})},
    _zone_ref, st.sampled_from(("06:00",) * 5 + ("22:00",)), _maybe_id)
_suspension = st.builds(
    lambda kind, n, sid: {"type": kind, "start": T0, "end": T0 + n * DAY,
                          **({"suspension_id": sid} if sid else {})},
    st.sampled_from(("offline", "low_battery") * 3 + ("nonsense",)), st.integers(1, 3),
    _maybe_id)
_subject = st.builds(
    lambda sid, level, devices, inc, exc, leaves, curfews, susp, contacts: {
        "subject_id": sid, "region": "411303", "level": level,
        "devices": [{"device_id": d, "kind": "phone" if d.startswith("P") else "bracelet"}
                    for d in devices],
        "inclusion": inc, "exclusion": exc, "leaves": leaves, "curfews": curfews,
        "suspensions": susp, "contacts": contacts},
    st.sampled_from(SUBJECT_IDS), st.sampled_from(("strict", "ordinary", "lenient") * 3
                                                  + ("loose",)),
    st.lists(st.sampled_from(DEVICE_IDS), max_size=2, unique=True),
    st.lists(_zone_ref, max_size=2), st.lists(_zone_ref, max_size=1),
    st.lists(_leave, max_size=2), st.lists(_curfew, max_size=1),
    st.lists(_suspension, max_size=1), st.lists(st.sampled_from(SUBJECT_IDS), max_size=2))


def _tidy(subjects: list[dict]) -> None:
    """The entries without their mistakes (a device issued once, known zones, windows
    the right way round, no subject its own contact), in place."""
    used: set[str] = set()
    first: dict[str, dict] = {}
    for k, x in enumerate(subjects):
        if x["subject_id"] in first:  # named twice: the same entry again (kept)
            subjects[k] = copy.deepcopy(first[x["subject_id"]])
            continue
        first[x["subject_id"]] = x
        x["level"] = "strict" if x["level"] == "loose" else x["level"]
        x["devices"] = [d for d in x["devices"] if d["device_id"] not in used]
        used.update(d["device_id"] for d in x["devices"])
        x["inclusion"] = [z for z in x["inclusion"] if z != "nowhere"]
        x["exclusion"] = [z for z in x["exclusion"] if z != "nowhere"]
        for lv in x["leaves"]:
            lv["zones"] = [z for z in lv["zones"] if z != "nowhere"] or ["z1"]
            lv["end"] = max(lv["end"], lv["start"])
            lv.pop("returned", None)
        for c in x["curfews"]:
            c.update(end="06:00", zone="z1" if c["zone"] == "nowhere" else c["zone"])
        for p in x["suspensions"]:
            p["type"] = "offline"
        x["contacts"] = [c for c in x["contacts"] if c != x["subject_id"]]
    for x in first.values():
        for lv in x["leaves"]:
            lv.pop("leave_id", None)  # a second copy would get a new id, not the same data


@st.composite
def _files(draw) -> tuple[dict, dict]:
    """(zones file, subjects file): z1-z3 and perhaps an odd feature; up to five subjects
    whose contacts are mostly subjects of the file; perhaps a protected person."""
    clean = draw(st.booleans())
    odd = draw(st.lists(_odd_feature, max_size=1))
    zones = {"type": "FeatureCollection",
             "features": [square("z1"), square("z2", d=0.02), circle("z3"),
                          *(odd[:1] if not clean or odd[:1] == [square("z1")] else [])]}
    subjects = draw(st.lists(_subject, max_size=5))
    if clean:
        _tidy(subjects)
    sids = {x["subject_id"] for x in subjects}
    unknown_ok = not clean and draw(st.integers(0, 9)) == 0
    for x in subjects:
        x["contacts"] = [c for c in x["contacts"] if c in sids or unknown_ok]
    protected = [{"person_id": "V-1", "region": "411303",
                  "devices": [{"device_id": draw(st.sampled_from(("V-1-phone", "B1"))),
                               "kind": "victim"}],
                  "protected_from": [min(sids)]}] if sids and draw(st.booleans()) else []
    return zones, {"subjects": subjects, "protected": protected}


@st.composite
def _runs(draw) -> tuple[tuple[dict, dict] | None, tuple[dict, dict]]:
    """(what the register held before, or None; the files imported now): before is
    other files, the first entries of the same files, or the same files."""
    files = draw(_files())
    kind = draw(st.sampled_from(("none", "other", "part", "same")))
    if kind == "none":
        return None, files
    if kind == "other":
        return draw(_files()), files
    if kind == "part":
        k = draw(st.integers(0, len(files[1]["subjects"])))
        return (files[0], {"subjects": files[1]["subjects"][:k]}), files
    return files, files


def _import(store, files: tuple[dict, dict], now_ms: int, bulk: bool) -> Any:
    """The counts of one import, or its error as (reason, field, status)."""
    try:
        return store.register.import_files(*files, actor="admin", now_ms=now_ms, bulk=bulk)
    except RegisterError as exc:
        return ("error", exc.reason, exc.field, exc.status)


def test_bulk_import_writes_what_the_row_by_row_import_writes(store_url, request, tmp_path):
    with _two_stores(store_url, request, tmp_path) as (rows_store, bulk_store):

        # PostgreSQL's wipe and imports cost more: fewer examples keep the test short
        @settings(max_examples=80 if store_url.startswith("sqlite") else 10, deadline=None,
                  database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])
        @given(run=_runs(), flush_rows=st.sampled_from((0, 4, register_import.FLUSH_ROWS)))
        def check(run, flush_rows):
            before, files = run
            results = []
            for store, bulk in ((rows_store, False), (bulk_store, True)):
                _wipe(store)
                first = None if before is None else _import(store, before, T0, bulk=False)
                # the bulk path writes its rows as it goes: after every entry, every few
                # rows, or at the end
                saved, register_import.FLUSH_ROWS = register_import.FLUSH_ROWS, flush_rows
                try:
                    now = _import(store, files, T0 + 1, bulk=bulk)
                finally:
                    register_import.FLUSH_ROWS = saved
                results.append((first, now, _content(store)))
            assert results[0][:2] == results[1][:2]
            assert results[0][2] == results[1][2]

        check()
