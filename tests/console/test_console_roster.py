"""The duty roster's API against a real store (SQLite and PostgreSQL): supervisors and
admins only, within their regions, CSRF on changes, each bad input answered with the
field named, every change and read audited, and the "who would be told" view."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from console_helpers import audit_rows

pytest_plugins = ["console_helpers"]

NIGHT = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "08:00"}


def doc(pid="P-1", region="411303", role="duty", **over):
    d = {"region": region, "name": "值班员王五", "role": role, "phone": "13800000000",
         "shifts": [NIGHT]}
    d.update(over)
    return d


def put(c, pid, body, csrf="session"):
    headers = {"X-CSRF-Token": c.csrf} if csrf == "session" else {}
    return c.client.put(f"/api/roster/{pid}", json=body, headers=headers)


def delete(c, pid):
    return c.client.delete(f"/api/roster/{pid}", headers={"X-CSRF-Token": c.csrf})


def shanghai_ms(*args):
    return int(datetime(*args, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)


def test_a_supervisor_keeps_the_roster_of_their_regions(any_console):
    c = any_console
    c.login("sue")
    r = put(c, "P-1", doc())
    assert r.status_code == 201, r.text
    assert r.json()["level"] == 1 and r.json()["shifts"] == [NIGHT]
    r = put(c, "P-1", doc(name="王五", lang="en"))
    assert r.status_code == 200 and r.json()["lang"] == "en"
    assert put(c, "SQ-1", doc(role="squadron", region="411302", shifts=[])).status_code == 201
    r = c.get("/api/roster")
    assert r.status_code == 200
    body = r.json()
    assert [p["person_id"] for p in body["people"]] == ["SQ-1", "P-1"]
    assert body["roles"]["brigade"] == 3 and body["timezone"] == "Asia/Shanghai"
    assert [p["person_id"] for p in c.get("/api/roster?region=411303").json()["people"]] == \
        ["P-1"]
    r = delete(c, "SQ-1")
    assert r.status_code == 200 and r.json()["person_id"] == "SQ-1"
    assert delete(c, "SQ-1").status_code == 404
    actions = [(a["action"], a["target"], a["who"]) for a in audit_rows(c.store)
               if a["action"].startswith("roster.")]
    assert ("roster.put", "P-1", "sue") in actions and ("roster.delete", "SQ-1", "sue") in actions
    assert sum(a == "roster.view" for a, _, _ in actions) == 2
    put_rows = audit_rows(c.store, action="roster.put", target="P-1")
    assert put_rows[0]["detail"]["before"]["name"] == "值班员王五"
    assert put_rows[0]["detail"]["after"]["name"] == "王五"
    assert put_rows[0]["ip"]


def test_operators_and_other_regions_are_refused(any_console):
    c = any_console
    c.login("root")
    assert put(c, "P-9", doc(region="330723")).status_code == 201  # an admin: any region
    c.login("alice")
    r = put(c, "P-1", doc())
    assert r.status_code == 403 and "supervisor" in r.json()["message"]
    assert c.get("/api/roster").status_code == 403
    c.login("sue")
    r = put(c, "P-2", doc(region="330723"))
    assert r.status_code == 403 and r.json()["field"] == "region"
    assert delete(c, "P-9").status_code == 404  # not one of sue's: as if unknown
    assert [p["person_id"] for p in c.get("/api/roster").json()["people"]] == []
    assert put(c, "P-1", doc(), csrf=None).status_code == 403  # no CSRF token
    assert c.store.roster.people() and len(c.store.roster.people()) == 1


def test_bad_input_is_answered_with_the_field(any_console):
    c = any_console
    c.login("sue")
    cases = [
        (doc(role="chief"), "role"),
        (doc(phone="call me"), "phone"),
        (doc(shifts=[{"start": "22:00", "end": "25:00"}]), "shifts[0].end"),
        (doc(shifts=[{"start": "22:00", "end": "06:00", "days": ["xx"]}]), "shifts[0].days"),
        (doc(role="officer"), "account"),
        (doc(role="officer", account="nobody"), "account"),
        (doc(person_id="P-other"), "person_id"),
        (doc(lang="de"), "lang"),
    ]
    for body, field in cases:
        r = put(c, "P-1", body)
        assert r.status_code == 400, (field, r.text)
        assert r.json()["field"] == field and r.json()["message"], r.json()
    assert put(c, "bad id!", doc()).json()["field"] == "person_id"
    assert c.store.roster.people() == []


def test_who_would_be_told_level_by_level(any_console):
    c = any_console
    c.login("sue")
    for pid, body in (("NIGHT", doc()), ("DAY", doc(shifts=[{"start": "08:00",
                                                              "end": "22:00"}])),
                      ("DEF", doc(role="default_officer", shifts=[])),
                      ("SQ", doc(role="squadron", shifts=[])),
                      ("BR", doc(role="brigade", shifts=[]))):
        assert put(c, pid, body).status_code == 201
    at = shanghai_ms(2026, 6, 1, 23, 30)  # Monday night
    r = c.get(f"/api/roster/told?region=411303&at={at}")
    assert r.status_code == 200, r.text
    levels = {k: [p["person_id"] for p in v] for k, v in r.json()["levels"].items()}
    assert levels == {"1": ["DEF", "NIGHT"], "2": ["SQ"], "3": ["BR"]}
    r = c.get("/api/roster/told?region=411303&at=2026-06-02T09:00:00%2B08:00")
    assert [p["person_id"] for p in r.json()["levels"]["1"]] == ["DEF", "DAY"]
    assert c.get("/api/roster/told").json()["field"] == "region"
    assert c.get("/api/roster/told?region=330723").status_code == 403
    assert c.get("/api/roster/told?region=411303&at=yesterday").json()["field"] == "at"
