"""The simulator answers commands like firmware (issue #16, the downlink): each command's
answer with the clock passed in, then the same through a real mosquitto with the
project's ACL, the test-only load-generator account answering for its devices."""

from __future__ import annotations

import asyncio

import aiomqtt
import orjson
import pytest

from contract.commands import command_payload
from ingest.passwords import ENGINE_USER
from simulators.responder import Firmware, answer_commands, command_filters

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
    broker = mosquitto_factory(passwords={"emfence-loadgen-1": "lg-pw", ENGINE_USER: "e-pw"})
    fw = Firmware(fix_of)
    async with aiomqtt.Client("127.0.0.1", broker.port, username="emfence-loadgen-1",
                              password="lg-pw", identifier="emfence-loadgen-1") as sim, \
            aiomqtt.Client("127.0.0.1", broker.port, username=ENGINE_USER, password="e-pw",
                           identifier=ENGINE_USER) as engine:
        await engine.subscribe(f"emfence/v1/{REGION}/+/reply", qos=1)
        await engine.subscribe(f"emfence/v1/{REGION}/+/fix", qos=1)
        task = asyncio.create_task(answer_commands(
            sim, fw, command_filters(regions=[REGION]), lambda: T0, tick_s=0.05))
        await asyncio.sleep(0.3)  # the simulator's SUBACK
        for cmd_id, cmd in (("c1", "vibrate"), ("c2", "locate")):
            await engine.publish(f"emfence/v1/{REGION}/B-{cmd_id}/cmd", command(cmd_id, cmd),
                                 qos=1)
        got = []
        async with asyncio.timeout(10):
            async for m in engine.messages:
                got.append((m.topic.value, orjson.loads(m.payload)))
                if len(got) == 3:
                    break
        task.cancel()
    assert [(t, d.get("result")) for t, d in got] == [
        (f"emfence/v1/{REGION}/B-c1/reply", "ok"), (f"emfence/v1/{REGION}/B-c2/fix", None),
        (f"emfence/v1/{REGION}/B-c2/reply", "ok")]
