"""Issue 14, rules 4 and 7: the approach warning (exclusion zones, the inclusion border)
and one alarm per subject, one test per clause of docs/rules.md, on the small zones of
test_engine_rules (the victim: a 300 m circle; home: a square, its east edge at EAST_EDGE).

Marked ``kernel``: ``make test`` re-runs them with NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import orjson
import pytest
from engine_helpers import T0, Feed, brief, make_engine, offset
from test_engine_rules import FEATURES, INSIDE, east, engine, subject

from engine import Engine

pytestmark = pytest.mark.kernel

CENTRE = (120.03, 30.03)  # the victim circle's centre, radius 300 m


def north(m_from_edge: float) -> tuple[float, float]:
    """A point ``m_from_edge`` metres north of the victim circle's edge (negative: in)."""
    return offset(*CENTRE, 0.0, 300.0 + m_from_edge)


# ----- approach at an exclusion zone -------------------------------------------------------

def test_approach_raised_within_approach_m_beyond_the_margin():
    f = Feed(engine())
    assert f.fix("B-1", T0, *north(250)) == []  # beyond approach_m (200)
    assert f.fix("B-1", T0 + 1000, *north(40)) == []  # within the margin max(acc, 50): uncertain
    ev = f.fix("B-1", T0 + 2000, *north(150))
    assert brief(ev) == [("raised", "approach", "B-1", "victim", T0 + 2000, False)]
    assert ev[0]["distance_m"] == pytest.approx(150, abs=0.5)
    assert ev[0]["acc"] == 10.0 and ev[0]["lat"] == pytest.approx(north(150)[1])
    g = Feed(engine())  # the same place with an accuracy of 160 m: uncertain, no warning
    assert g.fix("B-1", T0, *north(150), acc=160.0) == []
    h = Feed(engine(approach_m=100.0))  # a smaller approach_m: too far
    assert h.fix("B-1", T0, *north(150)) == []


def test_approach_clears_beyond_approach_m_plus_the_margin_only():
    f = Feed(engine())
    raised = f.fix("B-1", T0, *north(150))
    assert f.fix("B-1", T0 + 1000, *north(240)) == []  # 240 <= 200 + 50: kept
    assert f.fix("B-1", T0 + 2000, *north(260), acc=80.0) == []  # 260 <= 200 + 80: kept
    cleared = f.fix("B-1", T0 + 3000, *north(260))
    assert brief(cleared) == [("cleared", "approach", "B-1", "victim", T0 + 3000, False)]
    assert cleared[0]["alarm_id"] == raised[0]["alarm_id"]
    assert cleared[0]["distance_m"] == pytest.approx(260, abs=0.5)


def test_exclusion_supersedes_the_approach_at_its_ts():
    f = Feed(engine())
    warn = f.fix("B-1", T0, *north(100))
    assert f.fix("B-1", T0 + 1000, *north(20)) == []  # uncertain: the warning stays
    ev = f.fix("B-1", T0 + 2000, *north(-50))
    assert brief(ev) == [("cleared", "approach", "B-1", "victim", T0 + 2000, False),
                         ("raised", "exclusion", "B-1", "victim", T0 + 2000, False)]
    assert ev[0]["alarm_id"] == warn[0]["alarm_id"]
    assert f.engine.open_alarms()[0]["type"] == "exclusion"
    assert len(f.engine.open_alarms()) == 1


def test_a_late_fix_raises_no_warning_and_touches_no_state():
    f = Feed(engine())
    f.fix("B-1", T0 + 5000, *north(400))
    assert f.fix("B-1", T0 + 1000, *north(100)) == []  # late, near: nothing
    late = f.fix("B-1", T0 + 2000, *north(-50))  # late, inside: the late exclusion pair only
    assert [(e["event"], e["type"], e["late"]) for e in late] == [
        ("raised", "exclusion", True), ("cleared", "exclusion", True)]
    assert f.engine.open_alarms() == []


def test_approach_m_zero_turns_the_warning_off():
    f = Feed(engine(approach_m=0.0))
    assert f.fix("B-1", T0, *north(100)) == []
    assert brief(f.fix("B-1", T0 + 1000, *north(-50))) == [
        ("raised", "exclusion", "B-1", "victim", T0 + 1000, False)]


def test_a_settled_device_far_from_the_zone_keeps_the_fast_path_and_sees_the_warning():
    f = Feed(engine())
    for k in range(20):  # 1000 m .. 620 m from the circle, 20 m steps: settled
        assert f.fix("B-1", T0 + k * 1000, *north(1000 - 20 * k)) == []
    assert f.engine.counters["settled_fixes"] >= 10
    events = []
    for k in range(20, 45):  # on to 120 m: the warning at the first fix within 200 m
        events += f.fix("B-1", T0 + k * 1000, *north(1000 - 20 * k))
    assert brief(events) == [("raised", "approach", "B-1", "victim", T0 + 41_000, False)]


# ----- the inclusion border ----------------------------------------------------------------

def test_border_warning_off_by_default_and_raised_near_the_border_when_set():
    assert Feed(engine()).fix("B-1", T0, *east(-100)) == []
    f = Feed(engine(border_warn_m=300.0))
    assert f.fix("B-1", T0, *east(-1000)) == []
    assert f.fix("B-1", T0 + 1000, *east(-30)) == []  # within the margin of the border
    ev = f.fix("B-1", T0 + 2000, *east(-200))
    assert brief(ev) == [("raised", "approach", "B-1", "home", T0 + 2000, False)]
    assert f.fix("B-1", T0 + 3000, *east(-340)) == []  # 340 <= 300 + 50: kept
    assert brief(f.fix("B-1", T0 + 4000, *east(-400))) == [
        ("cleared", "approach", "B-1", "home", T0 + 4000, False)]


def test_outbound_supersedes_the_border_warning():
    f = Feed(engine(border_warn_m=300.0))
    warn = f.fix("B-1", T0, *east(-200))
    assert f.fix("B-1", T0 + 1000, *east(100)) == []  # out: run 1, the warning stays
    ev = f.fix("B-1", T0 + 2000, *east(120))
    assert brief(ev) == [("cleared", "approach", "B-1", "home", T0 + 2000, False),
                         ("raised", "outbound", "B-1", "home", T0 + 2000, False)]
    assert ev[0]["alarm_id"] == warn[0]["alarm_id"]
    assert ev[0]["distance_m"] == ev[1]["distance_m"]


# ----- one alarm per subject ---------------------------------------------------------------

def two_devices(**rules) -> Feed:
    return Feed(engine([subject(devices=("B-1", "P-1"))], **rules))


def test_subject_gets_one_exclusion_alarm_listing_both_devices():
    f = two_devices(approach_m=0.0)
    first = f.fix("B-1", T0, *CENTRE)
    assert brief(first) == [("raised", "exclusion", "B-1", "victim", T0, False)]
    assert first[0]["devices"] == ["B-1"]
    assert f.fix("P-1", T0 + 10, *CENTRE) == []  # joins the open alarm
    assert f.fix("B-1", T0 + 1000, *INSIDE) == []  # one device still inside: still open
    last = f.fix("P-1", T0 + 2000, *INSIDE)
    assert brief(last) == [("cleared", "exclusion", "B-1", "victim", T0 + 2000, False)]
    assert last[0]["alarm_id"] == first[0]["alarm_id"]
    assert last[0]["devices"] == ["B-1", "P-1"]
    assert last[0]["device_kind"] == "bracelet"
    again = f.fix("P-1", T0 + 3000, *CENTRE)  # a new episode, led by the phone
    assert brief(again) == [("raised", "exclusion", "P-1", "victim", T0 + 3000, False)]


def test_alarm_per_device_keeps_one_alarm_per_device():
    f = two_devices(approach_m=0.0, alarm_per="device")
    assert brief(f.fix("B-1", T0, *CENTRE)) == [
        ("raised", "exclusion", "B-1", "victim", T0, False)]
    ev = f.fix("P-1", T0 + 10, *CENTRE)
    assert brief(ev) == [("raised", "exclusion", "P-1", "victim", T0 + 10, False)]
    assert "devices" not in ev[0]


def test_subject_outbound_together_is_one_alarm_and_device_faults_stay_per_device():
    f = two_devices()
    for k, dev in enumerate(("B-1", "P-1", "B-1", "P-1")):
        f.fix(dev, T0 + k * 1000, *east(500))
    f.status("B-1", T0 + 5000, strap="open")
    f.status("P-1", T0 + 5000, strap="open")
    assert [(e["event"], e["type"], e["device_id"]) for e in f.events] == [
        ("raised", "outbound", "B-1"), ("raised", "tamper", "B-1"), ("raised", "tamper", "P-1")]


def test_subject_exclusion_supersedes_the_subject_approach():
    f = two_devices()
    warn = f.fix("B-1", T0, *north(100))
    assert f.fix("P-1", T0 + 10, *north(120)) == []  # joins the warning
    ev = f.fix("B-1", T0 + 1000, *CENTRE)
    assert brief(ev) == [("cleared", "approach", "B-1", "victim", T0 + 1000, False),
                         ("raised", "exclusion", "B-1", "victim", T0 + 1000, False)]
    assert ev[0]["alarm_id"] == warn[0]["alarm_id"] and ev[0]["devices"] == ["B-1", "P-1"]
    assert f.fix("P-1", T0 + 2000, *CENTRE) == []  # its warning was already superseded
    assert f.fix("P-1", T0 + 3000, *north(600)) == []
    assert brief(f.fix("B-1", T0 + 4000, *north(600))) == [
        ("cleared", "exclusion", "B-1", "victim", T0 + 4000, False)]


def test_restart_keeps_the_open_subject_episode(tmp_path):
    f = two_devices(approach_m=0.0)
    first = f.fix("B-1", T0, *CENTRE)
    f.fix("P-1", T0 + 10, *CENTRE)
    f.fix("B-1", T0 + 1000, *INSIDE)  # left; the phone is still inside
    path = tmp_path / "state.npz"
    f.engine.checkpoint(path)
    e2 = Engine.restore(path, f.engine.zones, f.engine.registry, f.engine.config)
    last = Feed(e2).fix("P-1", T0 + 2000, *INSIDE)
    assert brief(last) == [("cleared", "exclusion", "B-1", "victim", T0 + 2000, False)]
    assert last[0]["alarm_id"] == first[0]["alarm_id"]
    assert last[0]["devices"] == ["B-1", "P-1"]


def test_restore_from_a_checkpoint_without_subject_episodes_rebuilds_them(tmp_path):
    import numpy as np

    from engine.state import write_checkpoint
    f = two_devices(approach_m=0.0)
    first = f.fix("B-1", T0, *CENTRE)
    f.fix("P-1", T0 + 10, *CENTRE)
    arrays = f.engine.snapshot()
    del arrays["subject_episodes"]  # as written before alarm_per
    path = tmp_path / "old.npz"
    write_checkpoint(path, arrays)
    assert "subject_episodes" not in np.load(path).files
    g = Feed(Engine.restore(path, f.engine.zones, f.engine.registry, f.engine.config))
    assert g.fix("P-1", T0 + 1000, *INSIDE) == []
    last = g.fix("B-1", T0 + 2000, *INSIDE)
    assert [e["alarm_id"] for e in last] == [first[0]["alarm_id"]]


def test_a_removed_device_leaves_the_subject_episode_on_reload():
    subj = subject(devices=("B-1", "P-1"))
    f = Feed(make_engine(FEATURES, [subj], {"approach_m": 0.0}))
    first = f.fix("B-1", T0, *CENTRE)
    f.fix("P-1", T0 + 10, *CENTRE)
    reg2 = make_engine(FEATURES, [subject(devices=("B-1",)), subject("S-2", devices=("P-1",))],
                       {"approach_m": 0.0})
    f.engine.swap_registry(reg2.registry, reg2.zones)
    # B-1 alone in S-1 now: its clear is the subject alarm's (no longer folded: one device).
    ev = f.fix("B-1", T0 + 1000, *INSIDE)
    assert [e["alarm_id"] for e in ev] == [first[0]["alarm_id"]]


def test_a_subject_left_with_one_device_keeps_no_stale_subject_alarm():
    """After a reload leaves S-1 one device, its old subject alarm is forgotten: when the
    phone is registered again, the phone's raise is a new alarm, not swallowed."""
    f = Feed(make_engine(FEATURES, [subject(devices=("B-1", "P-1"))], {"approach_m": 0.0}))
    f.fix("B-1", T0, *CENTRE)
    one = make_engine(FEATURES, [subject(devices=("B-1",)), subject("S-2", devices=("P-1",))],
                      {"approach_m": 0.0})
    f.engine.swap_registry(one.registry, one.zones)
    assert orjson.loads(str(f.engine.snapshot()["subject_episodes"][0])) == []
    assert len(f.fix("B-1", T0 + 1000, *INSIDE)) == 1  # cleared, as B-1's own
    both = make_engine(FEATURES, [subject(devices=("B-1", "P-1"))], {"approach_m": 0.0})
    f.engine.swap_registry(both.registry, both.zones)
    ev = f.fix("P-1", T0 + 2000, *CENTRE)
    assert brief(ev) == [("raised", "exclusion", "P-1", "victim", T0 + 2000, False)]
    assert ev[0]["devices"] == ["P-1"]


def test_border_warning_of_an_inner_inclusion_zone_is_not_missed_by_a_settled_device():
    """Inclusion zones ["small", "big"], small inside big: a device settled deep in big
    walks into small, which is then the first zone containing it, its border near. The
    safe radius counts every inclusion zone's boundary, so the warning comes at the
    first fix beyond the margin inside small (as a full evaluation of every fix has it)."""
    from engine_helpers import box_feature
    feats = [box_feature("big", 119.9, 29.9, 120.1, 30.1),
             box_feature("small", 120.0, 30.0, 120.02, 30.02)]
    subj = {"subject_id": "S-1", "region": "330723", "level": "strict",
            "devices": [{"device_id": "B-1"}], "inclusion": ["small", "big"]}
    f = Feed(make_engine(feats, [subj], {"border_warn_m": 300.0}))
    start = (119.99, 30.01)  # ~960 m west of small, ~8.6 km inside big
    for k in range(40):  # 40 m steps east: into small after ~24
        f.fix("B-1", T0 + k * 1000, *offset(*start, 40.0 * k, 0.0))
    assert f.engine.counters["settled_fixes"] > 5
    assert [(e["event"], e["type"], e["zone_id"]) for e in f.events] == [
        ("raised", "approach", "small"), ("cleared", "approach", "small")]
    assert 50.0 < f.events[0]["distance_m"] <= 90.0  # the first fix beyond the margin
    assert 350.0 < f.events[1]["distance_m"] <= 390.0  # the first beyond 300 + 50


def test_the_subject_warning_returns_when_the_violation_clears_with_devices_still_near():
    f = two_devices()
    f.fix("B-1", T0, *north(100))
    f.fix("P-1", T0 + 10, *north(120))  # joins the warning
    f.fix("B-1", T0 + 1000, *CENTRE)  # warning cleared, exclusion raised
    assert f.fix("P-1", T0 + 1500, *north(130)) == []  # still near: nothing while inside
    ev = f.fix("B-1", T0 + 2000, *north(150))  # out: exclusion cleared, warning again
    assert brief(ev) == [("cleared", "exclusion", "B-1", "victim", T0 + 2000, False),
                         ("raised", "approach", "P-1", "victim", T0 + 2000, False)]
    assert ev[1]["devices"] == ["P-1"]
    assert f.fix("B-1", T0 + 3000, *north(900)) == []
    last = f.fix("P-1", T0 + 4000, *north(900))
    assert brief(last) == [("cleared", "approach", "P-1", "victim", T0 + 4000, False)]
    assert last[0]["alarm_id"] == ev[1]["alarm_id"]
    assert last[0]["devices"] == ["P-1", "B-1"]
