"""`emfence run` end to end: a real mosquitto with the shipped ACL, the engine as a real
subprocess, devices publishing with their own credentials; alarms asserted on the alarm
topics and in the store."""

from __future__ import annotations

import signal
import time

import orjson
import pytest
from ingest_fleet import (
    CONSOLE_PW,
    REGION_A,
    REGION_B,
    SECRET,
    fix,
    now_ms,
    until,
)
from ingest_mqtt_helpers import PahoClient

from alarms.store import open_store
from ingest.passwords import CONSOLE_USER, device_password

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




def collect(client: PahoClient, n: int, timeout_s: float = 120.0) -> list[tuple[str, dict]]:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        try:
            topic, payload, _ = client.get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - queue.Empty at the deadline
            break
        out.append((topic, orjson.loads(payload)))
    return out


def test_fixes_in_alarms_out_on_topics_and_in_the_store(tmp_path, fleet, broker, engines):
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe("emfence/v1/+/alarms/+")
    console.subscribe("emfence/v1/+/deadletter")
    engine = engines(tmp_path, fleet, broker, config=FAST)
    engine.wait_log("connected to")

    a = fleet.ids(REGION_A)
    devs = {d: PahoClient(broker.port, d, device_password(SECRET, d)) for d in a[:4]}
    t = now_ms() - 60_000
    # a[0]: goes abroad for two fixes (outbound needs 2), as one store-and-forward array.
    devs[a[0]].publish(f"emfence/v1/{REGION_A}/{a[0]}/fix", orjson.dumps(
        [fix(t, fleet.home), fix(t + 1000, fleet.abroad), fix(t + 2000, fleet.abroad)]))
    # a[1]: walks into the victim's home circle.
    devs[a[1]].publish(f"emfence/v1/{REGION_A}/{a[1]}/fix", orjson.dumps(fix(t, fleet.victim)))
    # a[2]: strap cut; a[3]: battery low.
    devs[a[2]].publish(f"emfence/v1/{REGION_A}/{a[2]}/status",
                       orjson.dumps({"ts": t, "strap": "open"}))
    devs[a[3]].publish(f"emfence/v1/{REGION_A}/{a[3]}/status",
                       orjson.dumps({"ts": t, "battery": 9, "charging": False}))
    # and one bad payload: dead-lettered, not fatal.
    devs[a[3]].publish(f"emfence/v1/{REGION_A}/{a[3]}/fix", b'{"ts": 1, "lat": 1')

    got = collect(console, 5)
    alarms = {(tp.rsplit("/", 1)[1], ev["device_id"]): ev for tp, ev in got if "/alarms/" in tp}
    assert set(alarms) == {("outbound", a[0]), ("exclusion", a[1]), ("tamper", a[2]),
                           ("low_battery", a[3])}, got
    out = alarms[("outbound", a[0])]
    assert out["event"] == "raised" and out["at"] == t + 2000 and out["region"] == REGION_A
    assert out["zone_id"] == f"county-{REGION_A}" and out["distance_m"] > 10_000
    assert alarms[("exclusion", a[1])]["zone_id"] == "victim-home"
    [dead] = [ev for tp, ev in got if tp.endswith("/deadletter")]
    assert dead["topic"] == f"emfence/v1/{REGION_A}/{a[3]}/fix" and dead["code"] == "bad_json"

    # Back home: the outbound alarm clears with the same alarm_id.
    devs[a[0]].publish(f"emfence/v1/{REGION_A}/{a[0]}/fix",
                       orjson.dumps(fix(t + 3000, fleet.home)))
    [(topic, cleared)] = collect(console, 1)
    assert topic == f"emfence/v1/{REGION_A}/alarms/outbound"
    assert cleared["event"] == "cleared" and cleared["alarm_id"] == out["alarm_id"]

    store = open_store(engine.store_url)
    try:
        rows = {(r["type"], r["device_id"]): r for r in store.list_alarms()}
        assert set(rows) == set(alarms)
        assert rows[("outbound", a[0])]["state"] == "cleared"
        assert rows[("tamper", a[2])]["state"] == "active"
        # every event was delivered (PUBACK) and marked so
        assert until(lambda: store.pending(100), lambda rows: not rows) == []
        # accepted fixes reach the track store (written off the hot path, about every s)
        track = until(lambda: store.track(a[0]), lambda rows: len(rows) >= 4)
        assert [r["ts"] for r in track] == [t, t + 1000, t + 2000, t + 3000]
        assert (track[1]["lon"], track[1]["lat"]) == pytest.approx(fleet.abroad)
    finally:
        store.close_store()

    # Health is retained, with counters; the console may read it. One account, one
    # connection (the broker takes the login as the client id): the first reader goes
    # first, or its reconnects and this one's take the login from each other.
    console.close()
    health_reader = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    health_reader.subscribe("emfence/v1/engine/worker-1/health")
    topic, payload, retained = health_reader.get()
    h = orjson.loads(payload)
    assert h["status"] == "online" and retained
    assert h["rejections"].get("bad_json") == 1

    # SIGTERM: clean exit 0, checkpoint written, health says offline.
    assert engine.stop() == 0
    assert engine.checkpoint.exists()
    assert "stopped cleanly" in engine.log()
    health_reader.close()  # one account, one connection, as above
    last = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    last.subscribe("emfence/v1/engine/worker-1/health")
    assert orjson.loads(last.get()[1])["status"] == "offline"
    for c in [last, *devs.values()]:
        c.close()


def test_unknown_device_and_wrong_region_are_dead_lettered(tmp_path, fleet, broker, engines):
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe("emfence/v1/+/deadletter")
    console.subscribe("emfence/v1/+/alarms/+")
    engine = engines(tmp_path, fleet, broker, config=FAST)
    engine.wait_log("connected to")
    b0 = fleet.ids(REGION_B)[0]
    dev = PahoClient(broker.port, b0, device_password(SECRET, b0))
    t = now_ms()
    # A device of region B publishing under region A: rejected, even from abroad.
    dev.publish(f"emfence/v1/{REGION_A}/{b0}/fix", orjson.dumps(fix(t, fleet.abroad)))
    # A device nobody registered (the loadgen account may publish anything).
    from ingest_fleet import LOADGEN_PW

    gen = PahoClient(broker.port, "emfence-loadgen", LOADGEN_PW)
    gen.publish(f"emfence/v1/{REGION_A}/GHOST-1/fix", orjson.dumps(fix(t, fleet.home)))
    got = collect(console, 2)
    assert sorted((ev["code"], tp) for tp, ev in got) == [
        ("unknown_device", f"emfence/v1/{REGION_A}/deadletter"),
        ("wrong_region", f"emfence/v1/{REGION_A}/deadletter"),
    ]
    assert engine.stop() == 0
    for c in (console, dev, gen):
        c.close()


def test_worker_subscribes_only_to_its_regions(tmp_path, fleet, broker, engines):
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe("emfence/v1/+/alarms/+")
    engine = engines(tmp_path, fleet, broker, config=FAST, extra=["--regions", REGION_B])
    engine.wait_log("connected to")
    a0, b0 = fleet.ids(REGION_A)[0], fleet.ids(REGION_B)[0]
    t = now_ms()
    PahoClient(broker.port, a0, device_password(SECRET, a0)).publish(
        f"emfence/v1/{REGION_A}/{a0}/status", orjson.dumps({"ts": t, "strap": "open"}))
    PahoClient(broker.port, b0, device_password(SECRET, b0)).publish(
        f"emfence/v1/{REGION_B}/{b0}/status", orjson.dumps({"ts": t, "strap": "open"}))
    [(topic, ev)] = collect(console, 1)
    assert topic == f"emfence/v1/{REGION_B}/alarms/tamper" and ev["device_id"] == b0
    assert console.drain(1.0) == []  # region A's tamper is not this worker's business
    assert engine.stop() == 0


def test_worker_subscribed_to_all_regions_keeps_only_its_own(tmp_path, fleet, broker, engines):
    """``ingest.subscribe = "all"``: two filters whatever ``--regions`` says (a broker
    where each filter costs a consumer), the other regions' messages acknowledged and
    counted, never processed nor dead-lettered as if they were this worker's."""
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe("emfence/v1/+/alarms/+")
    console.subscribe("emfence/v1/+/deadletter")
    config = FAST.replace("[ingest]\n", '[ingest]\nsubscribe = "all"\n')
    engine = engines(tmp_path, fleet, broker, config=config, extra=["--regions", REGION_B])
    engine.wait_log("connected to")
    a0, b0 = fleet.ids(REGION_A)[0], fleet.ids(REGION_B)[0]
    t = now_ms()
    for dev, region in ((a0, REGION_A), (b0, REGION_B)):
        PahoClient(broker.port, dev, device_password(SECRET, dev)).publish(
            f"emfence/v1/{region}/{dev}/status", orjson.dumps({"ts": t, "strap": "open"}))
    [(topic, ev)] = collect(console, 1)
    assert topic == f"emfence/v1/{REGION_B}/alarms/tamper" and ev["device_id"] == b0
    assert console.drain(1.0) == []  # no alarm and no dead letter for region A's status
    assert engine.stop() == 0
    [final] = [line for line in engine.log().splitlines() if "final counters" in line]
    assert "'other_region': 1" in final and "'subscriptions_refused'" not in final, final
    # nothing of region A's was left unacknowledged in the worker's session
    mark = len(engine.log())
    engine.start().wait_log("backlog drained", after=mark)
    assert engine.stop() == 0
    [final] = [ln for ln in engine.log()[mark:].splitlines() if "final counters" in ln]
    assert "'other_region'" not in final and "'messages'" not in final, final


def test_sighup_reloads_subjects_keeping_state(tmp_path, fleet, broker, engines):
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe("emfence/v1/+/alarms/+")
    engine = engines(tmp_path, fleet, broker, config=FAST)
    engine.wait_log("connected to")
    a = fleet.ids(REGION_A)
    dev = PahoClient(broker.port, a[0], device_password(SECRET, a[0]))
    t = now_ms() - 30_000
    dev.publish(f"emfence/v1/{REGION_A}/{a[0]}/fix",
                orjson.dumps([fix(t, fleet.abroad), fix(t + 1000, fleet.abroad)]))
    [(_, raised)] = collect(console, 1)
    # Remove a[1] from the subjects file and reload.
    subjects = orjson.loads(fleet.subjects_path.read_bytes())
    subjects["subjects"] = [s for s in subjects["subjects"]
                            if s["devices"][0]["device_id"] != a[1]]
    fleet.subjects_path.write_bytes(orjson.dumps(subjects))
    mark = len(engine.log())
    engine.signal(signal.SIGHUP)
    engine.wait_log("reloaded:", after=mark)
    # State kept: the open outbound alarm clears with its id; no second raise.
    dev.publish(f"emfence/v1/{REGION_A}/{a[0]}/fix", orjson.dumps(fix(t + 2000, fleet.home)))
    [(_, cleared)] = collect(console, 1)
    assert cleared["event"] == "cleared" and cleared["alarm_id"] == raised["alarm_id"]
    # The removed device is now unknown.
    gone = PahoClient(broker.port, a[1], device_password(SECRET, a[1]))
    gone.publish(f"emfence/v1/{REGION_A}/{a[1]}/status", orjson.dumps({"ts": t, "strap": "open"}))
    time.sleep(1.0)
    assert console.drain() == []
    assert engine.stop() == 0
    assert "'deadletters': 1" in engine.log()  # the final counters: one unknown_device
    for c in (console, dev, gone):
        c.close()
