"""The consumers the end-to-end benchmark (``benchmarks.e2e``) ramps the simulator
against, each with an ``await received()`` count: ``mosquitto_sub`` (the C client: the
broker's ceiling), the bare aiomqtt subscriber (a subprocess: Python's) and the engine's
own message counter (read from its health messages)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiomqtt
import orjson

from contract.topics import device_topic, health_topic

# -- the bare subscriber (a subprocess) ----------------------------------------------------

async def bare_subscriber(port: int, username: str, password: str) -> None:
    """Subscribe to every fix and status (QoS 1), decode each payload, print the count."""
    count = 0
    bad = 0
    async with aiomqtt.Client("127.0.0.1", port, username=username, password=password,
                              identifier=f"bench-bare-{os.getpid()}", clean_session=True,
                              max_queued_incoming_messages=0) as c:
        await c.subscribe(device_topic("+", "+", "fix"), qos=1)
        await c.subscribe(device_topic("+", "+", "status"), qos=1)
        print("ready", flush=True)

        async def report() -> None:
            while True:
                await asyncio.sleep(0.05)
                print(f"count {count} {bad}", flush=True)

        reporter = asyncio.create_task(report())
        try:
            async for msg in c.messages:
                try:
                    orjson.loads(msg.payload)
                except orjson.JSONDecodeError:
                    bad += 1
                count += 1
        finally:
            reporter.cancel()


class BareProcess:
    """The bare subscriber subprocess and its latest count (read from its stdout)."""

    def __init__(self, port: int, username: str, password_file: Path):
        self.count = 0
        self.proc = None
        self.args = [sys.executable, "-m", "benchmarks.e2e", "--bare-subscriber", str(port),
                     "--bare-username", username, "--bare-password-file", str(password_file)]

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.args, stdout=subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"bare subscriber did not start: {line!r}")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            parts = line.split()
            if parts and parts[0] == b"count":
                self.count = int(parts[1])

    async def received(self) -> int:
        return self.count

    async def stop(self) -> None:
        await _stop(self.proc, self._reader)


async def _stop(proc, reader: asyncio.Task) -> None:
    """End a consumer subprocess and the task reading its output."""
    if proc and proc.returncode is None:
        proc.terminate()
        await proc.wait()
    reader.cancel()


class CSubscriber:
    """``mosquitto_sub -q 1`` (the broker's own C client) on every fix and status topic,
    printing one byte a message into a pipe that this process counts: the rate no Python
    subscriber can beat, the ceiling ``ratio_vs_c_subscriber`` is measured against."""

    def __init__(self, port: int, username: str, password_file: Path):
        pw = password_file.read_text().splitlines()[0].strip()
        self.count = 0
        self.proc = None
        self.args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                     "-u", username, "-P", pw, "-i", f"bench-c-{os.getpid()}",
                     "-t", device_topic("+", "+", "fix"), "-t", device_topic("+", "+", "status"),
                     "-F", "x", "-N"]

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.args, stdout=subprocess.PIPE,
                                                         stderr=subprocess.PIPE)
        await asyncio.sleep(0.5)  # no "ready" line: give it its SUBACK
        if self.proc.returncode is not None:
            err = (await self.proc.stderr.read()).decode(errors="replace")
            raise RuntimeError(f"mosquitto_sub did not start: {err.strip()}")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while chunk := await self.proc.stdout.read(1 << 16):
            self.count += len(chunk)

    async def received(self) -> int:
        return self.count

    async def stop(self) -> None:
        await _stop(self.proc, self._reader)


class EngineCounter:
    """The engine's received-message counter (less what it received again), from its
    health messages (only the current engine process's: an earlier engine's retained
    health, e.g. its final "offline" one, has an older ``started_at``)."""

    def __init__(self, rig):
        self.rig = rig
        self.health: dict = {}
        self._task = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())
        await asyncio.wait_for(self._ready.wait(), 30)

    async def _watch(self) -> None:
        from simulators.live import ENGINE_NAME

        async with aiomqtt.Client(self.rig.host, self.rig.port, username="emfence-console",
                                  password=self.rig.passwords["emfence-console"]) as c:
            await c.subscribe(health_topic(ENGINE_NAME), qos=1)
            async for msg in c.messages:
                health = orjson.loads(msg.payload)
                if health.get("started_at", 0) < self.rig.engine_launched_ms:
                    continue
                self.health = health
                self._ready.set()

    async def received(self) -> int:
        """Messages taken, each once: the engine counts again, as ``redelivered``, what
        the broker sends again after a reconnect (or a publisher after its own)."""
        counters = self.health.get("counters", {})
        return int(counters.get("messages", 0)) - int(counters.get("redelivered", 0))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, aiomqtt.MqttError):
                pass


# -- the webhook receiver (fix -> notification latency) -------------------------------------

class WebhookTimer:
    """The engine's webhook receiver (:mod:`emfence.webhook_receiver`, signature checked)
    in this process, noting each notification's arrival (wall clock, ms). ``latency(since_ms,
    types)``: arrival minus the deciding fix's ``at`` of the ``raised`` notifications of
    ``types`` whose fix is at or after ``since_ms`` (the simulator stamps ``ts`` when it
    publishes, as for the MQTT latency)."""

    def __init__(self, secret: bytes):
        import time

        from emfence.webhook_receiver import WebhookReceiver

        self._clock = time.time_ns
        self.arrivals: list[tuple[int, dict]] = []
        self.receiver = WebhookReceiver(secret, on_notification=self._note).start()

    def _note(self, event: dict, delivery: str) -> None:
        self.arrivals.append((self._clock() // 1_000_000, event))

    def latency(self, since_ms: int, types: tuple[str, ...]) -> dict:
        import numpy as np

        ms = [arrived - ev["at"] for arrived, ev in list(self.arrivals)
              if ev.get("event") == "raised" and ev.get("type") in types
              and ev.get("at", 0) >= since_ms]
        out: dict = {"n": len(ms), **self.receiver.counts}
        if ms:
            p50, p99 = np.percentile(np.asarray(ms, dtype=np.float64), [50, 99])
            out.update({"p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1),
                        "max_ms": float(max(ms))})
        return out

    def close(self) -> None:
        self.receiver.close()
