"""Micro-batching: accepted fixes and statuses gather in an open :class:`Batch` until
``ingest.batch_max_messages`` messages or ``ingest.batch_max_ms`` after its first one;
then :class:`Batches` hands it, in order, to the processor's work queue."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import orjson

from contract import (
    COORD_SYS_CODES,
    POWER_CODES,
    STRAP_CODES,
    RecordBatch,
    RecordBuilder,
    device_topic,
)
from ingest.decode import PayloadError


class Batch:
    """An open micro-batch: the records (a :class:`contract.RecordBuilder`), each one's
    device id and source, and the acknowledgement data of the messages it holds.

    Device ids become the registry's indices only when the batch is processed
    (:meth:`records`): a reload between receive and processing changes them."""

    __slots__ = ("acks", "builder", "device", "digests", "messages", "opened", "src")

    def __init__(self) -> None:
        self.builder = RecordBuilder()
        self.device: list[str] = []
        self.src: list[str | None] = []
        self.acks: list[tuple[int, int]] = []  # (connection generation, packet id)
        self.digests: list[bytes] = []
        self.messages = 0
        self.opened = 0.0  # monotonic time of the first message

    def add_fix(self, device_id: str, fix, rx_ms: int) -> None:
        self.builder.add_fix(-1, fix.ts_ms, rx_ms, fix.lat, fix.lon, fix.acc_m,
                             COORD_SYS_CODES[fix.coord_sys])
        self.device.append(device_id)
        self.src.append(fix.src)

    def add_status(self, device_id: str, status, rx_ms: int) -> None:
        self.builder.add_status(
            -1, status.ts_ms, rx_ms,
            np.nan if status.battery_pct is None else status.battery_pct,
            -1 if status.strap is None else STRAP_CODES[status.strap],
            -1 if status.power is None else POWER_CODES[status.power])
        self.device.append(device_id)
        self.src.append(None)

    def records(self, registry) -> RecordBatch:
        """The records as the engine takes them, devices indexed by ``registry`` (-1
        unknown). Takes them out of the builder: call once."""
        n = len(self.device)
        idx = np.fromiter((registry.device_index(d) for d in self.device), dtype=np.int32,
                          count=n)
        return self.builder.take()._replace(device_idx=idx)


class Batches:
    """The open batch and the processor's work queue (``("batch", Batch)``, and the
    other work items put by the sweeps, checkpoints and reloads, in order)."""

    def __init__(self, max_messages: int, max_ms: int):
        self.max_messages = max_messages
        self.max_s = max_ms / 1000
        self.batch = Batch()
        self.ready = asyncio.Event()
        self.lock = asyncio.Lock()
        self.work: asyncio.Queue = asyncio.Queue(maxsize=4)  # backpressure on the receiver

    def join(self, ack: tuple[int, int] | None, digest: bytes | None) -> None:
        """Count a message into the open batch (``ack`` None: QoS 0; ``digest`` None: a
        redelivery whose record is already on its way)."""
        b = self.batch
        if b.messages == 0:
            b.opened = time.monotonic()
            self.ready.set()
        b.messages += 1
        if ack is not None:
            b.acks.append(ack)
        if digest is not None:
            b.digests.append(digest)

    @property
    def full(self) -> bool:
        return self.batch.messages >= self.max_messages

    async def flush(self) -> None:
        """Hand the open batch (if any) to the processor."""
        # One flush at a time: batches must reach the processor in the order they were
        # taken. While the work queue is full, several tasks (receiver, flusher, sweeper)
        # flush at once, and a put that finds a free slot does not queue behind the puts
        # already waiting for one: without the lock a later batch could overtake an
        # earlier one, and a device's fixes would be processed out of order (as late).
        async with self.lock:
            b = self.batch
            if b.messages == 0:
                return
            self.batch = Batch()
            self.ready.clear()
            await self.work.put(("batch", b))  # blocks while the processor is behind

    async def put(self, kind: str, arg) -> None:
        """Queue other work for the processor behind the batches already queued."""
        await self.work.put((kind, arg))

    async def run(self) -> None:
        """The flusher: a batch waits at most ``batch_max_ms`` after its first message."""
        while True:
            await self.ready.wait()
            b = self.batch
            wait = b.opened + self.max_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.batch is b and b.messages:
                await self.flush()


def process_one_by_one(engine, registry, b: Batch, records: RecordBatch, positions,
                       counters: Counter, deadletter: Callable) -> list[dict]:
    """After an engine error on batch ``b``: each record alone; the failing ones are
    dead-lettered (``engine_error``, through ``deadletter(topic, payload, exc, rx_ms)``)
    so that a record the engine cannot handle is set aside instead of crashing the
    service on every redelivery."""
    events: list[dict] = []
    for i in range(len(b.device)):
        try:
            one = slice(i, i + 1)
            events += engine.process(records.select(one), positions=positions.select(one))[0]
        except Exception as exc:  # noqa: BLE001
            counters["engine_errors"] += 1
            kind = "fix" if records.kind[i] == 0 else "status"
            d = int(records.device_idx[i])
            region = registry.device_region(d) if d >= 0 else "unknown"
            record = {"device_id": b.device[i], "kind": kind, "ts": int(records.ts_ms[i])}
            deadletter(device_topic(region, b.device[i], kind), orjson.dumps(record),
                       PayloadError(f"engine_error: {type(exc).__name__}: {exc}"),
                       int(records.rx_ms[i]))
    return events
