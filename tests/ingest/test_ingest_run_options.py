"""`emfence run` options and duties beyond the main path: PostgreSQL store, escalation,
track retention, the console under --http, two workers split by region, bad options;
plus the pure helpers of the MQTT adapter."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest
from ingest_fleet import CONSOLE_PW, REGION_A, REGION_B, SECRET, fix, now_ms
from ingest_mqtt_helpers import PahoClient

from alarms.store import open_store
from emfence.run.checkpoint_file import acks_path as _acks_path
from emfence.run.checkpoint_file import file_digest, read_covered
from emfence.run.checkpoint_file import write_acks_file as _write_acks_file
from ingest.brokers import BrokerConfigError, BrokerSettings
from ingest.mqtt import Backoff, parse_regions, subscriptions
from ingest.passwords import CONSOLE_USER, device_password

FAST = """
[ingest]
batch_max_ms = 10
health_interval_s = 1
checkpoint_interval_s = 1
[alarms]
outbox_retry_s = 1
escalate_after_s = 1
[tracks]
retention_days = 1
"""



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publish_as(broker, device_id: str, topic: str, obj) -> None:
    c = PahoClient(broker.port, device_id, device_password(SECRET, device_id))
    c.publish(topic, orjson.dumps(obj))
    c.close()


def events_of(client: PahoClient, n: int, timeout_s: float = 60.0) -> list[dict]:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out.append(orjson.loads(client.get(timeout=max(0.1, deadline - time.monotonic()))[1]))
    return out


@pytest.mark.mqtt
@pytest.mark.postgres
def test_postgres_store_escalation_and_two_workers(tmp_path, fleet, broker, engines, pg_url):
    """Two workers split by region share one PostgreSQL store; an alarm nobody
    acknowledges climbs the ladder exactly once per level (2, then 3) and each escalation
    is published."""
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe("emfence/v1/+/alarms/+")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wa = engines(tmp_path / "a", fleet, broker, name="north", store=pg_url, config=FAST,
                 extra=["--regions", REGION_A])
    wb = engines(tmp_path / "b", fleet, broker, name="south", store=pg_url, config=FAST,
                 extra=["--regions", REGION_B])
    wa.wait_log("connected to")
    wb.wait_log("connected to")
    a0, b0 = fleet.ids(REGION_A)[0], fleet.ids(REGION_B)[0]
    t = now_ms()
    publish_as(broker, a0, f"emfence/v1/{REGION_A}/{a0}/status", {"ts": t, "strap": "open"})
    publish_as(broker, b0, f"emfence/v1/{REGION_B}/{b0}/status", {"ts": t, "strap": "open"})
    got = events_of(console, 6)
    kinds = sorted((e["region"], e["event"], e.get("level", 0)) for e in got)
    assert kinds == sorted([(REGION_A, "escalated", 2), (REGION_A, "escalated", 3),
                            (REGION_A, "raised", 0), (REGION_B, "escalated", 2),
                            (REGION_B, "escalated", 3), (REGION_B, "raised", 0)])
    # once per level, not once per worker or per round, and level 3 is the top
    assert console.drain(2.5) == []
    store = open_store(pg_url)
    try:
        rows = {r["device_id"]: r for r in store.list_alarms()}
        assert set(rows) == {a0, b0}
        assert all(r["escalated_at"] is not None and r["escalation_level"] == 3
                   for r in rows.values())
    finally:
        store.close_store()
    assert wa.stop() == 0 and wb.stop() == 0
    console.close()


@pytest.mark.mqtt
def test_track_retention_purges_old_fixes(tmp_path, fleet, broker, engines):
    store_url = f"sqlite:///{tmp_path / 'alarms.db'}"
    a0 = fleet.ids(REGION_A)[0]
    old = now_ms() - 3 * 86_400_000
    store = open_store(store_url)
    store.record_fixes([(a0, "S-x", REGION_A, old, 28.9, 119.6, 10.0, "gps", old)])
    assert len(store.track(a0)) == 1
    engine = engines(tmp_path, fleet, broker, store=store_url, config=FAST)
    engine.wait_log("track retention: deleted 1 fixes older than 1 days")
    t = now_ms() - 1000
    publish_as(broker, a0, f"emfence/v1/{REGION_A}/{a0}/fix", fix(t, fleet.home))
    deadline = time.monotonic() + 30
    while [r["ts"] for r in store.track(a0)] != [t] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r["ts"] for r in store.track(a0)] == [t]  # the recent fix is kept
    store.close_store()
    assert engine.stop() == 0


@pytest.mark.mqtt
def test_http_on_a_taken_port_is_a_one_line_error_and_exit_1(tmp_path, fleet, broker, engines):
    """--http on an address another process holds: the engine says so in one line and
    exits 1 (a mistake to fix), after a clean stop; no traceback."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        engine = engines(tmp_path, fleet, broker, config=FAST,
                         extra=["--http", f"127.0.0.1:{port}"])
        assert engine.proc.wait(300) == 1, engine.log()[-2000:]
    finally:
        taken.close()
    log = engine.log()
    assert f"--http 127.0.0.1:{port}: cannot serve the console" in log
    assert "Traceback" not in log


@pytest.mark.mqtt
def test_http_serves_the_console_in_the_same_process(tmp_path, fleet, broker, engines):
    port = free_port()
    engine = engines(tmp_path, fleet, broker, config=FAST, extra=["--http", f"127.0.0.1:{port}"])
    engine.wait_log("connected to")
    deadline = time.monotonic() + 30
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, engine.log()[-2000:]
            time.sleep(0.2)
    assert r.status_code == 200 and "html" in r.headers["content-type"]

    # An operator's page keeps its live feed open for ever: SIGTERM must end it rather
    # than wait for the browser to go away.
    from console.auth import hash_password

    store = open_store(engine.store_url)
    store.add_user("duty", hash_password("a long enough passphrase"), "operator", [REGION_A],
                   now_ms=1)
    store.close_store()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(120.0))
    login = client.post("/api/login", json={"name": "duty", "password": "a long enough passphrase"})
    assert login.status_code == 200, login.text
    client.headers["X-CSRF-Token"] = login.json()["csrf_token"]
    feed_ended = threading.Event()

    def read_feed() -> None:
        with client.stream("GET", "/api/feed") as resp:
            assert resp.status_code == 200
            for _ in resp.iter_lines():
                pass
        feed_ended.set()

    reader = threading.Thread(target=read_feed, daemon=True)
    reader.start()
    time.sleep(1.0)  # let the feed open; not a timing assertion
    assert engine.stop() == 0  # SIGTERM stops the engine, the web server and the open feed
    reader.join(60)
    assert feed_ended.is_set()
    client.close()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--broker", "http://x"], "scheme must be mqtt:// or mqtts://"),
        (["--broker", "mqtt://u:pw@h"], "put the password in --password-file"),
        (["--regions", "330723,bad region"], "--regions: 'bad region'"),
        (["--name", "a/b"], "--name 'a/b'"),
        (["--password-file", "/nonexistent/pw", "--username", "u"], "/nonexistent/pw"),
        (["--tls-cert", "/tmp/x"], "--tls-cert and --tls-key go together"),
        (["--store", "mysql://x"], "store URL must start with sqlite:/// or postgresql://"),
        (["--store", "sqlite:////nonexistent/dir/a.db"], "'/nonexistent/dir' does not exist"),
        (["--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ],
)
def test_bad_options_exit_1_naming_them(tmp_path, fleet, argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "emfence", "run", "--zones", str(fleet.zones_path),
         "--subjects", str(fleet.subjects_path), "--store", f"sqlite:///{tmp_path / 'a.db'}",
         *argv], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_bad_subjects_file_exits_1_naming_it(tmp_path, fleet):
    bad = tmp_path / "bad.json"
    bad.write_text('{"subjects": [{"subject_id": "S 1"}]}')
    proc = subprocess.run(
        [sys.executable, "-m", "emfence", "run", "--zones", str(fleet.zones_path),
         "--subjects", str(bad), "--store", f"sqlite:///{tmp_path / 'a.db'}"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and str(bad) in proc.stderr and "S 1" in proc.stderr


def test_broker_settings(tmp_path):
    s = BrokerSettings.from_options("mqtt://broker.example:1884")
    assert (s.host, s.port, s.tls, s.username, s.password) == ("broker.example", 1884, False,
                                                               None, None)
    assert BrokerSettings.from_options("mqtts://b").port == 8883
    pw = tmp_path / "pw"
    pw.write_text("s3cret\nignored\n")
    s = BrokerSettings.from_options("mqtt://b", username="emfence-engine", password_file=str(pw))
    assert s.password == "s3cret" and "s3cret" not in repr(s)
    with pytest.raises(BrokerConfigError, match="needs --username"):
        BrokerSettings.from_options("mqtt://b", password_file=str(pw))
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert BrokerSettings.from_options("mqtt://b", tls_ca=str(ca)).tls is True


def test_regions_and_subscriptions():
    assert parse_regions(None) is None and parse_regions("+") is None
    assert parse_regions("330723, 330702,330723") == ["330702", "330723"]
    assert subscriptions(None) == ["emfence/v1/+/+/fix", "emfence/v1/+/+/status"]
    assert subscriptions(["330723"]) == ["emfence/v1/330723/+/fix", "emfence/v1/330723/+/status"]


def test_backoff_is_jittered_and_capped():
    b = Backoff(0.5, 30.0, random.Random(7))
    delays = [b.next_delay_s() for _ in range(40)]
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert max(delays[:3]) <= 2.0  # starts small
    assert max(delays[10:]) > 10.0  # grows to the cap...
    assert len({round(d, 6) for d in delays[10:]}) > 20  # ...with jitter, not in lockstep
    b.reset()
    assert b.next_delay_s() <= 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_redelivery_digests_trust_only_the_matching_checkpoint(tmp_path):
    ckpt = tmp_path / "w.ckpt"
    ckpt.write_bytes(b"state one")
    one = file_digest(ckpt)
    d1, d2 = b"\x01" * 16, b"\x02" * 16
    _write_acks_file(_acks_path(ckpt), {one: {d1}, "0" * 32: {d2}})
    assert read_covered(ckpt) == {d1}
    ckpt.write_bytes(b"state two")  # a checkpoint the digest list does not describe
    assert read_covered(ckpt) == set()
    _acks_path(ckpt).write_text("garbage")
    assert read_covered(ckpt) == set()


def test_redelivery_digests_round_trip_and_read_the_earlier_format(tmp_path):
    import hashlib

    ckpt = tmp_path / "w.ckpt"
    ckpt.write_bytes(b"state")
    digests = {hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(40_000)}
    _write_acks_file(_acks_path(ckpt), {file_digest(ckpt): digests})
    assert read_covered(ckpt) == digests
    # version 1 (hex lists), as written by earlier releases next to their checkpoints
    _acks_path(ckpt).write_bytes(orjson.dumps(
        {"version": 1, "checkpoints": {file_digest(ckpt): [d.hex() for d in digests]}}))
    assert read_covered(ckpt) == digests


def make_tls_files(d) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    ca_key, ca, key, csr, cert, ext = (str(d / n) for n in (
        "ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "san.ext"))
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "2", "-subj", "/CN=emfence test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


@pytest.mark.mqtt
def test_tls_broker(tmp_path, fleet, mosquitto_factory, engines):
    ca, cert, key = make_tls_files(tmp_path)
    broker = mosquitto_factory(passwords=fleet.passwords(), tls=(cert, key))
    assert broker.url.startswith("mqtts://")
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW, tls_ca=ca)
    console.subscribe("emfence/v1/+/alarms/+")
    engine = engines(tmp_path, fleet, broker, config=FAST, extra=["--tls-ca", ca])
    engine.wait_log("connected to")
    a0 = fleet.ids(REGION_A)[0]
    dev = PahoClient(broker.port, a0, device_password(SECRET, a0), tls_ca=ca)
    dev.publish(f"emfence/v1/{REGION_A}/{a0}/status", orjson.dumps({"ts": now_ms(),
                                                                    "strap": "open"}))
    [ev] = events_of(console, 1)
    assert ev["type"] == "tamper" and ev["device_id"] == a0
    assert engine.stop() == 0
    dev.close()
    console.close()


@pytest.mark.mqtt
def test_shapely_core_for_benchmarks(tmp_path, fleet, broker, engines):
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe("emfence/v1/+/alarms/+")
    engine = engines(tmp_path, fleet, broker, config=FAST, checkpoint=False,
                     extra=["--core", "shapely"])
    engine.wait_log("connected to")
    a0 = fleet.ids(REGION_A)[0]
    t = now_ms() - 10_000
    publish_as(broker, a0, f"emfence/v1/{REGION_A}/{a0}/fix",
               [fix(t, fleet.abroad), fix(t + 1000, fleet.abroad)])
    [ev] = events_of(console, 1)
    assert (ev["type"], ev["event"], ev["at"]) == ("outbound", "raised", t + 1000)
    assert engine.stop() == 0
    console.close()
    proc = subprocess.run([*engine.args, "--checkpoint", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and "--core shapely keeps no checkpoints" in proc.stderr


async def test_a_record_the_engine_fails_on_is_dead_lettered_not_fatal(tmp_path, fleet):
    """Fault injection: the engine raises on one record. The batch is retried record by
    record; the others still raise their alarms, the poison one is dead-lettered."""
    from emfence.run.batches import Batch
    from emfence.run.cli import Service, build_parser, build_service_args
    from ingest.decode import Fix

    args = build_service_args(build_parser().parse_args([
        "--zones", str(fleet.zones_path), "--subjects", str(fleet.subjects_path),
        "--store", f"sqlite:///{tmp_path / 'a.db'}"]))
    poison_ts = now_ms() - 5000
    real = args["engine"]

    class FaultyEngine(type(real)):
        def process(self, batch, **kw):
            if (batch.ts_ms == poison_ts).any():
                raise FloatingPointError("injected fault")
            return super().process(batch, **kw)

    real.__class__ = FaultyEngine
    service = Service(**args)
    a0, a1 = fleet.ids(REGION_A)[:2]
    b = Batch()
    t = poison_ts - 10_000
    lon, lat = fleet.abroad
    b.add_fix(a0, Fix(t, lat, lon), t)
    b.add_fix(a1, Fix(poison_ts, lat, lon), t)
    b.add_fix(a0, Fix(t + 1000, lat, lon), t)
    b.messages = 3
    writer = asyncio.create_task(service._store_events())  # the service's event writer
    acker = asyncio.create_task(service._acknowledger())  # ... and its acknowledger
    await service._process_batch(b)
    done = asyncio.get_running_loop().create_future()  # as a shutdown waits for the last window
    await service._close_window(done)
    await done
    writer.cancel()
    acker.cancel()
    assert service.counters["engine_errors"] == 1
    topic, payload = service.deadletters.get_nowait()
    dead = orjson.loads(payload)
    assert topic == f"emfence/v1/{REGION_A}/deadletter" and dead["code"] == "engine_error"
    assert "injected fault" in dead["reason"]
    rows = args["store"].list_alarms()
    assert [(r["type"], r["device_id"]) for r in rows] == [("outbound", a0)]
    # a closed window is made durable before it is acknowledged, tracks included
    assert [r["ts"] for r in args["store"].track(a0)] == [t, t + 1000]
    args["store"].close_store()


@pytest.mark.mqtt
def test_engine_started_before_the_broker_waits_for_it(tmp_path, fleet, engines):
    from ingest.mosquitto import Mosquitto

    broker = Mosquitto(tmp_path / "late-broker", passwords=fleet.passwords(), port=free_port())
    try:
        engine = engines(tmp_path, fleet, broker, config=FAST)
        engine.wait_log("unreachable: connection refused")  # retrying with backoff
        assert engine.proc.poll() is None
        broker.start()
        engine.wait_log("connected to")
        console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
        console.subscribe("emfence/v1/+/alarms/+")
        a0 = fleet.ids(REGION_A)[0]
        publish_as(broker, a0, f"emfence/v1/{REGION_A}/{a0}/status",
                   {"ts": now_ms(), "strap": "open"})
        [ev] = events_of(console, 1)
        assert ev["type"] == "tamper"
        engine.signal(signal.SIGINT)
        assert engine.proc.wait(120) == 0  # SIGINT stops cleanly, like SIGTERM
        console.close()
    finally:
        broker.close()


async def test_a_sweep_never_overtakes_messages_received_before_it(tmp_path, fleet):
    """Silence is judged on receive time, so every message received before a sweep's
    `now` must reach the engine before the sweep. Here the open micro-batch holds a fix
    of a device silent for an hour (as after a restart, when the whole backlog can sit in
    that batch as the sweeps begin): the sweep must queue behind it and raise nothing.
    (Seen once in the kill -9 fault test: a false offline storm.)"""
    from emfence.run.batches import Batch
    from emfence.run.cli import Service, build_parser, build_service_args
    from ingest.decode import Fix

    config = tmp_path / "fast.toml"
    config.write_text("[ingest]\nsweep_interval_ms = 20\nbatch_max_ms = 60000\n")
    args = build_service_args(build_parser().parse_args([
        "--zones", str(fleet.zones_path), "--subjects", str(fleet.subjects_path),
        "--store", f"sqlite:///{tmp_path / 'a.db'}", "--config", str(config)]))
    service = Service(**args)
    device = fleet.ids(REGION_A)[0]
    lon, lat = fleet.home
    t = now_ms()
    heard = Batch()  # last heard an hour ago: due for offline at any level
    heard.add_fix(device, Fix(t - 3_600_000, lat, lon), t - 3_600_000)
    heard.messages = 1
    await service._process_batch(heard)
    # a fix just received, still in the open batch (the flusher is not running)
    service.batch.add_fix(device, Fix(t, lat, lon), t)
    service._join_batch((0, 1), None)
    service.connected.set()
    service.hold_reason = None  # sweeps running
    sweeper = asyncio.create_task(service._sweeper())
    try:
        async def two_items():
            while service.work.qsize() < 2:
                await asyncio.sleep(0.005)
        await asyncio.wait_for(two_items(), 30)
    finally:
        sweeper.cancel()
    first, second = service.work.get_nowait(), service.work.get_nowait()
    assert first[0] == "batch" and first[1].device == [device]
    assert second[0] == "sweep" and second[1] >= t
    for kind, arg in (first, second):  # as the processor takes them
        if kind == "batch":
            await service._process_batch(arg)
        else:
            assert service.engine.sweep(arg) == []
    assert service.unstored == [] and service.events_queued == 0


async def test_the_paho_internals_the_engine_client_relies_on_are_there():
    """ingest.mqtt reaches into aiomqtt and paho (manual PUBACK, burst reads, the queue,
    the receive path's per-message costs). A library upgrade that moves them must fail
    here, by name, rather than somewhere in the live path."""
    import aiomqtt
    import paho.mqtt.client as paho

    from ingest import mqtt

    client = mqtt.make_client(BrokerSettings("127.0.0.1", 1), client_id="engine-x", will=None)
    p = client._client
    for name in ("_packet_read", "_loop_rc_handle", "_sock", "_callback_mutex",
                 "_in_callback_mutex", "manual_ack_set", "ack", "_packet_queue"):
        assert hasattr(p, name), name
    # the buffered reads wrap paho's own socket read (an instance attribute over it)
    assert hasattr(type(p), "_sock_recv") and p._sock_recv.__qualname__.startswith(
        "_read_in_bursts")
    assert isinstance(client._queue, asyncio.Queue)
    # fail_on_early_close: the pending connect and its loop, and paho's disconnect hook
    assert isinstance(client._connected, asyncio.Future)
    assert client._loop is asyncio.get_running_loop()
    assert p.on_disconnect.__qualname__.startswith("fail_on_early_close")
    assert p.loop_read.__qualname__.startswith("_read_in_bursts")
    assert p._logger is None  # no per-packet debug logging
    # with the per-topic matcher replaced, a received message still reaches on_message
    got = []
    p.on_message = lambda c, userdata, message: got.append(message.topic)
    msg = paho.MQTTMessage(mid=7, topic=b"emfence/v1/330723/BR-1/fix")
    msg.payload = b"{}"
    p._handle_on_message(msg)
    assert got == ["emfence/v1/330723/BR-1/fix"]
    assert isinstance(client, aiomqtt.Client)
