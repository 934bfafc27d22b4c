"""`emfence run`: the live engine. MQTT in, rules, alarms to the store and back out.

One asyncio process. The pipeline for a message, top to bottom:

1. receive (``_on_message``): topic -> region/device/kind, registered device in that
   region, decode and validate the payload (``ingest.decode``); a rejection goes to
   ``emfence/v1/{region}/deadletter`` and is counted; an accepted fix or status joins the
   open micro-batch;
2. flush: the batch is handed to the processor at ``ingest.batch_max_messages`` messages
   or ``ingest.batch_max_ms`` after its first message;
3. process (``_processor``, the only task that touches the engine): arrays into
   ``Engine.process_records`` in arrival order; the alarm events go, in order, to the one
   task that writes them to the store (``record_events``: alarm rows + outbox in one
   transaction, group-committed) before anything publishes them; accepted fixes are
   queued for the track store;
4. deliver (``alarms.publisher.OutboxPublisher``, one run per connection): the events
   just stored are handed to it and published at once with QoS 1 on
   ``emfence/v1/{region}/alarms/{type}``, and marked delivered on PUBACK (in the
   background); whatever is left is sent again after a reconnect or restart;
5. acknowledge (``_acknowledger``): a received message is PUBACKed only after the
   checkpoint that contains its effect is durable (the store's row for this worker, or
   with ``--checkpoint`` a file) and its alarm events and track rows are stored. The
   processor only closes the window and copies the engine's state in memory; writing
   it, the waiting, the digests and the PUBACKs happen in the acknowledger while the
   processor goes on with new batches (acknowledgements may lag, processing must not).
   A write that fails (a full disk, the store away) holds the acknowledgements and is
   retried: an outage, logged when it starts and ends and shown in the health.
   A crashed engine restarts from its checkpoint and the broker sends it everything it
   had not acknowledged: nothing is lost, and because alarm ids are deterministic and
   the store is idempotent, nothing is doubled. Redeliveries of messages already
   processed are recognised by a digest of topic+payload and not processed twice.

Silence: the offline sweep runs every ``ingest.sweep_interval_ms`` on receive time, but
never while the broker is away (the silence is the broker's, not the devices'), and
after a start only once the broker's backlog for this session has drained (a marker
the engine sends itself arrives behind it) or ``ingest.restart_grace_s`` has passed;
after a broker outage it waits the full grace, so devices have time to reconnect. Nor
while the connection is open but nothing arrives, not even the ping the engine sends
itself on its drain topic every ``ingest.health_interval_s``.

Liveness: a watchdog thread (``ingest.watchdog``) sees when the engine has received
nothing for ``ingest.watchdog_s`` (no reconnect attempt either); the engine then logs
it, publishes health ``stalled`` if it can, and exits 3 for its service manager to
restart it, rather than sit there. The connection's receive loop and its outbox run in
one task group, so a lost connection ends both and a cancellation reaches both.

Signals: SIGINT/SIGTERM finish the batch, checkpoint, acknowledge, flush the outbox and
exit 0; SIGHUP reloads zones and subjects, keeping the state of devices that remain.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import secrets
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from alarms.store import StoreError
from emfence.config import Config, ConfigError, load_config
from engine.state import checkpoint_bytes, write_checkpoint
from ingest.decode import (
    COORD_SYS_CODES,
    STRAP_CODES,
    PayloadError,
    deadletter_record,
    decode_fix_payload,
    decode_status_payload,
    parse_topic,
)
from ingest.passwords import engine_account, engine_client_id, service_role, worker_name_problem

log = logging.getLogger("emfence.run")

# The unacknowledged-message window, the dead-letter and track queue bounds and the
# escalation check period are configuration (ingest.ack_window_messages,
# ingest.deadletter_queue_messages, tracks.queue_rows, alarms.escalation_check_s).
# How often queued track rows are written (also before every acknowledgement), s.
TRACK_FLUSH_S = 1.0
# Track rows per store transaction. Large: the store writes them in key order, so a
# device's fixes of one transaction share index pages, and a SQLite store keeps them in a
# file of its own, so a long track write holds up no alarm.
TRACK_ROWS_PER_WRITE = 20_000
# How often fixes past the retention period are deleted (also once at start), s.
PURGE_PERIOD_S = 3600.0
# The receive loop yields to the other tasks at least every this many messages.
YIELD_EVERY = 200
# How long a clean shutdown keeps trying to deliver the outbox before it gives up (the
# rest is delivered at the next start).
SHUTDOWN_FLUSH_S = 10.0
# Closed acknowledgement windows that may wait while the acknowledger completes another,
# before the processor waits too. Unacknowledged messages are then at most three windows
# (being completed, waiting, being filled): 60 000 with ingest.ack_window_messages at
# 20 000, the deployed broker's max_inflight_messages.
MAX_OPEN_WINDOWS = 1
# A health message not acknowledged within this time is given up (the next one follows).
HEALTH_TIMEOUT_S = 5.0
# Exit code of an engine its watchdog stopped (ingest.watchdog_s): stalled, not failed on
# bad input (1) or bad usage (2); the service manager restarts it.
EXIT_STALLED = 3
# How long a stalled engine tries to publish its "stalled" health before it exits, s.
STALL_REPORT_S = 2.0
# The payload of the engine's periodic ping to itself on its drain topic.
PING = b"ping"
# Offline sweeps are held once this many ping periods pass with nothing received.
SILENT_PINGS = 2
SILENT_BROKER = "silence of the broker"


def wall_ms() -> int:
    """Epoch milliseconds now (receive time; only the adapters read the clock)."""
    return time.time_ns() // 1_000_000


DIGEST_BYTES = 16


def message_digest(topic: str, payload: bytes) -> bytes:
    """Identity of a message for recognising broker redeliveries (16 bytes)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(topic.encode("utf-8", "surrogateescape"))
    h.update(b"\0")
    h.update(payload)
    return h.digest()


def file_digest(path: str | Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class AckJob:
    """A closed acknowledgement window, waiting to become durable and be acknowledged.

    ``events_mark`` / ``tracks_mark``: alarm events and track rows queued for the store
    when the window closed (all of them must be stored first); ``window``: digests of the
    messages processed in it; ``snapshot``: the engine state at the close (in memory;
    None when the core keeps no state), written to the store's row for this worker, or
    with ``--checkpoint`` to ``tmp`` and renamed over the file once the acks file names
    it; ``done``: a future set when finished.
    """

    acks: list[tuple[int, int]]
    window: set[bytes]
    events_mark: int
    tracks_mark: int = 0
    snapshot: dict[str, np.ndarray] | None = None
    tmp: Path | None = None
    done: asyncio.Future | None = None


@dataclass
class Options:
    """What `emfence run` was told (paths and names, already validated)."""

    zones_path: str
    subjects_path: str
    store_url: str
    name: str = "engine-1"
    regions: list[str] | None = None
    checkpoint: str | None = None
    http: str | None = None
    # Where the engine's state is kept: "store" (the default: the store's row for this
    # worker), "file" (--checkpoint) or "none" (--core shapely, which has no state to keep).
    state_in: str = "store"
    # With --checkpoint: the store holds an older row for this worker, deleted once the
    # file holds a checkpoint (so a later start without --checkpoint cannot go back to it).
    drop_store_checkpoint: bool = False


class Outage:
    """A write the acknowledgements wait for that keeps failing (a full disk, a store that
    is away): one log line when it starts, one when it ends, with its duration; the
    health document lists the outages in progress."""

    def __init__(self, what: str):
        self.what = what
        self.since_ms: int | None = None
        self.reason = ""
        self.failures = 0

    def failed(self, exc: BaseException, holding: str) -> None:
        self.failures += 1
        self.reason = str(exc)
        if self.since_ms is None:
            self.since_ms = wall_ms()
            log.error("%s failed, an outage: %s; %s until it works again (retrying)",
                      self.what, exc, holding)

    def ok(self) -> None:
        if self.since_ms is not None:
            log.warning("%s works again after an outage of %.1f s (%d failed attempts)",
                        self.what, (wall_ms() - self.since_ms) / 1000, self.failures)
            self.since_ms = None
            self.failures = 0

    def health(self) -> dict[str, Any]:
        return {"what": self.what, "since": self.since_ms, "failures": self.failures,
                "reason": self.reason}


class Batch:
    """An open micro-batch: parallel lists (arrival order) plus acknowledgement data."""

    __slots__ = (
        "acc",
        "acks",
        "battery",
        "coord",
        "device",
        "digests",
        "kind",
        "lat",
        "lon",
        "messages",
        "opened",
        "rx",
        "src",
        "strap",
        "ts",
    )

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.device: list[str] = []
        self.ts: list[int] = []
        self.rx: list[int] = []
        self.lat: list[float] = []
        self.lon: list[float] = []
        self.acc: list[float] = []
        self.coord: list[int] = []
        self.battery: list[float] = []
        self.strap: list[int] = []
        self.src: list[str | None] = []
        self.acks: list[tuple[int, int]] = []  # (connection generation, packet id)
        self.digests: list[bytes] = []
        self.messages = 0
        self.opened = 0.0  # monotonic time of the first message

    def add_fix(self, device_id: str, fix, rx_ms: int) -> None:
        self.kind.append(0)
        self.device.append(device_id)
        self.ts.append(fix.ts_ms)
        self.rx.append(rx_ms)
        self.lat.append(fix.lat)
        self.lon.append(fix.lon)
        self.acc.append(fix.acc_m)
        self.coord.append(COORD_SYS_CODES[fix.coord_sys])
        self.battery.append(np.nan)
        self.strap.append(-1)
        self.src.append(fix.src)

    def add_status(self, device_id: str, status, rx_ms: int) -> None:
        self.kind.append(1)
        self.device.append(device_id)
        self.ts.append(status.ts_ms)
        self.rx.append(rx_ms)
        self.lat.append(np.nan)
        self.lon.append(np.nan)
        self.acc.append(np.nan)
        self.coord.append(0)
        self.battery.append(np.nan if status.battery_pct is None else status.battery_pct)
        self.strap.append(-1 if status.strap is None else STRAP_CODES[status.strap])
        self.src.append(None)


class Service:
    """The running engine process. Build with :func:`build_service`, then ``await run()``."""

    def __init__(self, *, broker, options: Options, config: Config, zones, registry, engine,
                 store, restored: bool = False, covered: set[bytes] | None = None):
        from ingest import mqtt

        self.mqtt = mqtt
        self.broker = broker
        self.opts = options
        self.config = config
        self.icfg = config.ingest
        self.console_app = None  # the console's app with --http, told about reloads
        self.zones = zones
        self.registry = registry
        self.engine = engine
        self.store = store
        self.restored = restored
        self.counters: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()

        self.client = None
        self.gen = 0  # connection generation: packet ids are only valid within one
        self.connected = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.stopping = False
        self.started_ms = wall_ms()

        self.batch = Batch()
        self.batch_ready = asyncio.Event()
        self.flush_lock = asyncio.Lock()
        self.work: asyncio.Queue = asyncio.Queue(maxsize=4)  # backpressure on the receiver
        self.deadletters: asyncio.Queue = asyncio.Queue(
            maxsize=config.ingest.deadletter_queue_messages)
        self.tracks: deque = deque()
        # Track rows ever queued, and ever taken off the queue's head (written or dropped):
        # a window waits for its own rows, not for rows queued while it waits.
        self.tracks_queued = 0
        self.tracks_done = 0
        # Events waiting for the store: written by one task in group commits, in order.
        self.unstored: list[dict] = []
        self.storing = False
        self.events_queued = 0  # events handed to the store writer since start...
        self.events_stored = 0  # ...and how many of them it has committed
        self.stored_change = asyncio.Condition()
        self.track_lock = asyncio.Lock()
        from alarms.publisher import OutboxPublisher

        self.outbox = OutboxPublisher(store, config=config.alarms, regions=options.regions)

        # Acknowledgement and redelivery bookkeeping (see the module docstring).
        self.pending_acks: list[tuple[int, int]] = []
        self.received: set[bytes] = set()  # received, not yet processed
        self.window: set[bytes] = set()  # processed since the last checkpoint
        self.covered: deque[set[bytes]] = deque([covered or set()], maxlen=2)
        self.covered_hash: str | None = None
        self.since_checkpoint = 0
        # Closed windows on their way to the broker (see _close_window / _acknowledger).
        self.ack_jobs: asyncio.Queue[AckJob] = asyncio.Queue()
        # Set when the acknowledger takes the waiting windows: with --checkpoint, a
        # processor that closes windows faster than they become durable waits for it
        # (that bounds unacknowledged messages and the snapshots held in memory).
        self.ack_taken = asyncio.Event()
        self.acking: set[bytes] = set()  # digests of closed windows not yet acknowledged
        # The engine's state is checkpointed (in the store or a file) unless the core
        # keeps none; without that, a batch is acknowledged as soon as it is stored.
        self.checkpointing = options.state_in != "none"
        self.outages = {k: Outage(what) for k, what in (
            ("events", "alarm store write"), ("tracks", "track store write"),
            ("checkpoint", "checkpoint write"))}

        # Offline sweeps: held after a start until the backlog drains or the grace ends.
        self.drain_topic = mqtt.drain_topic(options.name)
        self.drain_nonce = ""
        self.drained = False
        self.hold_reason: str | None = "start"
        self.hold_until_ms = wall_ms() + int(self.icfg.restart_grace_s * 1000)
        self.disconnected_at_ms: int | None = None
        self.received_at = time.monotonic()  # the last message received (the sweeps)

        # The watchdog (ingest.watchdog_s): fed by every message received, the engine's own
        # pings included, by connection attempts and by store retries; see _stalled.
        from ingest.watchdog import Watchdog

        self.watchdog = (Watchdog(self.icfg.watchdog_s, self._stalled)
                         if self.icfg.watchdog_s > 0 else None)
        self.loop: asyncio.AbstractEventLoop | None = None

    # ----- running -------------------------------------------------------------------

    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        log.info("engine %s starting: %d devices, %d zones, regions %s, store %s%s",
                 self.opts.name, len(self.registry.device_ids), len(self.zones.zone_ids),
                 ",".join(self.opts.regions) if self.opts.regions else "all",
                 _redact(self.opts.store_url),
                 (", state restored from checkpoint" if self.restored else "")
                 + {"store": " (state kept in the store)", "file": " (state kept in "
                    f"{self.opts.checkpoint})", "none": " (no rule state kept)"}[
                     self.opts.state_in])
        await asyncio.to_thread(self._warm_up)
        if self.watchdog is not None:
            self.watchdog.start()  # after the warm-up: compiling kernels may take a while
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._connection(), name="mqtt-connection"),
                    tg.create_task(self._flusher(), name="batch-flusher"),
                    tg.create_task(self._processor(), name="processor"),
                    tg.create_task(self._store_events(), name="event-store"),
                    tg.create_task(self._acknowledger(), name="acknowledger"),
                    tg.create_task(self._sweeper(), name="offline-sweeper"),
                    tg.create_task(self._deadletter_sender(), name="deadletters"),
                    tg.create_task(self._track_writer(), name="tracks"),
                    tg.create_task(self._periodic_checkpoint(), name="checkpoint"),
                    tg.create_task(self._health(), name="health"),
                    tg.create_task(self._escalation(), name="escalation"),
                    tg.create_task(self._purge(), name="track-retention"),
                ]
                server = None
                if self.opts.http:
                    server = self._http_server()
                    if server is not None:
                        tasks.append(tg.create_task(server.serve(), name="http"))
                await self.stop_event.wait()
                await self._shutdown()
                if server is not None:
                    # Open live feeds never end on their own (a browser keeps them open):
                    # end them first, or the server waits for every operator's page.
                    server.config.app.state.console.shutdown()
                    server.should_exit = True
                for t in tasks:
                    if t.get_name() != "http":
                        t.cancel()
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("engine %s stopped cleanly", self.opts.name)
        return 0

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) the rule kernels before subscribing, so
        the first batch after a start does not stall the backlog for seconds."""
        t = time.monotonic()
        empty_i = np.zeros(0, np.int64)
        empty_f = np.zeros(0, np.float64)
        self.engine.process_records(np.zeros(0, np.uint8), np.zeros(0, np.int32), empty_i,
                                    empty_i, empty_f, empty_f, empty_f, np.zeros(0, np.uint8),
                                    empty_f, np.zeros(0, np.int8))
        self.engine.sweep(-(2**62))  # a moment long past: nothing is due
        log.info("rule kernels ready in %.1f s", time.monotonic() - t)

    def request_stop(self, sig: int | None = None) -> None:
        if not self.stop_event.is_set():
            log.info("%s: finishing the batch, checkpointing, flushing the outbox",
                     signal.Signals(sig).name if sig else "stop requested")
            self.stopping = True
            self.stop_event.set()
            if self.watchdog is not None:
                # Stopping receives nothing; it may take a checkpoint and the outbox flush.
                self.watchdog.finish_within(self.icfg.watchdog_s + SHUTDOWN_FLUSH_S)

    def request_reload(self) -> None:
        log.info("SIGHUP: reloading zones %s and subjects %s", self.opts.zones_path,
                 self.opts.subjects_path)
        asyncio.get_running_loop().create_task(self._reload(), name="reload")

    # ----- MQTT connection and receive -----------------------------------------------

    async def _connection(self) -> None:
        import aiomqtt

        mqtt = self.mqtt
        backoff = mqtt.Backoff(self.icfg.reconnect_min_s, self.icfg.reconnect_max_s)
        will = aiomqtt.Will(mqtt.health_topic(self.opts.name),
                            orjson.dumps({"status": "offline", "name": self.opts.name}),
                            qos=1, retain=True)
        client_id = engine_client_id(self.opts.name, self.broker.username)
        while not self.stopping:
            client = mqtt.make_client(self.broker, client_id=client_id, will=will)
            self._alive()  # a connection attempt: the reconnect loop is running
            try:
                async with client:
                    await self._on_connected(client)
                    backoff.reset()
                    # Alarm delivery lives and dies with the connection: a new one starts
                    # by resending whatever the last one left undelivered. The task group
                    # ends both together and waits for both: when the connection is gone
                    # the receive loop raises and the outbox is cancelled; a cancellation
                    # of this task reaches both (never swallowed on the way).
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self.outbox.run(client), name="outbox")
                        async for message in client.messages:
                            await self._on_message(message)
                            for n, more in enumerate(self.mqtt.queued_messages(client), 1):
                                await self._on_message(more)
                                if n % YIELD_EVERY == 0:
                                    # Taking queued messages does not yield: let the
                                    # processor, the sweeps and the signal handlers run.
                                    await asyncio.sleep(0)
            except* aiomqtt.MqttError as lost:
                self._on_disconnected(lost.exceptions[0],
                                      was_connected=self.connected.is_set())
            finally:
                self.client = None
                self.connected.clear()
            self._alive()
            if self.stopping:
                return
            delay = backoff.next_delay_s()
            log.warning("broker %s:%d unreachable; keeping the state of %d devices (%d "
                        "messages processed since the last checkpoint); reconnect attempt %d "
                        "in %.1f s", self.broker.host, self.broker.port,
                        len(self.registry.device_ids), self.since_checkpoint,
                        backoff.attempts, delay)
            await asyncio.sleep(delay)

    async def _on_connected(self, client) -> None:
        mqtt = self.mqtt
        self.gen += 1
        self.counters["connects"] += 1
        # Packet ids of the previous connection are void: the broker sends those messages
        # again, and they are recognised by digest.
        self.pending_acks = [a for a in self.pending_acks if a[0] == self.gen]
        for f in mqtt.subscriptions(self.opts.regions) + [mqtt.drain_topic(self.opts.name)]:
            await client.subscribe(f, qos=mqtt.SUBSCRIBE_QOS)
        self.client = client
        self.connected.set()
        self.received_at = time.monotonic()  # CONNACK and SUBACKs: the broker answers
        now = wall_ms()
        if self.counters["connects"] > 1:
            self.counters["reconnects"] += 1
            away = now - (self.disconnected_at_ms or now)
            log.info("reconnected to the broker after %.1f s away; state kept; offline "
                     "sweeps resume in %.0f s (devices need time to reconnect)",
                     away / 1000, self.icfg.restart_grace_s)
            self.hold_reason = "broker outage"
            self.hold_until_ms = now + int(self.icfg.restart_grace_s * 1000)
        else:
            log.info("connected to %s:%d as %s (persistent session %s)",
                     self.broker.host, self.broker.port, self.broker.username or "anonymous",
                     engine_client_id(self.opts.name, self.broker.username))
            # The grace counts from the first connection, not from process start (loading
            # zones or compiling kernels must not eat into it).
            self.hold_until_ms = now + int(self.icfg.restart_grace_s * 1000)
        # The marker queues behind whatever the session holds: its arrival means drained.
        self.drain_nonce = secrets.token_hex(8)
        self.drained = False
        self._drain_sent_ms = now
        self._drain_messages = self.counters["messages"]
        await client.publish(mqtt.drain_topic(self.opts.name), self.drain_nonce.encode(), qos=1)
        await self._publish_health(client, "online")

    def _on_disconnected(self, exc: Exception, was_connected: bool) -> None:
        if was_connected:
            self.disconnected_at_ms = wall_ms()
            self.counters["disconnects"] += 1
            log.warning("broker connection lost: %s", exc)
        else:
            log.debug("connect failed: %s", exc)

    async def _on_message(self, message) -> None:
        self._alive()
        self.received_at = time.monotonic()
        if self.stopping:
            return  # not acknowledged: the broker keeps it for the next start
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes):
            payload = bytes(payload) if isinstance(payload, (bytearray, memoryview)) else \
                str(payload).encode()
        # Only QoS 1 takes an acknowledgement (the engine subscribes with QoS 1, so the
        # broker hands it QoS 2 publishes as QoS 1). A QoS 0 message has no packet id, and
        # a PUBACK for one is a protocol error that makes the broker drop the engine.
        ack = (self.gen, message.mid) if message.qos else None
        if topic == self.drain_topic:
            self._ack_now(ack)
            if payload.decode(errors="replace") == self.drain_nonce and not self.drained:
                self.drained = True
                log.info("backlog drained: %d messages in %.1f s since connecting",
                         self.counters["messages"] - self._drain_messages,
                         (wall_ms() - self._drain_sent_ms) / 1000)
            return
        if message.retain:
            # A copy the broker kept of a device's retained publish, replayed at every
            # subscribe: the publish itself reached the engine when it was made, so the
            # copy is stale; it is acknowledged and counted, never processed again.
            self.counters["retained_ignored"] += 1
            self._ack_now(ack)
            return
        self.counters["messages"] += 1
        digest = message_digest(topic, payload)
        if digest in self.received or digest in self.window or digest in self.acking:
            # Sent again before its checkpoint: acknowledge with the batch that has it.
            self.counters["redelivered"] += 1
            self._join_batch(ack, None)
            return
        if digest in self.covered[0] or (len(self.covered) > 1 and digest in self.covered[1]):
            self.counters["redelivered"] += 1
            self._ack_now(ack)
            return
        rx = wall_ms()
        try:
            region, device_id, kind = parse_topic(topic)
            idx = self.registry.device_index(device_id)
            if idx < 0:
                raise PayloadError(f"unknown_device: {device_id} is not registered")
            home = self.registry.device_region(idx)
            if home != region:
                raise PayloadError(f"wrong_region: {device_id} is registered in region {home}")
            if kind == "fix":
                rejects: list[PayloadError] = []
                fixes = decode_fix_payload(payload, rx_ms=rx, config=self.icfg, rejects=rejects)
                for r in rejects:
                    self._deadletter(topic, payload, r, rx)
                for fix in fixes:
                    self.batch.add_fix(device_id, fix, rx)
                self.counters["fixes_accepted"] += len(fixes)
            else:
                self.batch.add_status(device_id, decode_status_payload(
                    payload, rx_ms=rx, config=self.icfg), rx)
                self.counters["statuses_accepted"] += 1
        except PayloadError as exc:
            self._deadletter(topic, payload, exc, rx)
        self.received.add(digest)
        self._join_batch(ack, digest)
        if self.batch.messages >= self.icfg.batch_max_messages:
            await self._flush()

    def _join_batch(self, ack: tuple[int, int] | None, digest: bytes | None) -> None:
        b = self.batch
        if b.messages == 0:
            b.opened = time.monotonic()
            self.batch_ready.set()
        b.messages += 1
        if ack is not None:
            b.acks.append(ack)
        if digest is not None:
            b.digests.append(digest)

    def _ack_now(self, ack: tuple[int, int] | None) -> None:
        """Acknowledge a message of this connection (``None``: a QoS 0 one, which takes
        no acknowledgement)."""
        if ack is None:
            return
        gen, mid = ack
        if gen == self.gen and self.client is not None:
            self.mqtt.ack(self.client, mid)

    def _deadletter(self, topic: str, payload: bytes, exc: PayloadError, rx_ms: int) -> None:
        self.counters["deadletters"] += 1
        self.rejects[exc.code] += 1
        region, record = deadletter_record(topic, payload, exc, rx_ms=rx_ms,
                                           engine=self.opts.name)
        try:
            self.deadletters.put_nowait((self.mqtt.deadletter_topic(region), record))
        except asyncio.QueueFull:
            self.counters["deadletters_dropped"] += 1
            if self.counters["deadletters_dropped"] % 1000 == 1:
                log.warning("dead-letter queue full (%d): dropped %d dead letters so far "
                            "(the rejections are still counted)", self.icfg.deadletter_queue_messages,
                            self.counters["deadletters_dropped"])

    # ----- batching and processing ---------------------------------------------------

    async def _flush(self) -> None:
        # One flush at a time: batches must reach the processor in the order they were
        # taken. While the work queue is full, several tasks (receiver, flusher, sweeper)
        # flush at once, and a put that finds a free slot does not queue behind the puts
        # already waiting for one: without the lock a later batch could overtake an
        # earlier one, and a device's fixes would be processed out of order (as late).
        async with self.flush_lock:
            b = self.batch
            if b.messages == 0:
                return
            self.batch = Batch()
            self.batch_ready.clear()
            await self.work.put(("batch", b))  # blocks while the processor is behind

    async def _flusher(self) -> None:
        max_s = self.icfg.batch_max_ms / 1000
        while True:
            await self.batch_ready.wait()
            b = self.batch
            wait = b.opened + max_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.batch is b and b.messages:
                await self._flush()

    async def _processor(self) -> None:
        while True:
            kind, arg = await self.work.get()
            try:
                if kind == "batch":
                    await self._process_batch(arg)
                elif kind == "sweep":
                    events = self.engine.sweep(arg)
                    self.counters["sweeps"] += 1
                    if events:
                        log.info("offline sweep raised %d alarms", len(events))
                        await self._record(events)
                elif kind == "checkpoint":
                    await self._close_window(done=arg)
                elif kind == "reload":
                    zones, registry = arg
                    stats = self.engine.reload(zones, registry)
                    self.zones, self.registry = zones, registry
                    if self.console_app is not None:  # the map draws the new zones
                        self.console_app.state.console.set_model(zones, registry)
                    log.info("reloaded: %d devices, %d zones; %s", len(registry.device_ids),
                             len(zones.zone_ids), stats)
            finally:
                self.work.task_done()

    async def _process_batch(self, b: Batch) -> None:
        reg = self.registry
        n = len(b.kind)
        if n:
            idx = np.fromiter((reg.device_index(d) for d in b.device), dtype=np.int32, count=n)
            arrays = (np.array(b.kind, np.uint8), idx, np.array(b.ts, np.int64),
                      np.array(b.rx, np.int64), np.array(b.lat, np.float64),
                      np.array(b.lon, np.float64), np.array(b.acc, np.float64),
                      np.array(b.coord, np.uint8), np.array(b.battery, np.float64),
                      np.array(b.strap, np.int8))
            try:
                events, _ = self.engine.process_records(*arrays)
            except Exception:  # isolate a poison record rather than crash-loop on it
                log.exception("engine failed on a batch of %d records; retrying one by one", n)
                events = self._process_one_by_one(b, arrays)
            self.counters["batches"] += 1
            if events:
                await self._record(events)
            self._queue_tracks(b, idx)
        for d in b.digests:
            self.received.discard(d)
            self.window.add(d)
        self.pending_acks.extend(b.acks)
        self.since_checkpoint += b.messages
        if (not self.checkpointing  # no state to keep: stored is durable
                or self.since_checkpoint >= self.icfg.ack_window_messages):
            await self._close_window()

    def _process_one_by_one(self, b: Batch, arrays) -> list[dict]:
        """After an engine error: each record alone; the failing ones are dead-lettered
        (``engine_error``) so that a record the engine cannot handle is set aside instead
        of crashing the service on every redelivery."""
        events: list[dict] = []
        for i in range(len(b.kind)):
            try:
                events += self.engine.process_records(*(a[i:i + 1] for a in arrays))[0]
            except Exception as exc:  # noqa: BLE001
                self.counters["engine_errors"] += 1
                kind = "fix" if b.kind[i] == 0 else "status"
                region = self.registry.device_region(int(arrays[1][i])) \
                    if arrays[1][i] >= 0 else "unknown"
                record = {"device_id": b.device[i], "kind": kind, "ts": b.ts[i]}
                self._deadletter(f"emfence/v1/{region}/{b.device[i]}/{kind}",
                                 orjson.dumps(record),
                                 PayloadError(f"engine_error: {type(exc).__name__}: {exc}"),
                                 b.rx[i])
        return events

    async def _record(self, events: list[dict]) -> None:
        """Queue events for the store (in order). They are published only once stored,
        and nothing they came from is acknowledged before they are stored."""
        async with self.stored_change:
            self.events_queued += len(events)
            self.unstored.extend(events)
            self.stored_change.notify_all()

    async def _store_events(self) -> None:
        """The one writer of alarm events: whatever queued while the last transaction ran
        goes into the next one (group commit: one fsync for many batches, so the
        processor never waits for the disk). Retries until the store takes them."""
        while True:
            async with self.stored_change:
                await self.stored_change.wait_for(lambda: bool(self.unstored))
                events, self.unstored = self.unstored, []
                self.storing = True
            delay = self.icfg.reconnect_min_s
            while True:
                try:
                    rows = await asyncio.to_thread(self.store.record_events_for_delivery,
                                                   events, wall_ms())
                    break
                except Exception as exc:  # noqa: BLE001 - a store outage must not lose events
                    self.counters["store_errors"] += 1
                    self._write_failed("events", exc,
                                       f"{len(events)} alarm events and the acknowledgements held")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.icfg.reconnect_max_s)
            self.outages["events"].ok()
            self.counters["events"] += len(events)
            self.outbox.offer(rows)  # published now, not read back from the store
            async with self.stored_change:
                self.events_stored += len(events)
                self.storing = False
                self.stored_change.notify_all()

    async def _stored_through(self, mark: int) -> None:
        """Until the first ``mark`` events ever queued are in the store (later ones may
        still be on their way: a window waits only for its own events)."""
        async with self.stored_change:
            await self.stored_change.wait_for(lambda: self.events_stored >= mark)

    def _queue_tracks(self, b: Batch, idx: np.ndarray) -> None:
        kinds = np.array(b.kind, np.uint8)
        sel = np.flatnonzero((kinds == 0) & (idx >= 0))
        if sel.size == 0:
            return
        lon = np.array(b.lon, np.float64)[sel]
        lat = np.array(b.lat, np.float64)[sel]
        gcj = np.array(b.coord, np.uint8)[sel] == 1
        if gcj.any():
            from geofence.gcj02 import gcj02_to_wgs84

            # parallel=False: never wake numba's thread pool on the live path
            lon[gcj], lat[gcj] = gcj02_to_wgs84(lon[gcj], lat[gcj], parallel=False)
        reg = self.registry
        for j, i in enumerate(sel.tolist()):
            d = int(idx[i])
            self.tracks.append((b.device[i], reg.subject_of(d), reg.device_region(d), b.ts[i],
                                float(lat[j]), float(lon[j]), b.acc[i], b.src[i], b.rx[i]))
        self.tracks_queued += len(sel)
        overflow = len(self.tracks) - self.config.tracks.queue_rows
        if overflow > 0:
            for _ in range(overflow):
                self.tracks.popleft()
            self.tracks_done += overflow
            self.counters["tracks_dropped"] += overflow
            log.warning("track queue over %d rows: dropped the %d oldest (the store is too "
                        "slow); rules are unaffected", self.config.tracks.queue_rows, overflow)

    async def _flush_tracks(self, upto: int | None = None) -> None:
        """Write queued track rows: the first ``upto`` ever queued (default: those queued
        now). Not the rows queued while it writes: processing goes on meanwhile, and a
        flush chasing the queue's tail would hold up the acknowledgement waiting on it."""
        async with self.track_lock:
            if upto is None:
                upto = self.tracks_queued
            while self.tracks and self.tracks_done < upto:
                n = min(len(self.tracks), TRACK_ROWS_PER_WRITE, upto - self.tracks_done)
                rows = [self.tracks.popleft() for _ in range(n)]
                try:
                    await asyncio.to_thread(self.store.record_fixes, rows)
                    self.tracks_done += n
                    self.counters["tracks_written"] += n
                    self.outages["tracks"].ok()
                except Exception as exc:  # noqa: BLE001 - keep them and retry later
                    self.tracks.extendleft(reversed(rows))
                    self.counters["store_errors"] += 1
                    self._write_failed("tracks", exc, "track rows and the acknowledgements held")
                    return

    async def _close_window(self, done: asyncio.Future | None = None) -> None:
        """Close the acknowledgement window (processor only) and hand it to the
        acknowledger.

        With ``--checkpoint`` the engine's state is copied here (``Engine.snapshot``, in
        memory), while nothing else touches the engine; that copy is all the processor
        waits for. Writing it, storing the window's events and fixes, the digests, the
        acks file, the rename and the PUBACKs follow in :meth:`_acknowledger` while new
        batches are processed. Windows that close while the acknowledger is busy are
        completed together by one checkpoint, the newest (it holds them all). The
        processor waits here only when :data:`MAX_OPEN_WINDOWS` closed windows are
        already waiting (``checkpoint_wait_ms``).
        """
        job = AckJob(acks=[], window=set(), events_mark=0, done=done)
        job.acks, self.pending_acks = self.pending_acks, []
        job.window, self.window = self.window, set()
        job.events_mark = self.events_queued
        job.tracks_mark = self.tracks_queued
        self.since_checkpoint = 0
        self.acking |= job.window
        if self.checkpointing:
            if self.opts.state_in == "file":
                path = Path(self.opts.checkpoint)
                job.tmp = path.with_name(path.name + ".new")
            t = time.monotonic()
            # The state must not change while it is copied: this runs in the processor,
            # the only task that touches the engine.
            job.snapshot = self.engine.snapshot()
            ms = (time.monotonic() - t) * 1000
            self.counters["snapshot_ms_max"] = max(self.counters["snapshot_ms_max"],
                                                   round(ms, 1))
            t = time.monotonic()
            while self.ack_jobs.qsize() >= MAX_OPEN_WINDOWS:
                self.ack_taken.clear()
                await self.ack_taken.wait()
            self.counters["checkpoint_wait_ms"] += round((time.monotonic() - t) * 1000)
        self.ack_jobs.put_nowait(job)

    async def _acknowledger(self) -> None:
        """Make each closed window durable, in order, then acknowledge its messages.

        All windows waiting at once are completed together, like a group commit: one
        wait for their events, one track write, and one checkpoint, the newest window's
        snapshot (it holds the older ones' effects too). A write that fails (a full disk,
        the store away) is an outage, not a crash: the window's messages stay
        unacknowledged (the broker keeps them and stops sending at its in-flight limit)
        and the writes are retried with backoff until they succeed.
        """
        while True:
            jobs = [await self.ack_jobs.get()]
            while not self.ack_jobs.empty():
                jobs.append(self.ack_jobs.get_nowait())
            self.ack_taken.set()
            last = jobs[-1]
            window: set[bytes] = set()
            for job in jobs:
                window |= job.window
            t0 = time.monotonic()
            await self._stored_through(last.events_mark)
            t1 = time.monotonic()
            durable = await self._make_durable(last, window)
            for job in jobs:
                job.snapshot = None
                if durable:
                    for a in job.acks:
                        self._ack_now(a)
                self.acking -= job.window
            self.covered.appendleft(window)
            self.counters["ack_events_wait_ms"] += round((t1 - t0) * 1000)
            self.counters["ack_windows"] += len(jobs)
            self.counters["ack_rounds"] += 1
            ms = round((time.monotonic() - t0) * 1000)
            self.counters["ack_ms_max"] = max(self.counters["ack_ms_max"], ms)
            for job in jobs:
                if job.done is not None and not job.done.done():
                    job.done.set_result(None)

    async def _make_durable(self, job: AckJob, window: set[bytes]) -> bool:
        """Store ``job``'s track rows and write its checkpoint, retrying through outages.
        False only when a stop gives up on them (nothing is then acknowledged: the
        broker sends those messages again at the next start)."""
        delay = self.icfg.reconnect_min_s
        while True:
            t = time.monotonic()
            await self._flush_tracks(job.tracks_mark)
            tracks_ok = self.tracks_done >= job.tracks_mark
            t2 = time.monotonic()
            self.counters["ack_tracks_ms"] += round((t2 - t) * 1000)
            if tracks_ok and job.snapshot is not None:
                try:
                    await self._complete_checkpoint(job, window)
                    self.outages["checkpoint"].ok()
                except (OSError, StoreError) as exc:
                    self.counters["checkpoint_errors"] += 1
                    self._write_failed("checkpoint", exc,
                                       "acknowledgements held (the broker keeps the messages)")
                else:
                    self.counters["ack_checkpoint_ms"] += round((time.monotonic() - t2) * 1000)
                    return True
            elif tracks_ok:
                return True
            if self.stopping:
                log.warning("stopping with %d messages unacknowledged: the broker sends them "
                            "again at the next start", len(window))
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.icfg.reconnect_max_s)

    async def _complete_checkpoint(self, job: AckJob, window: set[bytes]) -> None:
        """``job``'s snapshot becomes the checkpoint, with the redelivery digests it
        covers (``window``: the messages of every window it completes, and the window
        before, whose acknowledgements may have died with a connection).

        In the store: state and digests in one row, one transaction. In a file: written,
        its digest and the redelivery digests go into the acks file, then it is renamed
        over the previous one.
        """
        t = time.monotonic()
        if self.opts.state_in == "store":
            digests = b"".join(window | self.covered[0])
            await asyncio.to_thread(self._save_store_checkpoint, job.snapshot, digests)
            self._count_checkpoint_write(t)
            return
        path = Path(self.opts.checkpoint)
        await asyncio.to_thread(write_checkpoint, job.tmp, job.snapshot)
        self._count_checkpoint_write(t)
        digest = await asyncio.to_thread(file_digest, job.tmp)
        # Keyed by the checkpoint's own digest, so a restart trusts only the matching
        # entry; the previous checkpoint's entry stays until the rename.
        entries = {digest: window | self.covered[0]}
        if self.covered_hash is not None:
            entries[self.covered_hash] = self.covered[0] | (
                self.covered[1] if len(self.covered) > 1 else set())
        await asyncio.to_thread(_write_acks_file, _acks_path(path), entries)
        os.replace(job.tmp, path)
        self.covered_hash = digest
        if self.opts.drop_store_checkpoint:
            # The file holds the state now: the store's older row must not come back.
            await asyncio.to_thread(self.store.delete_checkpoint, self.opts.name)
            self.opts.drop_store_checkpoint = False
            log.info("checkpoint file %s written: the store's older checkpoint of worker %s "
                     "deleted", path, self.opts.name)

    def _save_store_checkpoint(self, snapshot: dict[str, np.ndarray], digests: bytes) -> None:
        self.store.save_checkpoint(self.opts.name, checkpoint_bytes(snapshot), digests,
                                   wall_ms())

    def _count_checkpoint_write(self, t: float) -> None:
        ms = round((time.monotonic() - t) * 1000)
        self.counters["checkpoint_write_ms"] += ms
        self.counters["checkpoint_write_ms_max"] = max(
            self.counters["checkpoint_write_ms_max"], ms)
        self.counters["checkpoints"] += 1

    # ----- background loops ----------------------------------------------------------

    async def _sweeper(self) -> None:
        period = self.icfg.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(period)
            if not self.connected.is_set():
                continue  # the broker is away: silence now says nothing about devices
            now = wall_ms()
            silent_s = time.monotonic() - self.received_at
            if silent_s > SILENT_PINGS * self.icfg.health_interval_s + period:
                # Not even the engine's own ping came back: the connection is open but
                # nothing arrives, so silence says nothing about devices either. Once
                # messages flow again, devices' backlogs get the grace to arrive.
                if self.hold_reason != SILENT_BROKER:
                    log.warning("offline sweeps held: nothing received for %.1f s, not even "
                                "the engine's own ping", silent_s)
                self.hold_reason = SILENT_BROKER
                self.hold_until_ms = now + int(self.icfg.restart_grace_s * 1000)
                continue
            if self.hold_reason is not None:
                if self.hold_reason == "start" and self.drained:
                    log.info("offline sweeps start: the backlog is drained")
                elif now >= self.hold_until_ms:
                    log.info("offline sweeps start: the %.0f s grace after the %s has passed",
                             self.icfg.restart_grace_s, self.hold_reason)
                else:
                    continue
                self.hold_reason = None
            # Silence is judged on receive time: every message received before `now`
            # must reach the engine before this sweep does. The open micro-batch can hold
            # the whole backlog just drained, so it goes into the queue first.
            await self._flush()
            await self.work.put(("sweep", now))

    async def _deadletter_sender(self) -> None:
        while True:
            topic, payload = await self.deadletters.get()
            await self.connected.wait()
            client = self.client
            try:
                await client.publish(topic, payload, qos=0)
                self.counters["deadletters_published"] += 1
            except Exception:  # noqa: BLE001 - diagnostics only: count and move on
                self.counters["deadletters_dropped"] += 1

    async def _track_writer(self) -> None:
        while True:
            await asyncio.sleep(TRACK_FLUSH_S)
            await self._flush_tracks()

    async def _periodic_checkpoint(self) -> None:
        while True:
            await asyncio.sleep(self.icfg.checkpoint_interval_s)
            if self.since_checkpoint or self.pending_acks:
                await self.work.put(("checkpoint", None))

    async def _health(self) -> None:
        while True:
            await asyncio.sleep(self.icfg.health_interval_s)
            client = self.client
            # Once stopping, the shutdown publishes the last (retained) health, "offline":
            # an "online" sent after it would leave monitors believing a stopped engine runs.
            if client is not None and not self.stopping:
                with contextlib.suppress(Exception):
                    # A ping to itself: its arrival proves the whole receive path works
                    # even when no device sends anything (it feeds the watchdog).
                    await client.publish(self.drain_topic, PING, qos=1,
                                         timeout=HEALTH_TIMEOUT_S)
                with contextlib.suppress(Exception):
                    await self._publish_health(client, "online")

    def _write_failed(self, what: str, exc: Exception, held: str) -> None:
        """A write of ``what`` (events, tracks, checkpoint) failed and will be retried.

        An outage, not a stall: acknowledgements (and so the broker's deliveries, the
        engine's own pings included once the in-flight window is full) pause while the
        logs and health say why, so the watchdog must not take it for a stuck engine."""
        self._alive()
        self.outages[what].failed(exc, held)

    def _alive(self) -> None:
        if self.watchdog is not None:
            self.watchdog.alive()

    def _stalled(self, idle_s: float, when: str) -> None:
        """The watchdog's verdict (called in its thread): log it, try to publish health
        ``stalled`` for :data:`STALL_REPORT_S`, and end the process with
        :data:`EXIT_STALLED` (whatever is stuck cannot be trusted to stop; nothing is lost:
        unacknowledged messages wait in the broker, undelivered alarms in the outbox)."""
        if when == "stopping":
            log.critical("watchdog: the shutdown did not finish within %.0f s; exiting %d "
                         "without it (unacknowledged messages wait in the broker, "
                         "undelivered alarms in the outbox)",
                         self.icfg.watchdog_s + SHUTDOWN_FLUSH_S, EXIT_STALLED)
        else:
            log.critical("watchdog: nothing received from the broker for %.1f s (ingest."
                         "watchdog_s = %g), not even the engine's own ping: the engine is "
                         "stalled; exiting %d so that the service manager restarts it "
                         "(unacknowledged messages wait in the broker, undelivered alarms "
                         "in the outbox)", idle_s, self.icfg.watchdog_s, EXIT_STALLED)
        client, loop = self.client, self.loop
        if client is not None and loop is not None and loop.is_running():
            report = asyncio.run_coroutine_threadsafe(self._publish_health(client, "stalled"),
                                                      loop)
            try:
                report.result(STALL_REPORT_S)
            except Exception as exc:  # noqa: BLE001 - best effort: the exit must happen anyway
                report.cancel()
                log.error("watchdog: health 'stalled' not acknowledged by the broker: %r", exc)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_STALLED)

    def health(self, status: str) -> dict[str, Any]:
        """The health document: status, sweep state, queue depths and counters."""
        return {
            "status": status, "name": self.opts.name, "at": wall_ms(),
            "started_at": self.started_ms,
            "regions": self.opts.regions or ["+"],
            "devices": len(self.registry.device_ids),
            "offline_sweeps": "running" if self.hold_reason is None
            else f"held ({self.hold_reason})",
            "backlog_drained": self.drained,
            "unacknowledged": self.since_checkpoint,
            "track_queue": len(self.tracks),
            "deadletter_queue": self.deadletters.qsize(),
            "watchdog": None if self.watchdog is None else {
                "idle_s": round(self.watchdog.idle_s(), 1),
                "limit_s": self.icfg.watchdog_s},
            "outages": [o.health() for o in self.outages.values() if o.since_ms is not None],
            "counters": dict(sorted(self.counters.items())),
            "outbox": dict(self.outbox.counters),
            "rejections": dict(sorted(self.rejects.items())),
            "engine": self.engine.counters,
        }

    async def _publish_health(self, client, status: str) -> None:
        await client.publish(self.mqtt.health_topic(self.opts.name),
                             orjson.dumps(self.health(status)), qos=1, retain=True,
                             timeout=HEALTH_TIMEOUT_S)

    async def _escalation(self) -> None:
        from alarms.publisher import run_escalation

        # Often enough that an escalation is at most a quarter of the window late.
        period = max(0.2, min(self.config.alarms.escalation_check_s,
                                self.config.alarms.escalate_after_s / 4))
        await run_escalation(self.store, config=self.config.alarms, publisher=self.outbox,
                             regions=self.opts.regions, interval_s=period,
                             counters=self.counters)

    async def _purge(self) -> None:
        keep_ms = int(self.config.tracks.retention_days * 86_400_000)
        while True:
            try:
                n = await asyncio.to_thread(self.store.purge_tracks, wall_ms() - keep_ms)
                if n:
                    log.info("track retention: deleted %d fixes older than %g days", n,
                             self.config.tracks.retention_days)
            except Exception as exc:  # noqa: BLE001
                log.error("track retention purge failed: %s", exc)
            await asyncio.sleep(PURGE_PERIOD_S)

    async def _reload(self) -> None:
        if not hasattr(self.engine, "reload"):
            log.error("reload: the %s core cannot reload; restart instead",
                      type(self.engine).__name__)
            return
        try:
            zones, registry = await asyncio.to_thread(
                load_model, self.opts.zones_path, self.opts.subjects_path)
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop the engine
            log.error("reload failed, keeping the current zones and subjects: %s", exc)
            return
        await self._flush()
        await self.work.put(("reload", (zones, registry)))

    def _http_server(self):
        try:
            from console.app import create_app
        except ImportError as exc:
            log.error("--http: the console is not available (%s); running without it", exc)
            return None
        import uvicorn

        host, _, port = self.opts.http.rpartition(":")
        app = create_app(store=self.store, config=self.config, zones=self.zones,
                         registry=self.registry,
                         secure_cookies=host not in ("127.0.0.1", "localhost", "::1"))
        self.console_app = app

        class _Server(uvicorn.Server):
            # The engine owns SIGINT/SIGTERM; uvicorn must not take them over.
            def install_signal_handlers(self) -> None:
                pass

            @contextlib.contextmanager
            def capture_signals(self):
                yield

        return _Server(uvicorn.Config(app, host=host or "127.0.0.1", port=int(port),
                                      log_level="warning", lifespan="on"))

    async def _shutdown(self) -> None:
        await self._flush()
        done = asyncio.get_running_loop().create_future()
        await self.work.put(("checkpoint", done))
        await done
        await self.work.join()
        client = self.client
        if client is not None:
            # The connection's publisher delivers; wait (bounded) until nothing is pending.
            self.outbox.notify()
            deadline = time.monotonic() + SHUTDOWN_FLUSH_S
            left = await asyncio.to_thread(self.store.pending, 1, self.opts.regions)
            while left and time.monotonic() < deadline and self.client is not None:
                await asyncio.sleep(0.05)
                left = await asyncio.to_thread(self.store.pending, 1, self.opts.regions)
            if left:
                log.warning("outbox not fully delivered at shutdown; the rest goes out at the "
                            "next start")
        if client is not None:
            with contextlib.suppress(Exception):
                await self._publish_health(client, "offline")
        log.info("final counters: %s", dict(sorted(self.counters.items())))


def _acks_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".acks")


def _write_acks_file(path: Path, entries: dict[str, set[bytes]]) -> None:
    # Version 2: each checkpoint's digests concatenated (16 bytes each), base64. Version
    # 1 listed them in hex, which cost ~0.2 s of Python per checkpoint at 40 000 digests.
    data = {h: base64.b64encode(b"".join(ds)).decode() for h, ds in entries.items()}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"version": 2, "checkpoints": data}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_covered(checkpoint: Path) -> set[bytes]:
    """Digests of messages the checkpoint at ``checkpoint`` already contains (may be empty)."""
    p = _acks_path(checkpoint)
    try:
        data = orjson.loads(p.read_bytes())
        entry = data["checkpoints"].get(file_digest(checkpoint))
        if not entry:
            return set()
        if data.get("version") == 1:  # written by an earlier emfence
            return {bytes.fromhex(h) for h in entry}
        blob = base64.b64decode(entry, validate=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    n = DIGEST_BYTES
    return {blob[i:i + n] for i in range(0, len(blob) - len(blob) % n, n)}


def load_model(zones_path: str, subjects_path: str):
    """Zones (compiled) and the registry, from files."""
    from engine import load_registry
    from geofence import compile_zones, load_zones

    zones = compile_zones(load_zones(zones_path))
    return zones, load_registry(subjects_path, zones)


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emfence run",
        description="The live engine: subscribe to device fixes and statuses over MQTT, run "
                    "the rules, store alarms and publish them. docs/operations.md explains "
                    "deployment; docs/wire-protocol.md the device contract.")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="mqtt://host:port or mqtts://host:port (default %(default)s)")
    p.add_argument("--zones", required=True, help="zones GeoJSON")
    p.add_argument("--subjects", required=True, help="subjects JSON")
    p.add_argument("--store", required=True,
                   help="alarm store: sqlite:///path/alarms.db or postgresql://...")
    p.add_argument("--regions", help="comma-separated region codes this worker handles "
                   "(default: every region)")
    p.add_argument("--name", default="engine-1",
                   help="worker name: the health topic, the worker's broker account and "
                        "client id emfence-NAME (one persistent session per name; never run "
                        "two processes with one name) and the key of the engine state in the "
                        "store")
    p.add_argument("--username", help="broker login: this worker's own account emfence-NAME "
                   "(the session's client id is the login)")
    p.add_argument("--password-file", help="file whose first line is the broker password")
    p.add_argument("--tls-ca", help="CA certificate file to verify the broker (turns on TLS)")
    p.add_argument("--tls-cert", help="client certificate file (with --tls-key)")
    p.add_argument("--tls-key", help="client private key file")
    p.add_argument("--checkpoint", help="keep the engine state in this file instead of the "
                   "store (default: the store, as the row of --name); restored at start, "
                   "written every ingest.checkpoint_interval_s and at shutdown")
    p.add_argument("--config", help="configuration TOML (docs/configuration.md)")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="also serve the command-centre console here")
    p.add_argument("--core", choices=["numba", "shapely"], default="numba",
                   help="rule core: numba (production) or shapely (a slow reference, for "
                        "benchmarks only; no checkpoints, no reload)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


async def _amain(service_args: dict) -> int:
    service = Service(**service_args)
    return await service.run()


def _check_account(name: str, username: str | None) -> None:
    """Refuse a login that cannot run a worker; warn about one that can, but shared."""
    if username is None:
        return  # an anonymous broker: the client id is emfence-NAME
    role = service_role(username)
    if role in ("console", "loadgen"):
        raise ValueError(f"--username {username}: the {role} account may not read fixes; "
                         f"log in as this worker's own account {engine_account(name)}")
    if username != engine_account(name):
        log.warning("--username %s with --name %s: the session's client id is the login %s "
                    "(a broker with use_username_as_clientid insists), so two workers sharing "
                    "it would take over each other's session; give each worker its own "
                    "account %s (emfence mqtt-passwords --engine %s=FILE)", username, name,
                    username, engine_account(name), name)


def build_service_args(args: argparse.Namespace) -> dict:
    """Load everything `emfence run` needs; raises ValueError subclasses naming the input."""
    from alarms.store import open_store
    from ingest.mqtt import BrokerSettings, parse_regions

    config = load_config(args.config)
    broker = BrokerSettings.from_options(args.broker, username=args.username,
                                         password_file=args.password_file, tls_ca=args.tls_ca,
                                         tls_cert=args.tls_cert, tls_key=args.tls_key)
    regions = parse_regions(args.regions)
    problem = worker_name_problem(args.name)
    if problem:
        raise ValueError(f"--name {problem}")
    _check_account(args.name, broker.username)
    if args.http and not args.http.rpartition(":")[2].isdigit():
        raise ValueError(f"--http {args.http!r}: expected HOST:PORT")
    zones, registry = load_model(args.zones, args.subjects)
    if regions is not None:
        missing = sorted(set(regions) - set(registry.regions))
        if missing:
            log.warning("--regions %s: no subject registered there", ",".join(missing))
    store = open_store(args.store)
    try:
        engine, restored, covered, opts = _restore_engine(args, config, zones, registry, store)
    except BaseException:
        store.close_store()
        raise
    opts.zones_path, opts.subjects_path, opts.store_url = args.zones, args.subjects, args.store
    opts.regions, opts.http = regions, args.http
    return {"broker": broker, "options": opts, "config": config, "zones": zones,
            "registry": registry, "engine": engine, "store": store, "restored": restored,
            "covered": covered}


def _restore_engine(args: argparse.Namespace, config: Config, zones, registry, store):
    """The engine, continuing the worker's last checkpoint if there is one, and where its
    state is kept from now on: ``(engine, restored, covered digests, Options)``.

    Without ``--checkpoint`` the state lives in the store, in the row of this worker's
    ``--name``. With ``--checkpoint FILE`` the file wins: it is restored if it exists, and
    the store's row (if any) is used only while the file does not exist yet, then deleted
    once the file holds a checkpoint.
    """
    from engine import Engine

    opts = Options(zones_path="", subjects_path="", store_url="", name=args.name,
                   checkpoint=args.checkpoint)
    if args.core == "shapely":
        from engine.shapely_core import ShapelyEngine

        if args.checkpoint:
            raise ValueError("--core shapely keeps no checkpoints: drop --checkpoint")
        log.warning("--core shapely keeps no rule state: a crash or restart forgets open "
                    "episodes (benchmarks only)")
        opts.state_in = "none"
        return ShapelyEngine(zones, registry, config), False, set(), opts
    if args.checkpoint and Path(args.checkpoint).exists():
        opts.state_in = "file"
        opts.drop_store_checkpoint = store.load_checkpoint(args.name) is not None
        engine = Engine.restore(args.checkpoint, zones, registry, config)
        return engine, True, read_covered(Path(args.checkpoint)), opts
    opts.state_in = "file" if args.checkpoint else "store"
    row = store.load_checkpoint(args.name)
    if row is None:
        return Engine(zones, registry, config), False, set(), opts
    state, digests, _written_at = row
    engine = Engine.restore_bytes(state, zones, registry, config,
                                  where=f"the store's checkpoint of worker {args.name!r}")
    opts.drop_store_checkpoint = bool(args.checkpoint)
    n = DIGEST_BYTES
    return engine, True, {digests[i:i + n] for i in range(0, len(digests) - len(digests) % n, n)}, opts


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mqtt").setLevel(logging.WARNING)
    try:
        service_args = build_service_args(args)
    except (ValueError, ConfigError, OSError, StoreError) as exc:
        print(f"emfence run: {exc}", file=sys.stderr)
        return 1
    store = service_args["store"]
    try:
        return asyncio.run(_amain(service_args))
    except Exception:  # an ExceptionGroup from the task group: a bug, not bad input
        log.critical("engine stopped on an unexpected error; restart it (messages not yet "
                     "acknowledged wait in the broker, undelivered alarms in the outbox)",
                     exc_info=True)
        return 1
    finally:
        with contextlib.suppress(Exception):
            store.close_store()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
