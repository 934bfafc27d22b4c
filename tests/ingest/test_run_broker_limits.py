"""A broker whose in-flight window is smaller than the worker's acknowledgement window
(issue #17): the worker notices delivery stopping at the broker's limit, closes its
window at once instead of at the periodic checkpoint, and from then on acknowledges every
half window; a real mosquitto with ``max_inflight_messages 20``."""

from __future__ import annotations

import time

import orjson
import pytest
from ingest_fleet import CONSOLE_PW, ENGINE_PW, REGION_A, REGION_B, SECRET, fix, now_ms
from ingest_mqtt_helpers import PahoClient
from nats_cluster import NatsMqtt

from ingest.mosquitto import CONF_TEMPLATE
from ingest.passwords import CONSOLE_USER, device_password, engine_account

pytestmark = pytest.mark.mqtt

INFLIGHT = 20
FIXES = 2000
CONFIG = """
[ingest]
health_interval_s = 1
checkpoint_interval_s = 30
"""
LINE = "broker in-flight window looks like 20 messages"


def small_window_conf(tmp_path) -> str:
    conf = CONF_TEMPLATE.read_text().replace("max_inflight_messages 60000",
                                             f"max_inflight_messages {INFLIGHT}")
    assert f"max_inflight_messages {INFLIGHT}" in conf
    path = tmp_path / "small-inflight.conf"
    path.write_text(conf)
    return str(path)


def health_counters(reader: PahoClient, until_s: float, done) -> dict:
    """The counters of the worker's health documents until ``done(counters)``."""
    counters: dict = {}
    while time.monotonic() < until_s:
        try:
            _, payload, _ = reader.get(timeout=max(0.05, until_s - time.monotonic()))
        except Exception:  # noqa: BLE001 - queue.Empty at the deadline
            break
        counters = orjson.loads(payload).get("counters", {})
        if done(counters):
            break
    return counters


def test_a_small_broker_window_is_noticed_and_followed(tmp_path, fleet, mosquitto_factory,
                                                       engines):
    broker = mosquitto_factory(passwords=fleet.passwords(),
                               conf_template=small_window_conf(tmp_path))
    engine = engines(tmp_path, fleet, broker, config=CONFIG)
    engine.wait_log("backlog drained")
    reader = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    reader.subscribe("emfence/v1/engine/worker-1/health")

    devices = fleet.ids(REGION_A)
    clients = {d: PahoClient(broker.port, d, device_password(SECRET, d)) for d in devices}
    t0 = now_ms() - 600_000
    start = time.monotonic()
    for i in range(FIXES):  # a steady stream, ~1000 QoS 1 publishes a second
        d = devices[i % len(devices)]
        clients[d].publish(f"emfence/v1/{REGION_A}/{d}/fix",
                           orjson.dumps(fix(t0 + i * 100, fleet.home)))
        if i % 20 == 19:
            time.sleep(max(0.0, start + (i + 1) / 1000 - time.monotonic()))
    published_s = time.monotonic() - start

    # Without the adaptation: one window of 20 per 30 s checkpoint, 2000 fixes in ~50 min.
    # The last half window (fewer than 10: the broker no longer holds anything back) is
    # acknowledged at the periodic checkpoint.
    counters = health_counters(reader, time.monotonic() + 30,
                               lambda c: c.get("acknowledged", 0) >= FIXES - INFLIGHT // 2)
    took_s = time.monotonic() - start
    assert counters.get("fixes_accepted") == FIXES, counters
    assert counters.get("acknowledged", 0) >= FIXES - INFLIGHT // 2, (counters,
                                                                    engine.log()[-3000:])
    assert counters.get("broker_inflight_window") == INFLIGHT, counters
    assert took_s < published_s + 15, (took_s, published_s)
    assert engine.log().count(LINE) == 1, engine.log()[-3000:]
    for line in engine.log().splitlines():
        if LINE in line:
            assert "acknowledging every ~10" in line and "mqtt.prefetch" in line, line
    for c in clients.values():
        c.close()
    reader.close()
    assert engine.stop() == 0


def nats_with(tmp_path, option: str) -> NatsMqtt:
    """A NATS MQTT server with ``option`` added to its ``mqtt { listen }`` block, started."""
    nats = NatsMqtt(tmp_path, [REGION_A, REGION_B])
    listen = f"mqtt {{ listen: 127.0.0.1:{nats.port} }}"
    assert listen in nats.conf.read_text()
    nats.conf.write_text(nats.conf.read_text().replace(
        listen, f"mqtt {{ listen: 127.0.0.1:{nats.port}, {option} }}"))
    nats.start()
    return nats


def engine_and_clients(tmp_path, fleet, engines, nats: NatsMqtt, config: str):
    """The worker on ``nats`` (both regions, backlog drained), a reader of its health at
    QoS 0 and a publisher with the engine's account: (engine, reader, publisher)."""
    engine = engines(tmp_path, fleet, nats, config=config,
                     extra=["--regions", f"{REGION_A},{REGION_B}"])
    engine.wait_log("backlog drained")
    account = engine_account("worker-1")
    reader = PahoClient(nats.port, account, ENGINE_PW, client_id="test-health")
    reader.subscribe("emfence/v1/engine/worker-1/health", qos=0)
    pub = PahoClient(nats.port, account, ENGINE_PW, client_id="test-publisher")
    return engine, reader, pub


ACK_WAIT_CONFIG = """
[ingest]
health_interval_s = 1
checkpoint_interval_s = 20
"""


def test_nats_resending_held_messages_shortens_the_checkpoint_interval(tmp_path, fleet,
                                                                         engines):
    """NATS re-sends a message not acknowledged within ``ack_wait`` (here 2 s, the
    worker's checkpoint every 20 s): the re-sends are recognised and counted, the worker
    checkpoints every half the re-send delay from then on and says why once."""
    nats = nats_with(tmp_path, 'ack_wait: "2s"')
    try:
        engine, reader, pub = engine_and_clients(tmp_path, fleet, engines, nats,
                                                 ACK_WAIT_CONFIG)
        d = fleet.ids(REGION_A)[0]
        t0 = now_ms() - 60_000
        for i in range(5):
            pub.publish(f"emfence/v1/{REGION_A}/{d}/fix",
                        orjson.dumps(fix(t0 + i * 1000, fleet.home)))
        engine.wait_log("its ack wait is shorter than ingest.checkpoint_interval_s",
                        timeout_s=20)
        counters = health_counters(reader, time.monotonic() + 15,
                                   lambda c: c.get("acknowledged", 0) >= 5)
        assert counters.get("acknowledged", 0) >= 5, (counters, engine.log()[-3000:])
        assert counters.get("redelivered_while_held", 0) >= 1, counters
        assert 1500 <= counters.get("broker_resend_ms", 0) <= 8000, counters
        assert counters.get("fixes_accepted") == 5 and counters.get("tracks_written") == 5
        assert engine.log().count("its ack wait is shorter") == 1
        line = next(x for x in engine.log().splitlines() if "its ack wait is shorter" in x)
        assert "NATS ack_wait" in line and "mqtt.retry_interval" in line, line
        pub.close()
        reader.close()
        assert engine.stop() == 0
    finally:
        nats.stop()


def test_nats_max_ack_pending_below_the_window_is_followed(tmp_path, fleet, engines):
    """NATS's ``max_ack_pending`` (per subscription) at 20: the same adaptation as on
    mosquitto; 400 fixes of one region go through in seconds, not one window per 30 s."""
    nats = nats_with(tmp_path, f"max_ack_pending: {INFLIGHT}")
    try:
        engine, reader, pub = engine_and_clients(tmp_path, fleet, engines, nats, CONFIG)
        devices = fleet.ids(REGION_A)
        t0, start, n = now_ms() - 600_000, time.monotonic(), 400
        for i in range(n):
            d = devices[i % len(devices)]
            pub.publish(f"emfence/v1/{REGION_A}/{d}/fix",
                        orjson.dumps(fix(t0 + i * 100, fleet.home)))
        counters = health_counters(reader, time.monotonic() + 25,
                                   lambda c: c.get("acknowledged", 0) >= n - INFLIGHT // 2)
        assert counters.get("acknowledged", 0) >= n - INFLIGHT // 2, (counters,
                                                                    engine.log()[-3000:])
        assert counters.get("fixes_accepted") == n, counters
        assert time.monotonic() - start < 25
        assert engine.log().count(LINE) == 1, engine.log()[-3000:]
        pub.close()
        reader.close()
        assert engine.stop() == 0
    finally:
        nats.stop()
