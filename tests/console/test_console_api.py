"""The JSON API against a real store: region scope, the acknowledge/close workflow,
tracks, positions, statistics and the audit trail. The workflow and region tests run
on SQLite and on PostgreSQL."""

from __future__ import annotations

import statistics

import orjson
import pytest
from console_helpers import (
    T0,
    audit_rows,
    cleared,
    raised,
)

DAY = 86_400_000

# the fixtures (console, any_console, sqlite_url) live in console_helpers
pytest_plugins = ["console_helpers"]


def seed(store):
    store.record_events([
        raised("w1", "411303", kind="outbound", at=T0),
        raised("w2", "411303", kind="tamper", at=T0 + 1000),
        raised("r1", "411302", kind="exclusion", at=T0 + 2000, subject="subj-9", device="dev-9"),
        raised("w3", "411303", kind="offline", at=T0 + 3000, subject="subj-2", device="dev-2"),
    ], T0 + 5000)
    store.record_events([cleared("w1", "411303", at=T0 + 4000)], T0 + 6000)


def ids(r):
    assert r.status_code == 200, r.text
    return [a["alarm_id"] for a in r.json()["alarms"]]


def test_operator_lists_only_their_regions_newest_first(any_console):
    c = any_console
    seed(c.store)
    c.login("alice")
    body = c.get("/api/alarms").json()
    assert [a["alarm_id"] for a in body["alarms"]] == ["w3", "w2", "w1"]
    assert body["seq"] == c.store.last_seq()
    # asking for the other region's alarms yields nothing, not an error
    assert ids(c.get("/api/alarms?region=411302")) == []
    c.login("olga")
    assert ids(c.get("/api/alarms")) == ["r1"]
    c.login("root")
    assert ids(c.get("/api/alarms")) == ["w3", "r1", "w2", "w1"]
    assert ids(c.get("/api/alarms?region=411302")) == ["r1"]


def test_filters_by_type_state_and_pages(console):
    seed(console.store)
    console.login("sue")
    assert ids(console.get("/api/alarms?type=tamper,offline")) == ["w3", "w2"]
    assert ids(console.get("/api/alarms?state=cleared")) == ["w1"]
    assert ids(console.get("/api/alarms?state=active&region=411303")) == ["w3", "w2"]
    console.store.acknowledge("w2", "sue", None, T0 + 7000)
    assert ids(console.get("/api/alarms?state=new")) == ["w3", "r1", "w1"]
    assert ids(console.get("/api/alarms?state=acknowledged")) == ["w2"]
    first = ids(console.get("/api/alarms?limit=2"))
    assert first == ["w3", "r1"]
    nxt = console.get(f"/api/alarms?limit=2&before_ms={T0 + 2000}&before_id=r1")
    assert ids(nxt) == ["w2", "w1"]
    for bad in ("type=fire", "state=open", "limit=0", "limit=x", "before_ms=5",
                "escalated=maybe", "region=41/13"):
        r = console.get(f"/api/alarms?{bad}")
        assert r.status_code == 400, bad
        assert r.json()["error"] == "bad_param"


def test_operator_cannot_see_or_act_on_another_regions_alarm(any_console):
    c = any_console
    seed(c.store)
    c.login("alice")
    before = c.store.get_alarm("r1")
    unknown = c.get("/api/alarms/nope")
    for r in (c.get("/api/alarms/r1"),
              c.post("/api/alarms/r1/acknowledge", {"note": "mine now"}),
              c.get("/api/alarms/r1/track")):
        # exactly what a missing alarm looks like: existence is not revealed
        assert r.status_code == 404
        assert r.json()["error"] == unknown.json()["error"] == "not_found"
    c.store.acknowledge("r1", "olga", None, T0 + 7000)
    assert c.post("/api/alarms/r1/close", {"disposition": "gps_drift"}).status_code == 404
    after = c.store.get_alarm("r1")
    assert after["workflow"] == "acknowledged" and after["acknowledged_by"] == "olga"
    assert after["closed_by"] is None and before["alarm_id"] == after["alarm_id"]
    denied = audit_rows(c.store, action="alarm.denied")
    assert [(d["who"], d["target"], d["detail"]["action"]) for d in reversed(denied)] == [
        ("alice", "r1", "view"), ("alice", "r1", "acknowledge"), ("alice", "r1", "track"),
        ("alice", "r1", "close")]
    assert all(d["detail"]["region"] == "411302" and d["ip"] for d in denied)


def test_acknowledge_then_close_with_history_events_and_audit(any_console):
    c = any_console
    seed(c.store)
    c.login("alice")
    c.clock.advance(90_000)
    r = c.post("/api/alarms/w2/acknowledge", {"note": "calling the subject"})
    assert r.status_code == 200, r.text
    alarm = r.json()["alarm"]
    assert alarm["workflow"] == "acknowledged"
    assert alarm["acknowledged_by"] == "alice" and alarm["acknowledged_at"] == c.clock()
    c.clock.advance(60_000)
    r = c.post("/api/alarms/w2/close", {"disposition": "device_fault",
                                        "note": "strap sensor broken, replaced"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["alarm"]["workflow"] == "closed"
    assert body["alarm"]["disposition"] == "device_fault"
    assert body["alarm"]["closed_by"] == "alice" and body["alarm"]["closed_at"] == c.clock()
    assert [(a["what"], a["who"], a["note"], a["disposition"]) for a in body["actions"]] == [
        ("acknowledge", "alice", "calling the subject", None),
        ("close", "alice", "strap sensor broken, replaced", "device_fault")]
    # GET shows the same history
    assert c.get("/api/alarms/w2").json()["actions"] == body["actions"]
    # the store's event log carries both, for other consoles and MQTT consumers
    events = [(e["event"], e["alarm_id"]) for e in c.store.events_since(0)]
    assert ("acknowledged", "w2") in events and ("closed", "w2") in events
    # and the audit trail says who and when
    acts = {r["action"]: r for r in audit_rows(c.store, target="w2")}
    assert acts["alarm.acknowledge"]["who"] == "alice"
    assert acts["alarm.acknowledge"]["at"] == T0 + 90_000
    assert acts["alarm.close"]["at"] == T0 + 150_000
    assert acts["alarm.close"]["detail"]["disposition"] == "device_fault"
    assert acts["alarm.close"]["ip"] == "testclient"


def test_close_before_acknowledge_is_refused(any_console):
    c = any_console
    seed(c.store)
    c.login("alice")
    r = c.post("/api/alarms/w2/close", {"disposition": "gps_drift", "note": "drift"})
    assert r.status_code == 409
    assert "acknowledged before" in r.json()["message"]
    assert c.store.get_alarm("w2")["workflow"] == "new"
    assert c.store.actions("w2") == []


def test_second_acknowledge_and_second_close_conflict(console):
    seed(console.store)
    console.login("alice")
    assert console.post("/api/alarms/w2/acknowledge", {}).status_code == 200
    r = console.post("/api/alarms/w2/acknowledge", {})
    assert r.status_code == 409 and "alice" in r.json()["message"]
    assert console.post("/api/alarms/w2/close", {"disposition": "gps_drift"}).status_code == 200
    assert console.post("/api/alarms/w2/close", {"disposition": "gps_drift"}).status_code == 409
    assert [a["what"] for a in console.store.actions("w2")] == ["acknowledge", "close"]


def test_close_validates_disposition_and_note(console):
    seed(console.store)
    console.login("alice")
    console.post("/api/alarms/w2/acknowledge", {})
    for body, where in (({}, "'disposition'"), ({"disposition": "bored"}, "must be one of"),
                        ({"disposition": "other"}, "needs a note"),
                        ({"disposition": "other", "note": "   "}, "needs a note"),
                        ({"disposition": "gps_drift", "note": 5}, "'note'"),
                        ({"disposition": "gps_drift", "note": "x" * 2001}, "longer")):
        r = console.post("/api/alarms/w2/close", body)
        assert r.status_code == 400, body
        assert where in r.json()["message"], (body, r.json())
    assert console.store.get_alarm("w2")["workflow"] == "acknowledged"
    r = console.post("/api/alarms/w2/close", {"disposition": "other", "note": "duplicate device"})
    assert r.status_code == 200


def test_track_around_an_alarm_is_the_subjects_fixes_in_the_window_and_audited(console):
    store = console.store
    seed(store)
    hour = 3_600_000
    rows = []
    for k in range(-30, 31):  # one fix every 5 minutes, T0 - 2.5 h ... T0 + 2.5 h
        ts = T0 + k * 300_000
        rows.append({"device_id": "dev-1", "subject_id": "subj-1", "region": "411303", "ts": ts,
                     "lat": 33.0 + k * 1e-4, "lon": 112.5, "acc": 10.0, "src": "gps",
                     "received_at": ts + 500})
        rows.append({"device_id": "dev-2", "subject_id": "subj-2", "region": "411303", "ts": ts,
                     "lat": 33.1, "lon": 112.6, "acc": 10.0, "src": "gps", "received_at": ts})
    store.record_fixes(rows)
    console.login("alice")
    r = console.get("/api/alarms/w1/track")
    assert r.status_code == 200
    t = r.json()
    assert t["subject_id"] == "subj-1" and t["at"] == T0
    assert (t["from_ms"], t["to_ms"]) == (T0 - hour, T0 + hour)
    want = [row["ts"] for row in rows if row["subject_id"] == "subj-1"
            and T0 - hour <= row["ts"] <= T0 + hour]
    assert [f["ts"] for f in t["fixes"]] == want and len(want) == 25
    assert {f["subject_id"] for f in t["fixes"]} == {"subj-1"}
    narrow = console.get("/api/alarms/w1/track?before_ms=600000&after_ms=0").json()
    assert [f["ts"] for f in narrow["fixes"]] == [T0 - 600_000, T0 - 300_000, T0]
    assert console.get("/api/alarms/w1/track?before_ms=999999999999").status_code == 400
    views = audit_rows(store, action="track.view")
    assert len(views) == 2
    assert views[-1]["who"] == "alice" and views[-1]["target"] == "w1"
    assert views[-1]["detail"]["subject_id"] == "subj-1" and views[-1]["detail"]["fixes"] == 25


def test_last_positions_are_scoped_and_audited(console):
    console.store.record_fixes([
        {"device_id": d, "subject_id": s, "region": reg, "ts": T0, "lat": 33.0, "lon": 112.5,
         "acc": 10.0, "src": "gps", "received_at": T0}
        for d, s, reg in (("dev-1", "subj-1", "411303"), ("dev-9", "subj-9", "411302"))])
    console.login("alice")
    assert [p["device_id"] for p in console.get("/api/positions").json()["positions"]] == ["dev-1"]
    console.login("root")
    assert [p["device_id"] for p in console.get("/api/positions").json()["positions"]] == [
        "dev-1", "dev-9"]
    assert [r["who"] for r in audit_rows(console.store, action="positions.view")] == [
        "root", "alice"]


def test_stats_are_for_supervisors_and_match_a_plain_count(console):
    store = console.store
    events = []
    for i in range(12):
        region = "411303" if i % 3 else "411302"
        kind = ("outbound", "offline", "tamper")[i % 3]
        events.append(raised(f"s{i}", region, kind=kind, at=T0 + i * DAY // 4))
    store.record_events(events, T0)
    ack_delay, close_delay = {}, {}
    for i in range(0, 12, 2):
        ack_delay[i] = 30_000 + i * 1000
        store.acknowledge(f"s{i}", "sue", None, T0 + ack_delay[i])
    dispositions = ["gps_drift", "confirmed_violation", "device_fault", "confirmed_violation"]
    for n, i in enumerate((0, 2, 4, 6)):
        close_delay[i] = 600_000 + i * 60_000
        store.close_alarm(f"s{i}", "sue", dispositions[n], "checked", T0 + close_delay[i])
    console.login("alice")
    assert console.get("/api/stats").status_code == 403
    console.login("sue")
    r = console.get(f"/api/stats?from_ms={T0}&to_ms={T0 + 4 * DAY}")
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["total"] == 12
    assert s["by_region"] == {"411302": 4, "411303": 8}
    assert s["by_type"] == {"offline": 4, "outbound": 4, "tamper": 4}
    assert sum(row["count"] for row in s["counts"]) == 12
    assert s["median_ack_ms"] == statistics.median(ack_delay.values())
    assert s["median_close_ms"] == statistics.median(close_delay.values())
    assert s["false_alarm_share"] == pytest.approx(2 / 4)
    assert s["dispositions"]["confirmed_violation"] == 2
    assert "gps_drift" in s["false_alarm_dispositions"]
    only = console.get(f"/api/stats?from_ms={T0}&to_ms={T0 + 4 * DAY}&region=411302").json()
    assert only["total"] == 4 and only["by_region"] == {"411302": 4}
    assert console.get("/api/stats?from_ms=10&to_ms=5").status_code == 400


def test_supervisor_stats_stay_inside_their_regions(console):
    store = console.store
    store.record_events([raised("x1", "411303"), raised("x2", "411321", subject="s-x",
                                                         device="d-x")], T0)
    console.login("sue")
    s = console.get(f"/api/stats?from_ms={T0 - DAY}&to_ms={T0 + DAY}").json()
    assert s["by_region"] == {"411303": 1}
    s = console.get(f"/api/stats?from_ms={T0 - DAY}&to_ms={T0 + DAY}&region=411321").json()
    assert s["total"] == 0
    console.login("root")
    s = console.get(f"/api/stats?from_ms={T0 - DAY}&to_ms={T0 + DAY}").json()
    assert s["by_region"] == {"411303": 1, "411321": 1}


def test_events_endpoint_pages_the_feed_for_other_systems(console):
    seed(console.store)
    console.login("alice")
    body = console.get("/api/events?since=0").json()
    assert [(e["event"], e["alarm_id"]) for e in body["events"]] == [
        ("raised", "w1"), ("raised", "w2"), ("raised", "w3"), ("cleared", "w1")]
    assert body["seq"] == body["events"][-1]["seq"]
    assert body["events"][0]["data"]["lat"] == 33.0
    rest = console.get(f"/api/events?since={body['events'][1]['seq']}").json()["events"]
    assert [e["alarm_id"] for e in rest] == ["w3", "w1"]


def test_unauthenticated_requests_get_401_everywhere(console):
    seed(console.store)
    for path in ("/api/session", "/api/alarms", "/api/alarms/w1", "/api/alarms/w1/track",
                 "/api/zones", "/api/positions", "/api/stats", "/api/events", "/api/feed"):
        r = console.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"] == "not_logged_in"
    r = console.post("/api/alarms/w1/acknowledge", {}, csrf="whatever")
    assert r.status_code == 401
    assert console.store.get_alarm("w1")["workflow"] == "new"


def test_audit_trail_for_supervisors_within_their_regions(console):
    store = console.store
    seed(store)
    store.add_user("otto", store.get_user("alice")["password_hash"], "operator", ["411321"], T0)
    console.login("alice")
    console.post("/api/alarms/w2/acknowledge", {"note": "on it"})
    console.get("/api/alarms/w1/track")
    console.login("otto")
    console.get("/api/alarms/w1")  # denied: not his region
    store.audit("otto", "login.ok", "otto", {}, T0)  # an unrelated colleague elsewhere
    assert console.get("/api/audit").status_code == 403
    console.login("sue")  # supervisor of 411303 and 411302
    rows = console.get("/api/audit?limit=1000").json()["rows"]
    seen = {(r["who"], r["action"]) for r in rows}
    assert {("alice", "login.ok"), ("alice", "alarm.acknowledge"), ("alice", "track.view"),
            ("otto", "alarm.denied")} <= seen
    # otto's own logins are not sue's business; his refused look at her region's alarm is
    assert ("otto", "login.ok") not in seen
    ids_ = [r["id"] for r in rows]
    assert ids_ == sorted(ids_, reverse=True)
    # paging: two rows at a time, newest first, no gaps or repeats
    paged, before = [], ""
    while True:
        body = console.get(f"/api/audit?limit=2{before}").json()
        paged += [r["id"] for r in body["rows"]]
        if body["next_before_id"] is None or not body["rows"]:
            break
        before = f"&before_id={body['next_before_id']}"
    assert paged == ids_
    console.login("root")
    everything = console.get("/api/audit?limit=1000").json()["rows"]
    assert ("otto", "login.ok") in {(r["who"], r["action"]) for r in everything}
    only = console.get("/api/audit?action=alarm.denied").json()["rows"]
    assert {r["action"] for r in only} == {"alarm.denied"}


def test_a_store_that_does_not_answer_is_a_clear_503(console):
    console.login("alice")
    console.store.close_store()
    r = console.get("/api/alarms")
    assert r.status_code == 503
    assert r.json()["error"] == "store_unavailable"
    assert r.headers["retry-after"] == "5"
    # the reason goes to the log, not to the client
    assert "closed" not in r.json()["message"]


def test_notes_go_on_the_record_in_any_state(console):
    seed(console.store)
    console.login("alice")
    assert console.post("/api/alarms/w2/note", {"note": "   "}).status_code == 400
    r = console.post("/api/alarms/w2/note", {"note": "subject called back"})
    assert r.status_code == 200
    console.post("/api/alarms/w2/acknowledge", {})
    console.post("/api/alarms/w2/close", {"disposition": "confirmed_violation"})
    r = console.post("/api/alarms/w2/note", {"note": "court informed"})
    assert [(a["what"], a["note"]) for a in r.json()["actions"]] == [
        ("note", "subject called back"), ("acknowledge", None), ("close", None),
        ("note", "court informed")]
    assert console.post("/api/alarms/r1/note", {"note": "x"}).status_code == 404
    assert console.post("/api/alarms/w2/note", {"note": "x"}, csrf=None).status_code == 403
    assert len(audit_rows(console.store, action="alarm.note")) == 2


def test_a_supervisor_does_not_see_a_colleagues_rows_about_another_region(console):
    store = console.store
    seed(store)
    # ann works in both regions; sam supervises only 411303
    password_hash = store.get_user("alice")["password_hash"]
    store.add_user("ann", password_hash, "operator", ["411303", "411302"], T0)
    store.add_user("sam", password_hash, "supervisor", ["411303"], T0)
    console.login("ann")
    console.post("/api/alarms/r1/note", {"note": "victim moved to her sister's flat"})
    console.get("/api/alarms/r1/track")
    console.post("/api/alarms/w2/note", {"note": "on it"})
    console.login("sam")
    rows = console.get("/api/audit?limit=1000").json()["rows"]
    seen = {(r["who"], r["action"], r["target"]) for r in rows}
    # ann's login and her work in 411303 are his business...
    assert {("ann", "login.ok", "ann"), ("ann", "alarm.note", "w2")} <= seen
    # ...her note on, and her look at, a 411302 alarm are not
    assert not {r for r in seen if r[2] == "r1"}
    assert all("sister" not in orjson.dumps(r["detail"]).decode() for r in rows)
    console.login("sue")  # supervisor of both regions sees both
    seen = {(r["who"], r["action"], r["target"])
            for r in console.get("/api/audit?limit=1000").json()["rows"]}
    assert {("ann", "alarm.note", "r1"), ("ann", "track.view", "r1")} <= seen


def test_alarm_detail_gives_the_position_in_gcj02_for_chinese_maps(console):
    """The evidence is WGS-84 (GPS); pasted into a Chinese map service it lands ~500 m
    off, so the detail carries the GCJ-02 form, computed by geofence's conversion."""
    import numpy as np

    from geofence.gcj02 import gcj02_to_wgs84

    seed(console.store)
    console.login("alice")
    r = console.get("/api/alarms/w1")
    assert r.status_code == 200, r.text
    body = r.json()
    ev, g = body["alarm"]["evidence"], body["position_gcj02"]
    lon, lat = gcj02_to_wgs84(np.array([g["lon"]]), np.array([g["lat"]]))
    assert abs(lon[0] - ev["lon"]) < 1e-5 and abs(lat[0] - ev["lat"]) < 1e-5
    # and it is a different place: hundreds of metres in Henan
    assert abs(g["lon"] - ev["lon"]) * 93_000 + abs(g["lat"] - ev["lat"]) * 111_000 > 300


def test_days_and_the_session_are_in_the_command_centres_time_zone(tmp_path):
    """``console.timezone`` (default Asia/Shanghai) is in the session body for the page,
    and the statistics count days from midnight there unless ``tz_offset_min`` says
    otherwise. 17:30 UTC on 14 January is the 15th in Shanghai, the 14th in New York."""
    from console_helpers import open_console

    from emfence.config import config_from_dict

    at = 1_768_411_805_000  # 2026-01-14 17:30:05 UTC
    period = f"from_ms={at - 2 * DAY}&to_ms={at + 2 * DAY}"
    for config, zone, day, offset_ms in (
            (None, "Asia/Shanghai", "2026-01-15", 8 * 3_600_000),
            (config_from_dict({"console": {"timezone": "America/New_York"}}),
             "America/New_York", "2026-01-14", -5 * 3_600_000)):
        c = open_console(f"sqlite:///{tmp_path / (zone.replace('/', '-') + '.db')}",
                         config=config)
        with c.client:
            c.store.record_events([raised(f"tz-{zone}", "411303", at=at)], at)
            assert c.login("sue").json()["timezone"] == zone
            assert c.get("/api/session").json()["timezone"] == zone
            s = c.get(f"/api/stats?{period}").json()
            assert (s["timezone"], s["day_offset_ms"], s["by_day"]) == (zone, offset_ms, {day: 1})
            # an explicit fixed offset still wins (UTC here)
            s = c.get(f"/api/stats?{period}&tz_offset_min=0").json()
            assert (s["timezone"], s["day_offset_ms"], s["by_day"]) == (None, 0, {"2026-01-14": 1})
        c.store.close_store()
