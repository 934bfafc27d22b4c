"""Abuse and fault tests of the engine's MQTT transport (real mosquitto from the shipped
config and ACL, `emfence run` as a real subprocess, devices with their own passwords).

- A device publishing with QoS 0 (once, or a flood mixed with QoS 1 and QoS 2 traffic)
  must not get the engine disconnected: a QoS 0 message takes no acknowledgement.
- Repeated connection losses under traffic: the engine reconnects and processes every
  time, loses no fix and raises no false offline alarm.
- A broker that stays connected but falls silent: the watchdog says "stalled" and the
  engine exits non-zero instead of sitting there.
"""

from __future__ import annotations

import asyncio
import queue
import time

import orjson
import pytest
from ingest_fleet import CONSOLE_PW, REGION_A, SECRET, EngineProcess, Fleet, fix
from ingest_mqtt_helpers import PahoClient

from ingest.passwords import CONSOLE_USER, device_password

pytestmark = pytest.mark.mqtt

QUICK = """
[ingest]
batch_max_ms = 10
health_interval_s = 1
checkpoint_interval_s = 1
restart_grace_s = 2
reconnect_min_s = 0.2
reconnect_max_s = 1
"""
GUARD_S = 120.0  # against hanging the suite; never a speed requirement


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def device_client(broker, device_id: str) -> PahoClient:
    return PahoClient(broker.port, device_id, device_password(SECRET, device_id))


class HealthReader:
    """The console's view of the engine's health topic: every document, in order."""

    def __init__(self, broker):
        self.client = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
        self.client.subscribe("emfence/v1/engine/+/health")
        self.seen: list[dict] = []

    def until(self, done, what: str, timeout_s: float = GUARD_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                h = orjson.loads(self.client.get(timeout=1.0)[1])
            except queue.Empty:
                continue
            self.seen.append(h)
            if done(h):
                return h
        raise AssertionError(f"engine health never showed {what}; last: "
                             f"{self.seen[-1] if self.seen else None}")

    def fixes(self, n: int) -> dict:
        # (the retained document may be the last will or a previous process's)
        return self.until(lambda h: h.get("engine", {}).get("fixes", 0) >= n,
                          f"{n} fixes processed")

    def close(self) -> None:
        self.client.close()


def test_qos0_and_qos2_publishes_never_disconnect_the_engine(tmp_path, mosquitto_factory):
    """A QoS 0 flood from one device, QoS 1 from others, QoS 2 from one more: the engine
    stays connected, processes every fix, and acknowledges every QoS 1 and QoS 2 message
    (a restarted engine is sent nothing again)."""
    fleet = Fleet(tmp_path, devices_a=6, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    qos0, qos2, *qos1 = fleet.ids(REGION_A)
    engine = EngineProcess(tmp_path, fleet, broker, config=QUICK)
    health = HealthReader(broker)
    clients = {d: device_client(broker, d) for d in [qos0, qos2, *qos1]}
    try:
        engine.start().wait_log("connected to")
        t0 = now_ms() - 120_000
        infos = []
        n = 0
        # A single QoS 0 fix first: with a PUBACK for it (packet id 0) the broker drops
        # the engine at its first acknowledgement.
        clients[qos0].client.publish(f"emfence/v1/{REGION_A}/{qos0}/fix",
                                     orjson.dumps(fix(t0, fleet.home)), qos=0)
        n += 1
        engine.wait_log("backlog drained")
        for k in range(1, 601):
            time.sleep(0.005)  # spread over a few checkpoints, so acknowledgements interleave
            ts = t0 + k * 100
            for _ in range(3):  # the flood: three QoS 0 fixes for each QoS 1 round
                clients[qos0].client.publish(f"emfence/v1/{REGION_A}/{qos0}/fix",
                                             orjson.dumps(fix(ts, fleet.home)), qos=0)
                ts += 1
                n += 1
            if k % 10 == 0:
                for d in qos1:
                    infos.append(clients[d].client.publish(
                        f"emfence/v1/{REGION_A}/{d}/fix", orjson.dumps(fix(ts, fleet.home)),
                        qos=1))
                    n += 1
            if k % 30 == 0:
                infos.append(clients[qos2].client.publish(
                    f"emfence/v1/{REGION_A}/{qos2}/fix", orjson.dumps(fix(ts, fleet.home)),
                    qos=2))
                n += 1
        for info in infos:
            info.wait_for_publish(GUARD_S)
        h = health.fixes(n)
        assert h["engine"]["fixes"] == n and h["engine"]["duplicate_fixes"] == 0
        assert engine.stop() == 0, engine.log()[-3000:]
        log = engine.log()
        assert "broker connection lost" not in log, log[-3000:]
        assert "reconnected" not in log
        final = health.until(lambda h: h["status"] == "offline" and "counters" in h,
                             "a clean stop")
        assert final["counters"].get("disconnects", 0) == 0
        assert final["engine"]["fixes"] == n

        # Nothing was left unacknowledged: the broker sends the next start nothing.
        mark = len(engine.log())
        engine.start().wait_log("backlog drained: 0 messages", after=mark)
        assert engine.stop() == 0
    finally:
        for c in clients.values():
            c.close()
        health.close()
        engine.close()


async def test_the_engine_client_never_loses_a_cancellation():
    """The engine's client waits for CONNACK, SUBACK and PUBACK without
    ``asyncio.wait_for``, which on Python 3.11 drops a cancellation that arrives as the
    awaited packet does: the cancellation comes 0, 1, 2, ... loop steps after it."""
    import aiomqtt

    from ingest.mqtt import BrokerSettings, make_client

    client = make_client(BrokerSettings("127.0.0.1", 1), client_id="engine-x", will=None)
    assert "_wait_for" in vars(aiomqtt.Client)  # what is replaced is aiomqtt's own
    for steps in range(6):
        arrived = asyncio.Event()
        task = asyncio.create_task(client._wait_for(arrived.wait(), timeout=3600))
        for _ in range(3):
            await asyncio.sleep(0)
        arrived.set()
        for _ in range(steps):
            await asyncio.sleep(0)
        if not task.cancel():
            continue  # it had already returned: nothing to lose
        await asyncio.wait({task}, timeout=GUARD_S)
        assert task.cancelled(), f"a cancellation {steps} loop steps after the packet was lost"
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        await client._wait_for(asyncio.Event().wait(), timeout=0.01)
