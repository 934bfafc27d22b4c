"""`emfence run`: the live engine. MQTT in, rules, alarms to the store and back out.

One asyncio process: :class:`Service` is a task group wiring small parts, each owning
its state and its loop (docs/internals.md, "emfence run"):

- receive (:mod:`emfence.run.receive`): the broker connection; topic -> region/device/
  kind, registered device in that region, decode and validate (``ingest.decode``); a
  rejection becomes a dead letter on ``emfence/v1/{region}/deadletter``; an accepted fix
  or status joins the open micro-batch;
- batches (:mod:`emfence.run.batches`): the batch is handed to the processor at
  ``ingest.batch_max_messages`` messages or ``ingest.batch_max_ms`` after its first one;
- the processor (here, the only task that touches the engine): ``engine.process`` on
  the batch's :class:`contract.RecordBatch`, in arrival order; offline sweeps, window
  closes and reloads come through the same queue;
- events (:mod:`emfence.run.events`): alarm rows + outbox in one transaction,
  group-committed, before anything publishes them; each stored row goes to the outbox
  publisher (``alarms.publisher``), which runs with each connection;
- tracks (:mod:`emfence.run.tracks`): accepted fixes to the track store, retention;
- acknowledgements and checkpoints (:mod:`emfence.run.acks`): THE acknowledgement rule
  (a message is PUBACKed only once the checkpoint containing its effect is durable and
  its alarm events and track rows are stored); failed writes are outages, retried;
- sweeps (:mod:`emfence.run.sweeps`): the offline-sweep hold;
- health (:mod:`emfence.run.health`): outages, the retained health document, the
  watchdog's verdict (``ingest.watchdog``: exit 3 when nothing is received for
  ``ingest.watchdog_s``);
- reload (SIGHUP; from the register also on each change, :mod:`emfence.run.register_watch`)
  and the embedded console (``--http``, :mod:`emfence.run.console_http`).

Signals: SIGINT/SIGTERM finish the batch, checkpoint, acknowledge, flush the outbox and
exit 0; SIGHUP reloads zones and subjects (:mod:`emfence.run.model`: the files or the
register), keeping the state of devices that remain.
The command line is :mod:`emfence.run.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from typing import Any

import orjson

from contract import RecordBatch, health_topic
from emfence.config import Config
from emfence.run.acks import Acks
from emfence.run.batches import Batch, Batches, process_one_by_one
from emfence.run.commands import Commands
from emfence.run.events import EventWriter
from emfence.run.health import (
    QUIET_LOGGERS,
    Outages,
    QuietDuringOutage,
    WatchedStore,
    health_document,
    stalled,
)
from emfence.run.model import ModelSource
from emfence.run.notify import notify_outboxes
from emfence.run.ops_http import Ops, serve_ops
from emfence.run.options import (
    HEALTH_TIMEOUT_S,
    PING,
    SHUTDOWN_FLUSH_S,
    Options,
    redact,
    wall_ms,
)
from emfence.run.receive import Receiver
from emfence.run.register_watch import ModelLoadFailed, RegisterWatch, load_model_async
from emfence.run.sweeps import SweepHold
from emfence.run.tracks import TrackWriter
from engine.positions import Positions

log = logging.getLogger("emfence.run")


class Service:
    """The running engine process: build its arguments with
    :func:`emfence.run.cli.build_service_args`, then ``await run()``."""

    def __init__(self, *, broker, options: Options, config: Config, zones, registry, engine,
                 store, restored: bool = False, covered: set[bytes] | None = None,
                 lease=None):
        from alarms.publisher import OutboxPublisher
        from ingest.watchdog import Watchdog

        self.opts, self.config = options, config
        self.icfg = icfg = config.ingest
        self.zones, self.registry, self.engine, self.store = zones, registry, engine, store
        self.restored = restored
        self.counters: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()
        self.stop_event, self.stopping, self.exit_code = asyncio.Event(), False, 0
        self.started_ms = wall_ms()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.console = None  # ConsoleHttp with --http
        self.tasks: dict[str, asyncio.Task] = {}  # the parts' loops, by name
        self.processor_busy_since: float | None = None  # monotonic s; None: idle

        # The watchdog (ingest.watchdog_s): fed by every message received, the engine's own
        # pings included, by connection attempts and by store retries.
        self.watchdog = (Watchdog(icfg.watchdog_s, self._stalled)
                         if icfg.watchdog_s > 0 else None)
        self.outages = Outages(self.watchdog, checkpoint_in_store=options.state_in == "store")
        # The outbox reads the store too: a failure there is part of the store's outage.
        self.outbox = OutboxPublisher(WatchedStore(store, self.outages), config=config.alarms,
                                      regions=options.regions)
        # Notifications (emfence.run.notify): None without a [notify.*] channel.
        self.notifier = notify_outboxes(WatchedStore(store, self.outages), config,
                                        options.regions)
        self.batches = Batches(icfg.batch_max_messages, icfg.batch_max_ms)
        self.events = EventWriter(store, self.outbox, self.counters, self.outages,
                                  (icfg.reconnect_min_s, icfg.reconnect_max_s))
        self.tracks = TrackWriter(store, config.tracks, self.counters, self.outages)
        self.hold = SweepHold.of(icfg)
        self.acks = Acks(opts=options, icfg=icfg, store=store, events=self.events,
                         tracks=self.tracks, outages=self.outages, counters=self.counters,
                         ack_all=self._ack_all, stopping=lambda: self.stopping,
                         covered=covered)
        self.receiver = Receiver(
            broker=broker, opts=options, icfg=icfg, registry=lambda: self.registry,
            batches=self.batches, acks=self.acks, hold=self.hold, outbox=self.outbox,
            counters=self.counters, rejects=self.rejects, alive=self._alive,
            stopping=lambda: self.stopping,
            on_connected=lambda client: self._publish_health(client, "online"),
            on_fatal=self._fatal)
        self.outages.held = self._held_back
        self.commands = Commands(WatchedStore(store, self.outages), self.receiver,
                                 options.regions, self.counters)
        self.source = options.source or ModelSource.files(options.zones_path,
                                                          options.subjects_path)
        self.reloading = asyncio.Lock()  # one reload at a time, applied in order
        self.watch = (RegisterWatch(self.source, self.outages, self._reload,
                                    seq=options.register_seq, taken_ms=options.register_taken_ms)
                      if self.source.from_register else None)
        # /healthz, /readyz, /metrics (--http, --metrics-http); ops.readiness takes more
        self.ops = Ops(self)  # conditions (a worker group's lease)
        self.lease = lease  # the worker group's (emfence.run.lease); None: no group
        if lease is not None:
            lease.attach(self)

    # The parts' state under the names the tests and the health document read.
    @property
    def batch(self) -> Batch:
        return self.batches.batch

    @batch.setter
    def batch(self, b: Batch) -> None:
        self.batches.batch = b

    @property
    def work(self) -> asyncio.Queue:
        return self.batches.work

    @property
    def connected(self) -> asyncio.Event:
        return self.receiver.connected

    deadletters = property(lambda self: self.receiver.deadletters)  # asyncio.Queue
    @property
    def hold_reason(self) -> str | None:
        return self.hold.reason

    @hold_reason.setter
    def hold_reason(self, reason: str | None) -> None:
        self.hold.reason = reason

    unstored = property(lambda self: self.events.unstored)  # list[dict]
    events_queued = property(lambda self: self.events.queued)  # int

    # ----- running -------------------------------------------------------------------

    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._log_start()
        quiet = QuietDuringOutage(self.outages.store)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).addFilter(quiet)
        await asyncio.to_thread(self._warm_up)
        if self.watchdog is not None:
            self.watchdog.start()  # after the warm-up: compiling kernels may take a while
        try:
            async with asyncio.TaskGroup() as tg:
                self.tasks = {name: tg.create_task(coro, name=name)
                              for name, coro in self._parts()}
                tasks = list(self.tasks.values())
                http = None
                if self.opts.metrics_http:
                    tasks.append(tg.create_task(
                        serve_ops(self.ops, self.opts.metrics_http, self._http_failed),
                        name="metrics-http"))
                if self.opts.http:
                    from emfence.run.console_http import ConsoleHttp

                    self.console = ConsoleHttp(self.opts.http, store=self.store,
                                               config=self.config, zones=self.zones,
                                               registry=self.registry)
                    if self.console.app is not None:
                        self.ops.add_to(self.console.app)
                        http = tg.create_task(self.console.run(self._http_failed), name="http")
                await self.stop_event.wait()
                await self._shutdown()
                for t in [*tasks, http]:
                    if t is not None:
                        t.cancel()
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for name in QUIET_LOGGERS:
                logging.getLogger(name).removeFilter(quiet)
        log.info("engine %s stopped%s", self.opts.name,
                 " cleanly" if self.exit_code == 0 else "")
        return self.exit_code

    def _parts(self):
        """(task name, coroutine) of every part's loop."""
        return [
            ("mqtt-connection", self.receiver.run()),
            ("batch-flusher", self.batches.run()),
            ("processor", self._processor()),
            ("event-store", self.events.run()),
            ("acknowledger", self.acks.run()),
            ("offline-sweeper", self._sweeper()),
            ("deadletters", self.receiver.send_deadletters()),
            ("tracks", self.tracks.run()),
            ("checkpoint", self._periodic_checkpoint()),
            ("intake", self.receiver.intake.run()),
            ("health", self._health()),
            ("escalation", self._escalation()),
            ("commands", self.commands.run()),
            ("track-retention", self.tracks.purge()),
            *([("notify", self.notifier.run())] if self.notifier else []),
            *([("lease", self.lease.run())] if self.lease is not None else []),
        ] + ([("register-watch", self.watch.run())] if self.watch is not None else [])

    def _log_start(self) -> None:
        log.info("engine %s starting: %d devices, %d zones, regions %s, store %s%s",
                 self.opts.name, len(self.registry.device_ids), len(self.zones.zone_ids),
                 ",".join(self.opts.regions) if self.opts.regions else "all",
                 redact(self.opts.store_url),
                 (", state restored from checkpoint" if self.restored else "")
                 + {"store": " (state kept in the store)", "file": " (state kept in "
                    f"{self.opts.checkpoint})", "none": " (no rule state kept)"}[
                     self.opts.state_in])

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) the rule kernels before subscribing, so
        the first batch after a start does not stall the backlog for seconds."""
        t = time.monotonic()
        self.engine.process(RecordBatch.empty())
        self.engine.sweep(-(2**62))  # a moment long past: nothing is due
        log.info("rule kernels ready in %.1f s", time.monotonic() - t)

    def _fatal(self, exit_code: int) -> None:
        """A part cannot go on (the broker refused the login at start): stop, exit so."""
        self.exit_code = exit_code
        self.request_stop(why="stopping")

    def request_stop(self, sig: int | None = None, *, why: str = "stop requested") -> None:
        if not self.stop_event.is_set():
            log.info("%s: finishing the batch, checkpointing, flushing the outbox",
                     signal.Signals(sig).name if sig else why)
            self.stopping = True
            self.stop_event.set()
            if self.watchdog is not None:
                # Stopping receives nothing; it may take a checkpoint and the outbox flush.
                self.watchdog.finish_within(self.icfg.watchdog_s + SHUTDOWN_FLUSH_S)

    def _http_failed(self) -> None:
        self.exit_code = 1
        self.request_stop()

    def request_reload(self) -> None:
        log.info("SIGHUP: reloading %s", self.source.describe())
        asyncio.get_running_loop().create_task(self._reload("SIGHUP"), name="reload")

    # ----- the processor: the only task that touches the engine ----------------------

    async def _flush(self) -> None:
        await self.batches.flush()

    def _join_batch(self, ack: tuple[int, int] | None, digest: bytes | None) -> None:
        self.batches.join(ack, digest)

    def _ack_all(self, acks: list[tuple[int, int] | None]) -> None:
        self.receiver.ack_all(acks)

    async def _processor(self) -> None:
        work = self.batches.work
        while True:
            kind, arg = await work.get()
            self.processor_busy_since = time.monotonic()
            try:
                if kind == "batch":
                    await self._process_batch(arg)
                elif kind == "sweep":
                    events = self.engine.sweep(arg)
                    self.counters["sweeps"] += 1
                    if events:
                        log.info("offline sweep raised %d alarms", len(events))
                        await self.events.record(events)
                elif kind == "checkpoint":
                    await self._close_window(done=arg)
                elif kind == "reload":
                    self._apply_reload(*arg)
            finally:
                self.processor_busy_since = None
                work.task_done()

    async def _process_batch(self, b: Batch) -> None:
        if b.device:
            records = b.records(self.registry)
            # the WGS-84 positions the rules ran on: the track rows take them as they are
            positions = Positions.nan(len(b.device))
            try:
                events, _ = self.engine.process(records, positions=positions)
            except Exception:  # isolate a poison record rather than crash-loop on it
                log.exception("engine failed on a batch of %d records; retrying one by one",
                              len(b.device))
                positions = Positions.nan(len(b.device))
                events = process_one_by_one(self.engine, self.registry, b, records, positions,
                                            self.counters, self.receiver.deadletter)
            self.counters["batches"] += 1
            if events:
                await self.events.record(events)
            self.tracks.queue(records, positions, b.device, b.src, self.registry)
        if self.acks.processed(b.digests, b.acks, b.messages):
            await self._close_window()

    async def _close_window(self, done: asyncio.Future | None = None) -> None:
        await self.acks.close_window(self.engine, done)

    async def _store_events(self) -> None:
        await self.events.run()

    async def _acknowledger(self) -> None:
        await self.acks.run()

    def _apply_reload(self, zones, registry) -> None:
        stats = self.engine.reload(zones, registry)
        self.zones, self.registry = zones, registry
        if self.console is not None:
            self.console.set_model(zones, registry)
        log.info("reloaded: %d devices, %d zones; %s", len(registry.device_ids),
                 len(zones.zone_ids), stats)

    # ----- background loops ----------------------------------------------------------

    async def _sweeper(self) -> None:
        period = self.icfg.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(period)
            if not self.receiver.connected.is_set():
                continue  # the broker is away: silence now says nothing about devices
            now = wall_ms()
            if not self.hold.may_sweep(now, period):
                continue
            # Silence is judged on receive time: every message received before `now`
            # must reach the engine before this sweep does. The open micro-batch can hold
            # the whole backlog just drained, so it goes into the queue first.
            await self.batches.flush()
            await self.batches.put("sweep", now)

    async def _periodic_checkpoint(self) -> None:
        intake = self.receiver.intake
        while True:
            # ingest.checkpoint_interval_s, or less (at once) when the broker's ack wait
            # turns out shorter
            intake.shortened.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(intake.shortened.wait(), intake.checkpoint_interval_s)
            if self.acks.due():
                await self.batches.put("checkpoint", None)

    async def _health(self) -> None:
        while True:
            await asyncio.sleep(self.icfg.health_interval_s)
            client = self.receiver.client
            # Once stopping, the shutdown publishes the last (retained) health, "offline":
            # an "online" sent after it would leave monitors believing a stopped engine runs.
            if client is not None and not self.stopping:
                with contextlib.suppress(Exception):
                    # A ping to itself: its arrival proves the whole receive path works
                    # even when no device sends anything (it feeds the watchdog).
                    await client.publish(self.receiver.drain_topic, PING, qos=1,
                                         timeout=HEALTH_TIMEOUT_S)
                with contextlib.suppress(Exception):
                    await self.receiver.retry_refused()  # degraded: ask again
                with contextlib.suppress(Exception):
                    await self._publish_health(client, "online")

    def _held_back(self) -> tuple[int, int, int]:
        """What waits for the store now: (alarm events, track rows, messages processed and
        not acknowledged). Read from any thread (plain counts)."""
        return (self.events.queued - self.events.stored, len(self.tracks),
                self.acks.since_checkpoint + len(self.acks.acking))

    def _alive(self) -> None:
        if self.watchdog is not None:
            self.watchdog.alive()

    def _stalled(self, idle_s: float, when: str) -> None:
        """The watchdog's verdict (in its thread): see :func:`emfence.run.health.stalled`."""
        def report():
            client, loop = self.receiver.client, self.loop
            if client is None or loop is None or not loop.is_running():
                return None
            return asyncio.run_coroutine_threadsafe(
                self._publish_health(client, "stalled"), loop)

        stalled(idle_s, when, limit_s=self.icfg.watchdog_s, report=report)

    def health(self, status: str) -> dict[str, Any]:
        """The health document (emfence.run.health.health_document)."""
        return health_document(self, status)

    async def _publish_health(self, client, status: str) -> None:
        await client.publish(health_topic(self.opts.name),
                             orjson.dumps(self.health(status)), qos=1, retain=True,
                             timeout=HEALTH_TIMEOUT_S)

    async def _escalation(self) -> None:
        from alarms.publisher import run_escalation

        # Often enough that an escalation is at most a quarter of the window late.
        period = max(0.2, min(self.config.alarms.escalation_check_s,
                                self.config.alarms.escalate_after_s / 4))
        await run_escalation(WatchedStore(self.store, self.outages), config=self.config.alarms,
                             publisher=self.outbox,
                             regions=self.opts.regions, interval_s=period,
                             counters=self.counters)

    async def _reload(self, why: str = "SIGHUP") -> bool:
        """Load the model again, queue it; False: the store failed (an outage, retried)."""
        from alarms.store import StoreError

        if not hasattr(self.engine, "reload"):
            log.error("reload: the %s core cannot reload; restart instead",
                      type(self.engine).__name__)
            return True
        async with self.reloading:
            try:
                zones, registry = await load_model_async(self.source, self.outages)
            except StoreError:
                return False
            except ModelLoadFailed as exc:
                log.error("%s: reload failed, keeping the current zones and subjects: %s",
                          why, exc)
                return True
            await self.batches.flush()
            await self.batches.put("reload", (zones, registry))
            return True

    async def _shutdown(self) -> None:
        await self.batches.flush()
        done = asyncio.get_running_loop().create_future()
        await self.batches.put("checkpoint", done)
        await done
        await self.batches.work.join()
        client = self.receiver.client
        if client is not None:
            # The connection's publisher delivers; wait (bounded) until nothing is pending.
            self.outbox.notify()
            deadline = time.monotonic() + SHUTDOWN_FLUSH_S
            left = await asyncio.to_thread(self.store.pending, 1, self.opts.regions)
            while left and time.monotonic() < deadline and self.receiver.client is not None:
                await asyncio.sleep(0.05)
                left = await asyncio.to_thread(self.store.pending, 1, self.opts.regions)
            if left:
                log.warning("outbox not fully delivered at shutdown; the rest goes out at the "
                            "next start")
        if client is not None:
            with contextlib.suppress(Exception):
                await self._publish_health(client, "offline")
        log.info("final counters: %s", dict(sorted(self.counters.items())))
