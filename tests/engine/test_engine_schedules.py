"""Leave returns, leave_overdue, curfews, suspensions, device_kind, and the registry swap
(issue 13), on the small zones of test_engine_rules.py: the edges of each rule.

Marked ``kernel``: ``make test`` re-runs them with NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from engine_helpers import T0, Feed, brief, compiled
from test_engine_rules import FEATURES, INSIDE, east, subject

from emfence.config import Config, config_from_dict
from engine import Engine, RegistryError, load_registry
from engine.registry import parse_time_ms
from engine.state import checkpoint_bytes

pytestmark = pytest.mark.kernel

IN_TRIP = east(3000)  # inside the leave zone "trip", 3 km out of home
FAR = east(20_000)  # out of everything


def feed(subjects, timezone="Asia/Shanghai", **rules) -> Feed:
    zones = compiled(FEATURES)
    config = config_from_dict({"rules": rules, "register": {"timezone": timezone}})
    return Feed(Engine(zones, load_registry({"subjects": subjects}, zones), config))


def ms(iso: str) -> int:
    return parse_time_ms(iso, "test")


# ----- leave: return and leave_overdue ------------------------------------------------------

def test_a_return_before_the_end_closes_the_window_early():
    leave = {"start": T0, "end": T0 + 60_000, "returned": T0 + 20_000, "zones": ["trip"]}
    f = feed([subject(leaves=[leave])])
    assert f.fix("B-1", T0 + 10_000, *INSIDE) == []
    assert f.fix("B-1", T0 + 20_000, *IN_TRIP) == []  # the return is inclusive: still open
    # (out of home: a run of 1 against home alone)
    raised = f.fix("B-1", T0 + 20_001, *IN_TRIP)  # closed: out (2): overdue, not outbound
    assert brief(raised) == [("raised", "leave_overdue", "B-1", "home", T0 + 20_001, False)]
    assert raised[0]["distance_m"] == pytest.approx(3000, abs=2)
    assert f.fix("B-1", T0 + 21_000, *IN_TRIP) == []
    assert f.fix("B-1", T0 + 22_000, *FAR) == []  # one alarm per episode: no outbound
    cleared = f.fix("B-1", T0 + 23_000, *INSIDE)
    assert brief(cleared) == [("cleared", "leave_overdue", "B-1", "home", T0 + 23_000, False)]
    assert cleared[0]["alarm_id"] == raised[0]["alarm_id"]
    # Back in: a later excursion is an ordinary outbound.
    f.fix("B-1", T0 + 24_000, *FAR)
    assert brief(f.fix("B-1", T0 + 25_000, *FAR))[0][:2] == ("raised", "outbound")


def test_overdue_from_the_end_itself_when_the_last_fixes_were_out():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    f = feed([subject(leaves=[leave])])
    f.fix("B-1", T0 + 10_000, *IN_TRIP)
    f.fix("B-1", T0 + 59_000, *IN_TRIP)  # two fixes out of home before the end
    raised = f.fix("B-1", T0 + 3_600_000, *INSIDE)  # an hour later, back home
    assert brief(raised) == [
        ("raised", "leave_overdue", "B-1", "home", T0 + 60_000, False),
        ("cleared", "leave_overdue", "B-1", "home", T0 + 3_600_000, False)]
    assert raised[0]["alarm_id"] == raised[1]["alarm_id"]


def test_no_overdue_when_home_before_the_end():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    f = feed([subject(leaves=[leave])])
    f.fix("B-1", T0 + 10_000, *IN_TRIP)
    f.fix("B-1", T0 + 20_000, *IN_TRIP)
    assert f.fix("B-1", T0 + 50_000, *INSIDE) == []  # home before the end
    assert f.fix("B-1", T0 + 70_000, *INSIDE) == []
    f.fix("B-1", T0 + 80_000, *FAR)
    assert brief(f.fix("B-1", T0 + 90_000, *FAR))[0][:2] == ("raised", "outbound")


def test_a_single_out_fix_before_the_end_is_not_confirmed():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    f = feed([subject(leaves=[leave])], outbound_confirm_fixes=3)
    f.fix("B-1", T0 + 10_000, *INSIDE)
    f.fix("B-1", T0 + 59_000, *IN_TRIP)  # run 1 of 3 against home
    assert f.fix("B-1", T0 + 61_000, *IN_TRIP) == []  # run 2
    raised = f.fix("B-1", T0 + 62_000, *IN_TRIP)  # run 3: at this fix, not at the end
    assert brief(raised) == [("raised", "leave_overdue", "B-1", "home", T0 + 62_000, False)]


def test_late_fixes_never_touch_leave_overdue():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    f = feed([subject(leaves=[leave])])
    f.fix("B-1", T0 + 10_000, *INSIDE)
    f.fix("B-1", T0 + 70_000, *INSIDE)  # home after the end: nothing owed
    assert f.fix("B-1", T0 + 30_000, *FAR) == []  # late, out of everything: nothing
    assert f.fix("B-1", T0 + 20_000, *FAR) == []
    assert f.fix("B-1", T0 + 80_000, *INSIDE) == []


def test_an_open_outbound_is_not_turned_into_overdue():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    f = feed([subject(leaves=[leave])])
    f.fix("B-1", T0 + 10_000, *FAR)
    assert brief(f.fix("B-1", T0 + 20_000, *FAR))[0][:2] == ("raised", "outbound")
    assert f.fix("B-1", T0 + 70_000, *FAR) == []  # the leave ended: the episode goes on
    assert brief(f.fix("B-1", T0 + 80_000, *INSIDE))[0][:2] == ("cleared", "outbound")


# ----- curfews --------------------------------------------------------------------------

# The curfew zone is "work" (inclusion too, so no outbound while there); INSIDE is home.
WORK_IN = (119.82, 30.0)


def curfew_subject(sid="S-1", devices=("B-1",), **curfew):
    cf = {"start": "22:00", "end": "06:00", "zone": "work", **curfew}
    return subject(sid=sid, devices=devices, inclusion=["home", "work"], curfews=[cf])


def test_curfew_across_midnight_raises_and_clears_at_the_window_end():
    f = feed([curfew_subject()])
    night = ms("2025-11-20T22:00:00+08:00")
    assert f.fix("B-1", night - 60_000, *INSIDE) == []  # 21:59: no window
    assert f.fix("B-1", night, *INSIDE) == []  # 22:00 is in (start inclusive): out (1)
    raised = f.fix("B-1", night + 60_000, *INSIDE)
    assert brief(raised) == [("raised", "curfew", "B-1", "work", night + 60_000, False)]
    assert raised[0]["distance_m"] > 5000
    assert f.fix("B-1", night + 4 * 3_600_000, *INSIDE) == []  # 02:00 next day: open
    end = ms("2025-11-21T06:00:00+08:00")  # exclusive: the first fix at 06:00 clears it
    cleared = f.fix("B-1", end, *INSIDE)
    assert brief(cleared) == [("cleared", "curfew", "B-1", "work", end, False)]
    assert cleared[0]["alarm_id"] == raised[0]["alarm_id"]
    assert "lat" not in cleared[0] and "distance_m" not in cleared[0]  # no fix: no evidence


def test_curfew_cleared_inside_and_runs_restart_each_window():
    f = feed([curfew_subject()])
    night = ms("2025-11-20T22:00:00+08:00")
    f.fix("B-1", night + 1000, *INSIDE)
    f.fix("B-1", night + 2000, *INSIDE)
    cleared = f.fix("B-1", night + 3000, *WORK_IN)
    assert brief(cleared) == [("cleared", "curfew", "B-1", "work", night + 3000, False)]
    f.fix("B-1", ms("2025-11-21T05:59:00+08:00"), *INSIDE)  # out (1) at the window's end
    assert f.fix("B-1", ms("2025-11-21T22:00:00+08:00"), *INSIDE) == []  # a new run: (1)
    assert f.fix("B-1", ms("2025-11-21T22:01:00+08:00"), *INSIDE)[0]["event"] == "raised"


def test_curfew_window_end_clear_comes_with_the_next_fix_even_with_a_window_open():
    f = feed([curfew_subject()])
    f.fix("B-1", ms("2025-11-20T23:00:00+08:00"), *INSIDE)
    f.fix("B-1", ms("2025-11-20T23:01:00+08:00"), *INSIDE)
    got = f.fix("B-1", ms("2025-11-21T23:00:00+08:00"), *INSIDE)  # next night, out (1)
    assert brief(got) == [("cleared", "curfew", "B-1", "work",
                           ms("2025-11-21T06:00:00+08:00"), False)]


def test_late_fixes_in_a_closed_window_are_a_past_curfew_episode():
    f = feed([curfew_subject()])
    f.fix("B-1", ms("2025-11-21T08:00:00+08:00"), *INSIDE)  # daytime
    assert f.fix("B-1", ms("2025-11-20T23:00:00+08:00"), *INSIDE) == []  # late, out (1)
    at = ms("2025-11-20T23:30:00+08:00")
    assert brief(f.fix("B-1", at, *INSIDE)) == [  # (2): a past episode, raised and cleared
        (e, "curfew", "B-1", "work", at, True) for e in ("raised", "cleared")]
    assert f.fix("B-1", ms("2025-11-20T23:40:00+08:00"), *INSIDE) == []  # one per late run
    assert f.engine.counters["late_fixes"] == 3
    assert f.engine.open_alarms() == []
    # Late fixes in another night's window start a run of their own.
    assert f.fix("B-1", ms("2025-11-19T23:00:00+08:00"), *INSIDE) == []
    assert len(f.fix("B-1", ms("2025-11-19T23:05:00+08:00"), *INSIDE)) == 2


def test_curfew_days_and_effective_period():
    # 2025-11-20 is a Thursday.
    f = feed([curfew_subject(days=["fri"], **{"from": ms("2025-11-21T23:00:00+08:00")})])
    f.fix("B-1", ms("2025-11-20T23:00:00+08:00"), *INSIDE)  # Thursday: no window
    assert f.fix("B-1", ms("2025-11-20T23:10:00+08:00"), *INSIDE) == []
    f.fix("B-1", ms("2025-11-21T22:30:00+08:00"), *INSIDE)  # Friday, before "from"
    assert f.fix("B-1", ms("2025-11-21T22:40:00+08:00"), *INSIDE) == []
    f.fix("B-1", ms("2025-11-21T23:00:00+08:00"), *INSIDE)  # from "from" on: (1)
    assert brief(f.fix("B-1", ms("2025-11-21T23:10:00+08:00"), *INSIDE))[0][:2] == (
        "raised", "curfew")


def test_curfew_windows_follow_daylight_saving():
    # Europe/Berlin springs forward on 2026-03-29 (02:00 CET -> 03:00 CEST): the window
    # 00:30-03:30 that night is two hours long; the night before it is three.
    f = feed([curfew_subject(start="00:30", end="03:30")], timezone="Europe/Berlin")
    short_end = ms("2026-03-29T01:30:00+00:00")  # 03:30 CEST
    f.fix("B-1", ms("2026-03-29T00:00:00+00:00"), *INSIDE)  # 01:00 CET: in the window
    raised = f.fix("B-1", ms("2026-03-29T00:10:00+00:00"), *INSIDE)
    assert brief(raised)[0][:2] == ("raised", "curfew")
    cleared = f.fix("B-1", short_end + 15 * 60_000, *INSIDE)  # 03:45 CEST: window over
    assert brief(cleared) == [("cleared", "curfew", "B-1", "work", short_end, False)]
    g = feed([curfew_subject(start="00:30", end="03:30")], timezone="Europe/Berlin")
    g.fix("B-1", ms("2026-03-28T02:00:00+00:00"), *INSIDE)  # 03:00 CET, the night before
    assert brief(g.fix("B-1", ms("2026-03-28T02:10:00+00:00"), *INSIDE))[0][:2] == (
        "raised", "curfew")  # 03:10 CET: still in a three-hour window


def test_curfew_for_a_subject_without_inclusion_zones():
    s = subject(inclusion=[], curfews=[{"start": "22:00", "end": "06:00", "zone": "home"}])
    f = feed([s])
    f.fix("B-1", ms("2025-11-20T23:00:00+08:00"), *FAR)
    assert brief(f.fix("B-1", ms("2025-11-20T23:01:00+08:00"), *FAR))[0][:3] == (
        "raised", "curfew", "B-1")


def test_the_curfew_horizon_moves_with_time():
    f = feed([curfew_subject()])
    for day in range(20, 30):  # ten nights, one batch each: windows computed as time goes
        f.fix("B-1", ms(f"2025-11-{day}T23:00:00+08:00"), *INSIDE)
        f.fix("B-1", ms(f"2025-11-{day}T23:01:00+08:00"), *INSIDE)
        f.fix("B-1", ms(f"2025-11-{day + 1}T12:00:00+08:00"), *INSIDE)
    raised = [e for e in f.events if e["event"] == "raised"]
    assert [e["at"] for e in raised] == [ms(f"2025-11-{d}T23:01:00+08:00")
                                         for d in range(20, 30)]


# ----- suspensions and device_kind ----------------------------------------------------------

def test_suspended_events_are_emitted_and_marked():
    s = subject(devices=("B-1",), suspensions=[
        {"type": "outbound", "start": T0 + 2000, "end": T0 + 5000, "reason": "住院"}])
    s["devices"] = [{"device_id": "B-1", "kind": "phone"}]
    f = feed([s])
    f.fix("B-1", T0 + 1000, *FAR)
    raised = f.fix("B-1", T0 + 2000, *FAR)  # at == start: inside (inclusive)
    assert raised[0]["suspended"] is True and raised[0]["device_kind"] == "phone"
    cleared = f.fix("B-1", T0 + 5001, *INSIDE)  # just after the end: not suspended
    assert "suspended" not in cleared[0]
    excl = f.fix("B-1", T0 + 3000 + 10_000, 120.03, 30.03)  # another type: not suspended
    assert excl[0]["type"] == "exclusion" and "suspended" not in excl[0]


# ----- the registry: errors, swap, checkpoints ------------------------------------------------

@pytest.mark.parametrize("extra, match", [
    ({"curfews": [{"start": "25:00", "end": "06:00", "zone": "home"}]}, r"curfews\[0\]\.start"),
    ({"curfews": [{"start": "22:00", "end": "06:00", "zone": "nowhere"}]}, "unknown zone"),
    ({"curfews": [{"start": "22:00", "end": "06:00", "zone": "home", "days": ["xyz"]}]},
     r"curfews\[0\]\.days"),
    ({"suspensions": [{"type": "sleep", "start": T0, "end": T0 + 1}]}, r"suspensions\[0\]\.type"),
    ({"suspensions": [{"type": "offline", "start": T0, "end": T0 - 1}]}, "ends"),
    ({"leaves": [{"start": T0, "end": T0 + 1, "zones": ["trip"], "returned": "soon"}]},
     r"leaves\[0\]\.returned"),
])
def test_registry_errors_name_the_subject_and_field(extra, match):
    with pytest.raises(RegistryError, match=match) as info:
        load_registry({"subjects": [subject(**extra)]}, compiled(FEATURES))
    assert info.value.subject_id == "S-1"


def test_swap_registry_keeps_state_and_never_raises_twice():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    subjects = [subject(devices=("B-1",), leaves=[leave]),
                subject(sid="S-2", devices=("B-2",)), curfew_subject(sid="S-3", devices=("B-3",))]
    f = feed(subjects)
    night = ms("2025-11-20T23:00:00+08:00")
    for t in (T0 + 61_000, T0 + 62_000):
        f.fix("B-1", t, *FAR)  # overdue
    for t in (T0 + 1000, T0 + 2000):
        f.fix("B-2", t, *FAR)  # outbound
    f.fix("B-3", night, *INSIDE)
    f.fix("B-3", night + 1000, *INSIDE)  # curfew
    before = sorted(a["alarm_id"] for a in f.engine.open_alarms())
    assert [e["type"] for e in f.events if e["event"] == "raised"] == [
        "leave_overdue", "outbound", "curfew"]
    # S-2 changes (a new exclusion zone, another level); S-1 and S-3 do not.
    changed = [subjects[0], {**subjects[1], "level": "lenient", "exclusion": ["school"]},
               subjects[2]]
    zones = compiled(FEATURES)
    stats = f.engine.swap_registry(load_registry({"subjects": changed}, zones), zones)
    assert stats["devices_kept"] == 3
    assert sorted(a["alarm_id"] for a in f.engine.open_alarms()) == before
    f.events.clear()
    f.fix("B-1", T0 + 63_000, *FAR)
    f.fix("B-2", T0 + 3000, *FAR)
    f.fix("B-3", night + 2000, *INSIDE)
    assert f.events == []  # all still open: nothing raised again
    got = f.fix("B-1", T0 + 64_000, *INSIDE) + f.fix("B-2", T0 + 4000, *INSIDE) + \
        f.fix("B-3", night + 3000, *WORK_IN)
    assert [(e["type"], e["event"]) for e in got] == [
        ("leave_overdue", "cleared"), ("outbound", "cleared"), ("curfew", "cleared")]
    assert sorted(e["alarm_id"] for e in got) == before


def test_checkpoint_keeps_the_new_episodes_and_an_old_one_still_loads():
    leave = {"start": T0, "end": T0 + 60_000, "zones": ["trip"]}
    f = feed([subject(leaves=[leave])])
    f.fix("B-1", T0 + 61_000, *FAR)
    raised = f.fix("B-1", T0 + 62_000, *FAR)
    data = checkpoint_bytes(f.engine.snapshot())
    e2 = Engine.restore_bytes(data, f.engine.zones, f.engine.registry, f.engine.config)
    cleared = Feed(e2).fix("B-1", T0 + 63_000, *INSIDE)
    assert brief(cleared)[0][:2] == ("cleared", "leave_overdue")
    assert cleared[0]["alarm_id"] == raised[0]["alarm_id"]
    # A checkpoint written before the scheduled rules (no "ext"): loads with fresh rows.
    arrays = f.engine.snapshot()
    del arrays["ext"]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    e3 = Engine.restore_bytes(buf.getvalue(), f.engine.zones, f.engine.registry, Config())
    assert [a["type"] for a in e3.open_alarms()] == ["outbound"]  # type unknown: outbound
