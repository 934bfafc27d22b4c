"""The store's schema, record_events, the outbox and the event log, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3

import orjson
import psycopg
import pytest
from alarms_helpers import REGION_A, REGION_B, cleared, raised, table_count

from alarms import StoreError, open_store
from alarms.schema import SCHEMA_VERSION

# --- opening and the schema --------------------------------------------------------------


def test_open_creates_schema_and_reopen_keeps_data(store_url):
    s = open_store(store_url)
    assert s.schema_version() == SCHEMA_VERSION
    s.record_events([raised("A-1", at=1_000)], now_ms=1_500)
    s.close()
    again = open_store(store_url)  # must not re-run migrations or lose rows
    try:
        assert again.schema_version() == SCHEMA_VERSION
        assert again.get_alarm("A-1")["raised_at"] == 1_000
        with again._db.tx("t", write=False) as cur:
            versions = cur.execute("SELECT version FROM schema_version ORDER BY version").all()
        assert [v["version"] for v in versions] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        again.close()


def test_a_newer_schema_is_refused_by_name(store_url):
    s = open_store(store_url)
    with s._db.tx("t") as cur:
        cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)",
                    (SCHEMA_VERSION + 1,))
    s.close()
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1} is newer"):
        open_store(store_url)


def test_sqlite_pragmas_are_durable(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        conn = s._db.conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        s.close()


@pytest.mark.parametrize("url, message", [
    ("mysql://x/y", "must start with sqlite:/// or postgresql://"),
    ("sqlite:///:memory:", "in-memory"),
    ("sqlite:///", "in-memory"),
    ("sqlite:////no/such/folder/alarms.db", "'/no/such/folder' does not exist"),
])
def test_bad_urls_are_named(url, message):
    with pytest.raises(StoreError, match=message):
        open_store(url)


def test_unreachable_postgres_is_a_store_error_without_the_password():
    with pytest.raises(StoreError) as info:
        open_store("postgresql://someone:secret@127.0.0.1:1/db")
    assert "secret" not in str(info.value)
    assert "cannot connect" in str(info.value)


def test_relative_sqlite_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///rel.db")
    s.close()
    assert (tmp_path / "rel.db").exists()


# --- record_events -----------------------------------------------------------------------


def test_raised_creates_an_active_new_alarm_with_evidence(store):
    ev = raised("A-1", at=1_000, late=True, lat=29.1, lon=120.2, distance_m=80.5, acc=9.0)
    [seq] = store.record_events([ev], now_ms=1_250)
    a = store.get_alarm("A-1")
    assert a["state"] == "active" and a["workflow"] == "new"
    assert (a["type"], a["subject_id"], a["device_id"], a["zone_id"], a["region"]) == (
        "outbound", "S-1", "BR-1", "Z-county", REGION_A)
    assert a["raised_at"] == 1_000 and a["recorded_at"] == 1_250 and a["late"] is True
    assert a["evidence"] == {"lat": 29.1, "lon": 120.2, "distance_m": 80.5, "acc": 9.0}
    assert a["cleared_at"] is None and a["escalated"] is False
    # the outbox holds the exact bytes of the engine's dict, on the alarm topic
    assert store.pending(10) == [(seq, f"emfence/v1/{REGION_A}/alarms/outbound",
                                  orjson.dumps(ev))]


def test_cleared_marks_the_alarm_and_keeps_the_raise(store):
    ev = raised("A-1", at=1_000)
    store.record_events([ev], now_ms=1_100)
    store.record_events([cleared(ev, at=5_000, lat=29.0, lon=120.0, distance_m=0.0)],
                        now_ms=5_100)
    a = store.get_alarm("A-1")
    assert a["state"] == "cleared" and a["cleared_at"] == 5_000
    assert a["raised_at"] == 1_000 and a["recorded_at"] == 1_100
    assert a["cleared_evidence"] == {"lat": 29.0, "lon": 120.0, "distance_m": 0.0}
    assert [e["event"] for e in store.events_since(0)] == ["raised", "cleared"]


def test_recording_the_same_events_twice_changes_nothing(store):
    a, b = raised("A-1", at=1_000), raised("A-2", at=1_100, type="offline", zone_id=None)
    batch = [a, b, cleared(a, at=2_000)]
    first = store.record_events(batch, now_ms=2_100)
    before = (store.events_since(0), store.get_alarm("A-1"), store.get_alarm("A-2"))
    second = store.record_events(batch, now_ms=9_999)  # e.g. replayed after a restart
    assert second == first
    assert (store.events_since(0), store.get_alarm("A-1"), store.get_alarm("A-2")) == before
    assert table_count(store, "events") == 3 and table_count(store, "alarms") == 2
    # a raise replayed after the clear does not re-activate the alarm
    store.record_events([a], now_ms=10_000)
    assert store.get_alarm("A-1")["state"] == "cleared"


def test_a_large_batch_with_duplicates_inside_keeps_its_order(store):
    """More rows than one multi-row INSERT takes, and an event repeated within the batch."""
    evs = [raised(f"A-{i:04d}", at=i) for i in range(1_300)]
    batch = evs[:700] + [evs[3]] + evs[700:] + [cleared(evs[5], at=9_999)]
    seqs = store.record_events(batch, now_ms=10_000)
    assert len(seqs) == 1_302 and seqs[700] == seqs[3]
    unique = seqs[:700] + seqs[701:]
    assert unique == sorted(unique) and len(set(unique)) == 1_301
    log = store.events_since(0, limit=10_000)
    assert [(e["alarm_id"], e["event"]) for e in log] == \
        [(e["alarm_id"], "raised") for e in evs] + [("A-0005", "cleared")]
    assert store.get_alarm("A-0005")["state"] == "cleared"
    # the same event twice in one statement
    a = raised("TWICE", at=1)
    first, second = store.record_events([a, a], now_ms=10_001)
    assert first == second and store.events_since(log[-1]["seq"])[0]["seq"] == first
    assert len(store.events_since(log[-1]["seq"])) == 1


def test_raise_and_clear_in_one_batch_and_seqs_increase(store):
    a = raised("A-1", at=1_000)
    seqs = store.record_events([a, cleared(a, at=1_500), raised("A-2", at=1_600)], 2_000)
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert store.get_alarm("A-1")["state"] == "cleared"
    assert store.get_alarm("A-2")["state"] == "active"


def test_a_clear_without_its_raise_is_logged_and_published_but_makes_no_alarm(store):
    orphan = cleared(raised("GONE", at=1), at=2_000)
    [seq] = store.record_events([orphan], now_ms=2_100)
    assert store.get_alarm("GONE") is None
    assert store.pending(10) == [(seq, f"emfence/v1/{REGION_A}/alarms/outbound",
                                  orjson.dumps(orphan))]


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("alarm_id"), "events\\[1\\]: missing key 'alarm_id'"),
    (lambda e: e.update(event="exploded"), "events\\[1\\]: event must be one of"),
    (lambda e: e.update(type="speeding"), "events\\[1\\]: type must be one of"),
    (lambda e: e.update(region="33/07"), "events\\[1\\]: region must match"),
    (lambda e: e.update(region="+"), "events\\[1\\]: region must match"),
    (lambda e: e.update(at=1.5), "events\\[1\\]: at must be integer"),
    (lambda e: e.update(at=True), "events\\[1\\]: at must be integer"),
    (lambda e: e.update(late="no"), "events\\[1\\]: late must be a boolean"),
    (lambda e: e.update(subject_id=""), "events\\[1\\]: subject_id must be a non-empty"),
    (lambda e: e.update(zone_id=7), "events\\[1\\]: zone_id must be a string or null"),
])
def test_a_malformed_event_is_named_and_nothing_is_written(store, mutate, message):
    good, bad = raised("A-1", at=1_000), raised("A-2", at=1_000)
    mutate(bad)
    with pytest.raises(StoreError, match=message):
        store.record_events([good, bad], now_ms=2_000)
    assert table_count(store, "alarms") == 0 and table_count(store, "events") == 0


def test_a_failing_transaction_leaves_nothing_half_written(store):
    """A database-level failure in the middle of a batch (here a trigger standing in for
    a full disk or a lost connection) rolls back every row of the batch."""
    store.record_events([raised("BEFORE", at=1)], now_ms=2)
    with store._db.tx("install failure") as cur:
        if store.dialect == "sqlite":
            cur.execute("CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.alarm_id = 'BOOM' "
                        "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
        else:
            cur.execute("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                        "IF NEW.alarm_id = 'BOOM' THEN RAISE EXCEPTION 'disk on fire'; END IF; "
                        "RETURN NEW; END $$")
            cur.execute("CREATE TRIGGER boom BEFORE INSERT ON events FOR EACH ROW "
                        "EXECUTE FUNCTION boom()")
    a = raised("A-1", at=1_000)
    with pytest.raises(StoreError, match="record events: .*disk on fire") as info:
        store.record_events([cleared(raised("BEFORE", at=1), at=3), a, raised("BOOM", at=1_000)],
                            now_ms=4)
    assert isinstance(info.value.__cause__, (sqlite3.Error, psycopg.Error))
    assert store.get_alarm("A-1") is None
    assert store.get_alarm("BEFORE")["state"] == "active"  # the clear was rolled back too
    assert [e["alarm_id"] for e in store.events_since(0)] == ["BEFORE"]
    # the store stays usable after the failure
    store.record_events([a], now_ms=5)
    assert store.get_alarm("A-1")["state"] == "active"


# --- outbox -------------------------------------------------------------------------------


def test_outbox_is_oldest_first_and_only_undelivered(store):
    evs = [raised(f"A-{i}", at=1_000 + i) for i in range(7)]
    seqs = store.record_events(evs, now_ms=2_000)
    pend = store.pending(100)
    assert [p[0] for p in pend] == seqs
    assert [p[2] for p in pend] == [orjson.dumps(e) for e in evs]
    assert [p[0] for p in store.pending(3)] == seqs[:3]
    # delivered ones leave the outbox; the rest are handed out again, still in order
    assert store.mark_delivered([seqs[0], seqs[2]], now_ms=3_000) == 2
    assert [p[0] for p in store.pending(100)] == [seqs[1]] + seqs[3:]
    assert store.mark_delivered([seqs[0]], now_ms=3_500) == 0  # already delivered
    delivered = {e["seq"]: e["delivered_at"] for e in store.events_since(0)}
    assert delivered[seqs[0]] == 3_000 and delivered[seqs[1]] is None
    assert store.mark_delivered(seqs, now_ms=4_000) == 5
    assert store.pending(100) == []


def test_outbox_by_region(store):
    a = store.record_events([raised("A", at=1, region=REGION_A)], 2)
    b = store.record_events([raised("B", at=1, region=REGION_B)], 2)
    assert [p[0] for p in store.pending(10, regions=[REGION_B])] == b
    assert [p[0] for p in store.pending(10, regions=REGION_A)] == a
    assert store.pending(10, regions=[]) == []


def test_many_delivered_at_once(store):
    seqs = store.record_events([raised(f"A-{i}", at=i) for i in range(1_234)], now_ms=5)
    assert store.mark_delivered(seqs, now_ms=6) == 1_234
    assert store.pending(10) == []


# --- the event log as a feed ---------------------------------------------------------------


def test_events_since_pages_in_order_and_filters_regions(store):
    a = raised("A", at=1, region=REGION_A)
    b = raised("B", at=2, region=REGION_B, type="tamper", zone_id=None)
    store.record_events([a, b, cleared(a, at=3)], now_ms=10)
    everything = store.events_since(0)
    assert [(e["alarm_id"], e["event"]) for e in everything] == [
        ("A", "raised"), ("B", "raised"), ("A", "cleared")]
    assert everything[1]["data"] == b and everything[1]["topic"] == \
        f"emfence/v1/{REGION_B}/alarms/tamper"
    assert store.last_seq() == everything[-1]["seq"]
    # a consumer that saw the first event gets exactly the rest
    assert store.events_since(everything[0]["seq"]) == everything[1:]
    assert [e["alarm_id"] for e in store.events_since(0, regions=[REGION_A])] == ["A", "A"]
    assert store.events_since(0, limit=1) == everything[:1]
    assert store.events_since(everything[-1]["seq"]) == []


def test_last_seq_of_an_empty_store_is_zero(store):
    assert store.last_seq() == 0 and store.events_since(0) == []


@pytest.mark.postgres
def test_a_lost_postgres_connection_is_replaced_on_the_next_call(pg_url):
    s = open_store(pg_url)
    try:
        s.record_events([raised("A-1", at=1_000)], now_ms=1_001)
        pid = s._db.conn().info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            # the server side of the store's connection goes away (restart, failover)
            assert admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()[0]
        assert s.get_alarm("A-1")["raised_at"] == 1_000
        assert s._db.conn().info.backend_pid != pid
        s.record_events([raised("A-2", at=2_000)], now_ms=2_001)
        assert [a["alarm_id"] for a in s.list_alarms()] == ["A-2", "A-1"]
    finally:
        s.close()


@pytest.mark.parametrize("call", [
    lambda s: s.pending(-1), lambda s: s.events_since(0, limit=-5),
    lambda s: s.list_alarms(limit=1.5), lambda s: s.list_alarms(offset=-1),
    lambda s: s.audit_log(limit="10"),
])
def test_bad_counts_are_named(store, call):
    with pytest.raises(StoreError, match="must be a non-negative integer"):
        call(store)


def test_engine_checkpoint_rows_per_worker(store):
    """One row per worker: saved state and digests come back together, a save replaces
    both, workers do not see each other's, and a delete forgets it."""
    assert store.load_checkpoint("north") is None
    store.save_checkpoint("north", b"state-1\x00\xff", b"d" * 32, 1000)
    store.save_checkpoint("south", b"other", b"", 1001)
    assert store.load_checkpoint("north") == (b"state-1\x00\xff", b"d" * 32, 1000)
    store.save_checkpoint("north", b"state-2", b"e" * 16, 2000)
    assert store.load_checkpoint("north") == (b"state-2", b"e" * 16, 2000)
    assert store.load_checkpoint("south") == (b"other", b"", 1001)
    assert store.delete_checkpoint("north") is True
    assert store.delete_checkpoint("north") is False
    assert store.load_checkpoint("north") is None
    assert store.load_checkpoint("south") == (b"other", b"", 1001)
