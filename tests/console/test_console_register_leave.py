"""Leave through the API against a real store (SQLite and PostgreSQL): request, the
approval queue, approval only by a supervisor or admin who did not request it, refusal,
the return (销假); curfews and alert suspensions; each bad input answered with the field
named and nothing half-applied."""

from __future__ import annotations

import pytest
from console_helpers import T0, audit_rows
from test_console_register import error, subject, zones_ready

from emfence.config import Config, RegisterConfig

pytest_plugins = ["console_helpers"]

HOUR = 3_600_000
DAY = 24 * HOUR


@pytest.fixture
def enrolled(any_console):
    """Zones, and S-1 of 411303 enrolled by alice."""
    c = any_console
    zones_ready(c)
    c.login("alice")
    assert c.post("/api/subjects", subject()).status_code == 201
    return c


def leave(start=T0 + DAY, end=T0 + 3 * DAY, zones=("411302",), reason="探望住院的母亲"):
    return {"zones": list(zones), "start": start, "end": end, "reason": reason}


def queue(c):
    r = c.get("/api/leaves?state=requested")
    assert r.status_code == 200, r.text
    return [lv["leave_id"] for lv in r.json()["leaves"]]


def test_request_queue_approve_return(enrolled):
    c = enrolled
    r = c.post("/api/subjects/S-1/leaves", leave())
    assert r.status_code == 201, r.text
    lv = r.json()
    assert lv["state"] == "requested" and lv["leave_id"]
    assert (lv["subject_id"], lv["zones"], lv["start"], lv["end"]) == (
        "S-1", ["411302"], T0 + DAY, T0 + 3 * DAY)
    assert lv["requested_by"] == "alice"
    leave_id = lv["leave_id"]
    # an operator cannot approve, even their own region's leave
    assert error(c.post(f"/api/leaves/{leave_id}/approve", {}), 403)["error"] == "forbidden"
    c.login("sue")
    assert queue(c) == [leave_id]
    c.clock.advance(60_000)
    r = c.post(f"/api/leaves/{leave_id}/approve", {})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "approved" and r.json()["leave_id"] == leave_id
    assert queue(c) == []
    error(c.post(f"/api/leaves/{leave_id}/approve", {}), 409)
    # the engine sees it: the register's snapshot carries the approved leave
    _, subjects = c.store.register.snapshot()
    [s1] = subjects["subjects"]
    assert [(x["start"], x["end"], x["zones"]) for x in s1["leaves"]] == [
        (T0 + DAY, T0 + 3 * DAY, ["411302"])]
    c.clock.advance(DAY)
    c.login("sue")  # a day later: the session has long ended
    listed = c.get("/api/leaves?subject_id=S-1").json()["leaves"]
    assert [x["state"] for x in listed] == ["active"]
    c.login("alice")
    r = c.post(f"/api/leaves/{leave_id}/return", {})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "returned"
    _, subjects = c.store.register.snapshot()
    assert subjects["subjects"][0]["leaves"][0]["returned"] == c.clock()
    assert [x["state"] for x in c.get("/api/leaves?subject_id=S-1").json()["leaves"]] == [
        "returned"]
    assert audit_rows(c.store, action="leaves.view")


def test_nobody_approves_their_own_request_and_refusal_is_final(enrolled):
    c = enrolled
    c.login("sue")
    own = c.post("/api/subjects/S-1/leaves", leave()).json()["leave_id"]
    assert error(c.post(f"/api/leaves/{own}/approve", {}), 403)["error"] == "forbidden"
    assert error(c.post(f"/api/leaves/{own}/refuse", {}), 403)["error"] == "forbidden"
    c.login("root")
    r = c.post(f"/api/leaves/{own}/refuse", {"reason": "证明材料不全"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "refused"
    error(c.post(f"/api/leaves/{own}/approve", {}), 409)
    error(c.post(f"/api/leaves/{own}/return", {}), 409)
    error(c.post("/api/leaves/no-such-leave/approve", {}), 404)
    _, subjects = c.store.register.snapshot()
    assert subjects["subjects"][0].get("leaves", []) == []


@pytest.mark.parametrize(("body", "status", "field"), [
    (leave(end=T0 + DAY + 31 * DAY), 400, "end"),
    (leave(start=T0 + 3 * DAY, end=T0 + DAY), 400, "end"),
    (leave(zones=("411302", "atlantis")), 400, "zones[1]"),
    (leave(start="2025-11-23 08:00"), 400, "start"),
    (leave(start="tomorrow"), 400, "start"),
    (leave(zones=()), 400, "zones"),
    ({"zones": ["411302"], "end": T0 + DAY}, 400, "start"),
    (leave() | {"days": 3}, 400, "days"),
])
def test_bad_leave_requests_name_the_field_and_leave_nothing(enrolled, body, status, field):
    c = enrolled
    error(c.post("/api/subjects/S-1/leaves", body), status, field)
    assert c.get("/api/leaves?subject_id=S-1").json()["leaves"] == []


def test_leave_times_in_iso_8601_and_the_configured_limit(enrolled):
    c = enrolled
    r = c.post("/api/subjects/S-1/leaves",
               leave(start="2025-11-23T08:00:00+08:00", end="2025-11-24T20:00:00+08:00"))
    assert r.status_code == 201, r.text
    assert r.json()["start"] == 1_763_856_000_000 and r.json()["end"] == 1_763_985_600_000
    # exactly the longest leave is allowed, a minute more is not
    start = T0 + 40 * DAY
    assert c.post("/api/subjects/S-1/leaves",
                  leave(start=start, end=start + 30 * DAY)).status_code == 201
    error(c.post("/api/subjects/S-1/leaves",
                 leave(start=start + 31 * DAY, end=start + 61 * DAY + 60_000)), 400, "end")


def test_leave_limit_comes_from_the_config(tmp_path):
    from console_helpers import open_console
    c = open_console(f"sqlite:///{tmp_path / 'a.db'}",
                     config=Config(register=RegisterConfig(leave_max_days=7)))
    with c.client:
        zones_ready(c)
        c.login("alice")
        c.post("/api/subjects", subject())
        body = error(c.post("/api/subjects/S-1/leaves", leave(end=T0 + 9 * DAY)), 400, "end")
        assert "7" in body["message"]
        assert c.post("/api/subjects/S-1/leaves", leave(end=T0 + 8 * DAY)).status_code == 201
    c.store.close_store()


def test_overlapping_an_approved_leave_conflicts(enrolled):
    c = enrolled
    first = c.post("/api/subjects/S-1/leaves", leave()).json()["leave_id"]
    c.login("sue")
    assert c.post(f"/api/leaves/{first}/approve", {}).status_code == 200
    c.login("alice")
    error(c.post("/api/subjects/S-1/leaves", leave(start=T0 + 2 * DAY, end=T0 + 4 * DAY)), 409)
    error(c.post("/api/subjects/S-1/leaves", leave(start=T0, end=T0 + DAY + 1)), 409)
    assert c.get("/api/leaves?subject_id=S-1&state=requested").json()["leaves"] == []
    assert c.post("/api/subjects/S-1/leaves",
                  leave(start=T0 + 3 * DAY + 60_000, end=T0 + 4 * DAY)).status_code == 201


def test_other_regions_leave_is_not_found(enrolled):
    c = enrolled
    leave_id = c.post("/api/subjects/S-1/leaves", leave()).json()["leave_id"]
    c.login("olga")
    error(c.post("/api/subjects/S-1/leaves", leave()), 404)
    assert queue(c) == []
    error(c.post(f"/api/leaves/{leave_id}/return", {}), 404)
    assert c.get("/api/leaves?state=bogus").status_code == 400
    c.login("sue")
    assert queue(c) == [leave_id]


def test_curfews_and_suspensions(enrolled):
    c = enrolled
    r = c.post("/api/subjects/S-1/curfews", {"start": "22:00", "end": "06:00",
                                             "zone": "victim-17"})
    assert r.status_code == 201, r.text
    error(c.post("/api/subjects/S-1/curfews", {"start": "25:00", "end": "06:00",
                                               "zone": "victim-17"}), 400, "start")
    error(c.post("/api/subjects/S-1/curfews", {"start": "22:00", "end": "06:00",
                                               "zone": "atlantis"}), 400, "zone")
    s = c.get("/api/subjects/S-1").json()
    assert [(x["start"], x["end"], x["zone"]) for x in s["curfews"]] == [
        ("22:00", "06:00", "victim-17")]
    hospital = {"type": "offline", "start": T0, "end": T0 + 5 * DAY, "reason": "住院"}
    assert error(c.post("/api/subjects/S-1/suspensions", hospital), 403)["error"] == "forbidden"
    c.login("sue")
    error(c.post("/api/subjects/S-1/suspensions", hospital | {"type": "nap"}), 400, "type")
    error(c.post("/api/subjects/S-1/suspensions", hospital | {"end": T0 - 1}), 400, "end")
    error(c.post("/api/subjects/S-1/suspensions", {k: v for k, v in hospital.items()
                                                   if k != "reason"}), 400, "reason")
    r = c.post("/api/subjects/S-1/suspensions", hospital)
    assert r.status_code == 201, r.text
    _, subjects = c.store.register.snapshot()
    [s1] = subjects["subjects"]
    assert [(x["type"], x["start"], x["end"]) for x in s1["suspensions"]] == [
        ("offline", T0, T0 + 5 * DAY)]
    assert len(s1["curfews"]) == 1
