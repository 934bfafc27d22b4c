"""The intake watch (emfence.run.intake) on a clock of its own: a broker stopping at its
in-flight window is told from a quiet fleet, its window is learnt from two stalls, and a
broker re-sending held messages before the checkpoint shortens the checkpoint interval.
The live behaviour over mosquitto is tests/ingest/test_run_broker_limits.py."""

from __future__ import annotations

import logging
from collections import Counter

from emfence.config import config_from_dict
from emfence.run.acks import Acks
from emfence.run.batches import Batches
from emfence.run.intake import CONFIRM_STALLS, EARLY_EVERY_S, TURN_S, Intake
from emfence.run.options import Options


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _intake(**ingest):
    icfg = config_from_dict({"ingest": ingest}).ingest
    counters: Counter = Counter()
    acks = Acks(opts=Options("z", "s", "sqlite:///x.db", state_in="file"), icfg=icfg,
                store=None, events=None, tracks=None, outages=None, counters=counters,
                ack_all=lambda a: None, stopping=lambda: False)
    clock = Clock()
    intake = Intake(icfg, acks, Batches(icfg.batch_max_messages, icfg.batch_max_ms), counters,
                    clock=clock)
    acks.since_checkpoint = 1  # processed messages wait for a window
    intake.reconnected(1)
    return intake, acks, counters, clock


def _burst(intake, clock, n: int, gap_s: float, start: int = 0) -> list[tuple[int, int]]:
    acks = []
    for i in range(n):
        clock.t += gap_s
        ack = (1, start + i + 1)
        intake.received(ack, bytes([200]) + bytes(15))
        acks.append(ack)
    return acks


def _stall(intake, clock) -> bool:
    """Wait quietly until the watch closes a window early (True) or 3 s passed."""
    for _ in range(60):
        clock.t += intake.quiet_s / 2
        if intake.tick(clock.t):
            return True
    return False


def _turns(intake, clock, n: int, turn_s: float = TURN_S) -> None:
    """``n`` turns of the watcher, each ``turn_s`` long: TURN_S on a free event loop,
    longer on one slowed by the worker's own work or a loaded machine."""
    for _ in range(n):
        clock.t += turn_s
        intake.tick(clock.t)


def test_a_quiet_fleet_is_not_a_stall():
    intake, _, counters, clock = _intake()
    _burst(intake, clock, 30, 0.4)  # a message every 0.4 s, none acknowledged
    for _ in range(10):  # quiet for up to 2 s: not 8 times the recent gap
        clock.t += 0.2
        assert not intake.tick(clock.t)
    intake.acked([(1, i) for i in range(1, 31)])
    assert intake.held == 0 and counters["acknowledged"] == 30


def test_stalls_followed_at_once_by_more_teach_the_window_said_once(caplog):
    intake, acks, counters, clock = _intake(batch_max_ms=20)
    assert intake.quiet_s == 0.1
    caplog.set_level(logging.INFO, "emfence.run")
    n = 0
    for count in (20, 400, 20):  # mosquitto 2.0.11 sends more after the first round
        got = _burst(intake, clock, count, 0.001, start=n)
        n += count
        assert _stall(intake, clock)
        intake.acked(got)  # the early window's acknowledgements: the broker sends at once
        clock.t += 0.002
        intake.received((1, n + 1), None)
        intake.acked([(1, n + 1)])
        n += 1
        clock.t += EARLY_EVERY_S
        intake.tick(clock.t)  # judged
        if count == 20 and n < 30:
            assert acks.window_messages == 20000  # one stall is not yet a window
    assert acks.window_messages == 10 and intake.ceiling == 20
    assert counters["broker_inflight_window"] == 20
    lines = [r.getMessage() for r in caplog.records if "in-flight window" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("broker in-flight window looks like 20 messages (under twice "
                               "ingest.ack_window_messages 20000): acknowledging every ~10")
    for setting in ("max_inflight_messages", "max_ack_pending", "mqtt.prefetch",
                    "mqtt.max_inflight"):
        assert setting in lines[0]


def test_a_stall_not_followed_at_once_by_more_was_a_quiet_moment():
    intake, acks, _, clock = _intake(batch_max_ms=20)
    n = 0
    for _ in range(4):  # bursts of a synchronised fleet, each 0.5 s after the acks
        got = _burst(intake, clock, 20, 0.001, start=n)
        n += 20
        assert _stall(intake, clock)
        intake.acked(got)
        _turns(intake, clock, 500)  # 0.5 s of a free loop
        clock.t += intake.early_every_s
    assert intake.ceiling is None and acks.window_messages == 20000
    assert intake.early_every_s == 8.0  # doubled after each, up to MAX_EARLY_EVERY_S


def test_at_once_is_counted_in_the_watchers_turns_not_in_wall_time():
    """The broker's next message 60 ms after each early window's acknowledgements: at
    once for a worker whose loop turned twice meanwhile (busy, or on a loaded machine: it
    could not have received it sooner), a quiet moment for one whose loop turned 60 times
    (free to receive all along)."""
    for turn_s, turns, learnt in ((0.03, 2, True), (TURN_S, 60, False)):
        intake, acks, counters, clock = _intake(batch_max_ms=20)
        n = 0
        for _ in range(CONFIRM_STALLS):
            got = _burst(intake, clock, 20, 0.001, start=n)
            n += 20
            assert _stall(intake, clock)
            intake.acked(got)
            _turns(intake, clock, turns, turn_s)
            intake.received((1, n + 1), None)
            intake.acked([(1, n + 1)])
            n += 1
            _turns(intake, clock, 1)  # judged
            assert intake.probe is None
        assert (intake.ceiling, acks.window_messages) == ((20, 10) if learnt else
                                                          (None, 20000))
        assert counters["broker_inflight_window"] == (20 if learnt else 0)


def test_silence_while_the_event_loop_was_held_up_is_not_a_stall():
    """The processor runs the rules on the event loop, and while it holds the loop
    nothing is read from the socket either: a watcher turn that comes late restarts the
    count of silence, which then needs quiet_s of turns on time to be a stall."""
    intake, _, counters, clock = _intake(batch_max_ms=20)
    _burst(intake, clock, 20, 0.001)
    assert not intake.tick(clock.t)  # a turn on time, right after the last message
    clock.t += 0.5  # a batch held the loop for 0.5 s (5 times quiet_s)
    assert not intake.tick(clock.t)
    clock.t += intake.quiet_s / 2
    assert not intake.tick(clock.t)  # silent for 0.55 s, of which 0.05 s on time
    assert counters["early_windows"] == 0
    clock.t += intake.quiet_s / 2 + 0.001
    assert intake.tick(clock.t)  # quiet_s of turns on time: a stall
    assert counters["early_windows"] == 1


def test_a_late_turn_right_after_a_burst_of_a_busy_worker_teaches_nothing():
    """A worker behind its broker: every turn of the watcher comes late (each batch
    holds the loop longer than quiet_s) and the next messages are read at once after
    it. Without the late-turn rule these pauses were stalls "followed at once by more"
    and taught ever smaller windows."""
    intake, acks, counters, clock = _intake(batch_max_ms=20)
    n = 0
    for _ in range(20):
        got = _burst(intake, clock, 500, 0.00001, start=n)
        n += 500
        clock.t += 0.3  # the batch of those 500 holds the loop
        assert not intake.tick(clock.t)
        intake.acked(got[:100])  # a window acknowledged now and then
    assert counters["early_windows"] == 0
    assert intake.ceiling is None and acks.window_messages == 20000


def test_no_early_window_without_acknowledgements_in_between_or_too_soon():
    intake, _, _, clock = _intake(batch_max_ms=20)
    _burst(intake, clock, 20, 0.001)
    assert _stall(intake, clock)
    # Not yet acknowledged (the checkpoint is being written): no second early window.
    clock.t += 0.3
    assert not intake.tick(clock.t)
    assert intake.ceiling is None


def test_held_messages_sent_again_before_the_checkpoint_shorten_its_interval(caplog):
    intake, _, counters, clock = _intake(checkpoint_interval_s=30)
    caplog.set_level(logging.INFO, "emfence.run")
    sampled = bytes([0]) + bytes(15)  # kept for its first receive time
    intake.received((1, 1), sampled)
    clock.t += 5.0
    intake.received((1, 2), None)
    intake.redelivered(sampled)
    assert counters["redelivered_while_held"] == 1
    assert intake.checkpoint_interval_s == 2.5
    assert counters["broker_resend_ms"] == 5000
    clock.t += 1.0
    intake.redelivered(sampled)  # later: longer than the one seen, nothing changes
    assert intake.checkpoint_interval_s == 2.5
    lines = [r.getMessage() for r in caplog.records if "ack wait" in r.getMessage()]
    assert len(lines) == 1 and "ack_wait" in lines[0] and "mqtt.retry_interval" in lines[0]


def test_a_resend_after_a_reconnect_is_not_an_ack_wait():
    intake, _, counters, clock = _intake(checkpoint_interval_s=30)
    sampled = bytes([1]) + bytes(15)
    intake.received((1, 1), sampled)
    clock.t += 2.0
    intake.reconnected(2)  # mosquitto sends unacknowledged messages again on reconnect
    intake.redelivered(sampled)
    assert counters["redelivered_while_held"] == 1
    assert intake.checkpoint_interval_s == 30 and intake.held == 0
