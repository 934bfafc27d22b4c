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
from emfence.run.checkpoint_file import acks_path, file_digest, write_acks_file
from emfence.run.options import MAX_OPEN_WINDOWS, AckJob, Options, wall_ms
from emfence.run.redelivery import Horizon
from engine.state import checkpoint_bytes, write_checkpoint

log = logging.getLogger("emfence.run")


class Acks:
    """The acknowledgement rule (module docstring); ``run`` is the acknowledger task."""

    def __init__(self, *, opts: Options, icfg, store, events, tracks, outages,
                 counters: Counter, ack_now: Callable, stopping: Callable[[], bool],
                 covered: set[bytes] | None = None):
        self.opts = opts
        self.icfg = icfg
        self.store = store
        self.events = events
        self.tracks = tracks
        self.outages = outages
        self.counters = counters
        self.ack_now = ack_now  # (generation, packet id) -> PUBACK on this connection
        self.stopping = stopping
        self.pending: list[tuple[int, int]] = []
        self.received: set[bytes] = set()  # received, not yet processed
        self.window: set[bytes] = set()  # processed since the last checkpoint
        self.covered: deque[set[bytes]] = deque([covered or set()], maxlen=2)
        self.covered_hash: str | None = None
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

        With a checkpoint the engine's state is copied here (``Engine.snapshot``, in
        memory), while nothing else touches the engine; that copy is all the processor
        waits for. Writing it, storing the window's events and fixes, the digests, the
        acks file, the rename and the PUBACKs follow in :meth:`run` while new batches are
        processed. Windows that close while the acknowledger is busy are completed
        together by one checkpoint, the newest (it holds them all). The processor waits
        here only when :data:`MAX_OPEN_WINDOWS` closed windows are already waiting
        (``checkpoint_wait_ms``).
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
            job.snapshot = engine.snapshot()
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
        wait for their events, one track write, and one checkpoint, the newest window's
        snapshot (it holds the older ones' effects too). A write that fails (a full disk,
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
            durable = await self._make_durable(last, window)
            for job in jobs:
                job.snapshot = None
                if durable:
                    for a in job.acks:
                        self.ack_now(a)
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

    async def _make_durable(self, job: AckJob, window: set[bytes]) -> bool:
        """Store ``job``'s track rows and write its checkpoint, retrying through outages.
        False only when a stop gives up on them (nothing is then acknowledged: the
        broker sends those messages again at the next start)."""
        delay = self.icfg.reconnect_min_s
        while True:
            t = time.monotonic()
            await self.tracks.flush(job.tracks_mark)
            tracks_ok = self.tracks.done >= job.tracks_mark
            t2 = time.monotonic()
            self.counters["ack_tracks_ms"] += round((t2 - t) * 1000)
            if tracks_ok and job.snapshot is not None:
                try:
                    await self._complete_checkpoint(job, window)
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
            await asyncio.to_thread(self._save_in_store, job.snapshot, digests)
            self._count_write(t)
            return
        path = Path(self.opts.checkpoint)
        await asyncio.to_thread(write_checkpoint, job.tmp, job.snapshot)
        self._count_write(t)
        digest = await asyncio.to_thread(file_digest, job.tmp)
        # Keyed by the checkpoint's own digest, so a restart trusts only the matching
        # entry; the previous checkpoint's entry stays until the rename.
        entries = {digest: window | self.covered[0]}
        if self.covered_hash is not None:
            entries[self.covered_hash] = self.covered[0] | (
                self.covered[1] if len(self.covered) > 1 else set())
        await asyncio.to_thread(write_acks_file, acks_path(path), entries)
        os.replace(job.tmp, path)
        self.covered_hash = digest
        if self.opts.drop_store_checkpoint:
            # The file holds the state now: the store's older row must not come back.
            await asyncio.to_thread(self.store.delete_checkpoint, self.opts.name)
            self.opts.drop_store_checkpoint = False
            log.info("checkpoint file %s written: the store's older checkpoint of worker %s "
                     "deleted", path, self.opts.name)

    def _save_in_store(self, snapshot, digests: bytes) -> None:
        # In the worker thread: serialising the snapshot is not the event loop's work.
        self.store.save_checkpoint(self.opts.name, checkpoint_bytes(snapshot), digests,
                                   wall_ms())

    def _count_write(self, t: float) -> None:
        ms = round((time.monotonic() - t) * 1000)
        self.counters["checkpoint_write_ms"] += ms
        self.counters["checkpoint_write_ms_max"] = max(
            self.counters["checkpoint_write_ms_max"], ms)
        self.counters["checkpoints"] += 1
