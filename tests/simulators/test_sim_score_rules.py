"""`emfence score` for issue #14, on hand-built truth and alarms: subject-level alarms
matched by subject, one alarm per subject against each of its devices, allowed types,
and warnings scored apart from alarms."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sim_score import T0, _truth, alarm, cleared, ev

from emfence.cli import main as emfence_main
from simulators.score import score


def sev(what, device, start, end, expect, zone=None, subject=None, **detail):
    e = ev(what, device, start, end, expect, zone)
    if subject:
        e["subject_id"] = subject
    e["detail"] = detail
    return e


def salarm(type_, device, at, subject=None, **extra):
    a = alarm(type_, device, at)
    if subject:
        a["subject_id"] = subject
    a.update(extra)
    return a


def test_subject_level_alarms_match_by_subject_not_device(tmp_path):
    truth = _truth(tmp_path, [sev("separation", "B-1", 10_000, 30_000, "separation",
                                  phone="P-1")])
    # device_id is the later fix's device: the phone's is as good as the bracelet's.
    for device in ("P-1", "B-1"):
        r = score(truth, [salarm("separation", device, 15_000, subject="S-1")])
        assert (r["matched"], r["missed"], r["false"]) == (1, 0, 0), device
    other = salarm("separation", "B-2", 15_000, subject="S-2")
    r = score(truth, [other])
    assert (r["matched"], r["missed"], r["false"]) == (0, 1, 1)
    # A second separation in the same episode is one too many.
    twice = [salarm("separation", "B-1", 15_000, subject="S-1"),
             salarm("separation", "P-1", 16_000, subject="S-1")]
    assert (score(truth, twice)["matched"], score(truth, twice)["false"]) == (1, 1)


def test_proximity_and_contact_must_name_the_other_party_when_they_name_one(tmp_path):
    truth = _truth(tmp_path, [
        sev("proximity", "B-1", 10_000, 30_000, "proximity", person_id="V-1"),
        sev("contact", "B-3", 40_000, 70_000, "contact", peer_subject_id="S-4"),
    ])
    good = [salarm("proximity", "B-1", 12_000, subject="S-1", person_id="V-1"),
            salarm("contact", "B-3", 55_000, subject="S-3", peer_subject_id="S-4")]
    r = score(truth, good)
    assert (r["matched"], r["missed"], r["false"]) == (2, 0, 0)
    wrong = [salarm("proximity", "B-1", 12_000, subject="S-1", person_id="V-9"),
             salarm("contact", "B-3", 55_000, subject="S-3", peer_subject_id="S-5")]
    r = score(truth, wrong)
    assert (r["matched"], r["missed"], r["false"]) == (0, 2, 2)
    # The contact is raised on the subject first in sorted order, not on its peer.
    r = score(truth, [salarm("contact", "B-4", 55_000, subject="S-4", peer_subject_id="S-3")])
    assert r["by_type"]["contact"] == {**r["by_type"]["contact"], "missed": 1, "false": 1}


def test_proximity_is_one_episode_per_subject_device(tmp_path):
    truth = _truth(tmp_path, [
        sev("proximity", "B-1", 10_000, 30_000, "proximity", person_id="V-1"),
        sev("proximity", "P-1", 10_000, 30_000, "proximity", person_id="V-1"),
    ])
    both = [salarm("proximity", "B-1", 12_000, subject="S-1", person_id="V-1"),
            salarm("proximity", "P-1", 12_100, subject="S-1", person_id="V-1")]
    assert (score(truth, both)["matched"], score(truth, both)["false"]) == (2, 0)
    r = score(truth, both[:1])
    assert (r["matched"], r["missed"]) == (1, 1) and r["missed_events"][0]["device_id"] == "P-1"


def test_a_subject_alarm_covers_the_devices_its_clear_lists_while_open(tmp_path):
    """As the engine folds them (docs/rules.md, one alarm per subject): the raised event
    lists the first device, the cleared one every device that joined."""
    truth = _truth(tmp_path, [
        ev("excursion", "B-1", 10_000, 30_000, "outbound", "411303"),
        ev("excursion", "P-1", 20_000, 35_000, "outbound", "411303"),
        ev("excursion", "P-1", 60_000, 70_000, "outbound", "411303"),  # after the clear
        ev("excursion", "X-1", 20_000, 35_000, "outbound", "411303"),  # not listed
    ])
    a = alarm("outbound", "B-1", 12_000, rx=12_100, zone="411303")
    a["devices"] = ["B-1"]
    c = {**cleared(a, 36_000), "devices": ["B-1", "P-1"]}
    r = score(truth, [a, c])
    assert (r["matched"], r["missed"], r["false"]) == (2, 2, 0)
    assert sorted((e["device_id"], e["start"]) for e in r["missed_events"]) == [
        ("P-1", T0 + 60_000), ("X-1", T0 + 20_000)]
    assert r["by_type"]["outbound"]["matched"] == 2 and r["not_cleared"] == 0
    # Never cleared (open until the end): the raised event's list counts too, and still
    # once per device: the later phone event is not covered a second time.
    a2 = {**a, "devices": ["B-1", "P-1"]}
    r = score(truth, [a2])
    assert (r["matched"], r["missed"], r["not_cleared"]) == (2, 2, 1)


def test_one_alarm_per_subject_matches_each_device_it_lists(tmp_path):
    truth = _truth(tmp_path, [ev("excursion", "B-1", 10_000, 30_000, "outbound", "411303"),
                              ev("excursion", "P-1", 10_000, 30_000, "outbound", "411303")])
    for devices in (["B-1", "P-1"], [{"device_id": "B-1", "kind": "bracelet"},
                                     {"device_id": "P-1", "kind": "phone"}]):
        one = alarm("outbound", "B-1", 12_000, zone="411303")
        one["devices"] = devices
        r = score(truth, [one, cleared(one, 31_000)])
        assert (r["matched"], r["missed"], r["false"], r["not_cleared"]) == (2, 0, 0, 0)
    # Without the list an alarm stands for its own device only: the phone is missed.
    r = score(truth, [alarm("outbound", "B-1", 12_000, zone="411303")])
    assert (r["matched"], r["missed"], r["false"]) == (1, 1, 0)
    assert r["missed_events"][0]["device_id"] == "P-1"
    # Per device (alarm_per = "device"): two alarms, both matched.
    r = score(truth, [alarm("outbound", "B-1", 12_000, zone="411303"),
                      alarm("outbound", "P-1", 12_500, zone="411303")])
    assert (r["matched"], r["missed"], r["false"]) == (2, 0, 0)
    # A listed device without a truth event of its own does not excuse a second alarm.
    one = alarm("outbound", "B-1", 12_000, zone="411303")
    one["devices"] = ["B-1", "P-1"]
    again = alarm("outbound", "B-1", 20_000, zone="411303", aid="second")
    again["devices"] = ["B-1", "P-1"]
    r = score(truth, [one, again])
    assert (r["matched"], r["false"]) == (2, 1)


def test_warnings_are_scored_apart_from_alarms(tmp_path):
    truth = _truth(tmp_path, [
        sev("approach", "B-1", 10_000, 20_000, "approach", zone="venue-1", band_m=100.0),
        sev("approach", "B-1", 10_000, 40_000, "exclusion", zone="venue-1", allow=["approach"]),
    ])
    warn = alarm("approach", "B-1", 14_000, zone="venue-1")
    excl = alarm("exclusion", "B-1", 22_000, zone="venue-1")
    r = score(truth, [warn, cleared(warn, 22_000), excl, cleared(excl, 33_000)])
    assert (r["expected"], r["matched"], r["missed"], r["false"]) == (1, 1, 0, 0)
    w = r["warnings"]
    assert (w["expected"], w["matched"], w["missed"], w["false"], w["not_cleared"]) == (
        1, 1, 0, 0, 0)
    # No warning: the warning is missed, the alarms are whole.
    r = score(truth, [excl])
    assert (r["missed"], r["false"], r["warnings"]["missed"]) == (0, 0, 1)
    assert r["warnings"]["missed_events"][0]["expect"] == "approach"
    # A warning nobody explains is a false warning, not a false alarm.
    stray = alarm("approach", "B-7", 50_000, zone="venue-7")
    r = score(truth, [warn, excl, stray])
    assert (r["false"], r["warnings"]["false"]) == (0, 1)
    assert r["warnings"]["false_warnings"][0]["device_id"] == "B-7"


def test_allowed_types_are_excused_only_inside_their_event(tmp_path):
    truth = _truth(tmp_path, [
        sev("approach", "B-1", 10_000, 20_000, "approach", zone="venue-1"),
        sev("approach", "B-1", 10_000, 40_000, "exclusion", zone="venue-1", allow=["approach"]),
        sev("silent", "B-2", 50_000, 70_000, "offline", subject="S-2", allow=["separation"]),
    ])
    first = alarm("approach", "B-1", 14_000, zone="venue-1")
    excl = alarm("exclusion", "B-1", 22_000, zone="venue-1")
    back = alarm("approach", "B-1", 35_000, zone="venue-1", aid="back")  # walking back out
    sep = salarm("separation", "P-2", 60_000, subject="S-2")
    off = alarm("offline", "B-2", 60_000)
    r = score(truth, [first, excl, back, sep, off])
    assert (r["matched"], r["false"], r["warnings"]["false"]) == (2, 0, 0)
    for late in (alarm("approach", "B-1", 43_000, zone="venue-1", aid="late"),  # after end
                 alarm("approach", "B-1", 35_000, zone="venue-2", aid="zone")):  # other zone
        r = score(truth, [first, excl, late, sep, off])
        assert r["warnings"]["false"] == 1, late
    # Allowed is not expected: without the separation nothing is missed.
    assert score(truth, [first, excl, off])["missed"] == 0
    # An allowance covers the event's subject only.
    r = score(truth, [first, excl, off, salarm("separation", "P-3", 60_000, subject="S-3")])
    assert r["false"] == 1


def test_cli_strict_fails_on_a_false_warning(tmp_path, capsys):
    _truth(tmp_path, [ev("silent", "B-2", 40_000, 60_000, "offline")])
    alarms = [alarm("offline", "B-2", 50_000), alarm("approach", "B-5", 30_000, zone="venue-5")]
    (tmp_path / "alarms.jsonl").write_bytes(b"\n".join(orjson.dumps(a) for a in alarms))
    args = ["score", "--truth", str(tmp_path / "truth.jsonl"), "--alarms",
            str(tmp_path / "alarms.jsonl")]
    assert emfence_main(args) == 0
    out = capsys.readouterr().out
    assert "warnings: expected 0  matched 0  missed 0  false 1" in out
    assert "FALSE  warning approach for B-5" in out
    assert emfence_main(args + ["--strict"]) == 1
    assert emfence_main(args + ["--json"]) == 0
    result = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["false"] == 0 and result["warnings"]["false"] == 1
    assert T0 <= result["run"]["start"]


TYPES = ("outbound", "exclusion", "offline", "separation", "no_fix", "power_off", "approach",
         "proximity", "contact")


@st.composite
def truth_and_alarms(draw):
    """Truth events of every kind (each subject one event, one or two devices) and, per
    event, the alarm an exact engine raises: at a random time in its window, on the
    subject (separation, contact) or on the event's device."""
    n = draw(st.integers(1, 12))
    events, alarms = [], []
    for i in range(n):
        t = draw(st.sampled_from(TYPES))
        start = draw(st.integers(0, 80_000))
        end = start + draw(st.integers(0, 15_000))
        zone = f"z-{i}" if t in ("outbound", "exclusion", "approach") else None
        devices = [f"B-{i}"] + ([f"P-{i}"] if draw(st.booleans()) else [])
        lines = devices if t not in ("separation", "contact") else devices[:1]
        for d in lines:
            e = sev(t, d, start, end, t, zone=zone, subject=f"S-{i}")
            events.append(e)
            raiser = draw(st.sampled_from(devices)) if t in ("separation", "contact") else d
            a = salarm(t, raiser, draw(st.integers(start, end)), subject=f"S-{i}", zone_id=zone)
            a["alarm_id"] = f"a-{len(alarms)}"
            alarms.append(a)
    return events, alarms


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=truth_and_alarms(), drop=st.integers(0, 10_000), stray=st.sampled_from(TYPES))
def test_property_exact_alarms_score_perfectly_and_each_change_counts(tmp_path, data, drop,
                                                                       stray):
    events, alarms = data
    truth = _truth(tmp_path, events)
    is_warn = [a["type"] == "approach" for a in alarms]
    r = score(truth, alarms)
    w = r["warnings"]
    assert (r["missed"], r["false"], w["missed"], w["false"]) == (0, 0, 0, 0)
    assert r["matched"] == is_warn.count(False) and w["matched"] == is_warn.count(True)
    # Without one alarm, exactly its event is missed (as alarm or as warning).
    k = drop % len(alarms)
    r = score(truth, alarms[:k] + alarms[k + 1:])
    assert (r["missed"], r["warnings"]["missed"]) == ((0, 1) if is_warn[k] else (1, 0))
    assert r["false"] == r["warnings"]["false"] == 0
    # One alarm nobody injected (another subject) is exactly one false alarm or warning.
    extra = salarm(stray, "B-99", 50_000, subject="S-99", zone_id="z-99", alarm_id="stray")
    r = score(truth, alarms + [extra])
    assert (r["false"], r["warnings"]["false"]) == ((0, 1) if stray == "approach" else (1, 0))
    assert r["missed"] == r["warnings"]["missed"] == 0
