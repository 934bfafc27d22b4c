"""The simulator's pool connection over two real mosquitto brokers (the project's config
and ACL): when the broker in use dies, it moves to the next and sends again every publish
that was not acknowledged, so nothing it was told to publish is lost."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import aiomqtt
import orjson
import pytest

from simulators.mqttwire import WireConnection

pytestmark = pytest.mark.mqtt

PASSWORDS = {"emfence-engine": "engine-pw", "emfence-loadgen": "loadgen-pw"}
TOPIC = "emfence/v1/411303/B-0001/fix"


async def collect(port: int, out: list, ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, username="emfence-engine",
                              password="engine-pw") as c:
        await c.subscribe("emfence/v1/+/+/fix", qos=1)
        ready.set()
        async for msg in c.messages:
            out.append(bytes(msg.payload))


def stopped(pid: int) -> bool:
    """The process is stopped (state T in /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


async def until(check, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return check()


async def test_moves_to_the_next_broker_and_resends_what_was_not_acknowledged(
        mosquitto_factory):
    first = mosquitto_factory(passwords=PASSWORDS)
    second = mosquitto_factory(passwords=PASSWORDS)
    got1, got2 = [], []
    ready1, ready2 = asyncio.Event(), asyncio.Event()
    collectors = [asyncio.create_task(collect(first.port, got1, ready1)),
                  asyncio.create_task(collect(second.port, got2, ready2))]
    await asyncio.wait_for(asyncio.gather(ready1.wait(), ready2.wait()), 10)
    c = WireConnection("127.0.0.1", first.port, client_id="sim-failover",
                       username="emfence-loadgen", password="loadgen-pw", window=500,
                       brokers=[("127.0.0.1", first.port), ("127.0.0.1", second.port)])
    try:
        await c.connect()
        payloads = [orjson.dumps({"ts": 1763800000000 + i, "lat": 33.0, "lon": 112.5})
                    for i in range(300)]
        for p in payloads[:100]:
            await c.room()
            c.publish(TOPIC, p)
        await c.drain()
        assert await c.wait_acked(10)
        assert await until(lambda: len(got1) >= 100)
        # The first broker hangs (it reads nothing more), then dies: the next 200 are
        # written but never acknowledged by it.
        first.proc.send_signal(signal.SIGSTOP)
        assert await until(lambda: stopped(first.proc.pid))
        for p in payloads[100:]:
            await c.room()
            c.publish(TOPIC, p)
        await c.drain()
        assert c.inflight == 200 and c.reconnects == 0
        first.kill()
        assert await c.wait_acked(20), f"{c.inflight} not acknowledged"
        assert c.reconnects == 1 and (c.host, c.port) == ("127.0.0.1", second.port)
        assert c.acked == c.sent == 300
        assert await until(lambda: len(got2) >= 200)
        assert got1 == payloads[:100]
        assert sorted(got2) == sorted(payloads[100:])  # every one, each once (DUP resend)
    finally:
        await c.close()
        for t in collectors:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await t


async def test_per_device_connections_move_to_the_next_broker(mosquitto_factory):
    from sim_helpers import fast_config, fleet

    from ingest.passwords import device_password
    from simulators.publisher import Publisher
    from simulators.scenario import Simulation

    secret = b"failover-test-secret-0123456789ab"
    _, _, small = fleet(8, 3, ("411303",))
    passwords = PASSWORDS | {d: device_password(secret, d) for d in small.device_ids}
    first = mosquitto_factory(passwords=passwords)
    second = mosquitto_factory(passwords=passwords)
    got2: list = []
    ready = asyncio.Event()
    collector = asyncio.create_task(collect(second.port, got2, ready))
    await asyncio.wait_for(ready.wait(), 10)
    sim = Simulation(small, rate=100.0, duration_s=3.0, start_ms=int(time.time() * 1000) + 500,
                     config=fast_config(), scenario="load", seed=1, spoof_allowed=False)
    ids = small.device_ids
    pub = Publisher(sim, "127.0.0.1", first.port, progress=False,
                    credentials=lambda d: (ids[d], device_password(secret, ids[d])),
                    brokers=[("127.0.0.1", first.port), ("127.0.0.1", second.port)])
    try:
        await pub.connect()
        run = asyncio.create_task(pub.run())
        await asyncio.sleep(1.5)
        first.kill()
        stats = await asyncio.wait_for(run, 90)
        assert stats.failed == 0 and stats.acked == stats.sent == sim.total_slots, stats
        assert pub.reconnects == len(ids)  # every device's connection moved
        assert all(c._port == second.port for c in pub._clients)
        assert await until(lambda: len(got2) > 0)
    finally:
        await pub.close()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await collector
