"""The shipped NATS cluster (deploy/nats/: three nodes, JetStream, MQTT listener, the
users nats_users.py writes), and `emfence run` connected to one node: the node is killed
(-9) mid-stream and the engine goes on through another node. Known truth as in
test_ingest_faults: every fix stored once, the alarms exactly a reference engine's."""

from __future__ import annotations

import json
import re
import time

import pytest
from ingest_fleet import ENGINE_PW, REGION_A, REGION_B, EngineProcess, Fleet, fix, now_ms, until
from ingest_mqtt_helpers import PahoClient
from nats_cluster import NatsCluster
from test_ingest_faults import CONFIG, Publisher, check_outcome, scenario
from test_run_brokers import device_password_of, metric

from ingest.mosquitto import free_port
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


@pytest.mark.slow
def test_killing_the_engines_node_loses_and_doubles_nothing(tmp_path):
    """kill -9 of the node the engine is connected to, 4 s into a 30 s stream, with
    the last acknowledgement windows still on their way: the engine goes on through
    another node within FAILOVER_BOUND_S; NATS re-sends, after its ack_wait, the
    messages whose PUBACKs died with the node, long after the engine's last windows
    (one per second here), and the engine recognises them (ingest.redelivery_horizon_s):
    every fix processed and stored exactly once, the alarms exactly a reference
    engine's, each once.

    The devices pause at the kill until the engine has received all they sent: a
    message the dying node was sending to the engine comes again only after ack_wait,
    after newer fixes of its device, and is processed late (by its own timestamp), which
    a reference in publish order would not match (docs/operations.md, "NATS cluster")."""
    fleet = Fleet(tmp_path, devices_a=20, devices_b=1)
    cluster = NatsCluster(tmp_path, fleet, ack_wait=f"{ACK_WAIT_S}s").start()
    port = free_port()
    engine = start_engine(tmp_path, fleet, cluster.nodes, port)
    try:
        engine, used = off_the_fix_leader(tmp_path, fleet, cluster, engine, port)
        publish_node = next(n for n in cluster.nodes if n is not used)
        devices = fleet.ids(REGION_A)
        messages = scenario(fleet, devices, steps=STEPS, t0=now_ms() - 60_000)
        per_step = len(messages) // STEPS
        cut = KILL_AT_STEP * per_step
        publish(publish_node, messages[:cut], per_step)
        until(lambda: metric(port, "emfence_run_messages_total"), lambda n: n >= cut, 30)
        mark = len(engine.log())
        killed = time.monotonic()
        cluster.kill9(used)
        rest = Publisher(publish_node.port, messages[cut:], per_step=per_step)
        rest.start()
        fixes_before = sum(1 for t, _ in messages[:cut] if t.endswith("/fix"))
        # Processing again: a fix published after the kill went through the engine.
        until(lambda: metric(port, "emfence_engine_fixes_total"),
              lambda n: n > fixes_before, 60)
        took = time.monotonic() - killed
        print(f"failover: {took:.2f} s from kill -9 to a fix published after it processed")
        assert metric(port, "emfence_engine_fixes_total") > fixes_before, \
            engine.log()[mark:][-3000:]
        assert took <= FAILOVER_BOUND_S, f"{took:.1f} s to process again after the kill"
        rest.wait_acked()
        rest.client.close()
        n_fixes = sum(1 for t, _ in messages if t.endswith("/fix"))
        until(lambda: metric(port, "emfence_engine_fixes_total"), lambda n: n >= n_fixes, 60)
        # NATS re-sends the messages whose PUBACKs died with the node only after ack_wait:
        # the checks come after that.
        until(lambda: time.monotonic() - killed, lambda s: s >= ACK_WAIT_S + 5, 60)
        late = metric(port, "emfence_run_redelivered_late_total")
        print(f"redelivered {metric(port, 'emfence_run_redelivered_total'):g}, recognised "
              f"by the horizon only {late:g}")
        # The node the engine is on stores its last (retained) health itself and knows
        # it at once; another learns it from the replicated retained-message stream.
        check_outcome(fleet, engine, engine_node(cluster, engine.log()), messages, devices)
        # The PUBACKs of the last windows died with the node: NATS re-sent them after
        # ack_wait, when only the horizon still knew them (else this test tests nothing).
        assert late > 0, "nothing re-sent after the engine's last windows"
    finally:
        engine.close()
        cluster.stop()
