"""Answering commands like firmware (issue #16, the downlink; docs/wire-protocol.md,
"Downlink"; docs/simulator.md).

:class:`Firmware` is the behaviour, with time passed in: ``vibrate`` → ``ok``;
``locate`` → a fix now and ``ok``; ``interval`` → a fix every ``interval_s`` for
``duration_s``, then back to normal, and ``ok``; a command past its ``expires_ts`` →
``expired`` (not acted on); a malformed one → ``rejected`` naming the field. A
``cmd_id`` seen before is answered with the same result and not acted on again (a QoS 1
redelivery). Only the devices under an ``interval`` command are kept in memory, so
thousands of simulated devices cost nothing until commanded.

:func:`answer_commands` runs it on one MQTT connection: per-device mode subscribes to
the device's own ``cmd`` topic (its login's ACL allows only that), pool mode (the
test-only ``emfence-loadgen`` accounts) to ``emfence/v1/{region}/+/cmd`` once per
region: one subscription per connection however many devices it speaks for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from contract.commands import CommandError, parse_command, reply_payload
from contract.topics import device_topic, reply_topic

# (device id, now epoch ms) -> the device's fix object now, or None (no fix to give)
FixOf = Callable[[str, int], dict[str, Any] | None]
SEEN_MAX = 10_000  # cmd_ids remembered for redeliveries


class Firmware:
    """The command behaviour of many devices (see the module doc)."""

    def __init__(self, fix_of: FixOf):
        self.fix_of = fix_of
        # device -> (every_ms, next_ms, until_ms, region): devices under an interval command
        self.fast: dict[str, tuple[int, int, int, str]] = {}
        self.seen: dict[str, dict[str, Any]] = {}  # cmd_id -> the reply given

    def on_command(self, region: str, device_id: str, payload: bytes, now_ms: int
                   ) -> list[tuple[str, bytes]]:
        """The publishes (topic, payload) answering one command: a fix for ``locate``,
        then the reply on the device's reply topic."""
        out: list[tuple[str, bytes]] = []
        try:
            cmd = parse_command(orjson.loads(payload))
        except orjson.JSONDecodeError:
            return []  # nothing to echo a cmd_id from: firmware drops it
        except CommandError as exc:
            doc = orjson.loads(payload)
            cmd_id = doc.get("cmd_id") if isinstance(doc, dict) else None
            if not isinstance(cmd_id, str) or exc.field == "cmd_id":
                return []
            result = ("unsupported" if exc.field == "cmd" else "rejected", str(exc))
            return [self._reply(region, device_id, cmd_id, *result, now_ms)]
        cmd_id = cmd["cmd_id"]
        if cmd_id in self.seen:
            again = self.seen[cmd_id]
            return [self._reply(region, device_id, cmd_id, again["result"], again["detail"],
                                now_ms)]
        if cmd["expires_ts"] <= now_ms:
            result, detail = "expired", f"received {now_ms - cmd['expires_ts']} ms late"
        elif cmd["cmd"] == "vibrate":
            result, detail = "ok", "vibrated"
        elif cmd["cmd"] == "locate":
            fix = self.fix_of(device_id, now_ms)
            if fix is None:
                result, detail = "rejected", "no fix available"
            else:
                out.append((device_topic(region, device_id, "fix"), orjson.dumps(fix)))
                result, detail = "ok", "fix sent"
        else:
            every_ms = cmd["interval_s"] * 1000
            self.fast[device_id] = (every_ms, now_ms + every_ms, now_ms + cmd["duration_s"] * 1000,
                                    region)
            result, detail = "ok", f"every {cmd['interval_s']} s for {cmd['duration_s']} s"
        if len(self.seen) >= SEEN_MAX:
            self.seen.pop(next(iter(self.seen)))
        self.seen[cmd_id] = {"result": result, "detail": detail}
        out.append(self._reply(region, device_id, cmd_id, result, detail, now_ms))
        return out

    @staticmethod
    def _reply(region: str, device_id: str, cmd_id: str, result: str, detail: str,
               now_ms: int) -> tuple[str, bytes]:
        return (reply_topic(region, device_id),
                orjson.dumps(reply_payload(cmd_id, result, ts_ms=now_ms, detail=detail)))

    def due(self, now_ms: int) -> list[tuple[str, bytes]]:
        """The fixes of devices under an ``interval`` command due at ``now_ms``; a device
        whose ``duration_s`` has passed returns to its normal reporting."""
        out = []
        for device_id, (every_ms, next_ms, until_ms, region) in list(self.fast.items()):
            if now_ms >= until_ms:
                del self.fast[device_id]
                continue
            if now_ms < next_ms:
                continue
            fix = self.fix_of(device_id, now_ms)
            if fix is not None:
                out.append((device_topic(region, device_id, "fix"), orjson.dumps(fix)))
            self.fast[device_id] = (every_ms, next_ms + every_ms * max(
                1, (now_ms - next_ms) // every_ms + 1), until_ms, region)
        return out


def command_filters(*, device: tuple[str, str] | None = None,
                    regions: list[str] | None = None) -> list[str]:
    """Per-device mode: ``device=(region, id)`` → its own cmd topic; pool mode: one
    wildcard per region (None: every region)."""
    if device is not None:
        return [device_topic(device[0], device[1], "cmd")]
    return [device_topic(r, "+", "cmd") for r in (regions or ["+"])]


async def answer_commands(client, firmware: Firmware, filters: list[str],
                          clock_ms: Callable[[], int], tick_s: float = 1.0) -> None:
    """Subscribe ``client`` (a connected aiomqtt client) to ``filters`` at QoS 1 and
    answer every command until cancelled; interval fixes go out every ``tick_s``."""
    for f in filters:
        await client.subscribe(f, qos=1)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            for topic, payload in firmware.due(clock_ms()):
                await client.publish(topic, payload, qos=1)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(ticker(), name="firmware-interval")
        async for message in client.messages:
            parts = message.topic.value.split("/")
            if len(parts) != 5 or parts[4] != "cmd":
                continue
            payload = bytes(message.payload) if not isinstance(message.payload, bytes) \
                else message.payload
            for topic, out in firmware.on_command(parts[2], parts[3], payload, clock_ms()):
                await client.publish(topic, out, qos=1)


def simulation_fix_of(sim) -> FixOf:
    """A :class:`simulators.scenario.Simulation`'s device's fix now (its movement model,
    no drop-out), in the shape the simulator publishes; None for a device it lacks."""
    import numpy as np

    from simulators.movement import COORD_GCJ02

    index = sim.fleet.device_index

    def fix_of(device_id: str, now_ms: int) -> dict[str, Any] | None:
        d = index.get(device_id)
        if d is None:
            return None
        obs = sim.model.observe(np.array([d]), np.array([now_ms], dtype=np.int64), sim._rng,
                                dropouts=False)
        fix = {"ts": now_ms, "lat": round(float(obs.lat[0]), 7),
               "lon": round(float(obs.lon[0]), 7), "acc": float(obs.acc[0])}
        if int(obs.coord[0]) == COORD_GCJ02:
            fix["coord_sys"] = "gcj02"
        return fix

    return fix_of


async def run_responder(host: str, port: int, sim, *, username: str, password: str | None,
                        stop: asyncio.Event) -> None:
    """``emfence simulate --answer-commands``: one connection as the pool account
    ``username`` answering the commands of every region of ``sim``'s devices, until
    ``stop``. A refused login raises ``ingest.mqtt.BrokerConnectError``."""
    import time

    import aiomqtt

    from ingest.mqtt import connect_error

    regions = sorted(set(sim.fleet.device_region))
    client = aiomqtt.Client(host, port, username=username, password=password,
                            identifier=username)
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise connect_error(exc, host=host, port=port, username=username, tls=False) from None
    try:
        task = asyncio.create_task(answer_commands(
            client, Firmware(simulation_fix_of(sim)), command_filters(regions=regions),
            lambda: time.time_ns() // 1_000_000))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for t in (task, waiter):
            t.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
    finally:
        await client.__aexit__(None, None, None)
