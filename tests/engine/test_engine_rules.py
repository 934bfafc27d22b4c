"""One test per rule of issue 3, on small WGS-84 zones (squares with a hole, circles).

Marked ``kernel``: ``make test`` re-runs them with NUMBA_DISABLE_JIT=1, so the rule
kernels are also checked as plain Python.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import T0, Feed, box_feature, brief, circle_feature, make_engine, offset
from engine_reference import wgs84_to_gcj02

pytestmark = pytest.mark.kernel

# "home": 0.1 x 0.1 degree square (about 9.6 x 11 km) with a 0.02 degree hole in the middle.
HOME = box_feature("home", 119.95, 29.95, 120.05, 30.05, hole=(119.99, 29.99, 120.01, 30.01))
# "work": a second inclusion zone to the west; "trip": a leave destination to the east.
WORK = box_feature("work", 119.80, 29.95, 119.85, 30.05)
TRIP = box_feature("trip", 120.05, 29.95, 120.15, 30.05)
VICTIM = circle_feature("victim", 120.03, 30.03, 300.0)
SCHOOL = circle_feature("school", 119.97, 29.97, 200.0)
FEATURES = [HOME, WORK, TRIP, VICTIM, SCHOOL]
INSIDE = (120.03, 29.97)  # inside home, away from every other zone
EAST_EDGE = (120.05, 29.97)  # a point on home's east edge (trip's west edge)


def subject(sid="S-1", level="strict", devices=("B-1",), **over):
    s = {"subject_id": sid, "region": "330723", "level": level,
         "devices": [{"device_id": d} for d in devices],
         "inclusion": ["home"], "exclusion": ["victim"]}
    s.update(over)
    return s


def engine(subjects=None, **rules):
    return make_engine(FEATURES, subjects or [subject()], rules or None)


def east(m: float) -> tuple[float, float]:
    """A point ``m`` metres east of home's east edge (negative: inside)."""
    return offset(*EAST_EDGE, m, 0.0)


# ----- outbound -------------------------------------------------------------------------

def test_outbound_raises_at_second_out_fix_and_clears_at_first_in_fix():
    f = Feed(engine())
    assert f.fix("B-1", T0, *INSIDE) == []
    assert f.fix("B-1", T0 + 1000, *east(500)) == []  # first out fix: not yet
    raised = f.fix("B-1", T0 + 2000, *east(600))
    assert brief(raised) == [("raised", "outbound", "B-1", "home", T0 + 2000, False)]
    assert raised[0]["distance_m"] == pytest.approx(600, abs=1.0)
    assert raised[0]["acc"] == 10.0
    assert f.fix("B-1", T0 + 3000, *east(900)) == []  # still out: one alarm per episode
    cleared = f.fix("B-1", T0 + 4000, *INSIDE)
    assert brief(cleared) == [("cleared", "outbound", "B-1", "home", T0 + 4000, False)]
    assert cleared[0]["alarm_id"] == raised[0]["alarm_id"]
    assert cleared[0]["distance_m"] == 0.0


def test_outbound_event_keys_in_contract_order():
    f = Feed(engine())
    f.fix("B-1", T0, *east(500))
    ev = f.fix("B-1", T0 + 1000, *east(500))[0]
    assert list(ev) == ["event", "alarm_id", "type", "subject_id", "device_id", "zone_id",
                        "region", "at", "late", "lat", "lon", "distance_m", "acc",
                        "device_kind"]
    assert ev["subject_id"] == "S-1" and ev["region"] == "330723"


def test_uncertain_fixes_neither_count_nor_break_the_run():
    f = Feed(engine())
    f.fix("B-1", T0, *INSIDE)
    assert f.fix("B-1", T0 + 1000, *east(200)) == []  # out (200 > 50)
    assert f.fix("B-1", T0 + 2000, *east(30)) == []  # uncertain: 30 <= 50
    assert f.fix("B-1", T0 + 3000, *east(300), acc=400.0) == []  # uncertain: 300 <= acc 400
    raised = f.fix("B-1", T0 + 4000, *east(200))  # second out of the run
    assert brief(raised) == [("raised", "outbound", "B-1", "home", T0 + 4000, False)]


def test_an_in_fix_breaks_the_run():
    f = Feed(engine())
    for k in range(10):  # out, in, out, in ...: never two out fixes in a row
        lonlat = east(300) if k % 2 == 0 else INSIDE
        assert f.fix("B-1", T0 + k * 1000, *lonlat) == []


def test_boundary_jitter_within_the_buffer_never_flaps():
    f = Feed(engine())
    rng = np.random.default_rng(7)
    for k in range(200):  # jitter across the edge by up to 45 m: in or uncertain, never out
        assert f.fix("B-1", T0 + k * 1000, *east(float(rng.uniform(-45, 45)))) == []
    # Once raised, jitter inside the margin keeps the one alarm open, no re-raise.
    f.fix("B-1", T0 + 300_000, *east(400))
    assert len(f.fix("B-1", T0 + 301_000, *east(400))) == 1
    for k in range(50):
        assert f.fix("B-1", T0 + 302_000 + k * 1000, *east(float(rng.uniform(1, 45)))) == []
    assert brief(f.fix("B-1", T0 + 400_000, *east(-5)))[0][0] == "cleared"


def test_confirm_fixes_is_configurable():
    f = Feed(engine(outbound_confirm_fixes=3))
    f.fix("B-1", T0, *east(500))
    assert f.fix("B-1", T0 + 1000, *east(500)) == []
    assert len(f.fix("B-1", T0 + 2000, *east(500))) == 1
    f = Feed(engine(outbound_confirm_fixes=1, buffer_m=1000))
    assert f.fix("B-1", T0, *east(500)) == []  # within a 1000 m buffer: uncertain
    assert len(f.fix("B-1", T0 + 1000, *east(1500))) == 1


def test_a_hole_is_outside_the_zone():
    f = Feed(engine())
    hole_centre = (120.0, 30.0)  # about 1 km from the hole's edges
    f.fix("B-1", T0, *hole_centre)
    raised = f.fix("B-1", T0 + 1000, *hole_centre)
    assert brief(raised) == [("raised", "outbound", "B-1", "home", T0 + 1000, False)]
    assert 900 < raised[0]["distance_m"] < 1200


def test_zone_id_is_the_nearest_inclusion_zone():
    subj = subject(inclusion=["home", "work"])
    f = Feed(engine([subj]))
    west_of_work = offset(119.80, 29.97, -400, 0)  # 400 m west of work, 15 km from home
    f.fix("B-1", T0, *west_of_work)
    assert brief(f.fix("B-1", T0 + 1000, *west_of_work))[0][3] == "work"
    f.fix("B-1", T0 + 2000, *INSIDE)  # clears
    f.fix("B-1", T0 + 3000, *east(700))
    assert brief(f.fix("B-1", T0 + 4000, *east(700)))[0][3] == "home"


def test_no_inclusion_zone_no_outbound_rule():
    f = Feed(engine([subject(inclusion=[], exclusion=[])]))
    for k in range(5):
        assert f.fix("B-1", T0 + k * 1000, 0.0, 0.0) == []


def test_leave_window_opens_and_closes():
    leave = {"start": T0 + 10_000, "end": T0 + 20_000, "zones": ["trip"]}
    f = Feed(engine([subject(leaves=[leave])]))
    in_trip = east(3000)
    f.fix("B-1", T0, *in_trip)  # before the window: out (1)
    f.fix("B-1", T0 + 10_000, *in_trip)  # start is inclusive: in, run broken
    f.fix("B-1", T0 + 15_000, *in_trip)
    assert f.fix("B-1", T0 + 20_000, *in_trip) == []  # end is inclusive: still in
    # Closed, and the fixes before the end were out of home: the leave is overdue from
    # its end (not an outbound alarm: see test_engine_schedules.py).
    raised = f.fix("B-1", T0 + 20_001, *in_trip)
    assert brief(raised) == [("raised", "leave_overdue", "B-1", "home", T0 + 20_000, False)]
    # The distance is to the allowed region, which no longer includes the trip zone.
    assert raised[0]["distance_m"] == pytest.approx(3000, abs=2)
    assert f.fix("B-1", T0 + 21_000, *in_trip) == []
    assert brief(f.fix("B-1", T0 + 22_000, *INSIDE)) == [
        ("cleared", "leave_overdue", "B-1", "home", T0 + 22_000, False)]


def test_leave_zone_counts_for_the_distance_while_open():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    f = Feed(engine([subject(leaves=[leave])]))
    beyond_trip = offset(120.15, 29.97, 400, 0)  # 400 m east of trip, ~10 km from home
    f.fix("B-1", T0, *beyond_trip)
    raised = f.fix("B-1", T0 + 1000, *beyond_trip)
    assert raised[0]["distance_m"] == pytest.approx(400, abs=2)
    assert raised[0]["zone_id"] == "home"  # zone_id is the nearest *inclusion* zone


# ----- exclusion ------------------------------------------------------------------------

def test_exclusion_raises_at_first_fix_inside_and_clears_beyond_margin():
    f = Feed(engine())
    raised = f.fix("B-1", T0, 120.03, 30.03)
    assert brief(raised) == [("raised", "exclusion", "B-1", "victim", T0, False)]
    assert raised[0]["distance_m"] == 0.0
    assert f.fix("B-1", T0 + 1000, *offset(120.03, 30.03, 340, 0)) == []  # 40 m out: keep open
    assert f.fix("B-1", T0 + 2000, *offset(120.03, 30.03, 400, 0), acc=120.0) == []  # 100 <= acc
    cleared = f.fix("B-1", T0 + 3000, *offset(120.03, 30.03, 400, 0), acc=20.0)
    # Out of the zone but within approach_m (200) of it: the approach warning follows.
    assert brief(cleared) == [("cleared", "exclusion", "B-1", "victim", T0 + 3000, False),
                              ("raised", "approach", "B-1", "victim", T0 + 3000, False)]
    assert cleared[0]["alarm_id"] == raised[0]["alarm_id"]
    assert cleared[0]["distance_m"] == pytest.approx(100, abs=0.5)
    again = f.fix("B-1", T0 + 4000, 120.03, 30.03)  # a new episode, a new id
    assert brief(again) == [("cleared", "approach", "B-1", "victim", T0 + 4000, False),
                            ("raised", "exclusion", "B-1", "victim", T0 + 4000, False)]
    assert again[1]["alarm_id"] != raised[0]["alarm_id"]


def test_two_exclusion_zones_and_two_devices_have_separate_episodes():
    subj = subject(devices=("B-1", "P-1"), exclusion=["victim", "school"])
    f = Feed(engine([subj], alarm_per="device"))  # per device (today's alarms)
    assert brief(f.fix("B-1", T0, 120.03, 30.03)) == [
        ("raised", "exclusion", "B-1", "victim", T0, False)]
    assert brief(f.fix("P-1", T0 + 10, 120.03, 30.03)) == [
        ("raised", "exclusion", "P-1", "victim", T0 + 10, False)]
    assert brief(f.fix("B-1", T0 + 1000, 119.97, 29.97)) == [
        ("cleared", "exclusion", "B-1", "victim", T0 + 1000, False),
        ("raised", "exclusion", "B-1", "school", T0 + 1000, False)]
    open_ = {(a["device_id"], a["zone_id"]) for a in f.engine.open_alarms()}
    assert open_ == {("P-1", "victim"), ("B-1", "school")}
    # The phone's outbound state is its own too.
    f.fix("P-1", T0 + 2000, *east(500))
    # B-1's first out fix only clears its school episode; P-1's second raises.
    assert brief(f.fix("B-1", T0 + 3000, *east(500))) == [
        ("cleared", "exclusion", "B-1", "school", T0 + 3000, False)]
    assert brief(f.fix("P-1", T0 + 4000, *east(500)))[0][:3] == ("raised", "outbound", "P-1")


def test_gcj02_fix_is_converted_before_the_rules():
    f = Feed(engine())
    glon, glat = wgs84_to_gcj02(120.03, 30.03)  # the victim's centre as a Chinese map shows it
    raised = f.fix("B-1", T0, glon, glat, gcj=True)
    assert brief(raised) == [("raised", "exclusion", "B-1", "victim", T0, False)]
    assert raised[0]["lon"] == pytest.approx(120.03, abs=1e-8)
    assert raised[0]["lat"] == pytest.approx(30.03, abs=1e-8)
    # The same numbers taken as WGS-84 are ~500 m away: outside the 300 m circle.
    f2 = Feed(engine())
    assert f2.fix("B-1", T0, glon, glat) == []


# ----- duplicates and late fixes -----------------------------------------------------------

def test_duplicates_are_dropped_and_counted():
    f = Feed(engine())
    f.fix("B-1", T0, *east(500))
    assert f.fix("B-1", T0, *east(500)) == []  # same ts: a duplicate, not a 2nd out fix
    assert f.engine.counters["duplicates"] == 1 and f.engine.counters["fixes"] == 2
    assert len(f.fix("B-1", T0 + 1, *east(500))) == 1


def test_late_fixes_are_judged_on_their_own_ts_and_never_move_live_outbound_state():
    f = Feed(engine())
    f.fix("B-1", T0 + 10_000, *INSIDE)
    assert f.fix("B-1", T0 + 1000, *east(500)) == []  # the late run's first out fix
    pair = f.fix("B-1", T0 + 2000, *east(500))  # its second: a past outbound episode
    assert brief(pair) == [("raised", "outbound", "B-1", "home", T0 + 2000, True),
                           ("cleared", "outbound", "B-1", "home", T0 + 2000, True)]
    assert pair[0]["alarm_id"] == pair[1]["alarm_id"]
    assert pair[0]["distance_m"] == pytest.approx(500, abs=1.0)
    assert f.fix("B-1", T0 + 3000, *east(500)) == []  # one pair per late run
    assert f.fix("B-1", T0 + 11_000, *east(500)) == []  # the live run starts at 1
    raised = f.fix("B-1", T0 + 12_000, *east(500))
    assert brief(raised) == [("raised", "outbound", "B-1", "home", T0 + 12_000, False)]
    assert f.fix("B-1", T0 + 5000, *INSIDE) == []  # a late in fix does not clear
    assert f.fix("B-1", T0 + 6000, *east(500)) == []  # nor is a past pair written...
    assert f.fix("B-1", T0 + 7000, *east(500)) == []  # ...while the live episode is open
    assert [a["at"] for a in f.engine.open_alarms()] == [T0 + 12_000]
    assert f.engine.counters["late"] == 6


def test_a_late_run_needs_its_fixes_in_order_and_no_in_order_fix_between():
    f = Feed(engine())
    f.fix("B-1", T0 + 10_000, *INSIDE)
    assert f.fix("B-1", T0 + 2000, *east(500)) == []
    assert f.fix("B-1", T0 + 1000, *east(500)) == []  # older than the run's last: anew
    f.fix("B-1", T0 + 11_000, *INSIDE)
    assert f.fix("B-1", T0 + 3000, *east(500)) == []  # an in-order fix came between: anew
    assert f.fix("B-1", T0 + 4000, *(120.0, 29.97)) == []  # in: the run resets
    assert f.fix("B-1", T0 + 5000, *east(500)) == []
    assert len(f.fix("B-1", T0 + 6000, *east(500))) == 2


def test_late_fix_inside_exclusion_emits_a_late_pair():
    f = Feed(engine())
    f.fix("B-1", T0 + 10_000, *INSIDE)
    pair = f.fix("B-1", T0 + 5000, 120.03, 30.03)
    assert brief(pair) == [("raised", "exclusion", "B-1", "victim", T0 + 5000, True),
                           ("cleared", "exclusion", "B-1", "victim", T0 + 5000, True)]
    assert pair[0]["alarm_id"] == pair[1]["alarm_id"]
    assert f.engine.open_alarms() == []
    # A live episode raised at the same ts would not share the late pair's id.
    g = Feed(engine())
    live = g.fix("B-1", T0 + 5000, 120.03, 30.03)
    assert live[0]["alarm_id"] != pair[0]["alarm_id"]


# ----- offline ----------------------------------------------------------------------------

@pytest.mark.parametrize("level, after_s", [("strict", 600), ("ordinary", 1800),
                                            ("lenient", 3600)])
def test_offline_per_level_by_receive_time(level, after_s):
    f = Feed(engine([subject(level=level)]))
    f.fix("B-1", T0 - 60_000, *INSIDE, rx=T0)  # event time does not matter, receive time does
    assert f.sweep(T0 + after_s * 1000) == []  # silence == threshold: not yet
    raised = f.sweep(T0 + after_s * 1000 + 1)
    assert brief(raised) == [("raised", "offline", "B-1", None, T0 + after_s * 1000, False)]
    # Evidence (rule 8): the last receive time and the last fix's position.
    assert (raised[0]["lat"], raised[0]["lon"], raised[0]["acc"], raised[0]["last_rx_ms"]) == \
        (INSIDE[1], INSIDE[0], 10.0, T0)
    assert "distance_m" not in raised[0]
    assert f.sweep(T0 + after_s * 5000) == []  # one alarm per episode
    cleared = f.status("B-1", T0 + 10, rx=T0 + after_s * 6000)  # a status is a message too
    assert brief(cleared) == [("cleared", "offline", "B-1", None, T0 + after_s * 6000, False)]
    assert cleared[0]["alarm_id"] == raised[0]["alarm_id"]


def test_offline_thresholds_are_configurable_and_never_heard_devices_stay_quiet():
    subjects = [subject("S-1", devices=("B-1",)), subject("S-2", "lenient", devices=("B-2",)),
                subject("S-3", devices=("B-3",))]
    f = Feed(engine(subjects, offline_after_s={"strict": 60, "ordinary": 120, "lenient": 180}))
    f.fix("B-1", T0, *INSIDE)
    f.fix("B-2", T0, *INSIDE)
    assert [e["device_id"] for e in f.sweep(T0 + 61_000)] == ["B-1"]
    assert [e["device_id"] for e in f.sweep(T0 + 181_000)] == ["B-2"]
    assert f.engine.sweep(T0 + 10**9) == []  # B-3 never reported: no receive time


def test_fix_clears_offline_before_its_rules():
    f = Feed(engine())
    f.fix("B-1", T0, *INSIDE)
    f.sweep(T0 + 700_000)
    ev = f.fix("B-1", T0 + 800_000, 120.03, 30.03)
    assert brief(ev) == [("cleared", "offline", "B-1", None, T0 + 800_000, False),
                         ("raised", "exclusion", "B-1", "victim", T0 + 800_000, False)]


# ----- tamper, battery --------------------------------------------------------------------

def test_tamper_and_low_battery_with_hysteresis():
    f = Feed(engine())
    assert brief(f.status("B-1", T0, battery=50, strap="open")) == [
        ("raised", "tamper", "B-1", None, T0, False)]
    assert f.status("B-1", T0 + 1, strap="open") == []
    assert brief(f.status("B-1", T0 + 2, strap="ok")) == [
        ("cleared", "tamper", "B-1", None, T0 + 2, False)]
    assert f.status("B-1", T0 + 3, battery=15.5) == []
    low = f.status("B-1", T0 + 4, battery=15)
    assert brief(low) == [("raised", "low_battery", "B-1", None, T0 + 4, False)]
    assert f.status("B-1", T0 + 5, battery=19.9) == []  # between the two: stays open
    assert f.status("B-1", T0 + 6) == []  # a heartbeat without battery changes nothing
    cleared = f.status("B-1", T0 + 7, battery=20)
    assert brief(cleared) == [("cleared", "low_battery", "B-1", None, T0 + 7, False)]
    assert cleared[0]["alarm_id"] == low[0]["alarm_id"]


def test_duplicate_statuses_change_nothing_and_late_ones_are_past_episodes():
    f = Feed(engine())
    f.status("B-1", T0 + 100, strap="ok")
    assert f.status("B-1", T0 + 100, strap="open") == []  # duplicate ts
    late = f.status("B-1", T0 + 50, strap="open", battery=10, power="off")
    assert brief(late) == [(e, t, "B-1", None, T0 + 50, True) for t in
                           ("tamper", "low_battery", "power_off") for e in ("raised", "cleared")]
    assert late[2]["battery_pct"] == 10 and late[0]["strap"] == "open"
    assert f.engine.open_alarms() == []  # the live state is as the newest status left it
    assert f.status("B-1", T0 + 60, strap="ok", battery=50, power="on") == []
    c = f.engine.counters
    assert (c["duplicate_statuses"], c["late_statuses"], c["statuses"]) == (1, 2, 4)


def test_a_late_status_never_touches_a_live_episode():
    f = Feed(engine())
    live = f.status("B-1", T0 + 100, strap="open", battery=10)
    assert [e["type"] for e in live] == ["tamper", "low_battery"]
    assert f.status("B-1", T0 + 50, strap="open", battery=5) == []  # already open
    assert f.status("B-1", T0 + 60, strap="ok", battery=90) == []  # never clears
    assert sorted(a["type"] for a in f.engine.open_alarms()) == ["low_battery", "tamper"]
    off = f.status("B-1", T0 + 200, power="off")
    assert [e["type"] for e in off] == ["power_off"]
    assert f.status("B-1", T0 + 70, power="off") == []  # power_off open: nothing
    assert f.status("B-1", T0 + 80, battery=50) == []  # older than the power-off: stays
    assert len(f.engine.open_alarms()) == 3


# ----- input checks -----------------------------------------------------------------------

def test_arrays_of_different_lengths_are_refused():
    e = engine()
    with pytest.raises(ValueError, match="ts_ms has 2 elements, expected 1"):
        e.process_fixes(np.array([0], np.int32), np.array([T0, T0]), np.array([30.0]),
                        np.array([120.0]), np.array([5.0]), np.array([0], np.uint8),
                        np.array([T0]))


def test_unknown_device_index_is_counted_not_fatal():
    e = engine()
    ev = e.process_fixes(np.array([5, -1], np.int32), np.array([T0, T0]), np.array([30.0, 30.0]),
                         np.array([120.0, 120.0]), np.array([5.0, 5.0]),
                         np.zeros(2, np.uint8), np.array([T0, T0]))
    assert ev == [] and e.counters["unknown_device"] == 2


def test_bytes_per_device_is_within_budget():
    e = engine([subject(devices=("B-1", "P-1"), exclusion=["victim", "school"])])
    assert e.bytes_per_device() <= 256


# ----- settled-device path ----------------------------------------------------------------

from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from engine.kernels import moved_upper_m


@settings(max_examples=300, deadline=None)
@given(lon=st.floats(-179.9, 179.9), lat=st.floats(-60, 60), az=st.floats(0, 360),
       dist=st.floats(0, 5000))
def test_moved_upper_m_never_underestimates(lon, lat, az, dist):
    lon2, lat2, _ = Geod(ellps="WGS84").fwd(lon, lat, az, dist)
    assert moved_upper_m(lon, lat, lon2, lat2) >= dist
    assert moved_upper_m(lon, lat, lon2, lat2) <= dist * 1.02 + 1.0  # and is not useless


def test_settled_device_still_sees_an_exclusion_and_a_closing_leave():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    f = Feed(engine([subject(leaves=[leave])]))
    in_trip = east(3000)
    for k in range(5):  # inside the leave zone: never settled (the run against home counts)
        assert f.fix("B-1", T0 + k * 1000, *in_trip) == []
    assert f.engine.counters["settled_fixes"] == 0
    for k in range(5):  # inside home during the leave: settled (after the first fix, a
        assert f.fix("B-1", T0 + 10_000 + k * 1000, *INSIDE) == []  # jump of > 2 km)
    assert f.engine.counters["settled_fixes"] == 3
    f.fix("B-1", T0 + 20_000, *in_trip)  # out of home, in trip: run 1 against home
    # The window closed: evaluated in full, the run goes on (2): overdue at this fix.
    assert brief(f.fix("B-1", T0 + 60_001, *in_trip)) == [
        ("raised", "leave_overdue", "B-1", "home", T0 + 60_001, False)]
    # Walking up to the victim's circle in 50 m steps: raised at the first fix inside.
    g = Feed(engine())
    start = offset(120.03, 30.03, 0, -1020)
    for k in range(16):  # 1020, 970, ... 320 m from the centre, then 270 m: inside
        g.fix("B-1", T0 + k * 1000, *offset(*start, 0, 50 * k))
    # 170 m from the circle (k = 11): the approach warning; superseded at the first fix in.
    assert brief(g.events) == [("raised", "approach", "B-1", "victim", T0 + 11_000, False),
                               ("cleared", "approach", "B-1", "victim", T0 + 15_000, False),
                               ("raised", "exclusion", "B-1", "victim", T0 + 15_000, False)]
    assert g.engine.counters["settled_fixes"] > 5


# ----- the sweep kernel against a plain loop ----------------------------------------------

from engine import kernels as K
from engine.state import NO_DEADLINE_MS, new_state


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-5_000, 5_000), st.booleans()),
                min_size=1, max_size=40),
       st.integers(-2_000, 8_000), st.booleans())
def test_sweep_kernel_matches_a_plain_loop(devices, now_offset, stale_floor):
    """Each device: (kind: 0 never heard, 1 heard, 2 offline open, 3 heard), deadline
    offset, whatever. Raised = heard, not open, deadline < now; in device order."""
    n = len(devices)
    s = new_state(n, 0)
    expect = []
    now = T0 + now_offset
    for d, (kind, off, _) in enumerate(devices):
        if kind in (1, 3):
            s.last_rx_ms[d] = T0 + off - 600_000
            s.deadline_ms[d] = T0 + off
            if T0 + off < now:
                expect.append((d, T0 + off))
        elif kind == 2:
            s.last_rx_ms[d] = T0 + off - 600_000
            s.offline_at_ms[d] = T0 + off - 1
            s.deadline_ms[d] = NO_DEADLINE_MS
    s.floor_ms[0] = -(2**62) if stale_floor else s.deadline_ms.min()
    ev_i, ev_f = K.new_events(1)  # grows as needed
    counters = np.zeros(K.N_COUNTERS, np.int64)
    ev_i, ev_f, m = K.sweep(s, np.int64(now), ev_i, ev_f, counters)
    got = [(int(ev_i[k, K.EV_DEVICE]), int(ev_i[k, K.EV_AT])) for k in range(m)]
    assert got == expect
    assert all(ev_i[k, K.EV_TYPE] == K.T_OFFLINE and ev_i[k, K.EV_RAISED] == 1 for k in range(m))
    # Raised devices are now open and no longer due; the floor bounds every deadline left.
    for d, _ in expect:
        assert s.offline_at_ms[d] != K.NONE_MS and s.deadline_ms[d] == NO_DEADLINE_MS
    assert s.floor_ms[0] <= s.deadline_ms.min()
    ev_i, ev_f, m2 = K.sweep(s, np.int64(now), ev_i, ev_f, counters)
    assert m2 == 0  # a second sweep at the same time raises nothing
