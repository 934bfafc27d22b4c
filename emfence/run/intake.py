"""Intake: what the broker's limits do to the acknowledgement rule, noticed at run time.

A message is acknowledged only once a checkpoint holds it (:mod:`emfence.run.acks`), so
the worker holds up to a window of unacknowledged messages. A broker sends at most its
in-flight limit L of them (mosquitto ``max_inflight_messages``, NATS ``max_ack_pending``,
RabbitMQ ``mqtt.prefetch``, EMQX ``mqtt.max_inflight``); with L below
``ingest.ack_window_messages`` delivery stops after L and, left alone, nothing moves
until the periodic checkpoint. :class:`Intake` watches for that:

- **the stall**: unacknowledged messages held, nothing received for
  :attr:`Intake.quiet_s` (and for many times the recent gap between messages: a quiet
  fleet is not a stall), no acknowledgement since: the window is closed at once (a
  checkpoint, then the acknowledgements) instead of at the periodic checkpoint; at most
  one such early window per :data:`EARLY_EVERY_S`, and only with
  :data:`MIN_STALL_MESSAGES` held. Silence counts only while the event loop turns on
  time: the processor runs the rules on the loop, and while it does nothing is read
  from the socket either, so a loop held up (a large batch, a base checkpoint's copy)
  would look like a broker that stopped sending. A watcher turn that comes more than
  half of :attr:`Intake.quiet_s` later than asked restarts the count (a national-size
  worker at 23 000 fixes/s "learnt" windows of 20 815, 11 200, 8 357 and 4 294 messages
  from such pauses against mosquitto's 60 000: benchmarks/README.md);
- **the ceiling**: a broker that held messages back sends the next ones at once after
  the acknowledgements; a fleet that was only quiet does not (then early windows come
  less often, up to :data:`MAX_EARLY_EVERY_S`). "At once" is counted in the watcher's
  own turns of the event loop (:data:`TURN_S` sleeps, :data:`RESUME_TURNS` of them), not
  in wall-clock time: a worker whose loop is slowed, by its own work or by a loaded
  machine, turns less often and so still sees a held-back broker answer at once (the
  counts alone cannot tell: a fleet reporting in step stops at the same count every
  time, and mosquitto 2.0.11 lets more through after each round, 20, then ~400).
  :data:`CONFIRM_STALLS` stalls in a row followed at once by more make the smallest of
  their counts, L, the broker's window: from then on windows close every L/2 messages
  (never more than the configured window), said once in the log; a smaller one later
  lowers it;
- **the ack wait**: a broker re-sends a message not acknowledged within its ack wait
  (NATS ``ack_wait``, EMQX ``mqtt.retry_interval``). A re-send of a message still held
  (``redelivered_while_held``) a shorter time after its first delivery than
  ``ingest.checkpoint_interval_s`` makes the periodic checkpoint run every half that
  time, said once in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from itertools import islice

log = logging.getLogger("emfence.run")

MIN_QUIET_S = 0.1  # silence before a stall is considered, at least this (s)
GAP_FACTOR = 8  # ... and this many times the recent mean gap between messages
EARLY_EVERY_S = 1.0  # at most one early window per this many seconds
MAX_EARLY_EVERY_S = 8.0  # ... doubled up to this after each that was a quiet moment
TURN_S = 0.001  # the watcher's sleep while it waits for the broker after an early window
RESUME_TURNS = 25  # a broker holding messages back sends the next within this many turns
CONFIRM_STALLS = 2  # stalls in a row, each followed at once by more: the window is seen
MIN_STALL_MESSAGES = 8  # fewer held: not worth a checkpoint before the periodic one
MIN_CHECKPOINT_INTERVAL_S = 0.2  # the shortest periodic checkpoint the ack wait makes
SAMPLE_BELOW = 4  # first receive time kept for digests whose first byte is below: 1/64
SAMPLE_ALL = 4096  # ... and for every digest while fewer are kept (a quiet fleet)
INFLIGHT_SETTINGS = ("mosquitto max_inflight_messages, NATS max_ack_pending, RabbitMQ "
                     "mqtt.prefetch, EMQX mqtt.max_inflight")
ACK_WAIT_SETTINGS = "NATS ack_wait, EMQX mqtt.retry_interval"


class Intake:
    """Counts the messages this connection holds unacknowledged and adapts the
    acknowledgement window and the checkpoint interval to the broker (module
    docstring). ``run`` is the watcher task; the acknowledger reports to :meth:`acked`,
    the receiver (whose ``intake`` it is) to the others."""

    def __init__(self, icfg, acks, batches, counters: Counter,
                 clock: Callable[[], float] = time.monotonic):
        self.icfg = icfg
        self.acks = acks  # its window_messages is what adapts
        acks.on_acked = self.acked
        self.batches = batches
        self.counters = counters
        self.clock = clock
        self.quiet_s = max(2 * icfg.batch_max_ms / 1000, MIN_QUIET_S)
        self.gen = 0
        self.held = 0  # QoS 1 messages of this connection not yet acknowledged
        self.held_at_rx = 0  # ... right after the last one was received
        self.last_rx = -math.inf
        self.loop_ok_since = -math.inf  # the watcher's turns have come on time since
        self.turn_by = clock() + self.quiet_s  # the watcher's next turn is late after this
        self.gap_s = self.quiet_s  # recent mean gap between received messages
        self.early_at = -math.inf
        self.early_every_s = EARLY_EVERY_S  # longer after stalls that were quiet moments
        self.probe: int | None = None  # held at the last early window, until judged
        self.probe_acked = False  # its acknowledgements went out
        self.turns = 0  # the watcher's turns since then, until the next message
        self.resumed_turn: int | None = None  # the turn the next message came in
        self.acks_out = asyncio.Event()  # wakes the watcher when they go out
        self.stalls: list[int] = []  # counts of the judged stalls in a row
        self.ceiling: int | None = None  # the broker's in-flight window, once confirmed
        self.checkpoint_interval_s = float(icfg.checkpoint_interval_s)
        self.shortened = asyncio.Event()  # set when checkpoint_interval_s becomes shorter
        self.resend_s: float | None = None  # the shortest re-send delay seen
        self.samples: dict[bytes, tuple[float, int]] = {}  # digest -> (first rx, gen)

    # ----- from the receiver and the acknowledger -------------------------------------

    def reconnected(self, gen: int) -> None:
        """Packet ids of the earlier connection are void: nothing is held on this one."""
        self.gen, self.held, self.held_at_rx, self.probe = gen, 0, 0, None

    def received(self, ack: tuple[int, int] | None, digest: bytes | None) -> None:
        """A message joined the open batch (``ack`` None: QoS 0, nothing held)."""
        if ack is None:
            return
        now = self.clock()
        gap = min(now - self.last_rx, 10 * self.quiet_s)
        self.gap_s += 0.2 * (gap - self.gap_s)
        self.last_rx = now
        if self.waiting():
            self.resumed_turn = self.turns
        self.held += 1
        self.held_at_rx = self.held
        if digest is not None and (digest[0] < SAMPLE_BELOW or len(self.samples) < SAMPLE_ALL):
            self.samples[digest] = (now, self.gen)
            self._prune(now)

    def redelivered(self, digest: bytes) -> None:
        """The broker sent again a message still held (received, not acknowledged)."""
        self.counters["redelivered_while_held"] += 1
        first = self.samples.get(digest)
        if first is None or first[1] != self.gen:
            return  # not sampled, or sent again because the connection changed
        self._resent_after(self.clock() - first[0])

    def acked(self, acks: list[tuple[int, int]]) -> None:
        """The acknowledger PUBACKed ``acks``."""
        n = sum(1 for a in acks if a[0] == self.gen)
        self.held = max(0, self.held - n)
        if n and self.probe is not None and not self.probe_acked:
            self.probe_acked, self.turns = True, 0
            self.acks_out.set()
        self.counters["acknowledged"] += n

    # ----- the watcher ----------------------------------------------------------------

    def stalled(self, now: float) -> bool:
        """Delivery stopped at the broker's limit (not a quiet fleet, nor a loop held up)."""
        return (self.held >= MIN_STALL_MESSAGES
                and self.held == self.held_at_rx  # no acknowledgement since
                and now - max(self.last_rx, self.loop_ok_since)
                >= max(self.quiet_s, GAP_FACTOR * self.gap_s)
                and now - self.early_at >= self.early_every_s
                and self.pending())

    def pending(self) -> bool:
        """Messages processed or batched that no closed window holds yet."""
        return bool(self.acks.since_checkpoint or self.batches.batch.messages)

    async def close_early(self) -> None:
        """Close the window now: the open batch to the processor, then a checkpoint."""
        await self.batches.flush()
        await self.batches.put("checkpoint", None)

    def waiting(self) -> bool:
        """An early window's acknowledgements went out; no message came since."""
        return self.probe is not None and self.probe_acked and self.resumed_turn is None

    async def run(self) -> None:
        while True:
            if self.waiting():
                await asyncio.sleep(TURN_S)  # a turn
            else:
                self.acks_out.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.quiet_s / 2):
                        await self.acks_out.wait()
            if self.tick(self.clock()):
                await self.close_early()

    def tick(self, now: float) -> bool:
        """One turn of the watcher. True: close the window now (a stall)."""
        if now > self.turn_by:  # the loop was held up: silence counts from now
            self.loop_ok_since = now
        if self.waiting():
            self.turns += 1
        self._judge()
        stalled = self.stalled(now)
        # run() sleeps TURN_S while waiting, else at most quiet_s / 2
        self.turn_by = now + (TURN_S if self.waiting() else self.quiet_s / 2) + self.quiet_s / 2
        if not stalled:
            return False
        self.early_at = now
        self.counters["early_windows"] += 1
        log.debug("delivery stopped with %d messages unacknowledged: window closed early",
                  self.held)
        self.probe, self.probe_acked, self.resumed_turn = self.held, False, None
        return True

    def _judge(self) -> None:
        """After an early window's acknowledgements: did the broker send again at once,
        within :data:`RESUME_TURNS` of the watcher's turns (it was holding messages back:
        a stall), or not (a quiet moment of the fleet)?"""
        if self.probe is None or not self.probe_acked:
            return
        if self.resumed_turn is None and self.turns <= RESUME_TURNS:
            return  # not yet known
        count, self.probe = self.probe, None
        if self.resumed_turn is None or self.resumed_turn > RESUME_TURNS:
            self.stalls.clear()  # quiet, not held back: early windows less often
            self.early_every_s = min(self.early_every_s * 2, MAX_EARLY_EVERY_S)
            return
        self.stalls.append(count)
        if len(self.stalls) >= CONFIRM_STALLS:
            self._window_is(min(self.stalls))
            self.stalls.clear()

    def _window_is(self, seen: int) -> None:
        """Stalls in a row, each followed at once by more messages: the broker's
        in-flight window is ``seen`` (the smallest of their counts)."""
        self.early_every_s = EARLY_EVERY_S
        if self.ceiling is not None and seen >= self.ceiling:
            return
        self.ceiling = seen
        configured = self.icfg.ack_window_messages
        window = max(1, min(configured, seen // 2))
        if window >= self.acks.window_messages:
            return
        self.acks.window_messages = window
        self.counters["broker_inflight_window"] = seen
        log.warning("broker in-flight window looks like %d messages (under twice "
                    "ingest.ack_window_messages %d): acknowledging every ~%d; raise the "
                    "broker's in-flight limit for throughput (%s)", seen, configured, window,
                    INFLIGHT_SETTINGS)

    def _resent_after(self, delay_s: float) -> None:
        """A held message came again ``delay_s`` after its first delivery."""
        configured = self.icfg.checkpoint_interval_s
        if delay_s >= configured or (self.resend_s is not None and delay_s >= self.resend_s):
            return
        first = self.resend_s is None
        self.resend_s = delay_s
        self.checkpoint_interval_s = min(self.checkpoint_interval_s,
                                         max(MIN_CHECKPOINT_INTERVAL_S, delay_s / 2))
        self.counters["broker_resend_ms"] = round(delay_s * 1000)
        self.shortened.set()
        if first:
            log.warning("the broker sent again messages still held %.1f s after their first "
                        "delivery: its ack wait is shorter than ingest.checkpoint_interval_s "
                        "(%g s); checkpointing every %.1f s instead; raise the broker's ack "
                        "wait above it (%s)", delay_s, configured, self.checkpoint_interval_s,
                        ACK_WAIT_SETTINGS)

    def _prune(self, now: float) -> None:
        horizon = now - 2 * self.icfg.checkpoint_interval_s - 10
        old = [d for d, (t, _) in islice(self.samples.items(), 8) if t < horizon]
        for digest in old:
            del self.samples[digest]
