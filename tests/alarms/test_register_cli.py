"""`emfence register import|export` on SQLite and PostgreSQL: today's files into the
register and back out, in the formats `emfence replay` reads; a second import changes
nothing; a conflicting one is refused whole, in one line."""

from __future__ import annotations

import orjson
import pytest
from register_helpers import circle

from alarms import open_store
from alarms.register_cli import main as register_main
from emfence.replay import main as replay_main
from geofence.cli import import_adcodes

SUBJECTS = {"subjects": [
    {"subject_id": "S-0001", "region": "411303", "level": "strict", "name": "张三",
     "devices": [{"device_id": "B-0001", "kind": "bracelet"},
                 {"device_id": "P-0001", "kind": "phone"}],
     "inclusion": ["411303"], "exclusion": ["victim-1"],
     "curfews": [{"curfew_id": "C-1", "start": "22:00", "end": "06:00", "zone": "victim-1"}],
     "suspensions": [{"type": "offline", "start": 1_780_000_000_000,
                      "end": 1_780_200_000_000, "reason": "住院"}]},
    {"subject_id": "S-0002", "region": "411302", "level": "ordinary",
     "devices": [{"device_id": "B-0002", "kind": "bracelet"}],
     "inclusion": ["411302"],
     "leaves": [{"leave_id": "L-7", "start": "2026-12-01T08:00:00+08:00",
                 "end": "2026-12-03T20:00:00+08:00", "zones": ["411321"]},
                {"start": 1_780_000_000_000, "end": 1_780_100_000_000, "zones": ["411321"],
                 "returned": 1_780_050_000_000}]},
]}


@pytest.fixture
def files(tmp_path, cnmaps_dir):
    zones = import_adcodes(["411303", "411302", "411321"], cnmaps_dir)
    zones["features"].append(circle("victim-1"))
    (tmp_path / "zones.geojson").write_bytes(orjson.dumps(zones))
    (tmp_path / "subjects.json").write_bytes(orjson.dumps(SUBJECTS))
    return tmp_path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = register_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.strip(), err.strip()


def _import(capsys, files, url, subjects="subjects.json"):
    return _run(capsys, "import", "--zones", str(files / "zones.geojson"), "--subjects",
                str(files / subjects), "--store", url, "--actor", "dora")


def test_import_twice_then_export_what_replay_reads(files, store_url, capsys):
    rc, out, err = _import(capsys, files, store_url)
    assert (rc, err) == (0, "")
    assert out.startswith("imported 4 zones (0 already there) and 2 subjects (0 already there)")
    rc, out, _ = _import(capsys, files, store_url)
    assert rc == 0 and out.startswith("imported 0 zones (4 already there) and 0 subjects "
                                      "(2 already there)")
    with open_store(store_url) as store:
        assert store.register.get_subject("S-0002")["name"] == "S-0002"
        leaves = store.register.list_leaves(subject_id="S-0002", now_ms=1_800_000_000_000)
        assert sorted((lv["leave_id"] == "L-7", lv["state"]) for lv in leaves) == [
            (False, "returned"), (True, "ended")]
        assert store.audit_log(action="register.import")[0]["who"] == "dora"

    rc, out, _ = _run(capsys, "export", "--store", store_url, "-o", str(files / "out"))
    assert rc == 0 and "4 zones" in out and "2 subjects" in out
    exported = orjson.loads((files / "out" / "subjects.json").read_bytes())
    by_id = {s["subject_id"]: s for s in exported["subjects"]}
    assert by_id["S-0001"]["curfews"][0]["curfew_id"] == "C-1"
    assert by_id["S-0001"]["suspensions"][0]["reason"] == "住院"
    assert [lv.get("returned") for lv in by_id["S-0002"]["leaves"]] == [1_780_050_000_000, None]
    zones = orjson.loads((files / "out" / "zones.geojson").read_bytes())
    original = orjson.loads((files / "zones.geojson").read_bytes())
    assert {f["properties"]["zone_id"]: f["geometry"] for f in zones["features"]} == {
        f["properties"]["zone_id"]: f["geometry"] for f in original["features"]}
    (files / "fixes.jsonl").write_text(
        '{"device_id": "B-0001", "ts": 1780000000000, "lat": 33.0, "lon": 112.53}\n')
    assert replay_main(["--zones", str(files / "out" / "zones.geojson"), "--subjects",
                        str(files / "out" / "subjects.json"), "--fixes",
                        str(files / "fixes.jsonl")]) == 0


def test_an_export_imported_elsewhere_exports_the_same(files, store_url, tmp_path, capsys):
    assert _import(capsys, files, store_url)[0] == 0
    assert _run(capsys, "export", "--store", store_url, "-o", str(files / "a"))[0] == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    rc, out, err = _run(capsys, "import", "--zones", str(files / "a" / "zones.geojson"),
                        "--subjects", str(files / "a" / "subjects.json"), "--store", other)
    assert (rc, err) == (0, ""), out
    assert _run(capsys, "export", "--store", other, "-o", str(files / "b"))[0] == 0
    for name in ("zones.geojson", "subjects.json"):
        assert orjson.loads((files / "a" / name).read_bytes()) == orjson.loads(
            (files / "b" / name).read_bytes()), name


def test_a_conflicting_import_is_refused_whole(files, store_url, capsys):
    assert _import(capsys, files, store_url)[0] == 0
    changed = orjson.loads(orjson.dumps(SUBJECTS))
    changed["subjects"].append({"subject_id": "S-0003", "region": "411303", "level": "strict",
                                "devices": [{"device_id": "B-0003"}],
                                "inclusion": ["411303"]})
    changed["subjects"][1]["level"] = "strict"
    (files / "changed.json").write_bytes(orjson.dumps(changed))
    with open_store(store_url) as store:
        seq = store.register.change_seq()
    rc, _, err = _import(capsys, files, store_url, "changed.json")
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"emfence register import: {files / 'changed.json'}: subjects[1]: ")
    assert "'S-0002' is in the register with other data" in err
    assert err.endswith("(nothing was imported)")
    taken = orjson.loads(orjson.dumps(SUBJECTS))
    taken["subjects"] = [{"subject_id": "S-0009", "region": "411303", "level": "strict",
                          "devices": [{"device_id": "B-0001"}], "inclusion": ["411303"]}]
    (files / "taken.json").write_bytes(orjson.dumps(taken))
    rc, _, err = _import(capsys, files, store_url, "taken.json")
    assert rc == 1 and "subjects[0].devices[0].device_id" in err and "'S-0001'" in err
    with open_store(store_url) as store:
        assert store.register.change_seq() == seq
        assert [s["subject_id"] for s in store.register.list_subjects()] == ["S-0001", "S-0002"]


def test_usage_mistakes_exit_2(files, capsys):
    with pytest.raises(SystemExit) as exc:
        register_main(["import", "--store", f"sqlite:///{files / 'r.db'}"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        register_main(["export", "--store", f"sqlite:///{files / 'r.db'}"])
    assert exc.value.code == 2


def test_contacts_and_protected_persons_from_the_command_line(files, store_url, capsys):
    assert _import(capsys, files, store_url)[0] == 0
    rc, out, err = _run(capsys, "contacts", "S-0001", "--set", "S-0002", "--reason",
                        "同案犯", "--store", store_url)
    assert (rc, out, err) == (0, "S-0001: contacts S-0002", "")
    assert _run(capsys, "contacts", "S-0002", "--store", store_url)[1] == "S-0001"
    rc, out, _ = _run(capsys, "protected", "add", "--person", "VP-1", "--name", "王五",
                      "--region", "411303", "--device", "V-1", "--protected-from", "S-0001",
                      "--store", store_url)
    assert rc == 0 and out == ("protected person VP-1 (411303): devices V-1, protected "
                               "from S-0001")
    assert _run(capsys, "protected", "list", "--store", store_url)[1] == (
        "VP-1\t411303\tV-1\tS-0001")
    # a mistake: one line naming it, exit 1, nothing changed
    rc, out, err = _run(capsys, "protected", "add", "--person", "VP-2", "--region", "411303",
                        "--device", "B-0001", "--protected-from", "S-0001", "--store",
                        store_url)
    assert rc == 1 and "\n" not in err and "device 'B-0001' is 'S-0001'" in err
    # the export carries both, in the form emfence replay reads
    assert _run(capsys, "export", "--store", store_url, "-o", str(files / "out"))[0] == 0
    exported = orjson.loads((files / "out" / "subjects.json").read_bytes())
    assert exported["protected"] == [{"person_id": "VP-1", "region": "411303",
                                      "devices": [{"device_id": "V-1", "kind": "victim"}],
                                      "protected_from": ["S-0001"]}]
    assert [s.get("contacts") for s in exported["subjects"]] == [["S-0002"], None]
    (files / "fixes.jsonl").write_text(
        '{"device_id": "V-1", "ts": 1780000000000, "lat": 33.0, "lon": 112.53}\n'
        '{"device_id": "B-0001", "ts": 1780000001000, "lat": 33.0, "lon": 112.531}\n')
    assert replay_main(["--zones", str(files / "out" / "zones.geojson"), "--subjects",
                        str(files / "out" / "subjects.json"), "--fixes",
                        str(files / "fixes.jsonl"), "--out", str(files / "ev.jsonl")]) == 0
    events = [orjson.loads(line) for line in (files / "ev.jsonl").read_text().splitlines()]
    assert [(e["type"], e["person_id"]) for e in events if e["type"] == "proximity"] == [
        ("proximity", "VP-1")]
    rc, out, _ = _run(capsys, "protected", "end", "--person", "VP-1", "--reason", "到期",
                      "--store", store_url)
    assert (rc, out) == (0, "protection of VP-1 ended")
    assert _run(capsys, "protected", "list", "--store", store_url)[1] == "(none)"
