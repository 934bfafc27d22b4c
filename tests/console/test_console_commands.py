"""``/api/devices/{id}/commands`` (issue #16, the downlink): an operator of the device's
region queues a command, reads the device's commands back; the region scope, the audit
trail and the named 400s, over a real SQLite store."""

from __future__ import annotations

from console_helpers import CNMAPS, T0, audit_rows

pytest_plugins = ["console_helpers"]


def _enrol(store) -> None:
    reg = store.register
    reg.adcode_dir = str(CNMAPS)
    for region in ("411303", "411302"):
        reg.import_adcode(region, actor="root", now_ms=T0)
    for sid, region in (("S-1", "411303"), ("S-2", "411302")):
        reg.create_subject({"subject_id": sid, "name": "张三", "region": region,
                            "level": "strict", "devices": [{"device_id": f"B-{sid}"}],
                            "inclusion": [region]}, actor="root", now_ms=T0)


def test_commands_are_queued_scoped_audited_and_checked(console):
    _enrol(console.store)
    assert console.login("alice").status_code == 200
    path = "/api/devices/B-S-1/commands"

    r = console.post(path, {"cmd": "interval", "interval_s": 10, "duration_s": 600})
    assert r.status_code == 201, r.text
    sent = r.json()
    assert (sent["state"], sent["region"], sent["args"], sent["created_by"]) == (
        "pending", "411303", {"interval_s": 10, "duration_s": 600}, "alice")
    assert sent["expires_at"] > sent["created_at"] == T0
    assert console.post(path, {"cmd": "vibrate"}).status_code == 201
    [cmd_row] = [a for a in audit_rows(console.store, action="device.command")
                 if a["detail"]["cmd"] == "interval"]
    assert (cmd_row["who"], cmd_row["target"], cmd_row["detail"]) == (
        "alice", "B-S-1", {"cmd_id": sent["cmd_id"], "cmd": "interval", "region": "411303",
                           "interval_s": 10, "duration_s": 600})

    listed = console.get(path).json()
    assert [c["cmd"] for c in listed["commands"]] in (["vibrate", "interval"],
                                                      ["interval", "vibrate"])
    assert {c["state"] for c in listed["commands"]} == {"pending"}
    [view] = audit_rows(console.store, action="device.commands.view")
    assert view["detail"] == {"region": "411303", "commands": 2}

    # bad input: 400 naming the field, nothing queued
    for body, field in (({"cmd": "explode"}, "cmd"), ({}, "cmd"),
                        ({"cmd": "interval", "interval_s": 2, "duration_s": 600}, "interval_s"),
                        ({"cmd": "interval", "interval_s": 10}, "duration_s"),
                        ({"cmd": "interval", "interval_s": 10, "duration_s": 90_000},
                         "duration_s"),
                        ({"cmd": "interval", "interval_s": "10", "duration_s": 600},
                         "interval_s"),
                        ({"cmd": "vibrate", "interval_s": 10}, "interval_s"),
                        ({"cmd": "vibrate", "loud": True}, "loud")):
        r = console.post(path, body)
        assert (r.status_code, r.json().get("field")) == (400, field), (body, r.text)
        assert field in r.json()["message"]
    assert len(console.store.device_commands("B-S-1")) == 2

    # another region's device: 403 and the attempt on the record; an unknown one: 404
    r = console.post("/api/devices/B-S-2/commands", {"cmd": "locate"})
    assert r.status_code == 403 and "411302" in r.json()["message"]
    assert console.get("/api/devices/B-S-2/commands").status_code == 403
    assert [(a["target"], a["detail"]["action"]) for a in
            audit_rows(console.store, action="device.denied")] in (
        [("B-S-2", "commands.view"), ("B-S-2", "command")],
        [("B-S-2", "command"), ("B-S-2", "commands.view")])
    assert console.store.device_commands("B-S-2") == []
    assert console.post("/api/devices/NOPE/commands", {"cmd": "locate"}).status_code == 404
    # without the CSRF token nothing is queued
    assert console.post(path, {"cmd": "locate"}, csrf=None).status_code == 403
    assert len(console.store.device_commands("B-S-1")) == 2

    # the other region's operator may command their own device
    assert console.login("olga").status_code == 200
    assert console.post("/api/devices/B-S-2/commands", {"cmd": "locate"}).status_code == 201
    assert console.get(path).status_code == 403
