"""The shipped NATS cluster (deploy/nats/: three nodes, JetStream, MQTT listener, the
users nats_users.py writes), and `emfence run` connected to one node: the node is killed
(-9) mid-stream and the engine goes on through another node. Known truth as in
test_ingest_faults: every fix stored once, the alarms exactly a reference engine's."""

from __future__ import annotations

import json
import re

import pytest
from ingest_fleet import ENGINE_PW, REGION_A, REGION_B, EngineProcess, Fleet, fix, now_ms
from ingest_mqtt_helpers import PahoClient
from nats_cluster import NatsCluster
from test_ingest_faults import CONFIG, Publisher
from test_run_brokers import device_password_of

from ingest.passwords import engine_account

pytestmark = [pytest.mark.mqtt]

STEPS = 150  # 30 s of fixes, every device every 200 ms
KILL_AT_STEP = 20  # 4 s in: 26 s of fixes follow the kill, past ACK_WAIT_S + 5
# From the kill of the engine's node to the engine processing fixes again, s: about 8 s
# when the killed node led the session's JetStream state (new leaders are elected), up
# to DRAIN_ACK_S more when the engine first lands on a node that cannot serve it yet.
FAILOVER_BOUND_S = 20.0
# The cluster's ack_wait here (shipped: 60 s), s: longer than the failover, so that the
# re-sent messages come when the engine has closed many windows (one a second here).
ACK_WAIT_S = 20


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


def test_the_shipped_cluster_starts_and_a_device_acts_only_as_itself(tmp_path):
    """The three nodes of deploy/nats/ (rewritten only for ports and directories) form a
    cluster with MQTT; the users nats_users.py writes let a device publish its own fixes
    only."""
    fleet = Fleet(tmp_path, devices_a=2, devices_b=1)
    cluster = NatsCluster(tmp_path, fleet).start()
    try:
        check_device_permissions(cluster, fleet)
    finally:
        cluster.stop()


def engine_node(cluster: NatsCluster, log: str):
    """The node the engine is connected to now (its log names each session's)."""
    line = [ln for ln in log.splitlines() if "connected to" in ln][-1]
    return cluster.node_of(int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1)))


def start_engine(tmp_path, fleet, order, port: int) -> EngineProcess:
    """`emfence run` with a --broker for every node, in ``order``, until drained."""
    first, *others = order
    engine = EngineProcess(tmp_path, fleet, first, config=CONFIG, extra=[
        *(a for n in others for a in ("--broker", n.url)), "--metrics-http", str(port)])
    mark = len(engine.log()) if engine.log_path.exists() else 0
    engine.start().wait_log("backlog drained", after=mark)
    return engine


def off_the_fix_leader(tmp_path, fleet, cluster: NatsCluster, engine, port: int):
    """(engine, its node), the node not leading the consumer of the engine's fix
    subscription (restarted on another node first if it did): that leader survives the
    kill and re-sends the messages whose PUBACKs died after ack_wait, the case to test (a
    new leader's timing would be its own)."""
    leader = cluster.consumer_leader(".fix")
    if engine_node(cluster, engine.log()).name == leader:
        assert engine.stop() == 0
        order = sorted(cluster.nodes, key=lambda n: n.name == leader)
        engine = start_engine(tmp_path, fleet, order, port)
    used = engine_node(cluster, engine.log())
    assert used.name != leader
    return engine, used


def publish(node, messages, per_step: int) -> Publisher:
    """Publish ``messages`` in real time through ``node`` and wait until each is acked."""
    pub = Publisher(node.port, messages, per_step=per_step)
    pub.start()
    pub.wait_acked()
    pub.client.close()
    return pub
