"""The relations through the API against a real store (SQLite and PostgreSQL): a
subject's prohibited contacts set by an operator of its region; protected persons for
supervisors and admins only (an operator gets 403), every read audited, and no answer of
the console carrying a protected person's position."""

from __future__ import annotations

import pytest
from console_helpers import audit_rows
from test_console_register import error, subject, zones_ready

pytest_plugins = ["console_helpers"]

PERSON = {"person_id": "VP-1", "name": "王五", "region": "411303", "devices": ["V-1"],
          "protected_from": ["S-1"], "note": "人身安全保护令"}


def put(c, path, body):
    return c.client.put(path, json=body, headers={"X-CSRF-Token": c.csrf})


@pytest.fixture
def enrolled(any_console):
    """Zones; S-1, S-2 of 411303 (alice) and S-3 of 411302 (olga)."""
    c = any_console
    zones_ready(c)
    c.login("alice")
    for sid in ("S-1", "S-2"):
        assert c.post("/api/subjects", subject(sid)).status_code == 201
    c.login("olga")
    assert c.post("/api/subjects", subject("S-3", region="411302")).status_code == 201
    return c


def test_an_operator_sets_contacts_of_a_subject_of_their_region(enrolled):
    c = enrolled
    c.login("alice")
    r = put(c, "/api/subjects/S-1/contacts", {"contacts": ["S-2", "S-3"], "reason": "同案犯"})
    assert r.status_code == 200, r.text
    assert r.json()["contacts"] == ["S-2", "S-3"]
    assert c.get("/api/subjects/S-2/contacts").json()["contacts"] == ["S-1"]
    assert c.get("/api/subjects/S-1").json()["contacts"] == ["S-2", "S-3"]
    assert audit_rows(c.store, action="subject.contacts.view")
    # olga may not change alice's subject (404 as if it did not exist), and bad input is named
    c.login("olga")
    error(put(c, "/api/subjects/S-1/contacts", {"contacts": []}), 404)
    c.login("alice")
    error(put(c, "/api/subjects/S-1/contacts", {"contacts": ["S-1"]}), 400, "contacts[0]")
    error(put(c, "/api/subjects/S-1/contacts", {"contacts": ["S-9"]}), 404, "contacts[0]")
    error(put(c, "/api/subjects/S-1/contacts", {"contacts": [], "x": 1}), 400, "x")


def test_protected_persons_are_for_supervisors_only_and_every_read_is_audited(enrolled):
    c = enrolled
    c.login("alice")
    assert error(c.get("/api/protected"), 403)["error"] == "forbidden"
    error(c.post("/api/protected", PERSON), 403)
    c.login("sue")
    r = c.post("/api/protected", PERSON)
    assert r.status_code == 201, r.text
    assert (r.json()["devices"], r.json()["protected_from"]) == (["V-1"], ["S-1"])
    assert [p["person_id"] for p in c.get("/api/protected").json()["protected"]] == ["VP-1"]
    assert c.get("/api/protected/VP-1").json()["name"] == "王五"
    assert len(audit_rows(c.store, action="protected.view")) == 2
    assert [a["who"] for a in audit_rows(c.store, action="register.protected.add")] == ["sue"]
    error(c.post("/api/protected", {**PERSON, "person_id": "VP-2", "devices": ["B-S-1"]}),
          409, "devices[0]")
    error(c.post("/api/protected", {**PERSON, "person_id": "VP-2", "lat": 33.0}), 400, "lat")
    c.login("alice")
    error(c.get("/api/protected/VP-1"), 403)
    c.login("sue")
    r = put(c, "/api/protected/VP-1", {**PERSON, "protected_from": ["S-1", "S-2"]})
    assert r.status_code == 200 and r.json()["protected_from"] == ["S-1", "S-2"]
    # the engine's snapshot has the person; the subject's own page does not name them
    _, subjects = c.store.register.snapshot()
    assert subjects["protected"][0]["protected_from"] == ["S-1", "S-2"]
    c.login("alice")
    assert "VP-1" not in c.get("/api/subjects/S-1").text
    c.login("sue")
    error(c.post("/api/protected/VP-1/end", {}), 400, "reason")
    assert c.post("/api/protected/VP-1/end", {"reason": "保护令到期"}).status_code == 200
    assert c.get("/api/protected").json()["protected"] == []


def test_a_protected_persons_position_is_for_supervisors_and_audited(enrolled):
    c = enrolled
    c.login("sue")
    assert c.post("/api/protected", PERSON).status_code == 201
    assert c.get("/api/protected/VP-1/position").json()["positions"] == []
    store = c.store
    # what emfence run keeps: the newest fix of each device; an older one changes nothing
    store.record_protected_positions([("V-1", "VP-1", 2_000, 33.0, 112.53, 8.0, 2_100)])
    store.record_protected_positions([("V-1", "VP-1", 1_000, 34.0, 113.00, 9.0, 2_200)])
    r = c.get("/api/protected/VP-1/position")
    assert r.status_code == 200, r.text
    assert r.json()["positions"] == [{"device_id": "V-1", "person_id": "VP-1", "ts": 2_000,
                                      "lat": 33.0, "lon": 112.53, "acc": 8.0,
                                      "received_at": 2_100}]
    rows = audit_rows(c.store, action="protected.position.view")
    assert [(r["who"], r["target"]) for r in rows] == [("sue", "VP-1")] * 2  # both reads
    c.login("alice")
    assert error(c.get("/api/protected/VP-1/position"), 403)["error"] == "forbidden"
    c.login("olga")  # an operator elsewhere: 403 too, before any lookup
    error(c.get("/api/protected/VP-1/position"), 403)
    # nowhere else: the operator's map of newest positions has no victim device
    c.login("alice")
    assert "V-1" not in c.get("/api/positions").text
