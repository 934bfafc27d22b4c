"""`emfence run --store URL` with the register as its source, end to end: a real mosquitto,
the engine as a real subprocess, a real store (SQLite and PostgreSQL), register changes
made through ``store.register`` while the engine runs, fixes published by a real MQTT
client, alarms read on the alarm topics."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
import shapely
import shapely.geometry

from alarms.store import open_store
from geofence import load_zones

pytestmark = pytest.mark.mqtt

ROOT = Path(__file__).resolve().parents[2]
CNMAPS = ROOT / "tests" / "data" / "cnmaps"
HOME = "411303"  # 卧龙区
NEIGHBOUR = "411302"  # 宛城区, shares a border with 卧龙区
NAMES = {HOME: "卧龙区", NEIGHBOUR: "宛城区"}
WAIT_S = 60.0  # a guard against a hang (a first start may compile kernels), not a speed limit
LIVE_S = 2.0  # the limit: a register change reaches the running engine within 2 s
FAST = """
[ingest]
batch_max_ms = 10
health_interval_s = 1
checkpoint_interval_s = 1
restart_grace_s = 3
[alarms]
outbox_retry_s = 1
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ccw(path: Path) -> dict:
    """A county boundary of tests/data/cnmaps with its rings in RFC 7946 order (the data
    has clockwise exteriors; the register takes only what RFC 7946 says)."""
    geom = shapely.geometry.shape(orjson.loads(path.read_bytes()))
    return shapely.geometry.mapping(shapely.orient_polygons(geom))


def county_feature(code: str) -> dict:
    return {"type": "Feature",
            "properties": {"zone_id": code, "name": NAMES[code], "coord_sys": "gcj02"},
            "geometry": ccw(CNMAPS / f"{code}.geojson")}


def inner_point(code: str) -> tuple[float, float]:
    """A WGS-84 point well inside the county (and so outside its neighbour)."""
    [zone] = load_zones({"type": "FeatureCollection", "features": [county_feature(code)]})
    p = zone.geometry.buffer(-0.01).representative_point()
    assert zone.geometry.buffer(-0.005).contains(shapely.Point(p.x, p.y))
    return (p.x, p.y)


def stamps(n: int) -> list[int]:
    """``n`` fix times of the last moments, 200 ms apart, the last one now (a device sends
    nothing from the future, and each part of the test starts after the last one's fixes:
    none of them is late)."""
    t = now_ms()
    return [t - (n - 1 - k) * 200 for k in range(n)]


def fix(ts: int, p) -> bytes:
    return orjson.dumps({"ts": ts, "lat": p[1], "lon": p[0], "acc": 10.0})


class Client:
    """A paho client on the private broker, collecting what it receives."""

    def __init__(self, port: int):
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, orjson.loads(
            m.payload)))
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, 1)[1]
        time.sleep(0.3)  # the SUBACK: the broker forwards from here on

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def alarms_until(self, done, timeout_s: float = WAIT_S) -> list[dict]:
        """Alarm events received until ``done(events)`` holds (or the guard runs out)."""
        out: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while not done(out) and time.monotonic() < deadline:
            try:
                topic, ev = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if "/alarms/" in topic:
                out.append(ev)
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Engine:
    """`python -m emfence run --store URL` (no --zones, no --subjects) as a subprocess."""

    def __init__(self, root: Path, broker_url: str, store_url: str):
        (root / "engine.toml").write_text(FAST)
        self.log_path = root / "engine.log"
        args = [sys.executable, "-m", "emfence", "run", "--broker", broker_url,
                "--store", store_url, "--name", "worker-1", "--config", str(root / "engine.toml")]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=ROOT,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, after: int = 0, timeout_s: float = WAIT_S * 5) -> float:
        """Wait until the log says ``text`` (after offset ``after``); the monotonic time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"engine log never said {text!r}:\n{self.log()[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(WAIT_S)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def of(events: list[dict], device: str, typ: str | None = None) -> list[dict]:
    return [e for e in events if e["device_id"] == device and typ in (None, e["type"])]


def test_run_from_an_empty_register_applies_enrolment_and_leave_live(tmp_path, store_url,
                                                                    mosquitto):
    store = open_store(store_url)
    reg = store.register
    t0 = now_ms()
    store.add_user("dora", "unused-hash", "operator", [HOME, NEIGHBOUR], t0)
    store.add_user("sam", "unused-hash", "supervisor", [HOME, NEIGHBOUR], t0)
    home, neighbour = inner_point(HOME), inner_point(NEIGHBOUR)
    engine = Engine(tmp_path, mosquitto.url, store_url)
    watcher = Client(mosquitto.port)
    device = Client(mosquitto.port)
    try:
        engine.wait_log("connected to")
        assert "starting: 0 devices, 0 zones" in engine.log()  # the register has no subject
        watcher.subscribe("emfence/v1/+/alarms/+")
        for code in (HOME, NEIGHBOUR):  # the zone library, then the subjects
            reg.create_zone(county_feature(code), actor="dora", now_ms=now_ms())

        # Enrolment reaches the running engine, no restart, no signal: S-1 in 卧龙区, and
        # S-2 in a region nobody was registered in when the engine subscribed.
        mark = len(engine.log())
        asked = time.monotonic()
        reg.create_subject({"subject_id": "S-1", "name": "张三", "region": HOME,
                            "level": "strict", "devices": [{"device_id": "B-1",
                                                            "kind": "bracelet"}],
                            "inclusion": [HOME], "exclusion": []},
                           actor="dora", now_ms=now_ms())
        reg.create_subject({"subject_id": "S-2", "name": "李四", "region": NEIGHBOUR,
                            "level": "strict", "devices": [{"device_id": "B-2",
                                                            "kind": "phone"}],
                            "inclusion": [NEIGHBOUR], "exclusion": []},
                           actor="dora", now_ms=now_ms())
        engine.wait_log("reloaded: 2 devices, 2 zones", after=mark)
        assert time.monotonic() - asked < LIVE_S, engine.log()[mark:]

        # Outbound for S-1 (two fixes out), cleared when back home.
        ts = stamps(4)
        for k, p in enumerate([home, neighbour, neighbour]):
            device.publish(f"emfence/v1/{HOME}/B-1/fix", fix(ts[k], p))
        got = watcher.alarms_until(lambda ev: of(ev, "B-1", "outbound"))
        [raised] = of(got, "B-1", "outbound")
        assert raised["event"] == "raised" and raised["zone_id"] == HOME
        assert raised["device_kind"] == "bracelet"
        device.publish(f"emfence/v1/{HOME}/B-1/fix", fix(ts[3], home))
        got = watcher.alarms_until(lambda ev: of(ev, "B-1"))
        assert [(e["type"], e["event"]) for e in of(got, "B-1")] == [("outbound", "cleared")]

        # Leave to 宛城区, requested by an officer, approved by a supervisor: 2 s later a
        # fix there raises nothing. S-2 (phone, region 宛城区) goes to 卧龙区 at the same
        # time: its outbound is the proof that S-1's fixes were ruled on.
        leave = reg.request_leave("S-1", zones=[NEIGHBOUR], start_ms=now_ms() - 60_000,
                                  end_ms=now_ms() + 3_600_000, reason="探亲",
                                  actor="dora", now_ms=now_ms())
        assert leave["state"] == "requested"
        reg.approve_leave(leave["leave_id"], actor="sam", role="supervisor", now_ms=now_ms())
        time.sleep(LIVE_S)
        for t in stamps(3):
            device.publish(f"emfence/v1/{HOME}/B-1/fix", fix(t, neighbour))
        for t in stamps(3):
            device.publish(f"emfence/v1/{NEIGHBOUR}/B-2/fix", fix(t, home))
        got = watcher.alarms_until(lambda ev: of(ev, "B-2", "outbound"))
        assert [(e["type"], e["event"]) for e in of(got, "B-2")] == [("outbound", "raised")]
        assert of(got, "B-2")[0]["device_kind"] == "phone"
        assert of(got, "B-1") == [], got  # the approved leave is honoured

        # The return (销假) is registered: still in 宛城区, S-1 is overdue, not outbound.
        returned_ms = now_ms()
        reg.return_leave(leave["leave_id"], actor="dora", now_ms=returned_ms)
        time.sleep(LIVE_S)
        for t in stamps(2):
            device.publish(f"emfence/v1/{HOME}/B-1/fix", fix(t, neighbour))
        got = watcher.alarms_until(lambda ev: of(ev, "B-1"))
        [overdue] = of(got, "B-1")
        assert (overdue["type"], overdue["event"]) == ("leave_overdue", "raised")
        assert overdue["zone_id"] == HOME
        # out at the return already (three fixes in 宛城区 before it): raised at the return
        assert returned_ms - 1000 <= overdue["at"] <= returned_ms + 1000

        # SIGHUP with the register as the source reloads from the register.
        mark = len(engine.log())
        engine.proc.send_signal(signal.SIGHUP)
        engine.wait_log("reloaded: 2 devices", after=mark)
        assert "SIGHUP: reloading the register in the store" in engine.log()[mark:]
        assert engine.stop() == 0
    finally:
        engine.kill()
        watcher.close()
        device.close()
        store.close_store()
