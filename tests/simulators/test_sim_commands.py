"""The simulator answers commands like firmware (issue #16, the downlink): each command's
answer with the clock passed in, then the same through a real mosquitto with the
project's ACL, the test-only load-generator account answering for its devices."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import orjson
import pytest

from contract.commands import command_payload
from emfence.config import Config
from ingest.decode import decode_fix_payload
from ingest.passwords import ENGINE_USER
from simulators.responder import Firmware, run_responder

T0 = 1_763_800_000_000
REGION = "411303"


def fix_of(device_id: str, now_ms: int) -> dict:
    return {"ts": now_ms, "lat": 33.0, "lon": 112.5, "acc": 10.0}


def command(cmd_id: str, cmd: str, *, ts: int = T0, ttl_ms: int = 600_000, **args) -> bytes:
    return orjson.dumps(command_payload(cmd_id, cmd, args, ts_ms=ts, expires_ts_ms=ts + ttl_ms))


def answers(out) -> list[tuple[str, dict]]:
    return [(topic.rsplit("/", 1)[1], orjson.loads(p)) for topic, p in out]


def test_each_command_is_answered_like_firmware():
    fw = Firmware(fix_of)
    [(kind, reply)] = answers(fw.on_command(REGION, "B-1", command("c1", "vibrate"), T0 + 5))
    assert (kind, reply["cmd_id"], reply["result"], reply["ts"]) == ("reply", "c1", "ok", T0 + 5)
    (k1, fix), (k2, reply) = answers(fw.on_command(REGION, "B-1", command("c2", "locate"), T0))
    assert (k1, fix["ts"], k2, reply["result"]) == ("fix", T0, "reply", "ok")
    [(_, reply)] = answers(fw.on_command(REGION, "B-1", command("c3", "vibrate", ttl_ms=-1),
                                         T0))
    assert reply["result"] == "expired"
    [(_, reply)] = answers(fw.on_command(REGION, "B-1", orjson.dumps(
        {"v": 1, "cmd_id": "c4", "cmd": "selfdestruct", "ts": T0, "expires_ts": T0 + 1}), T0))
    assert reply["result"] == "unsupported" and "cmd" in reply["detail"]
    assert fw.fast == {}

    [(_, reply)] = answers(fw.on_command(REGION, "B-2", command(
        "c5", "interval", interval_s=5, duration_s=60), T0))
    assert reply["result"] == "ok"
    assert fw.due(T0 + 4_999) == []
    sent = [orjson.loads(p)["ts"] for t in range(T0, T0 + 70_000, 1000) for _, p in fw.due(t)]
    # every 5 s for 60 s (at +5 s ... +55 s), then back to normal
    assert sent == [T0 + k * 5000 for k in range(1, 12)] and fw.fast == {}
    # a redelivered command is answered again, never acted on twice
    [(_, again)] = answers(fw.on_command(REGION, "B-2", command(
        "c5", "interval", interval_s=5, duration_s=60), T0 + 1))
    assert again["result"] == "ok" and fw.fast == {}


@pytest.mark.mqtt
async def test_the_load_generator_answers_for_its_devices_through_the_acl(mosquitto_factory):
    """``emfence simulate --answer-commands``: the pool account answers for the fleet's
    devices with one wildcard subscription per region; a locate is a fix of the device's
    own simulated position."""
    from sim_helpers import fast_config, fleet

    from simulators.scenario import Simulation

    broker = mosquitto_factory(passwords={"emfence-loadgen-1": "lg-pw", ENGINE_USER: "e-pw"})
    _, _, fl = fleet(4, 3)
    sim = Simulation(fl, rate=10.0, duration_s=10.0, start_ms=int(time.time() * 1000),
                     config=fast_config(), scenario="normal", seed=3)
    device, region = fl.device_ids[0], fl.device_region[0]
    stop = asyncio.Event()
    async with aiomqtt.Client("127.0.0.1", broker.port, username=ENGINE_USER, password="e-pw",
                              identifier=ENGINE_USER) as engine:
        await engine.subscribe(f"emfence/v1/{region}/+/reply", qos=1)
        await engine.subscribe(f"emfence/v1/{region}/+/fix", qos=1)
        task = asyncio.create_task(run_responder(
            "127.0.0.1", broker.port, sim, username="emfence-loadgen-1", password="lg-pw",
            stop=stop))
        await asyncio.sleep(0.5)  # the simulator's SUBACKs
        now = int(time.time() * 1000)
        for cmd_id, cmd in (("c1", "vibrate"), ("c2", "locate")):
            await engine.publish(f"emfence/v1/{region}/{device}/cmd",
                                 command(cmd_id, cmd, ts=now), qos=1)
        got = []
        async with asyncio.timeout(10):
            async for m in engine.messages:
                got.append((m.topic.value.rsplit("/", 1)[1], orjson.loads(m.payload)))
                if len(got) == 3:
                    break
        stop.set()
        await task
    assert [(kind, d.get("cmd_id"), d.get("result")) for kind, d in got] == [
        ("reply", "c1", "ok"), ("fix", None, None), ("reply", "c2", "ok")]
    # the located fix is one the engine accepts, taken now, in the fleet's county (China)
    rejects: list = []
    [fix] = decode_fix_payload(orjson.dumps(got[1][1]), rx_ms=now + 1000, config=Config().ingest,
                               rejects=rejects)
    assert rejects == [] and fix.ts_ms >= now
    assert 18 < fix.lat < 54 and 73 < fix.lon < 135
