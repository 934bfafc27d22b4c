"""Tracks (history, newest positions, retention purge), users, login attempts and audit."""

from __future__ import annotations

import numpy as np
import pytest
from alarms_helpers import REGION_A, REGION_B, table_count

from alarms import StoreError, UserError
from alarms.store import TRACK_COLUMNS

DAY = 86_400_000


def fix(device, ts, *, subject="S-1", region=REGION_A, lat=29.0, lon=120.0, acc=10.0,
        src="gps", rx=None):
    return (device, subject, region, ts, lat, lon, acc, src, ts + 300 if rx is None else rx)


# --- tracks --------------------------------------------------------------------------------


def test_track_by_device_subject_and_window(store):
    rows = [fix("BR-1", t, lat=29 + t / 1e6) for t in (3_000, 1_000, 2_000)]
    rows += [fix("PH-1", 1_500, src="cell", acc=800.0)]  # the same subject's phone
    rows += [fix("BR-9", 1_200, subject="S-9", region=REGION_B)]
    assert store.record_fixes(rows) == 5
    t = store.track("BR-1", 0, 10_000)
    assert [r["ts"] for r in t] == [1_000, 2_000, 3_000]  # oldest first, whatever the order in
    assert t[0] == dict(zip(TRACK_COLUMNS, fix("BR-1", 1_000, lat=29.001)))
    assert [r["ts"] for r in store.track("BR-1", 2_000, 3_000)] == [2_000, 3_000]  # inclusive
    # a subject id string finds all of the subject's devices
    assert [(r["device_id"], r["ts"]) for r in store.track("S-1", 0, 10_000)] == [
        ("BR-1", 1_000), ("PH-1", 1_500), ("BR-1", 2_000), ("BR-1", 3_000)]
    assert store.track(None, 0, 10_000, subject_id="S-9")[0]["device_id"] == "BR-9"
    assert [r["device_id"] for r in store.track(["PH-1", "BR-9"], 0, 10_000)] == ["BR-9", "PH-1"]
    assert store.track([], 0, 10_000) == []
    assert len(store.track("BR-1", 0, 10_000, limit=2)) == 2
    with pytest.raises(StoreError, match="needs a device id"):
        store.track(None, 0, 1)


def test_fixes_as_dicts_and_numpy_values(store):
    row = dict(zip(TRACK_COLUMNS, ("BR-1", "S-1", REGION_A, np.int64(1_000), np.float64(29.5),
                                   np.float32(120.25), np.float64(7.5), "wifi", np.int64(1_100))))
    store.record_fixes([row, dict(row, ts=2_000, acc=None, src=None)])
    t = store.track("BR-1", 0, 5_000)
    assert t[0] == {"device_id": "BR-1", "subject_id": "S-1", "region": REGION_A, "ts": 1_000,
                    "lat": 29.5, "lon": 120.25, "acc": 7.5, "src": "wifi", "received_at": 1_100}
    assert t[1]["acc"] is None and t[1]["src"] is None
    with pytest.raises(StoreError, match="fixes\\[1\\]: missing key 'lat'"):
        store.record_fixes([row, {k: v for k, v in row.items() if k != "lat"}])
    with pytest.raises(StoreError, match="fixes\\[0\\]: needs 9 values"):
        store.record_fixes([("BR-1", 1)])


def test_a_fix_sent_twice_is_stored_once(store):
    store.record_fixes([fix("BR-1", 1_000, lat=29.0)])
    # a store-and-forward resend
    store.record_fixes([fix("BR-1", 1_000, lat=31.0), fix("BR-1", 2_000)])
    t = store.track("BR-1", 0, 5_000)
    assert [(r["ts"], r["lat"]) for r in t] == [(1_000, 29.0), (2_000, 29.0)]


def test_duplicates_inside_one_batch(store):
    store.record_fixes([fix("BR-1", 1_000, lat=29.0), fix("BR-1", 2_000, lat=29.2),
                        fix("BR-1", 1_000, lat=29.0), fix("BR-2", 500)])
    assert [r["ts"] for r in store.track("BR-1", 0, 5_000)] == [1_000, 2_000]
    assert [(p["device_id"], p["ts"], p["lat"]) for p in store.last_positions()] == [
        ("BR-1", 2_000, 29.2), ("BR-2", 500, 29.0)]


def test_last_positions_keep_the_newest_fix_by_event_time(store):
    store.record_fixes([fix("BR-1", 5_000, lat=29.5), fix("BR-1", 4_000, lat=29.4),
                        fix("BR-2", 1_000, region=REGION_B, subject="S-2")])
    # a late store-and-forward batch of older fixes must not move the device back
    store.record_fixes([fix("BR-1", 3_000, lat=29.3, rx=99_000)])
    pos = store.last_positions()
    assert [(p["device_id"], p["ts"], p["lat"]) for p in pos] == [
        ("BR-1", 5_000, 29.5), ("BR-2", 1_000, 29.0)]
    store.record_fixes([fix("BR-1", 6_000, lat=29.6)])
    assert [p["ts"] for p in store.last_positions([REGION_A])] == [6_000]
    assert [p["device_id"] for p in store.last_positions([REGION_B])] == ["BR-2"]
    assert store.last_positions([]) == []


def test_purge_deletes_only_fixes_older_than_the_cutoff(store):
    now = 40 * DAY
    ts = [now - 31 * DAY, now - 30 * DAY - 1, now - 30 * DAY, now - DAY]
    store.record_fixes([fix("BR-1", t) for t in ts] + [fix("BR-2", now - 35 * DAY)])
    store.record_device_status([("BR-1", REGION_A, now - DAY, 80.0, "ok", "on", now - DAY),
                                ("BR-2", REGION_A, now - 35 * DAY, 9.0, "ok", "on", now)])
    cutoff = now - 30 * DAY
    assert store.purge_tracks(cutoff) == 3
    # and so does its newest status (battery, strap, power): personal data past retention
    assert [r["device_id"] for r in store.device_status()] == ["BR-1"]
    assert [r["ts"] for r in store.track("BR-1", 0, now)] == [now - 30 * DAY, now - DAY]
    assert store.track("BR-2", 0, now) == []
    # the newest position of a device silent for longer than the retention goes too
    assert [p["device_id"] for p in store.last_positions()] == ["BR-1"]
    assert store.purge_tracks(cutoff) == 0


def test_a_large_batch_of_fixes(store):
    rows = [fix(f"BR-{i % 50}", 1_000 + i) for i in range(5_000)]
    assert store.record_fixes(rows) == 5_000
    assert table_count(store, "tracks") == 5_000
    assert len(store.last_positions()) == 50
    assert store.last_positions()[0]["ts"] == max(r[3] for r in rows if r[0] == "BR-0")


# --- users ---------------------------------------------------------------------------------


def test_users_add_get_list_disable_and_audit(store):
    u = store.add_user("olga", "$argon2id$hash", "operator", [REGION_A, REGION_B], 1_000,
                       by="admin")
    assert u == {"name": "olga", "password_hash": "$argon2id$hash", "role": "operator",
                 "regions": [REGION_A, REGION_B], "disabled": False, "created_at": 1_000,
                 "updated_at": 1_000, "lang": None}
    store.add_user("boss", "$argon2id$h2", "admin", [], 1_100)
    assert [(u["name"], u["role"]) for u in store.list_users()] == [("boss", "admin"),
                                                                      ("olga", "operator")]
    assert all("password_hash" not in u for u in store.list_users())
    store.set_user_disabled("olga", True, 2_000, by="boss")
    assert store.get_user("olga")["disabled"] is True
    assert store.get_user("olga")["updated_at"] == 2_000
    store.set_user_disabled("olga", False, 3_000, by="boss")
    store.set_user_password("olga", "$argon2id$new", 4_000, by="olga")
    assert store.get_user("olga")["password_hash"] == "$argon2id$new"
    store.set_user_role("olga", "supervisor", [REGION_B], 5_000, by="boss")
    assert (store.get_user("olga")["role"], store.get_user("olga")["regions"]) == (
        "supervisor", [REGION_B])
    assert store.get_user("nobody") is None
    log = store.audit_log(target="olga")
    assert [(r["who"], r["action"]) for r in reversed(log)] == [
        ("admin", "user.add"), ("boss", "user.disable"), ("boss", "user.enable"),
        ("olga", "user.password"), ("boss", "user.role")]
    assert all("argon2" not in str(r["detail"]) for r in log)  # no hashes in the audit


@pytest.mark.parametrize("name, role, regions, reason", [
    ("olga", "root", [REGION_A], "role must be one of"),
    ("ol ga", "operator", [REGION_A], "a user name is"),
    ("", "operator", [REGION_A], "a user name is"),
    ("olga", "operator", ["33/07"], "is not a region code"),
])
def test_bad_users_are_refused(store, name, role, regions, reason):
    with pytest.raises(UserError, match=reason):
        store.add_user(name, "h", role, regions, 1)
    assert table_count(store, "users") == 0


def test_duplicate_and_missing_users(store):
    store.add_user("olga", "h", "operator", [REGION_A], 1)
    with pytest.raises(UserError, match="already exists"):
        store.add_user("olga", "h2", "admin", [], 2)
    assert store.get_user("olga")["role"] == "operator"
    with pytest.raises(UserError, match="no such user"):
        store.set_user_disabled("ghost", True, 3)


def test_login_attempts_count_failures_by_name_and_address(store):
    for at, name, ip, ok in [(1_000, "olga", "10.0.0.1", False), (2_000, "olga", "10.0.0.2", False),
                             (3_000, "olga", "10.0.0.1", True), (4_000, "ivan", "10.0.0.1", False)]:
        store.record_login(name, ok, at, ip)
    assert store.failed_logins(0, name="olga") == 2
    assert store.failed_logins(1_500, name="olga") == 1
    assert store.failed_logins(0, ip="10.0.0.1") == 2
    assert store.failed_logins(0, name="olga", ip="10.0.0.1") == 1
    assert [r["action"] for r in store.audit_log(who="olga")] == [
        "login.ok", "login.failed", "login.failed"]
    assert store.purge_login_attempts(2_000) == 1
    assert store.failed_logins(0, name="olga") == 1 and store.failed_logins(0) == 2
    assert len(store.audit_log(who="olga")) == 3  # the audit trail is kept


# --- audit ---------------------------------------------------------------------------------


def test_audit_log_filters_and_pages(store):
    for i in range(7):
        store.audit(f"user{i % 2}", "track.view", f"A-{i}", {"i": i}, 1_000 + i, ip="10.1.1.1")
    store.audit(None, "csrf.rejected", "/api/x", None, 2_000)
    everything = store.audit_log()
    assert [r["at"] for r in everything] == [2_000] + [1_006 - i for i in range(7)]
    assert everything[0] == {"id": everything[0]["id"], "at": 2_000, "who": None,
                             "action": "csrf.rejected", "target": "/api/x", "detail": None,
                             "ip": None}
    assert everything[1]["detail"] == {"i": 6} and everything[1]["ip"] == "10.1.1.1"
    assert [r["target"] for r in store.audit_log(who="user1")] == ["A-5", "A-3", "A-1"]
    assert len(store.audit_log(action="track.view", since_ms=1_003, until_ms=1_005)) == 2
    page1 = store.audit_log(limit=3)
    page2 = store.audit_log(limit=3, before_id=page1[-1]["id"])
    assert [r["id"] for r in page1 + page2] == [r["id"] for r in everything[:6]]
    with pytest.raises(StoreError, match="needs an action"):
        store.audit("x", "", None, None, 1)


def test_a_device_moved_to_another_subject_keeps_each_subjects_track_apart(store):
    store.record_fixes([fix("BR-1", 1_000, subject="S-1"), fix("BR-1", 2_000, subject="S-1"),
                        fix("BR-2", 1_500, subject="S-1")])
    store.record_fixes([fix("BR-1", 3_000, subject="S-2")])  # the bracelet re-issued
    assert [(r["device_id"], r["ts"]) for r in store.track(None, 0, 9_000, subject_id="S-1")] \
        == [("BR-1", 1_000), ("BR-2", 1_500), ("BR-1", 2_000)]
    assert [r["ts"] for r in store.track("S-2", 0, 9_000)] == [3_000]
    assert [r["ts"] for r in store.track("BR-1", 0, 9_000)] == [1_000, 2_000, 3_000]
    assert table_count(store, "track_subjects") == 3
    # retention: pairs whose fixes are all gone are forgotten with them
    assert store.purge_tracks(2_500) == 3
    assert table_count(store, "track_subjects") == 1
    assert store.track("S-1", 0, 9_000) == []


def test_schema_2_moves_subject_lookups_off_the_tracks_index(tmp_path):
    """A store created at schema version 1 (subject index on tracks) is migrated: the pairs
    are filled from the stored fixes and the index is dropped."""
    import sqlite3

    from alarms import open_store
    from alarms.schema import MIGRATIONS, SCHEMA_VERSION_TABLE, render
    from alarms.store import tracks_path

    path = tmp_path / "old.db"
    for f in (path, tracks_path(path)):
        with sqlite3.connect(f) as db:
            db.execute(SCHEMA_VERSION_TABLE)
            for statement in MIGRATIONS[0]:
                db.execute(render(statement, "sqlite"))
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (1, 0)")
    with sqlite3.connect(tracks_path(path)) as db:
        db.executemany("INSERT INTO tracks (device_id, subject_id, region, ts, lat, lon, acc, "
                       "src, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [fix("BR-1", 1_000), fix("PH-1", 2_000), fix("BR-9", 1_000, subject="S-9")])
    store = open_store(f"sqlite:///{path}")
    try:
        assert store.schema_version() >= 2
        assert [(r["device_id"], r["ts"]) for r in store.track("S-1", 0, 9_000)] == [
            ("BR-1", 1_000), ("PH-1", 2_000)]
        with sqlite3.connect(tracks_path(path)) as db:
            names = {r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "tracks_subject_ts" not in names and "tracks_ts" in names
    finally:
        store.close_store()
