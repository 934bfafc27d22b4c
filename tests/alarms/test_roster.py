"""The duty roster on real SQLite and PostgreSQL: people and shifts stored and audited,
bad input refused naming the field, and the resolver's answer level by level (officer in
charge or the default officer, the duty operator on shift across midnight in
Asia/Shanghai, squadron, brigade)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from register_helpers import T0, subject
from roster_helpers import REGION, local_ms, person

from alarms.register_check import WEEKDAYS
from alarms.roster import RosterError, check_person, on_shift, roster_resolver

SUP = {"actor": "sam", "role": "supervisor"}


def put(store, doc, **kw):
    return store.roster.put_person(doc, **{**SUP, "now_ms": T0, **kw})


def test_people_are_stored_replaced_deleted_and_audited(store):
    night = {"days": ["mon", "tue"], "start": "22:00", "end": "08:00"}
    got, created = put(store, person("P-1", "duty", shifts=[night], email="a@b.cn", lang="en"))
    assert created and got["level"] == 1 and got["shifts"] == [night]
    assert (got["email"], got["lang"], got["updated_by"]) == ("a@b.cn", "en", "sam")
    put(store, person("P-2", "squadron", region="330723"))
    again, created = put(store, person("P-1", "duty", shifts=[{"start": "08:00",
                                                                "end": "20:00"}]),
                         now_ms=T0 + 5)
    assert not created and again["shifts"] == [{"days": list(WEEKDAYS), "start": "08:00",
                                                "end": "20:00"}]
    assert [p["person_id"] for p in store.roster.people()] == ["P-2", "P-1"]  # by region
    assert [p["person_id"] for p in store.roster.people([REGION])] == ["P-1"]
    with pytest.raises(RosterError) as e:
        store.roster.person("P-2", regions=[REGION])  # another region: as if unknown
    assert e.value.status == 404
    gone = store.roster.delete_person("P-1", **SUP, now_ms=T0 + 9)
    assert gone["person_id"] == "P-1" and store.roster.people([REGION]) == []
    audit = store.audit_log(target="P-1")
    assert [a["action"] for a in audit] == ["roster.delete", "roster.put", "roster.put"]
    assert audit[0]["detail"]["before"]["shifts"] == again["shifts"]
    assert audit[1]["detail"]["before"]["shifts"] == [night]
    assert audit[2]["detail"]["before"] is None and audit[2]["detail"]["region"] == REGION


@pytest.mark.parametrize(("change", "field"), [
    ({"person_id": "bad id"}, "person_id"),
    ({"region": "a/b"}, "region"),
    ({"name": ""}, "name"),
    ({"role": "chief"}, "role"),
    ({"phone": "call me"}, "phone"),
    ({"phone": None, "email": "nobody"}, "email"),
    ({"phone": None}, "phone"),  # nobody can be reached without one of them
    ({"lang": "fr"}, "lang"),
    ({"role": "officer"}, "account"),  # an officer is matched by their account
    ({"shifts": {"start": "08:00"}}, "shifts"),
    ({"shifts": [{"start": "8:00", "end": "20:00"}]}, "shifts[0].start"),
    ({"shifts": [{"start": "08:00", "end": "24:00"}]}, "shifts[0].end"),
    ({"shifts": [{"start": "08:00", "end": "09:00", "days": ["monday"]}]}, "shifts[0].days"),
    ({"shifts": [{"start": "08:00", "end": "09:00", "when": 1}]}, "shifts[0].when"),
    ({"colour": "red"}, "colour"),
])
def test_bad_input_is_refused_naming_the_field(change, field):
    with pytest.raises(RosterError) as e:
        check_person({**person("P-1", "duty"), **change})
    assert e.value.field == field and e.value.status == 400 and field in str(e.value)


def test_only_overseers_of_the_region_change_the_roster(store):
    with pytest.raises(RosterError) as e:
        put(store, person("P-1", "duty"), role="operator")
    assert e.value.status == 403
    with pytest.raises(RosterError) as e:
        put(store, person("P-1", "duty"), regions=["330723"])
    assert (e.value.status, e.value.field) == (403, "region")
    with pytest.raises(RosterError) as e:
        put(store, person("P-1", "officer", account="nobody"))
    assert e.value.field == "account" and "no account" in e.value.reason
    put(store, person("P-1", "duty"))
    with pytest.raises(RosterError) as e:  # nor take over another region's person
        put(store, person("P-1", "duty", region="330723"), regions=["330723"])
    assert e.value.status == 404
    assert store.roster.person("P-1")["region"] == REGION
    assert [a["action"] for a in store.audit_log(target="P-1")] == ["roster.put"]


def _duty(store, at_ms):
    return [p["person_id"] for p in store.roster.told_at(REGION, at_ms)[1]]


def test_shifts_across_midnight_in_shanghai_resolve_the_right_duty_operator(store):
    weekdays = ["mon", "tue", "wed", "thu", "fri"]
    put(store, person("NIGHT", "duty", shifts=[{"days": weekdays, "start": "22:00",
                                                 "end": "08:00"}]))
    put(store, person("DAY", "duty", shifts=[{"days": weekdays, "start": "08:00",
                                               "end": "22:00"}]))
    put(store, person("WEEKEND", "duty", shifts=[{"days": ["sat", "sun"], "start": "00:00",
                                                   "end": "00:00"}]))  # 24 hours
    # 2026-06-01 is a Monday
    assert _duty(store, local_ms(2026, 6, 1, 23, 30)) == ["NIGHT"]  # 15:30 UTC: not DAY
    assert _duty(store, local_ms(2026, 6, 2, 7, 59)) == ["NIGHT"]  # Monday's night shift
    assert _duty(store, local_ms(2026, 6, 2, 8, 0)) == ["DAY"]
    assert _duty(store, local_ms(2026, 6, 1, 3, 0)) == []  # Sunday had no night shift
    assert _duty(store, local_ms(2026, 6, 6, 7, 0)) == ["NIGHT", "WEEKEND"]  # Friday's night
    assert _duty(store, local_ms(2026, 6, 7, 23, 59)) == ["WEEKEND"]
    # the resolver reads the same, at the event's time
    ev = {"region": REGION, "at": local_ms(2026, 6, 1, 23, 30), "subject_id": "S-x"}
    assert [r.person_id for r in _resolve(store, ev, 1)] == ["NIGHT"]
    # the same instant in UTC wall-clock terms is Monday 15:30: the day operator's
    assert [r.person_id for r in _resolve(store, ev, 1, timezone="UTC")] == ["DAY"]


def _resolve(store, ev, level, **kw):
    with store._db.tx("test resolve", write=False) as cur:
        return roster_resolver(cur, ev, level, **kw)


def test_levels_reach_officer_or_default_then_squadron_then_brigade(store, reg):
    store.add_user("olga", "x", "operator", [REGION], T0)
    reg.import_adcode(REGION, actor="admin", now_ms=T0)
    reg.create_subject(subject("S-1", officer="olga"), actor="dora", now_ms=T0)
    reg.create_subject(subject("S-2"), actor="dora", now_ms=T0)
    put(store, person("OLGA", "officer", account="olga", email="olga@x.cn", lang="en"))
    put(store, person("DEF", "default_officer"))
    put(store, person("DUTY", "duty"))
    put(store, person("SQ", "squadron"))
    put(store, person("SQ-OFF", "squadron", shifts=[{"start": "09:00", "end": "10:00"}]))
    put(store, person("BR", "brigade"))
    put(store, person("ELSEWHERE", "brigade", region="330723"))
    ev = {"region": REGION, "at": local_ms(2026, 6, 1, 3), "subject_id": "S-1"}
    got = _resolve(store, ev, 1)
    assert [r.person_id for r in got] == ["OLGA", "DUTY"]
    assert (got[0].email, got[0].lang, got[1].phone) == ("olga@x.cn", "en", "+86 138 0000 0000")
    # no officer, or one not on the roster: the region's default officer
    assert [r.person_id for r in _resolve(store, {**ev, "subject_id": "S-2"}, 1)] == \
        ["DEF", "DUTY"]
    assert [r.person_id for r in _resolve(store, {**ev, "subject_id": "S-9"}, 1)] == \
        ["DEF", "DUTY"]
    assert [r.person_id for r in _resolve(store, ev, 2)] == ["SQ"]  # SQ-OFF is off shift
    assert [r.person_id for r in _resolve(store, {**ev, "at": local_ms(2026, 6, 1, 9, 30)},
                                          2)] == ["SQ", "SQ-OFF"]
    assert [r.person_id for r in _resolve(store, ev, 3)] == ["BR"]
    assert _resolve(store, {**ev, "region": "110101"}, 1) == []


# --- the shift rule against its reference twin ---------------------------------------------


def on_shift_reference(shifts, local: datetime) -> bool:
    """Every occurrence of every shift as an interval of wall-clock datetimes (starting
    the day before ``local``'s or on it), and whether ``local`` falls in one."""
    day = datetime(local.year, local.month, local.day)
    for s in shifts:
        sh, sm = map(int, s["start"].split(":"))
        eh, em = map(int, s["end"].split(":"))
        length = timedelta(hours=eh - sh, minutes=em - sm)
        if length <= timedelta(0):
            length += timedelta(days=1)
        for back in (1, 0):
            start_day = day - timedelta(days=back)
            if WEEKDAYS[start_day.weekday()] not in s["days"]:
                continue
            start = start_day + timedelta(hours=sh, minutes=sm)
            if start <= local.replace(second=0, microsecond=0) < start + length:
                return True
    return False


HHMM = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23),
                 st.sampled_from([0, 1, 30, 59]))
SHIFT = st.fixed_dictionaries({"days": st.lists(st.sampled_from(WEEKDAYS), min_size=1,
                                                unique=True),
                               "start": HHMM, "end": HHMM})


@settings(max_examples=300, deadline=None)
@given(shifts=st.lists(SHIFT, max_size=3), day=st.integers(0, 13), hour=st.integers(0, 23),
       minute=st.sampled_from([0, 1, 30, 59]), second=st.integers(0, 59))
def test_on_shift_matches_its_reference(shifts, day, hour, minute, second):
    # minutes drawn like the shifts' so that boundaries are hit often
    at = datetime(2026, 6, 1) + timedelta(days=day, hours=hour, minutes=minute, seconds=second)
    assert on_shift(shifts, at) == on_shift_reference(shifts, at)


def test_an_unknown_time_zone_is_refused_by_name(store):
    with pytest.raises(RosterError) as e:
        store.roster.told_at(REGION, T0, timezone="Mars/Olympus")
    assert e.value.field == "timezone" and "Mars/Olympus" in str(e.value)
