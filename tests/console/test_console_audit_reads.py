"""Every read of a location is on the record, and so is every refused cross-site or
CSRF-less request: the console served by uvicorn on a free port over a real store.

The walk below takes the routes from the app's own route table, so a route added later
without a request here fails the test instead of going unchecked.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from console_helpers import (
    CNMAPS,
    PASSWORD,
    T0,
    Server,
    add_accounts,
    audit_rows,
    http_log_in,
    raised,
    sse_messages,
)
from starlette.routing import Mount, Route

from alarms.store import open_store
from console import create_app
from emfence.config import Config
from geofence import compile_zones, load_zones

# Keys that put a place in an answer: a fix or an alarm's evidence (lat/lon), a zone's
# outline (GeoJSON coordinates) or circle.
LOCATION_KEYS = frozenset({"lat", "lon", "coordinates", "circle"})


def locations_in(value: Any) -> bool:
    if isinstance(value, dict):
        return any(k in LOCATION_KEYS or locations_in(v) for k, v in value.items())
    if isinstance(value, list):
        return any(locations_in(v) for v in value)
    return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request, tmp_path):
    """A console with alarms, events, fixes and one exclusion zone in 411303."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'alarms.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    store = open_store(url)
    add_accounts(store)
    store.record_events([raised(a, "411303", at=T0 + i) for i, a in
                         enumerate(("look", "ack", "close", "note"))], T0)
    store.acknowledge("close", "alice", None, T0 + 10)
    store.record_fixes([{"device_id": "dev-1", "subject_id": "subj-1", "region": "411303",
                         "ts": T0 + k * 60_000, "lat": 33.0, "lon": 112.5, "acc": 10.0,
                         "src": "gps", "received_at": T0 + k * 60_000} for k in range(-3, 4)])
    zones_file = tmp_path / "zones.geojson"
    zones_file.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "victim-17",
         "geometry": {"type": "Point", "coordinates": [112.52, 33.01]},
         "properties": {"radius_m": 500, "region": "411303"}}]}))
    register_seed(store)
    # S-1's bracelet: a fix every minute, the one at T0 + 2 min sent 5 min late (buffered)
    store.record_fixes([{"device_id": "B-S-1", "subject_id": "S-1", "region": "411303",
                         "ts": T0 + k * 60_000, "lat": 33.0, "lon": 112.5, "acc": 10.0,
                         "src": "gps", "received_at": T0 + k * 60_000 + (300_000 if k == 2
                                                                         else 800)}
                        for k in range(5)])
    app = create_app(store=store, config=Config(), zones=compile_zones(load_zones(zones_file)),
                     secure_cookies=False)
    server = Server(app).start()
    yield app, server, store
    server.stop()
    store.close_store()


def register_seed(store) -> None:
    """The register: 卧龙区, subjects S-1 and S-2 in it, leave L-a and L-b requested by
    alice (the walker, sue, decides them); VP-1 protected from S-1, with a position; R-1
    on the duty roster."""
    reg = store.register
    reg.adcode_dir = str(CNMAPS)
    reg.import_adcode("411303", actor="root", now_ms=T0)
    for sid in ("S-1", "S-2"):
        reg.create_subject({"subject_id": sid, "name": "张三", "region": "411303",
                            "level": "strict", "devices": [{"device_id": f"B-{sid}"}],
                            "inclusion": ["411303"]}, actor="alice", now_ms=T0)
    for k in range(2):
        reg.request_leave("S-1", zones=["411303"], start_ms=T0 + (k + 1) * 86_400_000,
                          end_ms=T0 + (k + 1) * 86_400_000 + 3_600_000, reason="探亲",
                          actor="alice", now_ms=T0)
    reg.add_protected({"person_id": "VP-1", "name": "王五", "region": "411303",
                       "devices": ["V-1"], "protected_from": ["S-1"]}, actor="sue", now_ms=T0)
    store.record_protected_positions([("V-1", "VP-1", T0, 33.0, 112.5, 10.0, T0)])
    store.roster.put_person({"person_id": "R-1", "region": "411303", "name": "值班员",
                             "role": "duty", "phone": "13800000000"},
                            actor="root", role="admin", now_ms=T0)


def leave_id(store, k: int) -> str:
    """The id of the k-th leave requested in :func:`register_seed`."""
    leaves = sorted(store.register.list_leaves(subject_id="S-1", now_ms=T0),
                    key=lambda lv: lv["start"])
    return leaves[k]["leave_id"]


REPORT_QUERY = f"region=411303&from_ms={T0 - 86_400_000}&to_ms={T0 + 86_400_000}"

# (method, path as in the route table) -> the request the walk sends: a path with the
# parameters filled in and a JSON body (None: no body). Fresh: on a session of its own
# (logging in or out must not end the walker's session).
REQUESTS: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/"): ("/", None),
    ("GET", "/static"): ("/static/app.js", None),
    ("POST", "/api/login"): ("/api/login", {"name": "sue", "password": PASSWORD}),
    ("POST", "/api/logout"): ("/api/logout", {}),
    ("GET", "/api/session"): ("/api/session", None),
    ("PUT", "/api/session/lang"): ("/api/session/lang", {"lang": "en"}),  # session.lang
    ("GET", "/api/alarms"): ("/api/alarms", None),
    ("GET", "/api/alarms/{alarm_id:str}"): ("/api/alarms/look", None),
    ("POST", "/api/alarms/{alarm_id:str}/acknowledge"): ("/api/alarms/ack/acknowledge", {}),
    ("POST", "/api/alarms/{alarm_id:str}/close"): ("/api/alarms/close/close",
                                               {"disposition": "gps_drift"}),
    ("POST", "/api/alarms/{alarm_id:str}/note"): ("/api/alarms/note/note", {"note": "called"}),
    ("GET", "/api/alarms/{alarm_id:str}/track"): ("/api/alarms/look/track", None),
    ("GET", "/api/subjects/{subject_id:str}/track"): (
        f"/api/subjects/S-1/track?from_ms={T0}&to_ms={T0 + 3_600_000}", None),
    ("GET", "/api/alarms/{alarm_id:str}/evidence.zip"): ("/api/alarms/look/evidence.zip",
                                                         None),
    ("GET", "/api/events"): ("/api/events?since=0", None),
    ("GET", "/api/zones"): ("/api/zones", None),
    ("GET", "/api/positions"): ("/api/positions", None),
    ("GET", "/api/board"): ("/api/board", None),
    ("GET", "/api/stats"): ("/api/stats", None),
    ("GET", "/api/audit"): ("/api/audit", None),
    ("GET", "/api/feed"): ("/api/feed?since=0", None),
    # the register (walked in this order: GET, PATCH, POST, each by path)
    ("GET", "/api/subjects"): ("/api/subjects", None),
    ("GET", "/api/subjects/{subject_id:str}"): ("/api/subjects/S-1", None),
    ("GET", "/api/leaves"): ("/api/leaves?state=requested", None),
    ("GET", "/api/subjects/{subject_id:str}/report.pdf"): (
        "/api/subjects/S-1/report.pdf?month=2025-11", None),
    ("PATCH", "/api/subjects/{subject_id:str}"): ("/api/subjects/S-1", {"note": "复查"}),
    ("POST", "/api/devices/{device_id:str}/return"): ("/api/devices/B-S-1/return", {}),
    ("GET", "/api/devices/{device_id:str}/commands"): ("/api/devices/B-S-1/commands", None),
    ("POST", "/api/devices/{device_id:str}/commands"): ("/api/devices/B-S-1/commands",
                                                       {"cmd": "locate"}),
    ("POST", "/api/leaves/{leave_id:str}/approve"): ("/api/leaves/{0}/approve", {}),
    ("POST", "/api/leaves/{leave_id:str}/refuse"): ("/api/leaves/{1}/refuse", {}),
    ("POST", "/api/leaves/{leave_id:str}/return"): ("/api/leaves/{0}/return", {}),
    ("POST", "/api/subjects"): ("/api/subjects", {
        "subject_id": "S-3", "name": "李四", "region": "411303", "level": "ordinary",
        "devices": [], "inclusion": ["411303"]}),
    ("POST", "/api/subjects/{subject_id:str}/curfews"): (
        "/api/subjects/S-1/curfews", {"start": "22:00", "end": "06:00", "zone": "411303"}),
    ("POST", "/api/subjects/{subject_id:str}/devices"): (
        "/api/subjects/S-1/devices", {"device_id": "P-1", "kind": "phone"}),
    ("POST", "/api/subjects/{subject_id:str}/end"): ("/api/subjects/S-2/end",
                                                     {"reason": "期满"}),
    ("POST", "/api/subjects/{subject_id:str}/leaves"): (
        "/api/subjects/S-1/leaves", {"zones": ["411303"], "start": T0 + 9 * 86_400_000,
                                     "end": T0 + 10 * 86_400_000}),
    ("POST", "/api/subjects/{subject_id:str}/suspensions"): (
        "/api/subjects/S-1/suspensions", {"type": "offline", "start": T0,
                                          "end": T0 + 86_400_000, "reason": "住院"}),
    ("POST", "/api/zones"): ("/api/zones", {
        "zone_id": "home-1", "name": "住所", "radius_m": 200,
        "geometry": {"type": "Point", "coordinates": [112.53, 33.0]}}),
    ("POST", "/api/zones/import-adcode"): ("/api/zones/import-adcode", {"adcode": "411302"}),
    # the relations (VP-1 is seeded; the walk adds VP-2, ends VP-1, then changes VP-2)
    ("GET", "/api/subjects/{subject_id:str}/contacts"): ("/api/subjects/S-1/contacts", None),
    ("PUT", "/api/subjects/{subject_id:str}/contacts"): ("/api/subjects/S-1/contacts",
                                                         {"contacts": ["S-2"]}),
    ("GET", "/api/protected"): ("/api/protected", None),
    ("GET", "/api/protected/{person_id:str}"): ("/api/protected/VP-1", None),
    ("GET", "/api/protected/{person_id:str}/position"): ("/api/protected/VP-1/position", None),
    ("POST", "/api/protected"): ("/api/protected", {
        "person_id": "VP-2", "region": "411303", "devices": ["V-2"],
        "protected_from": ["S-1"]}),
    ("POST", "/api/protected/{person_id:str}/end"): ("/api/protected/VP-1/end",
                                                     {"reason": "到期"}),
    ("PUT", "/api/protected/{person_id:str}"): ("/api/protected/VP-2", {
        "region": "411303", "devices": ["V-2"], "protected_from": ["S-1"]}),
    # the duty roster (R-1 is seeded; the walk deletes it before it puts R-2)
    ("GET", "/api/roster"): ("/api/roster", None),
    ("GET", "/api/roster/told"): ("/api/roster/told?region=411303", None),
    ("DELETE", "/api/roster/{person_id:str}"): ("/api/roster/R-1", None),
    ("PUT", "/api/roster/{person_id:str}"): ("/api/roster/R-2", {
        "region": "411303", "name": "王五", "role": "duty", "phone": "13800000000"}),
    # the alarm register export (a file, not JSON: its row count is in the audit row)
    ("GET", "/api/reports/alarms.csv"): (f"/api/reports/alarms.csv?{REPORT_QUERY}", None),
    ("GET", "/api/reports/alarms.pdf"): (f"/api/reports/alarms.pdf?{REPORT_QUERY}&lang=en",
                                         None),
}
FRESH = {"/api/login", "/api/logout"}


def route_table(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (HEAD rides along with GET)."""
    out: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount):
            out.add(("GET", route.path))
        elif isinstance(route, Route):
            out |= {(m, route.path) for m in route.methods or {"GET"} if m != "HEAD"}
        else:
            raise TypeError(f"route {route!r} of an unknown kind: teach this test")
    return out


def send(client: httpx.Client, method: str, path: str, body: Any) -> tuple[int, Any]:
    """The status and the decoded answer (JSON, the first alarm of an SSE stream, or
    None for anything else)."""
    if path.startswith("/api/feed"):
        with client.stream(method, path) as resp:
            for msg in sse_messages(resp.iter_lines()):
                if msg.get("event") == "alarm":
                    return resp.status_code, orjson.loads(msg["data"])
            raise AssertionError("the feed ended without an alarm")
    resp = client.request(method, path, json=body)
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.status_code, resp.json()
    return resp.status_code, None


def test_every_route_that_answers_with_a_location_leaves_one_audit_row(served):
    app, server, store = served
    assert route_table(app) == set(REQUESTS), \
        "a route was added or removed: give it a request in REQUESTS"
    walker = http_log_in(server.url, "sue")
    with_location = set()
    for (method, route), (path, body) in sorted(REQUESTS.items()):
        client = httpx.Client(base_url=server.url) if route == "/api/login" else \
            http_log_in(server.url, "sue") if route in FRESH else walker
        before = max((r["id"] for r in audit_rows(store)), default=0)
        path = path.format(*(leave_id(store, k) for k in range(2))) if "{" in path else path
        status, answer = send(client, method, path, body)
        assert status in (200, 201, 204), (method, path, status, answer)
        if route == "/api/feed":
            wait_for_row(store, "feed.close")
        new = [r for r in audit_rows(store) if r["id"] > before]
        # What was read is named, never where: no coordinates in the trail.
        assert not any(locations_in(r["detail"]) for r in new), new
        if not locations_in(answer):
            continue
        with_location.add(route)
        assert all(r["who"] == "sue" for r in new), new
        if route == "/api/feed":
            # per connection: one row as the feed opens, one as it ends
            assert sorted(r["action"] for r in new) == ["feed.close", "feed.open"], new
        else:
            assert len(new) == 1, (route, new)  # one per request, however many rows
        if client is not walker:
            client.close()
    walker.close()
    # The walk itself saw every kind of location read (so it cannot pass vacuously).
    assert with_location == {
        "/api/alarms", "/api/alarms/{alarm_id:str}", "/api/alarms/{alarm_id:str}/acknowledge",
        "/api/alarms/{alarm_id:str}/close", "/api/alarms/{alarm_id:str}/note",
        "/api/alarms/{alarm_id:str}/track", "/api/subjects/{subject_id:str}/track",
        "/api/events", "/api/zones", "/api/positions",
        "/api/feed", "/api/zones/import-adcode", "/api/protected/{person_id:str}/position"}


def test_location_reads_name_the_query_and_the_count(served):
    _, server, store = served
    client = http_log_in(server.url, "alice")
    assert len(client.get("/api/alarms?type=outbound&limit=3").json()["alarms"]) == 3
    [row] = audit_rows(store, action="alarms.view")
    assert (row["who"], row["detail"]["alarms"], row["detail"]["regions"]) == (
        "alice", 3, ["411303"])
    assert (row["detail"]["type"], row["detail"]["limit"]) == (["outbound"], 3)
    client.get("/api/alarms/look")
    [row] = audit_rows(store, action="alarm.view")
    assert (row["target"], row["detail"]) == ("look", {"region": "411303"})
    seq = client.get("/api/events?since=0&limit=2").json()["seq"]
    [row] = audit_rows(store, action="events.view")
    assert (row["detail"]["since"], row["detail"]["events"], row["detail"]["last_seq"]) == (
        0, 2, seq)
    # A poll that finds nothing shows nothing and is not written (pollers stay cheap).
    client.get(f"/api/events?since={store.last_seq()}")
    client.get("/api/alarms?region=411302")  # not hers: an empty answer
    assert len(audit_rows(store, action="events.view")) == 1
    assert len(audit_rows(store, action="alarms.view")) == 1
    client.close()


def test_a_feed_is_audited_when_it_opens_and_when_it_ends_with_what_it_carried(served):
    _, server, store = served
    client = http_log_in(server.url, "alice")
    with client.stream("GET", "/api/feed?since=0") as resp:
        stream = sse_messages(resp.iter_lines())
        alarms = [next(m for m in stream if m.get("event") == "alarm") for _ in range(4)]
    assert [orjson.loads(m["data"])["alarm_id"] for m in alarms] == ["look", "ack", "close",
                                                                      "note"]
    [opened] = audit_rows(store, action="feed.open")
    assert opened["detail"] == {"regions": ["411303"], "since": 0}
    [closed] = wait_for_row(store, "feed.close")
    assert closed["who"] == "alice" and closed["detail"]["since"] == 0
    # It carried at least the four events read above (the stream may have sent more
    # before the client went away: the acknowledgement of "close").
    assert closed["detail"]["events"] >= 4
    assert closed["detail"]["last_seq"] >= int(alarms[-1]["id"])
    client.close()


def wait_for_row(store, action: str) -> list[dict]:
    """The ``action`` rows once there is one: a feed's closing row is written as the
    server notices the disconnect, a moment after the client went away."""
    for _ in range(1200):  # a guard against a hang, not a time limit
        rows = audit_rows(store, action=action)
        if rows:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"no {action} row")


def test_a_feed_never_sends_an_event_of_a_region_the_account_just_lost(served):
    _, server, store = served
    client = http_log_in(server.url, "sue")  # 411303 and 411302
    with client.stream("GET", f"/api/feed?since={store.last_seq()}") as resp:
        stream = sse_messages(resp.iter_lines())
        store.set_user_role("sue", "supervisor", ["411302"], T0)
        store.record_events([raised("gone", "411303", subject="s7", device="d7")], T0)
        first = next(stream)
    assert first["event"] == "logout"
    client.close()


@pytest.mark.parametrize("origin", ["https://evil.example", "null"])
def test_refused_cross_site_requests_are_security_events(served, origin):
    _, server, store = served
    client = http_log_in(server.url, "alice")
    foreign = {"origin": origin}
    r = client.post("/api/alarms/ack/acknowledge", json={}, headers=foreign)
    assert r.status_code == 403 and r.json()["error"] == "origin"
    # Refused before any session is looked at: no cookie, still on the record.
    anonymous = httpx.Client(base_url=server.url)
    assert anonymous.post("/api/logout", headers=foreign).status_code == 403
    assert anonymous.post("/api/login", json={"name": "alice", "password": PASSWORD},
                          headers=foreign).status_code == 403
    rows = sorted(audit_rows(store, action="origin.rejected"), key=lambda r: r["id"])
    assert [(r["who"], r["target"]) for r in rows] == [
        ("alice", "/api/alarms/ack/acknowledge"), (None, "/api/logout"), (None, "/api/login")]
    assert all(r["detail"] == {"method": "POST", "origin": origin} for r in rows)
    assert all(r["ip"] == "127.0.0.1" for r in rows)
    # A missing CSRF token is one too; nothing was acknowledged by either.
    del client.headers["X-CSRF-Token"]
    assert client.post("/api/alarms/ack/acknowledge", json={}).status_code == 403
    [csrf] = audit_rows(store, action="csrf.rejected")
    assert (csrf["who"], csrf["target"]) == ("alice", "/api/alarms/ack/acknowledge")
    assert store.get_alarm("ack")["workflow"] == "new"
    anonymous.close()
    client.close()


def test_a_subjects_track_of_any_window_in_my_regions_only(served):
    """Track playback: the fixes of the window asked for, oldest first, each with its
    delay (a buffered fix shows as late); windows checked; another region's subject is
    404 like one that does not exist; every view audited with the window and count."""
    _, server, store = served
    alice = http_log_in(server.url, "alice")
    base = "/api/subjects/S-1/track"
    r = alice.get(f"{base}?from_ms={T0 + 60_000}&to_ms={T0 + 180_000}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(f["ts"] - T0, f["delay_ms"]) for f in body["fixes"]] == [
        (60_000, 800), (120_000, 300_000), (180_000, 800)]
    assert (body["subject_id"], body["region"]) == ("S-1", "411303")
    [row] = audit_rows(store, action="track.view", who="alice")
    assert (row["target"], row["detail"]["fixes"], row["detail"]["from_ms"]) == (
        "S-1", 3, T0 + 60_000)
    widest = 2 * Config().console.track_window_max_ms
    for query, field in ((f"to_ms={T0}", "from_ms"), (f"from_ms={T0}", "to_ms"),
                         (f"from_ms={T0}&to_ms={T0 - 1}", "to_ms"),
                         (f"from_ms={T0}&to_ms={T0 + widest + 1}", "to_ms")):
        r = alice.get(f"{base}?{query}")
        assert (r.status_code, r.json()["field"]) == (400, field), (query, r.text)
    olga = http_log_in(server.url, "olga")  # an operator of 411302
    assert olga.get(f"{base}?from_ms={T0}&to_ms={T0 + 60_000}").status_code == 404
    assert audit_rows(store, action="track.view", who="olga") == []
    alice.close()
    olga.close()
