"""Abuse of the broker by a device with nothing but its own password, played against a
real mosquitto started from the shipped config and ACL (``deploy/mosquitto``) and the
real engine (`python -m emfence run`): taking over the engine's session, retained
fixes, an abandoned worker's session, a payload over the broker's size limit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import orjson
import pytest
from ingest_fleet import CONSOLE_PW, ENGINE_PW, REGION_A, ROOT, SECRET, fix, now_ms, until
from ingest_mqtt_helpers import WAIT_S, PahoClient

from alarms.store import open_store
from ingest.passwords import CONSOLE_USER, device_password, engine_account

pytestmark = pytest.mark.mqtt

FAST = """
[ingest]
batch_max_ms = 10
health_interval_s = 1
checkpoint_interval_s = 1
restart_grace_s = 3
[alarms]
outbox_retry_s = 1
"""
WORKER = "worker-1"
ENGINE_CLIENT_ID = engine_account(WORKER)  # what an attacker would guess: emfence-worker-1




def track_ts(store_url: str, device_id: str) -> list[int]:
    store = open_store(store_url)
    try:
        return [r["ts"] for r in store.track(device_id)]
    finally:
        store.close_store()


def fix_topic(device_id: str) -> str:
    return f"emfence/v1/{REGION_A}/{device_id}/fix"


def device(broker, device_id: str, **kw) -> PahoClient:
    return PahoClient(broker.port, device_id, device_password(SECRET, device_id), **kw)


class Takeover:
    """A device that logs in with its own password but the engine's client id."""

    def __init__(self, broker, device_id: str):
        self.broker, self.device_id = broker, device_id
        self.received: list = []

    def attempt(self, clean_session: bool, linger_s: float) -> None:
        c = device(self.broker, self.device_id, client_id=ENGINE_CLIENT_ID,
                   clean_session=clean_session)
        try:
            time.sleep(linger_s)  # long enough for a queue to be handed over
        finally:
            c.close()
        self.received += c.drain(0)


def test_a_device_cannot_take_over_the_stopped_engines_session(tmp_path, fleet, broker, engines):
    engine = engines(tmp_path, fleet, broker, name=WORKER, config=FAST)
    engine.wait_log("backlog drained")
    assert engine.stop() == 0

    # The engine is away: N fixes queue in its persistent session.
    a = fleet.ids(REGION_A)
    n, t = 50, now_ms() - 120_000
    sender = device(broker, a[0])
    for i in range(n):
        sender.publish(fix_topic(a[0]), orjson.dumps(fix(t + i * 1000, fleet.home, seq=i)))
    sender.close()

    # Another device guesses the engine's client id: first to receive the queued fixes
    # (persistent session), then to wipe them (clean session).
    thief = Takeover(broker, a[1])
    thief.attempt(clean_session=False, linger_s=1.0)
    thief.attempt(clean_session=True, linger_s=0.2)
    assert thief.received == []

    engine.start()
    got = until(lambda: track_ts(engine.store_url, a[0]), lambda ts: len(ts) >= n)
    assert got == [t + i * 1000 for i in range(n)]


@pytest.mark.slow
def test_repeated_takeovers_under_traffic_lose_no_fix_and_fire_no_last_will(
        tmp_path, fleet, broker, engines):
    engine = engines(tmp_path, fleet, broker, name=WORKER, config=FAST)
    engine.wait_log("backlog drained")
    health = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    health.subscribe(f"emfence/v1/engine/{WORKER}/health")
    health.drain(0.5)  # the retained "online" of this start

    a = fleet.ids(REGION_A)
    senders, thief = a[:4], a[4]
    per_device, t = 60, now_ms() - 300_000
    stop = threading.Event()
    takeover, attempts = Takeover(broker, thief), [0]

    def attack() -> None:
        while not stop.is_set():
            takeover.attempt(clean_session=attempts[0] % 2 == 1, linger_s=0.3)
            attempts[0] += 1

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        clients = {d: device(broker, d) for d in senders}
        for i in range(per_device):
            for d, c in clients.items():
                # senders[0] leaves the county for the last 5 fixes: one outbound alarm
                where = fleet.abroad if d == senders[0] and i >= per_device - 5 else fleet.home
                c.publish(fix_topic(d), orjson.dumps(fix(t + i * 1000, where)))
            time.sleep(0.05)
        for c in clients.values():
            c.close()
    finally:
        stop.set()
        attacker.join()
    assert attempts[0] >= 5 and takeover.received == []

    want = [t + i * 1000 for i in range(per_device)]
    for d in senders:
        assert until(lambda d=d: track_ts(engine.store_url, d),
                     lambda ts: len(ts) >= per_device) == want
    store = open_store(engine.store_url)
    try:
        alarms = [(r["type"], r["device_id"]) for r in store.list_alarms()]
    finally:
        store.close_store()
    assert alarms == [("outbound", senders[0])]
    statuses = [orjson.loads(p)["status"] for _, p, _ in health.drain(1.5)]
    assert statuses and set(statuses) == {"online"}, statuses  # never the last will
    assert "broker connection lost" not in engine.log()


def test_retained_fixes_are_not_replayed_into_the_engine(tmp_path, fleet, broker, engines):
    a = fleet.ids(REGION_A)
    t = now_ms() - 120_000
    # Before the engine ever subscribed: a device leaves a retained store-and-forward
    # array of two fixes abroad (an outbound alarm, were it processed).
    dev = device(broker, a[0])
    dev.publish(fix_topic(a[0]), orjson.dumps([fix(t, fleet.abroad), fix(t + 1000, fleet.abroad)]),
                retain=True)

    engine = engines(tmp_path, fleet, broker, name=WORKER, config=FAST)
    engine.wait_log("backlog drained")
    # While it runs, a retained publish is an ordinary live fix for it (processed once).
    dev.publish(fix_topic(a[0]), orjson.dumps(fix(t + 2000, fleet.home)), retain=True)
    assert until(lambda: track_ts(engine.store_url, a[0]), lambda ts: ts) == [t + 2000]
    # Stopped, a retained publish queues in its session like any other.
    assert engine.stop() == 0
    dev.publish(fix_topic(a[0]), orjson.dumps(fix(t + 3000, fleet.home)), retain=True)
    dev.close()

    mark = len(engine.log())
    engine.start()
    engine.wait_log("backlog drained", after=mark)
    assert until(lambda: track_ts(engine.store_url, a[0]), lambda ts: len(ts) >= 2) == \
        [t + 2000, t + 3000]
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe(f"emfence/v1/engine/{WORKER}/health")
    h = until(lambda: orjson.loads(console.get()[1]),
              lambda h: h.get("counters", {}).get("retained_ignored", 0) >= 1, timeout_s=30)
    console.close()
    # The replays at each subscribe (the first start's and this one's) were set aside.
    assert h["counters"]["retained_ignored"] >= 1
    store = open_store(engine.store_url)
    try:
        assert store.list_alarms() == []
    finally:
        store.close_store()
    assert track_ts(engine.store_url, a[0]) == [t + 2000, t + 3000]


def test_retire_session_discards_an_abandoned_workers_queue(tmp_path, fleet, broker, engines):
    name = "retired"
    engine = engines(tmp_path, fleet, broker, name=name, config=FAST)
    engine.wait_log("backlog drained")
    assert engine.stop() == 0
    a = fleet.ids(REGION_A)
    sender = device(broker, a[0])
    for i in range(20):
        sender.publish(fix_topic(a[0]), orjson.dumps(fix(now_ms() - 60_000 + i, fleet.home)))
    sender.close()

    pw = tmp_path / "retired.pw"
    pw.write_text(ENGINE_PW + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "emfence", "retire-session", "--name", name, "--broker", broker.url,
         "--username", engine_account(name), "--password-file", str(pw)],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"retired session {engine_account(name)}" in done.stderr

    # The worker's account finds no session and nothing queued for it.
    probe = PahoClient(broker.port, engine_account(name), ENGINE_PW,
                       client_id=engine_account(name), clean_session=False)
    try:
        assert probe.session_present is False
        assert probe.drain(1.0) == []
    finally:
        probe.close()


def test_retire_session_bad_name_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "emfence", "retire-session", "--name", "a/b"],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == "emfence retire-session: --name 'a/b' is not [A-Za-z0-9_-]{1,64}"


def test_a_payload_over_the_brokers_limit_is_acknowledged_and_dropped(fleet, broker):
    # What a device sees: a PUBACK, the connection stays up; the engine never gets it
    # (so no dead letter can name it: docs/wire-protocol.md).
    engine = PahoClient(broker.port, engine_account(WORKER), ENGINE_PW)
    engine.subscribe(f"emfence/v1/{REGION_A}/+/fix")
    a = fleet.ids(REGION_A)
    dev = device(broker, a[0])
    big = dev.client.publish(fix_topic(a[0]), b"[" + b" " * 300_000 + b"]", qos=1)
    big.wait_for_publish(WAIT_S)
    assert big.is_published()
    dev.publish(fix_topic(a[0]), b"small")
    assert dev.client.is_connected()
    dev.close()
    assert [p for _, p, _ in engine.drain(0.5)] == [b"small"]
    engine.close()


def test_every_shipped_listener_binds_the_session_to_the_login():
    # mosquitto 2.0 applies use_username_as_clientid to the listener above it (whatever
    # per_listener_settings says): every listener block, active or commented, needs it.
    lines = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.lstrip("#").startswith("listener ")]
    assert len(starts) == 2
    for i in starts:
        block = lines[i:lines.index("", i)]
        commented = "#" if lines[i].startswith("#") else ""
        assert f"{commented}use_username_as_clientid true" in block, block
    assert not any(ln.startswith("use_username_as_clientid") for ln in lines[:starts[0]])


def _run(fleet, *args):
    return subprocess.run(
        [sys.executable, "-m", "emfence", "run", "--zones", str(fleet.zones_path), "--subjects",
         str(fleet.subjects_path), "--store", "sqlite:///unused.db",
         "--broker", "mqtt://127.0.0.1:1",
         *args], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "console"], ("emfence run: --name 'console' would log in as emfence-console, the "
                            "console account; choose another worker name")),
    (["--name", "loadgen-2"], ("emfence run: --name 'loadgen-2' would log in as "
                              "emfence-loadgen-2, the loadgen account; choose another "
                              "worker name")),
    (["--username", "emfence-console", "--name", "north"],
     ("emfence run: --username emfence-console: the console account may not read fixes; log in "
     "as this worker's own account emfence-north")),
])
def test_run_refuses_a_login_that_cannot_run_a_worker(tmp_path, fleet, args, message):
    done = _run(fleet, *args)
    assert done.returncode == 1
    assert done.stderr.strip() == message



def test_run_warns_when_a_worker_logs_in_with_another_workers_account(caplog):
    from emfence.run.cli import _check_account

    _check_account("north", "emfence-north")
    _check_account("north", None)  # an anonymous broker: client id emfence-north
    assert caplog.records == []
    _check_account("north", "emfence-engine-1")
    [warning] = caplog.records
    assert warning.levelname == "WARNING"
    assert "two workers sharing it would take over each other's session" in warning.getMessage()
    assert "emfence mqtt-passwords --engine north=FILE" in warning.getMessage()


def test_max_packet_size_would_disconnect_the_device_instead(tmp_path, fleet):
    # Why the shipped config keeps message_size_limit although mosquitto 2 recommends
    # max_packet_size: with the latter, the device is disconnected before any PUBACK, so
    # its firmware keeps the message and sends it again after every reconnect.
    from ingest.mosquitto import CONF_TEMPLATE, Mosquitto

    text = CONF_TEMPLATE.read_text().replace("\nmessage_size_limit 262144\n",
                                             "\nmax_packet_size 262144\n")
    assert "max_packet_size 262144" in text
    template = tmp_path / "alternative.conf"
    template.write_text(text)
    with Mosquitto(tmp_path / "broker", passwords=fleet.passwords(),
                   conf_template=template) as broker:
        dev = device(broker, fleet.ids(REGION_A)[0])
        dev.client.reconnect_delay_set(60, 120)  # stay disconnected once dropped
        big = dev.client.publish(fix_topic(fleet.ids(REGION_A)[0]), b" " * 300_000, qos=1)
        assert until(lambda: dev.client.is_connected(), lambda up: not up, timeout_s=30) is False
        assert not big.is_published()
        dev.close()
