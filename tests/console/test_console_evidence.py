"""The evidence pack (/api/alarms/{id}/evidence.zip) re-derived by running its own replay
command and compared byte for byte: a real alarm made by the engine from real fixes over
a real county boundary, stored as ``emfence run`` stores it (events, track rows), handled
by operators, exported over HTTP; the pack unzipped, its digests checked, its
``replay_command`` run in its folder, and the replay's lines for the alarm equal to the
stored events' bytes."""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pypdf
import shapely
from console_helpers import CNMAPS, T0, audit_rows, cleared
from console_helpers import raised as raised_event

from emfence.config import Config
from emfence.replay import replay
from emfence.run.model import compile_model
from engine.engine import Engine
from geofence import load_zones

pytest_plugins = ["console_helpers"]

ROOT = Path(__file__).resolve().parent.parent.parent
MIN = 60_000
HOUR = 60 * MIN
START = T0 - 40 * MIN  # dev-1's first fix


def seed_register(store) -> dict[str, tuple[float, float]]:
    """卧龙区 (411303) with subj-1 (dev-1) and subj-2 (dev-2); returns WGS-84 points
    deep inside it and well outside it."""
    reg = store.register
    reg.adcode_dir = str(CNMAPS)
    reg.import_adcode("411303", actor="root", now_ms=START - 86_400_000)
    for k in (1, 2):
        reg.create_subject({"subject_id": f"subj-{k}", "name": "张三", "region": "411303",
                            "level": "strict", "officer": "alice",
                            "devices": [{"device_id": f"dev-{k}"}],
                            "inclusion": ["411303"]}, actor="alice",
                           now_ms=START - 86_400_000)
    zones_fc, _ = reg.snapshot(START)
    [home] = [z.geometry for z in load_zones(zones_fc) if z.zone_id == "411303"]
    inside = home.buffer(-0.03).representative_point()
    outside = shapely.Point(113.65, 34.75)  # 郑州, some 250 km away
    assert not home.buffer(0.05).contains(outside)
    return {"in": (inside.x, inside.y), "out": (outside.x, outside.y)}


def day_of_fixes(p) -> list[bytes]:
    """dev-1 every minute: 30 in, 5 out (outbound raised at the second), 5 in (cleared at
    the first), received 1.5 s after its ts; dev-2 (another subject) in all along."""
    lines = []
    for i in range(40):
        where = "out" if 30 <= i < 35 else "in"
        for dev, at in (("dev-1", where), ("dev-2", "in")):
            lon, lat = p[at]
            ts = START + i * MIN
            lines.append(orjson.dumps({"device_id": dev, "ts": ts, "lat": lat, "lon": lon,
                                       "acc": 12.0, "rx": ts + 1500}))
    return lines


def run_engine_into(store, lines: list[bytes]) -> list[dict]:
    """What ``emfence run`` leaves in the store: the engine's events, the track rows."""
    engine = Engine(*compile_model(*store.register.snapshot(START)), Config())
    out = io.BytesIO()
    replay(lines, engine, out, config=Config())
    events = [orjson.loads(x) for x in out.getvalue().splitlines()]
    for ev in events:
        store.record_events([ev], ev["at"] + 2000)
    subject = {"dev-1": "subj-1", "dev-2": "subj-2"}
    store.record_fixes([{"device_id": f["device_id"], "subject_id": subject[f["device_id"]],
                         "region": "411303", "ts": f["ts"], "lat": f["lat"], "lon": f["lon"],
                         "acc": f["acc"], "src": "gps", "received_at": f["rx"]}
                        for f in map(orjson.loads, lines)])
    return events


def unzip(body: bytes, into: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        z.extractall(into)
        return {name: z.read(name) for name in z.namelist()}


def test_the_pack_re_derives_its_alarm_byte_for_byte(console, tmp_path):
    c = console
    p = seed_register(c.store)
    events = run_engine_into(c.store, day_of_fixes(p))
    [raised, cleared] = [e for e in events if e["type"] == "outbound"]
    assert (raised["at"], cleared["at"]) == (START + 31 * MIN, START + 35 * MIN)
    aid = raised["alarm_id"]
    c.store.acknowledge(aid, "alice", "已电话联系本人", T0 + 60 * MIN)
    c.store.add_note(aid, "alice", "本人称迷路", T0 + 61 * MIN)
    c.store.close_alarm(aid, "sue", "gps_drift", "轨迹核实", T0 + 70 * MIN)
    c.clock.now_ms = T0 + 80 * MIN

    c.login("alice")
    resp = c.get(f"/api/alarms/{aid}/evidence.zip")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/zip"
    assert resp.headers["content-disposition"] == f'attachment; filename="evidence-{aid}.zip"'
    pack = tmp_path / "pack"
    files = unzip(resp.content, pack)
    assert set(files) == {"fixes.jsonl", "zones.geojson", "subjects.json", "config.toml",
                          "alarm.json", "actions.json", "manifest.json", "README.txt",
                          "SHA256SUMS"}
    # the digests: sha256sum -c, and the manifest's list
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=pack, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0 and check.stdout.count(": OK") == 8, check.stdout
    manifest = orjson.loads(files["manifest.json"])
    assert manifest["files"] == {name: hashlib.sha256(body).hexdigest()
                                 for name, body in files.items()
                                 if name not in ("manifest.json", "README.txt", "SHA256SUMS")}
    assert (manifest["alarm_id"], manifest["exported_by"], manifest["exported_at_ms"]) == (
        aid, "alice", T0 + 80 * MIN)
    assert manifest["exported_at_local"] == "2025-11-22 17:46:40 +08:00 (Asia/Shanghai)"
    assert manifest["replayable"] is True
    # only the subject's device, every fix of the window, in receive order
    fixes = [orjson.loads(x) for x in files["fixes.jsonl"].splitlines()]
    assert {f["device_id"] for f in fixes} == {"dev-1"}
    assert [f["ts"] for f in fixes] == [START + i * MIN for i in range(36)]
    assert manifest["window"]["to_ms"] == cleared["at"]

    # the replay command, run in the pack's folder with nothing but the pack
    argv = shlex.split(manifest["replay_command"])
    assert argv[:2] == ["emfence", "replay"] and "--store" not in argv
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "emfence", *argv[1:]], cwd=pack, env=env,
                         capture_output=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr.decode()
    mine = [line for line in run.stdout.splitlines() if orjson.loads(line)["alarm_id"] == aid]
    stored = orjson.loads(files["alarm.json"])
    expected = manifest["expected_events"]
    assert expected["alarm_id"] == aid and expected["events"] == ["raised", "cleared"]
    want = [e["payload"].encode() for e in stored["events"] if e["event"] in expected["events"]]
    assert mine == want
    # ... which are the engine's own events as it raised them: id, type, at, evidence
    assert [orjson.loads(x) for x in mine] == [raised, cleared]
    assert stored["alarm"]["evidence"]["lat"] == raised["lat"]

    actions = orjson.loads(files["actions.json"])
    assert [(a["who"], a["what"]) for a in actions["actions"]] == [
        ("alice", "acknowledge"), ("alice", "note"), ("sue", "close")]
    assert actions["outcome"]["disposition"] == "gps_drift"
    readme = files["README.txt"].decode()
    assert "sha256sum -c SHA256SUMS" in readme and "核验" in readme and aid in readme

    [row] = audit_rows(c.store, action="alarms.evidence")
    assert (row["who"], row["target"]) == ("alice", aid)
    assert row["detail"]["fixes"] == 36 and row["detail"]["subject_id"] == "subj-1"

    # another region's operator: 404 as for an alarm that does not exist, on the record
    c.login("olga")
    assert c.get(f"/api/alarms/{aid}/evidence.zip").status_code == 404
    [denied] = audit_rows(c.store, action="alarm.denied")
    assert denied["who"] == "olga" and denied["detail"]["action"] == "evidence"
    assert c.get("/api/alarms/nope/evidence.zip").status_code == 404
    c.login("sue")
    assert c.get(f"/api/alarms/{aid}/evidence.zip").status_code == 200


def pdf_text(content: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(content))
    return "\n".join(p.extract_text() for p in reader.pages)


def test_the_monthly_report_says_what_the_store_holds(console):
    """subj-1 in November 2025: the engine's outbound (4 minutes outside), a two-hour
    tamper, an offline still open at the month's end (its time up to then), one leave;
    an October alarm is not in it. zh and en; another region: 404; bad month: 400."""
    c = console
    p = seed_register(c.store)
    [raised, _] = [e for e in run_engine_into(c.store, day_of_fixes(p))
                   if e["type"] == "outbound"]
    c.store.acknowledge(raised["alarm_id"], "sue", None, T0 + 60 * MIN)
    c.store.close_alarm(raised["alarm_id"], "sue", "gps_drift", None, T0 + 70 * MIN)
    dec = 1_764_518_400_000  # 2025-12-01 00:00 +08:00
    c.store.record_events([ev("tamper-1", "tamper", T0 + HOUR),
                           ev("off-1", "offline", dec - 90 * MIN),
                           ev("oct-1", "tamper", T0 - 40 * 86_400_000)], T0)
    c.store.record_events([cleared("tamper-1", kind="tamper", at=T0 + 3 * HOUR)], T0)
    reg = c.store.register
    leave = reg.request_leave("subj-1", zones=["411303"], start_ms=T0 + 86_400_000,
                              end_ms=T0 + 2 * 86_400_000, reason="探亲", actor="alice",
                              now_ms=T0)
    reg.approve_leave(leave["leave_id"], actor="sue", role="supervisor", now_ms=T0)
    c.clock.now_ms = dec + 86_400_000
    c.login("alice")
    resp = c.get("/api/subjects/subj-1/report.pdf", params={"month": "2025-11"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-disposition"] == \
        'attachment; filename="subject-report-subj-1-2025-11.pdf"'
    text = pdf_text(resp.content)
    for want in ("对象月度报告", "张三（subj-1）", "严管", "alice", "2025-11", "Asia/Shanghai",
                 "越界/闯入禁区累计时长：0小时4分钟", "定位漂移",
                 local(raised["at"]), local(T0 + HOUR), local(T0 + 3 * HOUR),
                 local(T0 + 86_400_000), "2小时0分钟", "1小时30分钟", "已批准", "责任人：alice"):
        assert want in text, want
    assert local(T0 - 40 * 86_400_000) not in text
    [row] = audit_rows(c.store, action="subject.report")
    assert (row["who"], row["target"], row["detail"]["alarms"]) == ("alice", "subj-1", 3)
    en = pdf_text(c.get("/api/subjects/subj-1/report.pdf",
                        params={"month": "2025-11", "lang": "en"}).content)
    assert "Subject monthly report" in en and "0 h 4 min" in en
    for month in ("2025-13", "2025/11", None):
        bad = c.get("/api/subjects/subj-1/report.pdf", params={"month": month} if month else {})
        assert bad.status_code == 400 and bad.json()["field"] == "month", bad.text
    c.login("olga")
    assert c.get("/api/subjects/subj-1/report.pdf",
                 params={"month": "2025-11"}).status_code == 404
    assert c.get("/api/subjects/nobody/report.pdf",
                 params={"month": "2025-11"}).status_code == 404


def ev(alarm_id: str, kind: str, at: int) -> dict:
    return {**raised_event(alarm_id, kind=kind, at=at), "zone_id": None}


def local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(
        ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")


def test_a_pack_says_when_it_cannot_re_derive_its_alarm():
    """A tamper alarm (decided by a status; the store keeps no statuses) and an alarm of
    a subject the register did not hold then: filed, marked not replayable, with why."""
    from console.evidence import build_pack

    empty = ({"type": "FeatureCollection", "features": []}, {"subjects": []})
    for kind, why in (("tamper", "statuses"), ("outbound", "not in the register")):
        alarm = {"alarm_id": "x", "type": kind, "subject_id": "subj-1", "region": "411303",
                 "raised_at": T0, "cleared_at": None}
        body = build_pack(alarm, {"events": [], "actions": [], "fixes": [],
                                  "register": empty, "changes": []},
                          config=Config(), window={"from_ms": T0 - HOUR, "to_ms": T0,
                                                   "lookback_ms": HOUR},
                          who="sue", now_ms=T0, tz="Asia/Shanghai")
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            manifest = orjson.loads(z.read("manifest.json"))
        assert manifest["replayable"] is False and why in manifest["not_replayable_because"]
