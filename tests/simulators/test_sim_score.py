"""`emfence score` on hand-built truth and alarms: every rule of the matching."""

from __future__ import annotations

import orjson
import pytest

from emfence.cli import main as emfence_main
from simulators.score import ScoreError, read_alarms, read_truth, score

T0 = 1_763_800_000_000


def _truth(tmp_path, events, end=T0 + 100_000, run_end=None):
    lines = [{"what": "run", "start": T0, "end": end, "scenario": "hand"}] + events
    if run_end is not None:
        lines.append({"what": "run_end", "end": run_end})
    p = tmp_path / "truth.jsonl"
    p.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    return read_truth(p)


def ev(what, device, start, end, expect, zone=None):
    return {"what": what, "device_id": device, "subject_id": "S-" + device[2:], "zone_id": zone,
            "start": T0 + start, "end": T0 + end, "expect": expect, "detail": {}}


def alarm(type_, device, at, rx=None, zone=None, event="raised", aid=None):
    a = {"event": event, "alarm_id": aid or f"{device}:{type_}:{zone}:{at}", "type": type_,
         "subject_id": "S-" + device[2:], "device_id": device, "zone_id": zone, "region": "411303",
         "at": T0 + at, "late": False}
    if rx is not None:
        a["rx_ms"] = T0 + rx
    return a


def cleared(a, at):
    return {**a, "event": "cleared", "at": T0 + at}


def test_matched_missed_false_and_latency(tmp_path):
    truth = _truth(tmp_path, [
        ev("excursion", "B-1", 10_000, 30_000, "outbound", "411303"),
        ev("silent", "B-2", 40_000, 60_000, "offline"),
        ev("strap_open", "B-3", 20_000, 25_000, "tamper"),      # nothing raised: missed
        ev("duplicate", "B-4", 5_000, 6_000, None),             # negative event
    ])
    a1 = alarm("outbound", "B-1", 14_000, rx=14_120, zone="411303")
    a2 = alarm("offline", "B-2", 50_000, rx=50_900)
    a3 = alarm("exclusion", "B-5", 33_000, rx=33_050, zone="victim-5")  # no truth: false
    alarms = [a1, cleared(a1, 31_000), a2, cleared(a2, 61_000), a3]
    r = score(truth, alarms)
    assert (r["expected"], r["matched"], r["missed"], r["false"]) == (3, 2, 1, 1)
    assert r["missed_events"][0]["device_id"] == "B-3"
    assert r["false_alarms"][0]["device_id"] == "B-5"
    assert r["latency"]["n"] == 2 and r["latency"]["p50_ms"] == pytest.approx(510.0)
    assert r["latency"]["max_ms"] == 900.0
    assert r["not_cleared"] == 0 and r["late"] == 0
    assert r["by_type"]["outbound"]["matched"] == 1 and r["by_type"]["tamper"]["missed"] == 1


def test_type_device_zone_and_window_must_all_match(tmp_path):
    truth = _truth(tmp_path,
                   [ev("exclusion_entry", "B-1", 10_000, 20_000, "exclusion", "victim-1")])
    for wrong in (alarm("outbound", "B-1", 12_000, zone="victim-1"),   # type
                  alarm("exclusion", "B-9", 12_000, zone="victim-1"),  # device
                  alarm("exclusion", "B-1", 12_000, zone="venue-2"),   # zone
                  alarm("exclusion", "B-1", 7_999),                    # before start - slack
                  alarm("exclusion", "B-1", 22_001, zone="victim-1")):  # after end + slack
        r = score(truth, [wrong])
        assert (r["matched"], r["missed"], r["false"]) == (0, 1, 1), wrong
    edge = alarm("exclusion", "B-1", 8_000, zone="victim-1")  # exactly start - slack
    assert score(truth, [edge])["matched"] == 1
    assert score(truth, [alarm("exclusion", "B-1", 5_000, zone="victim-1")],
                 slack_ms=5000)["matched"] == 1


def test_a_second_alarm_in_one_episode_is_false_and_redeliveries_count_once(tmp_path):
    truth = _truth(tmp_path, [ev("excursion", "B-1", 10_000, 30_000, "outbound", "411303")])
    first = alarm("outbound", "B-1", 12_000, zone="411303")
    flap = alarm("outbound", "B-1", 20_000, zone="411303")
    r = score(truth, [first, dict(first), flap])  # QoS 1 may deliver `first` twice
    assert (r["matched"], r["false"], r["alarms_raised"]) == (1, 1, 2)
    assert r["false_alarms"][0]["at"] == T0 + 20_000


def test_late_not_cleared_and_alarms_outside_the_run(tmp_path):
    truth = _truth(tmp_path, [ev("low_battery", "B-1", 10_000, 20_000, "low_battery"),
                              ev("silent", "B-2", 10_000, 30_000, "offline")],
                   run_end=T0 + 50_000)
    slow = alarm("low_battery", "B-1", 11_000, rx=13_500)
    on_time = alarm("offline", "B-2", 20_000, rx=20_300)
    after_run = alarm("offline", "B-3", 70_000)  # devices fall silent when the run stops
    r = score(truth, [slow, on_time, cleared(on_time, 31_000), after_run], late_ms=1000)
    assert r["late"] == 1 and r["late_alarms"][0]["device_id"] == "B-1"
    assert r["not_cleared"] == 1 and r["not_cleared_alarms"][0]["device_id"] == "B-1"
    assert r["false"] == 0 and r["alarms_in_run"] == 2
    assert truth.end == T0 + 50_000


def test_events_beyond_an_interrupted_run_are_not_scored(tmp_path):
    truth = _truth(tmp_path, [ev("silent", "B-1", 10_000, 20_000, "offline"),
                              ev("silent", "B-2", 60_000, 90_000, "offline")], run_end=T0 + 40_000)
    r = score(truth, [alarm("offline", "B-1", 15_000)])
    assert (r["expected"], r["matched"], r["missed"], r["not_scored"]) == (1, 1, 0, 1)


def test_cli_reads_jsonl_and_a_sqlite_store(tmp_path, capsys):
    from alarms.store import open_store

    truth = _truth(tmp_path, [ev("strap_open", "B-1", 10_000, 20_000, "tamper")])
    a = alarm("tamper", "B-1", 12_000, rx=12_040)
    (tmp_path / "alarms.jsonl").write_bytes(orjson.dumps(a) + b"\n"
                                            + orjson.dumps(cleared(a, 21_000)) + b"\n")
    assert emfence_main(["score", "--truth", str(tmp_path / "truth.jsonl"),
                         "--alarms", str(tmp_path / "alarms.jsonl"), "--json", "--strict"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["matched"] == 1 and out["latency"]["p50_ms"] == 40.0
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    store = open_store(url)
    engine_event = {k: v for k, v in a.items() if k != "rx_ms"}
    store.record_events([engine_event], now_ms=T0 + 12_070)
    store.close_store()
    from_store = read_alarms(url)
    assert from_store[0]["rx_ms"] == T0 + 12_070  # when the store learned of it
    r = score(truth, from_store)
    assert r["matched"] == 1 and r["latency"]["p50_ms"] == 70.0 and r["not_cleared"] == 1
    # --strict fails when something is missed.
    assert emfence_main(["score", "--truth", str(tmp_path / "truth.jsonl"), "--alarms",
                         str(tmp_path / "empty.jsonl")]) == 1  # unreadable file
    (tmp_path / "empty.jsonl").write_text("")
    assert emfence_main(["score", "--truth", str(tmp_path / "truth.jsonl"), "--alarms",
                         str(tmp_path / "empty.jsonl"), "--strict"]) == 1
    assert "MISSED tamper for B-1" in capsys.readouterr().out


def test_bad_truth_is_named(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"what": "run", "start": 1, "end": 2}\n{"what": "silent", "start": 1}\n')
    with pytest.raises(ScoreError, match=r"t.jsonl:2: .*device_id"):
        read_truth(p)
    p.write_text('{"what": "silent", "device_id": "B", "start": 1, "end": 2}\n')
    with pytest.raises(ScoreError, match="no run line"):
        read_truth(p)
    p.write_text('{"what": "run", "start": 1, "end": 2}\nnot json\n')
    with pytest.raises(ScoreError, match=r":2: not JSON"):
        read_truth(p)


def test_an_alarm_for_an_event_cut_off_by_the_stop_is_not_false(tmp_path):
    """Ctrl-C in the middle of an exclusion: the engine raised it correctly before the stop;
    the event is not scored, and neither is its alarm counted as false."""
    truth = _truth(tmp_path, [ev("enter_exclusion", "B-1", 30_000, 60_000, "exclusion", "v-1")],
                   run_end=T0 + 40_000)
    r = score(truth, [alarm("exclusion", "B-1", 31_000, zone="v-1"),
                      alarm("exclusion", "B-2", 32_000, zone="v-1")])
    assert (r["expected"], r["not_scored"], r["missed"]) == (0, 1, 0)
    assert [a["device_id"] for a in r["false_alarms"]] == ["B-2"]  # an unrelated one still is


def test_one_alarm_per_subject_matches_each_listed_device(tmp_path):
    """alarm_per = "subject": the phone's excursion is covered by the subject's alarm
    (raised by the bracelet, its clear lists both) while it was open; a device it does
    not list, or a window it was not open in, is still missed."""
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
    assert r["by_type"]["outbound"]["matched"] == 2


def test_a_warning_matching_nothing_is_not_a_false_alarm(tmp_path):
    truth = _truth(tmp_path, [ev("approach", "B-1", 10_000, 20_000, "approach", "victim-1")])
    w1 = alarm("approach", "B-1", 12_000, zone="victim-1")
    w2 = alarm("approach", "B-2", 40_000, zone="victim-2")  # no truth event: not false
    x = alarm("exclusion", "B-2", 50_000, zone="victim-2")  # an alarm: false
    r = score(truth, [w1, w2, x])
    assert (r["matched"], r["missed"], r["false"]) == (0, 0, 1)  # warnings apart
    assert r["false_alarms"][0]["type"] == "exclusion"
    assert r["warnings"]["matched"] == 1
