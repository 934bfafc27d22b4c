"""`emfence replay`: files in, alarm lines and a summary out; hostile lines; determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
from engine_helpers import T0, circle_feature, county_feature, offset
from engine_reference import gcj02_to_wgs84

from emfence.replay import main

ROOT = Path(__file__).resolve().parents[2]
# A point well inside county 330723 (Wuyi, Zhejiang; its outline is GCJ-02), in WGS-84.
INSIDE = gcj02_to_wgs84(119.72, 28.77)
VICTIM = offset(*INSIDE, 1000, 0)
FAR_OUT = (118.0, 28.0)


def write_inputs(tmp_path: Path, lines: list, *, level="strict") -> dict[str, Path]:
    zones = {"type": "FeatureCollection",
             "features": [county_feature("330723"), circle_feature("victim-17", *VICTIM, 300)]}
    subjects = {"subjects": [
        {"subject_id": "S-0001", "region": "330723", "level": level,
         "devices": [{"device_id": "B-0001", "kind": "bracelet"},
                     {"device_id": "P-0001", "kind": "phone"}],
         "inclusion": ["330723"], "exclusion": ["victim-17"]}]}
    paths = {"zones": tmp_path / "zones.geojson", "subjects": tmp_path / "subjects.json",
             "fixes": tmp_path / "fixes.jsonl", "out": tmp_path / "alarms.jsonl"}
    paths["zones"].write_bytes(orjson.dumps(zones))
    paths["subjects"].write_bytes(orjson.dumps(subjects))
    body = b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n"
                    for x in lines)
    paths["fixes"].write_bytes(body)
    return paths


def run(paths, *extra) -> int:
    return main(["--zones", str(paths["zones"]), "--subjects", str(paths["subjects"]),
                 "--fixes", str(paths["fixes"]), "--out", str(paths["out"]), *extra])


def events(paths) -> list[dict]:
    return [orjson.loads(x) for x in paths["out"].read_bytes().splitlines()]


def fix(dev, ts, lonlat, **kw):
    return {"device_id": dev, "ts": ts, "lon": lonlat[0], "lat": lonlat[1], "acc": 10, **kw}


SCENARIO = [
    fix("B-0001", T0, INSIDE),
    fix("P-0001", T0 + 1000, INSIDE),
    fix("B-0001", T0 + 60_000, VICTIM),  # exclusion raised; B 1 km from P: a far pair
    fix("B-0001", T0 + 120_000, FAR_OUT),  # clears exclusion; out 1; separation raised
    fix("B-0001", T0 + 180_000, FAR_OUT),  # outbound raised
    {"device_id": "B-0001", "ts": T0 + 190_000, "strap": "open", "battery": 12},
    fix("B-0001", T0 + 170_000, VICTIM),  # late: a late exclusion pair
    fix("B-0001", T0 + 240_000, INSIDE, rx=T0 + 250_000),  # outbound, separation cleared
    # P-0001 silent since T0 + 1000: offline when the clock passes T0 + 601000.
    fix("B-0001", T0 + 700_000, INSIDE),
    fix("B-0001", T0 + 700_000, INSIDE),  # duplicate
    fix("P-0001", T0 + 800_000, INSIDE),  # offline cleared
]


def test_scenario_output_in_order(tmp_path, capsys):
    paths = write_inputs(tmp_path, SCENARIO)
    assert run(paths, "--until", str(T0 + 800_000 + 600_001)) == 0
    got = [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
           for e in events(paths)]
    assert got == [
        ("raised", "exclusion", "B-0001", "victim-17", T0 + 60_000, False),
        # the bracelet left the phone behind (second far pair; relation rules come first)
        ("raised", "separation", "B-0001", None, T0 + 120_000, False),
        ("cleared", "exclusion", "B-0001", "victim-17", T0 + 120_000, False),
        ("raised", "outbound", "B-0001", "330723", T0 + 180_000, False),
        ("raised", "tamper", "B-0001", None, T0 + 190_000, False),
        ("raised", "low_battery", "B-0001", None, T0 + 190_000, False),
        ("raised", "exclusion", "B-0001", "victim-17", T0 + 170_000, True),
        ("cleared", "exclusion", "B-0001", "victim-17", T0 + 170_000, True),
        # back inside, 239 s after the phone's fix there: together again
        ("cleared", "separation", "B-0001", None, T0 + 240_000, False),
        ("cleared", "outbound", "B-0001", "330723", T0 + 240_000, False),
        ("raised", "offline", "P-0001", None, T0 + 601_000, False),
        ("cleared", "offline", "P-0001", None, T0 + 800_000, False),
        # --until: both devices silent for more than 600 s at the end.
        ("raised", "offline", "B-0001", None, T0 + 700_000 + 600_000, False),
        ("raised", "offline", "P-0001", None, T0 + 800_000 + 600_000, False),
    ]
    err = capsys.readouterr().err
    assert "11 lines, 11 records (10 fixes, 1 statuses), 1 duplicates, 1 late, 0 rejected" in err
    assert "outbound 1 raised / 1 cleared" in err and "offline 3 raised / 1 cleared" in err
    assert "exclusion 2 raised / 2 cleared" in err and "tamper 1 raised / 0 cleared" in err
    assert "separation 1 raised / 1 cleared" in err
    assert f"offline evaluated until {T0 + 800_000 + 600_001}" in err


def test_output_lines_are_the_contract_json(tmp_path):
    paths = write_inputs(tmp_path, SCENARIO[:5])
    assert run(paths) == 0
    raw = paths["out"].read_bytes().splitlines()
    first = json.loads(raw[0])
    assert list(first) == ["event", "alarm_id", "type", "subject_id", "device_id", "zone_id",
                           "region", "at", "late", "lat", "lon", "distance_m", "acc",
                           "devices", "device_kind"]  # devices: one alarm per subject
    assert first["region"] == "330723" and first["subject_id"] == "S-0001"
    assert first["device_kind"] == "bracelet"
    assert json.loads(raw[2])["alarm_id"] == first["alarm_id"]  # (raw[1]: separation)
    sep = json.loads(raw[1])
    assert list(sep) == ["event", "alarm_id", "type", "subject_id", "device_id", "zone_id",
                         "region", "at", "late", "lat", "lon", "distance_m", "acc",
                         "peer_device_id", "peer_lat", "peer_lon", "peer_acc", "device_kind"]
    assert (sep["type"], sep["device_id"], sep["peer_device_id"]) == (
        "separation", "B-0001", "P-0001")


def test_deterministic_byte_for_byte(tmp_path, capsys):
    paths = write_inputs(tmp_path, SCENARIO + [b"{broken"])
    assert run(paths, "--until", str(T0 + 10**7)) == 0
    first_out, first_err = paths["out"].read_bytes(), capsys.readouterr().err
    assert run(paths, "--until", str(T0 + 10**7)) == 0
    assert paths["out"].read_bytes() == first_out
    assert capsys.readouterr().err == first_err
    assert len(first_out.splitlines()) == 14


HOSTILE = [
    (b"{not json", "bad_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'"just a string"', "not_object"),
    ({"ts": T0, "lat": 28.7, "lon": 119.7}, "missing_field: device_id"),
    ({"device_id": 17, "ts": T0, "lat": 28.7, "lon": 119.7}, "bad_value: device_id"),
    ({"device_id": "B-0001/../x", "ts": T0, "lat": 28.7, "lon": 119.7}, "bad_value: device_id"),
    ({"device_id": "Z-9999", "ts": T0, "lat": 28.7, "lon": 119.7}, "unknown_device"),
    ({"device_id": "B-0001", "lat": 28.7, "lon": 119.7}, "missing_field: ts"),
    ({"device_id": "B-0001", "ts": "yesterday", "lat": 28.7, "lon": 119.7}, "bad_type: ts"),
    ({"device_id": "B-0001", "ts": T0 // 1000, "lat": 28.7, "lon": 119.7}, "out_of_range: ts"),
    ({"device_id": "B-0001", "ts": T0, "lat": 91.0, "lon": 119.7}, "out_of_range: lat"),
    ({"device_id": "B-0001", "ts": T0, "lat": 28.7, "lon": "119.7"}, "bad_type: lon"),
    ({"device_id": "B-0001", "ts": T0, "lat": 28.7}, "missing_field: lon"),
    (b'{"device_id": "B-0001", "ts": 1763600000000, "lat": NaN, "lon": 119.7}', "bad_json"),
    (b'{"device_id": "B-0001", "ts": 1763600000000, "lat": 1e400, "lon": 119.7}',
     "out_of_range: lat=inf"),
    ({"device_id": "B-0001", "ts": T0, "lat": 28.7, "lon": 119.7, "seq": 2**64},
     "out_of_range: seq"),
    ({"device_id": "B-0001", "ts": 2**70, "lat": 28.7, "lon": 119.7}, "out_of_range: ts"),
    ({"device_id": "B-0001", "ts": T0, "lat": 28.7, "lon": 119.7, "rx": 2**70}, "out_of_range: rx"),
    ({"device_id": "B-0001", "ts": T0, "lat": 28.7, "lon": 119.7, "acc": -5}, "out_of_range: acc"),
    ({"device_id": "B-0001", "ts": T0, "lat": 28.7, "lon": 119.7, "coord_sys": "bd09"},
     "bad_value: coord_sys"),
    ({"device_id": "B-0001", "ts": T0, "lat": 28.7, "lon": 119.7, "rx": True}, "bad_type: rx"),
    ({"device_id": "B-0001", "ts": T0 + 10**7, "lat": 28.7, "lon": 119.7, "rx": T0}, "future_ts"),
    ({"device_id": "B-0001", "ts": T0, "strap": "cut"}, "bad_value: strap"),
    ({"device_id": "B-0001", "ts": T0, "power": "standby"}, "bad_value: power"),
    ({"device_id": "B-0001", "ts": T0, "battery": 140}, "out_of_range: battery"),
    ({"device_id": "B-0001", "ts": T0, "lat": 10**30, "lon": 119.7}, "out_of_range: lat"),
    (b"\xff\xfe garbage bytes", "bad_json"),
]


def test_hostile_lines_are_reported_and_skipped(tmp_path, capsys):
    good_before = fix("B-0001", T0 - 1000, INSIDE)
    good_after = fix("B-0001", T0 + 5000, VICTIM)
    lines = [good_before] + [h for h, _ in HOSTILE] + [b"", b"   ", good_after]
    paths = write_inputs(tmp_path, lines)
    assert run(paths) == 0
    assert [e["type"] for e in events(paths)] == ["exclusion"]  # the run went on
    err = capsys.readouterr().err
    assert f"{len(HOSTILE)} rejected lines" in err
    assert "blank lines skipped: 2" in err
    listed = [line.strip() for line in err.splitlines() if line.startswith("  line ")]
    assert len(listed) == len(HOSTILE)
    for k, (_, reason) in enumerate(HOSTILE):
        assert listed[k].startswith(f"line {k + 2}: {reason}"), (listed[k], reason)


def test_until_ends_the_replay(tmp_path, capsys):
    lines = [fix("B-0001", T0, INSIDE), fix("B-0001", T0 + 1000, FAR_OUT),
             fix("B-0001", T0 + 2000, FAR_OUT), fix("B-0001", T0 + 3000, INSIDE)]
    paths = write_inputs(tmp_path, lines)
    until = "2025-11-20T08:53:22.500+08:00"  # T0 + 2500
    assert run(paths, "--until", until) == 0
    assert [(e["event"], e["type"]) for e in events(paths)] == [("raised", "outbound")]
    assert "records after --until, not replayed: 1" in capsys.readouterr().err
    # Without --until offline is evaluated at the last clock value: nothing is silent yet.
    assert run(paths) == 0
    assert [(e["event"], e["type"]) for e in events(paths)][-1] == ("cleared", "outbound")


def test_offline_is_evaluated_whenever_the_clock_advances(tmp_path):
    # rx drives the clock: B-0001's rx jumps 20 minutes while its ts barely moves.
    lines = [fix("B-0001", T0, INSIDE), fix("P-0001", T0, INSIDE),
             fix("B-0001", T0 + 1000, INSIDE, rx=T0 + 1_200_000),
             fix("P-0001", T0 + 2000, INSIDE, rx=T0 + 1_300_000)]
    paths = write_inputs(tmp_path, lines)
    assert run(paths) == 0
    assert [(e["event"], e["device_id"], e["at"]) for e in events(paths)] == [
        ("raised", "B-0001", T0 + 600_000), ("raised", "P-0001", T0 + 600_000),
        ("cleared", "B-0001", T0 + 1_200_000), ("cleared", "P-0001", T0 + 1_300_000)]


def test_many_lines_across_batches(tmp_path, monkeypatch):
    import emfence.replay as replay_mod

    monkeypatch.setattr(replay_mod, "BATCH_RECORDS", 7)  # force many kernel calls
    lines = []
    for k in range(100):
        lines.append(fix("B-0001", T0 + k * 60_000, FAR_OUT if (k // 10) % 2 else INSIDE))
    paths = write_inputs(tmp_path, lines)
    assert run(paths) == 0
    small = paths["out"].read_bytes()
    monkeypatch.setattr(replay_mod, "BATCH_RECORDS", 65536)
    assert run(paths) == 0
    assert paths["out"].read_bytes() == small
    assert [e["event"] for e in events(paths)] == ["raised", "cleared"] * 4 + ["raised"]


def test_input_errors_exit_1_with_a_message(tmp_path, capsys):
    paths = write_inputs(tmp_path, SCENARIO)
    missing = dict(paths, fixes=tmp_path / "nope.jsonl")
    assert run(missing) == 1
    assert "cannot read" in capsys.readouterr().err
    paths["subjects"].write_text(json.dumps({"subjects": [
        {"subject_id": "S-7", "region": "1", "level": "strict",
         "devices": [{"device_id": "D"}], "inclusion": ["atlantis"]}]}))
    assert run(paths) == 1
    assert "subject 'S-7': unknown zone id 'atlantis'" in capsys.readouterr().err
    paths = write_inputs(tmp_path, SCENARIO)
    paths["zones"].write_text("{}")
    assert run(paths) == 1
    assert "zones" in capsys.readouterr().err
    paths = write_inputs(tmp_path, SCENARIO)
    assert run(paths, "--until", "soon") == 2


def test_emfence_replay_command_writes_stdout(tmp_path):
    paths = write_inputs(tmp_path, SCENARIO[:5])
    proc = subprocess.run(
        [sys.executable, "-m", "emfence", "replay", "--zones", str(paths["zones"]),
         "--subjects", str(paths["subjects"]), "--fixes", str(paths["fixes"])],
        capture_output=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [orjson.loads(x)["type"] for x in proc.stdout.splitlines()] == [
        "exclusion", "separation", "exclusion", "outbound"]
    assert b"5 records" in proc.stderr


def test_fixes_from_stdin_and_events_to_stdout(tmp_path):
    paths = write_inputs(tmp_path, SCENARIO[:5])
    proc = subprocess.run(
        [sys.executable, "-m", "emfence", "replay", "--zones", str(paths["zones"]),
         "--subjects", str(paths["subjects"]), "--fixes", "-"],
        input=paths["fixes"].read_bytes(), capture_output=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert run(paths) == 0
    assert proc.stdout == paths["out"].read_bytes()  # same bytes as from the file


def test_a_number_orjson_refuses_in_an_unknown_field_costs_no_line(tmp_path, capsys):
    # 1e400 is JSON (beyond a double); the live intake reads such a fix, and so does replay.
    far_out = fix("B-0001", T0 + 1000, FAR_OUT)
    line = json.dumps(far_out).encode()[:-1] + b', "firmware_note": 1e400}'
    paths = write_inputs(tmp_path, [fix("B-0001", T0, INSIDE), line,
                                    fix("B-0001", T0 + 2000, FAR_OUT)])
    assert run(paths) == 0
    assert [(e["event"], e["type"]) for e in events(paths)] == [("raised", "outbound")]
    assert "0 rejected lines" in capsys.readouterr().err


def test_replay_a_day_with_a_returned_leave_a_curfew_and_a_suspension(tmp_path):
    """The subjects file's issue-13 fields through the command: the curfew's local time
    comes from --config's register.timezone, the suspension marks its events."""
    paths = write_inputs(tmp_path, [
        fix("B-0001", T0, FAR_OUT), fix("B-0001", T0 + 60_000, FAR_OUT),  # on leave
        fix("B-0001", T0 + 3_600_000, FAR_OUT),  # returned at T0 + 30 min: overdue from it
        fix("B-0001", T0 + 3_700_000, INSIDE),
        # 22:00 Tokyo = 13:00Z: T0 is 00:53:20Z, so the window is T0 + 12:06:40.
        fix("P-0001", T0 + 43_700_000, INSIDE), fix("P-0001", T0 + 43_760_000, INSIDE),
    ])
    subjects = orjson.loads(paths["subjects"].read_bytes())
    s = subjects["subjects"][0]
    s["leaves"] = [{"leave_id": "L-1", "start": T0 - 1, "end": T0 + 86_400_000,
                    "returned": T0 + 1_800_000, "zones": ["far"]}]
    s["curfews"] = [{"curfew_id": "C-1", "start": "22:00", "end": "06:00", "zone": "victim-17"}]
    s["suspensions"] = [{"type": "curfew", "start": T0, "end": T0 + 86_400_000,
                         "reason": "住院"}]
    paths["subjects"].write_bytes(orjson.dumps(subjects))
    zones = orjson.loads(paths["zones"].read_bytes())
    zones["features"].append(circle_feature("far", *FAR_OUT, 5000))
    paths["zones"].write_bytes(orjson.dumps(zones))
    config = tmp_path / "c.toml"
    config.write_text('[register]\ntimezone = "Asia/Tokyo"\n')
    assert run(paths, "--config", str(config)) == 0
    got = [(e["event"], e["type"], e["device_id"], e["at"], e["device_kind"],
            e.get("suspended", False)) for e in events(paths) if e["type"] != "offline"]
    assert got == [
        ("raised", "leave_overdue", "B-0001", T0 + 1_800_000, "bracelet", False),
        ("cleared", "leave_overdue", "B-0001", T0 + 3_700_000, "bracelet", False),
        ("raised", "curfew", "P-0001", T0 + 43_760_000, "phone", True),
    ]


def test_replay_power_off_and_no_fix_byte_for_byte(tmp_path, capsys):
    """A power-off status (offline held back while the phone is off, cleared by its next
    message) and a bracelet in foil (statuses, no fix: no_fix at the threshold on the
    receive clock, cleared by its next fix), twice, the same bytes."""
    lines = [fix("B-0001", T0, INSIDE), fix("P-0001", T0, INSIDE),
             {"device_id": "P-0001", "ts": T0 + 1000, "power": "off"}]
    lines += [{"device_id": "B-0001", "ts": T0 + k * 60_000, "battery": 70}
              for k in range(1, 21)]  # 20 minutes of statuses, no fix
    lines += [fix("B-0001", T0 + 1_300_000, INSIDE),
              {"device_id": "P-0001", "ts": T0 + 1_400_000, "power": "on"}]
    paths = write_inputs(tmp_path, lines)
    assert run(paths, "--until", str(T0 + 1_500_000)) == 0
    first = paths["out"].read_bytes()
    assert [(e["event"], e["type"], e["device_id"], e["at"]) for e in events(paths)] == [
        ("raised", "power_off", "P-0001", T0 + 1000),
        ("raised", "no_fix", "B-0001", T0 + 900_000),  # strict: 900 s after the fix
        ("cleared", "no_fix", "B-0001", T0 + 1_300_000),
        ("cleared", "power_off", "P-0001", T0 + 1_400_000)]
    no_fix = events(paths)[1]
    assert no_fix["last_fix_rx_ms"] == T0 and no_fix["lat"] == INSIDE[1]
    assert run(paths, "--until", str(T0 + 1_500_000)) == 0
    assert paths["out"].read_bytes() == first
    capsys.readouterr()
