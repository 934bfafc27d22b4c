"""The shipped NATS cluster (deploy/nats/: three nodes, JetStream, MQTT listener, the
users nats_users.py writes) with `emfence run` connected to one node: the node is
killed (-9) mid-stream and the engine goes on through another node. Known truth as in
test_ingest_faults: every fix stored once, the alarms exactly a reference engine's."""

from __future__ import annotations

import json
import time

import pytest
from ingest_fleet import ENGINE_PW, REGION_A, REGION_B, EngineProcess, Fleet, fix, now_ms, until
from ingest_mqtt_helpers import PahoClient
from nats_cluster import NatsCluster
from test_ingest_faults import CONFIG, Publisher, check_outcome, scenario
from test_run_brokers import device_password_of, metric

from ingest.mosquitto import free_port
from ingest.passwords import engine_account

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

STEPS = 60  # 12 s of fixes, every device every 200 ms
KILL_AT_STEP = 20
# From the kill of the engine's node to the engine processing fixes again, s.
FAILOVER_BOUND_S = 10.0


def check_device_permissions(cluster: NatsCluster, fleet: Fleet) -> None:
    """A device publishes its own fixes; one under another device's id never reaches a
    reader allowed to read every fix (NATS drops it: a publish permission)."""
    own, other = fleet.ids(REGION_A)[:2]
    reader = PahoClient(cluster.nodes[1].port, engine_account("worker-1"),
                        ENGINE_PW, client_id="permission-check")
    dev = PahoClient(cluster.nodes[2].port, own, device_password_of(fleet, own), client_id=own)
    try:
        assert reader.subscribe("emfence/v1/+/+/fix") == [1]
        t = now_ms()
        dev.publish(f"emfence/v1/{REGION_A}/{own}/fix", json.dumps(fix(t, fleet.home)))
        dev.client.publish(f"emfence/v1/{REGION_A}/{other}/fix",
                           json.dumps(fix(t + 1, fleet.home)), qos=1)
        dev.publish(f"emfence/v1/{REGION_B}/{own}/fix", json.dumps(fix(t + 2, fleet.home)))
        got = [m[0] for m in [reader.get(), reader.get()] + reader.drain(1.0)]
        assert got == [f"emfence/v1/{REGION_A}/{own}/fix", f"emfence/v1/{REGION_B}/{own}/fix"]
    finally:
        dev.close()
        reader.close()


def test_killing_the_engines_node_loses_and_doubles_nothing(tmp_path):
    fleet = Fleet(tmp_path, devices_a=20, devices_b=1)
    cluster = NatsCluster(tmp_path, fleet).start()
    port = free_port()
    first, *others = cluster.nodes
    engine = EngineProcess(tmp_path, fleet, first, config=CONFIG, extra=[
        *(a for n in others for a in ("--broker", n.url)), "--metrics-http", str(port)])
    try:
        check_device_permissions(cluster, fleet)
        engine.start().wait_log("backlog drained")
        used = cluster.node_of(int(engine.log().split("connected to 127.0.0.1:")[1][:5]))
        publish_node = next(n for n in cluster.nodes if n is not used)
        devices = fleet.ids(REGION_A)
        messages = scenario(fleet, devices, steps=STEPS, t0=now_ms() - 60_000)
        pub = Publisher(publish_node.port, messages, per_step=len(messages) // STEPS)
        pub.start()
        until(lambda: pub.sent, lambda s: s >= KILL_AT_STEP * len(devices), 60)
        before = metric(port, "emfence_engine_fixes_total")
        mark = len(engine.log())
        killed = time.monotonic()
        cluster.kill9(used)
        after = until(lambda: metric(port, "emfence_engine_fixes_total"),
                      lambda n: n > before and "reconnected to the broker" in
                      engine.log()[mark:], 60)
        took = time.monotonic() - killed
        assert "reconnected to the broker" in engine.log()[mark:], engine.log()[-3000:]
        assert after > before
        print(f"failover: {took:.2f} s from kill -9 to fixes processed again")
        assert took <= FAILOVER_BOUND_S, f"{took:.1f} s to process again after the kill"
        pub.wait_acked()
        n_fixes = sum(1 for t, _ in messages if t.endswith("/fix"))
        until(lambda: metric(port, "emfence_engine_fixes_total"), lambda n: n >= n_fixes, 60)
        check_outcome(fleet, engine, publish_node, messages, devices)
    finally:
        engine.close()
        cluster.stop()
