"""Acknowledgements and checkpoints: THE acknowledgement rule of `emfence run`.

A received message is PUBACKed only after the checkpoint that contains its effect is
durable (the store's row for this worker, or with ``--checkpoint`` a file) and its alarm
events and track rows are stored. Without rule state to keep (``--core shapely``) a
batch is acknowledged as soon as its events and tracks are stored. Redeliveries of
messages already processed are recognised by a digest of topic + payload: those of the
last windows in sets, and every processed message's for ``ingest.redelivery_horizon_s``
in :class:`emfence.run.redelivery.Horizon` (whose docstring says why, and what a restart
keeps).

:class:`Acks` owns every piece of that bookkeeping: the acknowledgements pending, the
digests received / processed / being acknowledged / covered by the last checkpoints,
and the closed windows on their way to the broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

from alarms.store import StoreError
from emfence.run.checkpoint_file import acks_path, append_deltas, deltas_path, write_acks_file
from emfence.run.options import MAX_OPEN_WINDOWS, AckJob, Options, wall_ms
from emfence.run.redelivery import Horizon
from engine.checkpoint_delta import DeltaChain, chain_of
from engine.state import checkpoint_bytes, write_checkpoint

log = logging.getLogger("emfence.run")


class Acks:
    """The acknowledgement rule (module docstring); ``run`` is the acknowledger task."""

    def __init__(self, *, opts: Options, icfg, store, events, tracks, outages,
                 counters: Counter, ack_all: Callable, stopping: Callable[[], bool],
                 covered: set[bytes] | None = None):
        self.opts = opts
        self.icfg = icfg
        self.store = store
        self.events = events
        self.tracks = tracks
        self.outages = outages
        self.counters = counters
        self.ack_all = ack_all  # [(generation, packet id)] -> PUBACKs on this connection
        self.stopping = stopping
        self.pending: list[tuple[int, int]] = []
        self.received: set[bytes] = set()  # received, not yet processed
        self.window: set[bytes] = set()  # processed since the last checkpoint
        self.covered: deque[set[bytes]] = deque([covered or set()], maxlen=2)
        self.covered_hash: str | None = None  # the identity of the file's checkpoint
        # Each window's checkpoint: a full one, then deltas (engine.checkpoint_delta);
        # a restart begins a new chain with a full one.
        self.chain = DeltaChain(icfg.checkpoint_deltas_max)
        self.deltas_bytes = 0  # FILE.deltas's length up to the last record appended
        # Every processed message's digest for the horizon (the broker's ack wait and a
        # failover); the restored ones count from the start.
        self.horizon = Horizon(icfg.redelivery_horizon_s)
        self.horizon.add(covered or (), time.monotonic())
        # An acknowledgement is lost only with its connection, and the broker re-sends
        # within its ack wait of the next: the horizon is asked only this long after a
        # (re)connect (monotonic s); in between, every message skips that lookup.
        self.horizon_until = time.monotonic() + icfg.redelivery_horizon_s
        self.since_checkpoint = 0
        self.jobs: asyncio.Queue[AckJob] = asyncio.Queue()
        # Set when the acknowledger takes the waiting windows: with --checkpoint, a
        # processor that closes windows faster than they become durable waits for it
        # (that bounds unacknowledged messages and the snapshots held in memory).
        self.taken = asyncio.Event()
        self.acking: set[bytes] = set()  # digests of closed windows not yet acknowledged
        self.checkpointing = opts.state_in != "none"
        # The window closes at this many messages: ingest.ack_window_messages, or less
        # once the broker's in-flight window is seen to be smaller (emfence.run.intake).
        self.window_messages = icfg.ack_window_messages
        self.on_acked: Callable[[list[tuple[int, int]]], None] | None = None

    # ----- on receive and processing (the receiver, the processor) -------------------

    def seen(self, digest: bytes) -> str | None:
        """A message received again: ``"join"`` when it is still on its way (acknowledged
        with the batch that has it), ``"ack"`` when a durable checkpoint covers it
        (acknowledge now), None when it is new."""
        if digest in self.received or digest in self.window or digest in self.acking:
            return "join"
        if digest in self.covered[0] or (len(self.covered) > 1 and digest in self.covered[1]):
            return "ack"
        if time.monotonic() < self.horizon_until and digest in self.horizon:
            # Acknowledged windows ago, on a connection since lost: the ack was lost.
            self.counters["redelivered_late"] += 1
            return "ack"
        return None

    def reconnected(self, gen: int) -> None:
        """Packet ids of earlier connections are void: the broker sends those messages
        again, and they are recognised by digest (the horizon's for the horizon from
        now)."""
        self.pending = [a for a in self.pending if a[0] == gen]
        self.horizon_until = time.monotonic() + self.icfg.redelivery_horizon_s

    def processed(self, digests: list[bytes], acks: list[tuple[int, int]], messages: int
                  ) -> bool:
        """A batch went through the engine; True when its window must close now."""
        for d in digests:
            self.received.discard(d)
            self.window.add(d)
        self.pending.extend(acks)
        self.since_checkpoint += messages
        return (not self.checkpointing  # no state to keep: stored is durable
                or self.since_checkpoint >= self.window_messages)

    def due(self) -> bool:
        """Anything to checkpoint (the periodic checkpoint)."""
        return bool(self.since_checkpoint or self.pending)

    async def close_window(self, engine, done: asyncio.Future | None = None) -> None:
        """Close the acknowledgement window (processor only) and hand it to the
        acknowledger.

        With a checkpoint the engine's state is taken here while nothing else touches the
        engine: a full copy, or what changed since the previous window's (``DeltaChain``);
        that is all the processor waits for. Writing it, storing the window's events and
        fixes, the digests, the acks file, the rename and the PUBACKs follow in
        :meth:`run` while new batches are processed. Windows that close while the
        acknowledger is busy are completed together: the newest full snapshot among them
        and the deltas after it. The processor waits here only when
        :data:`MAX_OPEN_WINDOWS` closed windows are already waiting (``checkpoint_wait_ms``).
        """
        job = AckJob(acks=self.pending, window=self.window, events_mark=self.events.queued,
                     tracks_mark=self.tracks.queued, done=done)
        self.pending, self.window = [], set()
        self.since_checkpoint = 0
        self.acking |= job.window
        if self.checkpointing:
            if self.opts.state_in == "file":
                path = Path(self.opts.checkpoint)
                job.tmp = path.with_name(path.name + ".new")
            t = time.monotonic()
            # The state must not change while it is copied: this runs in the processor,
            # the only task that touches the engine.
            job.kind, job.snapshot = self.chain.next(engine.snapshot(copy=False))
            self.counters["checkpoints_full" if job.kind == "base" else
                          "checkpoints_delta"] += 1
            ms = (time.monotonic() - t) * 1000
            self.counters["snapshot_ms_max"] = max(self.counters["snapshot_ms_max"],
                                                   round(ms, 1))
            t = time.monotonic()
            while self.jobs.qsize() >= MAX_OPEN_WINDOWS:
                self.taken.clear()
                await self.taken.wait()
            self.counters["checkpoint_wait_ms"] += round((time.monotonic() - t) * 1000)
        self.jobs.put_nowait(job)

    # ----- the acknowledger ----------------------------------------------------------

    async def run(self) -> None:
        """Make each closed window durable, in order, then acknowledge its messages.

        All windows waiting at once are completed together, like a group commit: one
        wait for their events, one track write, and one checkpoint write: the newest
        full snapshot among them (it holds the older ones' effects too) and the deltas
        after it. A write that fails (a full disk,
        the store away) is an outage, not a crash: the window's messages stay
        unacknowledged (the broker keeps them and stops sending at its in-flight limit)
        and the writes are retried with backoff until they succeed.
        """
        while True:
            jobs = [await self.jobs.get()]
            while not self.jobs.empty():
                jobs.append(self.jobs.get_nowait())
            self.taken.set()
            last = jobs[-1]
            window: set[bytes] = set()
            for job in jobs:
                window |= job.window
            t0 = time.monotonic()
            await self.events.stored_through(last.events_mark)
            t1 = time.monotonic()
            durable = await self._make_durable(jobs, window)
            for job in jobs:
                job.snapshot = None
                if durable:
                    self.ack_all(job.acks)
                    if self.on_acked is not None:
                        self.on_acked(job.acks)
            self.covered.appendleft(window)  # recognised from here on: out of acking
            for job in jobs:
                self.acking -= job.window
            self.counters["ack_events_wait_ms"] += round((t1 - t0) * 1000)
            self.counters["ack_windows"] += len(jobs)
            self.counters["ack_rounds"] += 1
            ms = round((time.monotonic() - t0) * 1000)
            self.counters["ack_ms_max"] = max(self.counters["ack_ms_max"], ms)
            for job in jobs:
                if job.done is not None and not job.done.done():
                    job.done.set_result(None)
            # Beside the receiver (a sort and a merge: milliseconds at the national
            # rate); the sets above cover the window until the next two are in.
            await asyncio.to_thread(self.horizon.add, window, time.monotonic())

    async def _make_durable(self, jobs: list[AckJob], window: set[bytes]) -> bool:
        """Store the track rows of ``jobs`` and write their checkpoints, retrying through
        outages.
        False only when a stop gives up on them (nothing is then acknowledged: the
        broker sends those messages again at the next start)."""
        delay = self.icfg.reconnect_min_s
        job = jobs[-1]
        while True:
            t = time.monotonic()
            await self.tracks.flush(job.tracks_mark)
            tracks_ok = self.tracks.done >= job.tracks_mark
            t2 = time.monotonic()
            self.counters["ack_tracks_ms"] += round((t2 - t) * 1000)
            if tracks_ok and job.snapshot is not None:
                try:
                    await self._complete_checkpoint(jobs, window)
                    self.outages.ok("checkpoint")
                except (OSError, StoreError) as exc:
                    self.counters["checkpoint_errors"] += 1
                    self.outages.failed("checkpoint", exc)
                else:
                    self.counters["ack_checkpoint_ms"] += round((time.monotonic() - t2) * 1000)
                    return True
            elif tracks_ok:
                return True
            if self.stopping():
                log.warning("stopping with %d messages unacknowledged: the broker sends them "
                            "again at the next start", len(window))
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.icfg.reconnect_max_s)

    async def _complete_checkpoint(self, jobs: list[AckJob], window: set[bytes]) -> None:
        """The snapshots of ``jobs`` become the checkpoint: the last full one among them
        (if any) and the deltas after it, with the redelivery digests they cover
        (``window``: the messages of every window they complete, and the window before,
        whose acknowledgements may have died with a connection).

        In the store: full state, deltas and digests in one transaction. In a file: a
        full state is written to a temporary file; the digests of each checkpoint of the
        group go into the acks file (a crash may leave any of them the newest); then the
        full one is renamed over the previous one and the deltas appended to
        ``FILE.deltas``.
        """
        t = time.monotonic()
        chain = jobs[max((i for i, j in enumerate(jobs) if j.kind == "base"), default=0):]
        base = chain[0] if chain[0].kind == "base" else None
        deltas = chain[1:] if base is not None else chain
        if self.opts.state_in == "store":
            digests = b"".join(window | self.covered[0])
            await asyncio.to_thread(self._save_in_store, base, deltas, digests)
            self._count_write(t)
            return
        path = Path(self.opts.checkpoint)
        if base is not None:
            await asyncio.to_thread(write_checkpoint, base.tmp, base.snapshot)
        # Keyed by each checkpoint's identity (chain id:place), so a restart trusts only
        # the entry of the state it restored; the previous one's stays until the rename.
        entries, upto = {}, set(self.covered[0])
        for job in jobs:
            upto |= job.window
            entries[_identity(job)] = set(upto)
        if self.covered_hash is not None:
            entries[self.covered_hash] = self.covered[0] | (
                self.covered[1] if len(self.covered) > 1 else set())
        await asyncio.to_thread(write_acks_file, acks_path(path), entries)
        if base is not None:
            os.replace(base.tmp, path)
            self.deltas_bytes = 0  # the log is stale: cut at the next append
        if deltas:  # serialised in the worker thread too, not on the event loop
            self.deltas_bytes = await asyncio.to_thread(
                lambda: append_deltas(deltas_path(path), [checkpoint_bytes(j.snapshot)
                                                          for j in deltas], self.deltas_bytes))
        self._count_write(t)
        self.covered_hash = _identity(jobs[-1])
        if self.opts.drop_store_checkpoint:
            # The file holds the state now: the store's older row must not come back.
            await asyncio.to_thread(self.store.delete_checkpoint, self.opts.name)
            self.opts.drop_store_checkpoint = False
            log.info("checkpoint file %s written: the store's older checkpoint of worker %s "
                     "deleted", path, self.opts.name)

    def _save_in_store(self, base: AckJob | None, deltas: list[AckJob], digests: bytes
                       ) -> None:
        # In the worker thread: serialising the snapshots is not the event loop's work.
        self.store.save_checkpoint_chain(
            self.opts.name, None if base is None else checkpoint_bytes(base.snapshot),
            [(chain_of(j.snapshot)[1], checkpoint_bytes(j.snapshot)) for j in deltas],
            digests, wall_ms())

    def _count_write(self, t: float) -> None:
        ms = round((time.monotonic() - t) * 1000)
        self.counters["checkpoint_write_ms"] += ms
        self.counters["checkpoint_write_ms_max"] = max(
            self.counters["checkpoint_write_ms_max"], ms)
        self.counters["checkpoints"] += 1


def _identity(job: AckJob) -> str:
    """A checkpoint's key in the acks file: ``chain id:place`` (engine.checkpoint_delta)."""
    chain_id, seq = chain_of(job.snapshot)
    return f"{chain_id}:{seq}"
