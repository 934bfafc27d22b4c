"""One test per case of the device rules of issue 14 (no_fix, power_off, the evidence of
offline / tamper / low_battery), on the small zones of test_engine_rules.

Marked ``kernel``: ``make test`` re-runs them with NUMBA_DISABLE_JIT=1, so the rule
kernels are also checked as plain Python.
"""

from __future__ import annotations

import pytest
from engine_helpers import T0, Feed, brief
from test_engine_rules import INSIDE, engine, subject

pytestmark = pytest.mark.kernel

S = 1000  # ms


def evidence_keys(event: dict) -> list[str]:
    """The evidence keys in their order: after ``late``, before ``device_kind``."""
    keys = list(event)
    return keys[keys.index("late") + 1:keys.index("device_kind")]


# ----- power_off ----------------------------------------------------------------------

def test_power_off_raises_at_its_ts_holds_offline_back_and_clears_at_the_next_message():
    f = Feed(engine())  # strict: offline after 600 s
    f.fix("B-1", T0, *INSIDE, acc=8.0)
    off = f.status("B-1", T0 + 5 * S, rx=T0 + 6 * S, power="off")
    assert brief(off) == [("raised", "power_off", "B-1", None, T0 + 5 * S, False)]
    assert (off[0]["lat"], off[0]["lon"], off[0]["acc"]) == (INSIDE[1], INSIDE[0], 8.0)
    assert f.sweep(T0 + 10_000 * S) == []  # silent for hours: no offline while off
    # A duplicate of the power-off status and a late fix say nothing about being back.
    assert f.status("B-1", T0 + 5 * S, rx=T0 + 10_001 * S, power="off") == []
    assert f.fix("B-1", T0 - S, *INSIDE, rx=T0 + 10_002 * S) == []
    assert f.sweep(T0 + 20_000 * S) == []
    back = f.status("B-1", T0 + 20_001 * S, rx=T0 + 20_002 * S, power="on")
    assert brief(back) == [("cleared", "power_off", "B-1", None, T0 + 20_001 * S, False)]
    assert back[0]["alarm_id"] == off[0]["alarm_id"]
    # Back on: silence is offline again.
    assert brief(f.sweep(T0 + 20_002 * S + 600 * S + 1)) == [
        ("raised", "offline", "B-1", None, T0 + 20_002 * S + 600 * S, False)]


def test_a_fix_ends_power_off_and_a_second_power_off_keeps_it_open():
    f = Feed(engine())
    off = f.status("B-1", T0, power="off")
    assert "lat" not in off[0]  # never fixed: no position
    assert f.status("B-1", T0 + S, power="off") == []  # still off: one episode
    ev = f.fix("B-1", T0 + 2 * S, *INSIDE)
    assert brief(ev) == [("cleared", "power_off", "B-1", None, T0 + 2 * S, False)]
    assert ev[0]["alarm_id"] == off[0]["alarm_id"]
    assert "lat" not in ev[0]  # the position before this fix: none


def test_power_off_after_offline_clears_offline_first():
    f = Feed(engine())
    f.fix("B-1", T0, *INSIDE)
    f.sweep(T0 + 601 * S)
    ev = f.status("B-1", T0 + 700 * S, power="off")
    assert brief(ev) == [("cleared", "offline", "B-1", None, T0 + 700 * S, False),
                         ("raised", "power_off", "B-1", None, T0 + 700 * S, False)]


# ----- no_fix ---------------------------------------------------------------------------

def test_no_fix_raises_at_the_threshold_on_receive_time_and_clears_at_the_next_fix():
    f = Feed(engine())  # strict: no_fix after 900 s, offline after 600 s
    f.fix("B-1", T0, *INSIDE, acc=20.0, rx=T0 + 2 * S)
    for k in range(1, 20):  # a status every 60 s: never silent, never a fix
        f.status("B-1", T0 + k * 60 * S, rx=T0 + k * 60 * S + 500)
        if k == 15:
            assert f.sweep(T0 + 902 * S) == []  # threshold == receive + 900 s: not yet
    raised = [e for e in f.events if e["type"] == "no_fix"]
    assert brief(raised) == []  # the sweep finds it, not the statuses
    raised = f.sweep(T0 + 19 * 60 * S + 500)
    assert brief(raised) == [("raised", "no_fix", "B-1", None, T0 + 902 * S, False)]
    assert raised[0]["last_fix_rx_ms"] == T0 + 2 * S
    assert (raised[0]["lat"], raised[0]["lon"], raised[0]["acc"]) == (INSIDE[1], INSIDE[0],
                                                                       20.0)
    assert evidence_keys(raised[0]) == ["lat", "lon", "acc", "last_fix_rx_ms"]
    cleared = f.fix("B-1", T0 + 2000 * S, *INSIDE)
    types = [(e["event"], e["type"]) for e in cleared]
    assert ("cleared", "no_fix") in types
    nf = next(e for e in cleared if e["type"] == "no_fix")
    assert nf["alarm_id"] == raised[0]["alarm_id"] and nf["at"] == T0 + 2000 * S


def test_a_silent_device_is_offline_not_no_fix():
    f = Feed(engine(no_fix_after_s=60))  # no_fix threshold before offline's (600 s)
    f.fix("B-1", T0, *INSIDE)
    ev = f.sweep(T0 + 10_000 * S)
    assert brief(ev) == [("raised", "offline", "B-1", None, T0 + 600 * S, False)]
    # A status after the fix, then silence: it kept sending when the count ran out.
    f.fix("B-1", T0 + 20_000 * S, *INSIDE)
    f.status("B-1", T0 + 20_030 * S)
    ev = f.sweep(T0 + 30_000 * S)
    assert brief(ev) == [("raised", "no_fix", "B-1", None, T0 + 20_060 * S, False),
                         ("raised", "offline", "B-1", None, T0 + 20_630 * S, False)]


def test_statuses_from_a_device_never_fixed_raise_no_fix_without_a_position():
    f = Feed(engine([subject(level="ordinary")]))  # no_fix after 1800 s, offline after 1800 s
    for k in range(40):
        f.status("B-1", T0 + k * 60 * S)
    ev = f.sweep(T0 + 39 * 60 * S + 1)
    assert brief(ev) == [("raised", "no_fix", "B-1", None, T0 + 1800 * S, False)]
    assert "lat" not in ev[0] and "last_fix_rx_ms" not in ev[0]


def test_power_off_stops_the_no_fix_count():
    f = Feed(engine())
    f.fix("B-1", T0, *INSIDE)
    f.status("B-1", T0 + 60 * S, power="off")
    f.status("B-1", T0 + 60 * S, power="off")  # a duplicate
    assert [e["type"] for e in f.sweep(T0 + 5000 * S)] == []
    # On again: statuses without fixes count from the first of them.
    f.status("B-1", T0 + 6000 * S, power="on")
    for k in range(1, 17):
        f.status("B-1", T0 + 6000 * S + k * 60 * S)
    assert brief(f.sweep(T0 + 6000 * S + 16 * 60 * S + 1)) == [
        ("raised", "no_fix", "B-1", None, T0 + 6900 * S, False)]


# ----- evidence on the existing device alarms -----------------------------------------

def test_offline_tamper_and_low_battery_carry_their_evidence():
    f = Feed(engine())
    tamper = f.status("B-1", T0, strap="open", battery=10)
    assert [e["type"] for e in tamper] == ["tamper", "low_battery"]
    assert evidence_keys(tamper[0]) == ["strap"] and tamper[0]["strap"] == "open"
    assert "lat" not in tamper[0]  # never fixed
    assert tamper[1]["battery_pct"] == 10.0 and "lat" not in tamper[1]
    f.fix("B-1", T0 + S, *INSIDE, acc=30.0, rx=T0 + 3 * S)
    ok = f.status("B-1", T0 + 2 * S, strap="ok", battery=25)
    assert [(e["event"], e["type"]) for e in ok] == [("cleared", "tamper"),
                                                     ("cleared", "low_battery")]
    assert (ok[0]["lat"], ok[0]["lon"], ok[0]["acc"], ok[0]["strap"]) == (
        INSIDE[1], INSIDE[0], 30.0, "ok")
    assert evidence_keys(ok[0]) == ["lat", "lon", "acc", "strap"]
    assert ok[1]["battery_pct"] == 25.0
    offline = f.sweep(T0 + 10**6)
    assert offline[0]["last_rx_ms"] == T0 + 3 * S
    assert evidence_keys(offline[0]) == ["lat", "lon", "acc", "last_rx_ms"]
    back = f.status("B-1", T0 + 10**6 + 5)
    assert back[0]["event"] == "cleared" and back[0]["last_rx_ms"] == T0 + 3 * S


def test_open_alarms_lists_the_device_rules():
    e = engine()
    f = Feed(e)
    f.status("B-1", T0, power="off")
    assert [(a["type"], a["at"]) for a in e.open_alarms()] == [("power_off", T0)]


def test_a_register_swap_keeps_open_device_episodes_and_the_no_fix_count():
    e = engine()
    f = Feed(e)
    f.fix("B-1", T0, *INSIDE)
    off = f.status("B-1", T0 + S, power="off")
    e.swap_registry(e.registry, e.zones)  # the same register again: state kept by id
    back = f.fix("B-1", T0 + 2 * S, *INSIDE)
    assert brief(back) == [("cleared", "power_off", "B-1", None, T0 + 2 * S, False)]
    assert back[0]["alarm_id"] == off[0]["alarm_id"]
    for k in range(1, 17):  # statuses, no fix: the count from the fix survives a swap
        f.status("B-1", T0 + 2 * S + k * 60 * S)
        if k == 8:
            e.swap_registry(e.registry, e.zones)
    assert brief(f.sweep(T0 + 2 * S + 16 * 60 * S + 1)) == [
        ("raised", "no_fix", "B-1", None, T0 + 2 * S + 900 * S, False)]
    e.swap_registry(e.registry, e.zones)
    assert [a["type"] for a in e.open_alarms()] == ["no_fix"]
