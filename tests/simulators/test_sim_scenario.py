"""Scenarios: payloads decode under the wire contract, injected events do what the
ground truth says, and the real engine (`emfence replay`) agrees with the truth."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson
import pytest
import shapely
from sim_helpers import FAST_TOML, START_MS, fast_config, fleet

from emfence.replay import main as replay_main
from ingest.decode import PayloadError, decode_fix_payload, decode_status_payload, parse_topic
from simulators.cli import write_truth_header
from simulators.events import EXPECTED
from simulators.scenario import Simulation
from simulators.score import read_alarms, read_truth, score


def _sim(n=150, seed=2, scenario="mixed", rate=150.0, duration_s=90.0, **kw):
    _, _, fl = fleet(n, seed, None)
    return Simulation(fl, rate=rate, duration_s=duration_s, start_ms=START_MS, config=fast_config(),
                      scenario=scenario, seed=seed, time_scale=30.0, **kw)


def test_every_payload_decodes_except_the_malformed_ones():
    sim = _sim()
    cfg = fast_config().ingest
    msgs = sim.messages(0, sim.total_slots)
    kinds = Counter(m.kind for m in msgs)
    assert (kinds["fix"] > 0 and kinds["status"] > 0 and kinds["burst"] > 0
            and kinds["malformed"] > 0)
    ids = set(sim.fleet.device_ids)
    for m in msgs:
        region, device_id, kind = parse_topic(m.topic)
        assert device_id in ids
        if m.kind == "malformed":
            with pytest.raises(PayloadError):
                decode_fix_payload(m.payload, rx_ms=m.slot_ms, config=cfg)
        elif kind == "fix":
            fixes = decode_fix_payload(m.payload, rx_ms=m.slot_ms, config=cfg)
            assert len(fixes) > 1 if m.kind == "burst" else len(fixes) == 1
            if m.kind == "burst":  # store-and-forward: old fixes, oldest first
                ts = [f.ts_ms for f in fixes]
                assert ts == sorted(ts) and ts[0] < m.slot_ms
        else:
            decode_status_payload(m.payload, rx_ms=m.slot_ms, config=cfg)
        if m.kind != "spoof":
            assert sim.fleet.device_region[sim.fleet.device_index[device_id]] == region


def test_rate_is_exact_and_devices_report_evenly():
    sim = _sim(scenario="normal", rate=200.0, duration_s=30.0)
    slots = sim.slot_ms(np.arange(sim.total_slots))
    assert sim.total_slots == 6000
    assert slots[0] == START_MS and slots[-1] < START_MS + 30_000
    per_second = np.bincount((slots - START_MS) // 1000)
    assert per_second.min() == per_second.max() == 200
    msgs = sim.messages(0, sim.total_slots)
    assert len(msgs) == sim.total_slots  # no events: one message per slot
    per_device = Counter(parse_topic(m.topic)[1] for m in msgs)
    assert max(per_device.values()) - min(per_device.values()) <= 1


def test_a_rate_too_low_for_the_offline_threshold_is_refused():
    with pytest.raises(ValueError, match="offline threshold"):
        _sim(scenario="normal", rate=10.0)  # ~200 devices / 10 per s = 20 s > 10 s / 2


def test_same_seed_same_messages():
    a = _sim(seed=3)
    b = _sim(seed=3)
    assert [m.payload for m in a.messages(0, 3000)] == [m.payload for m in b.messages(0, 3000)]
    assert a.truth_lines() == b.truth_lines()


def test_excursion_and_exclusion_truth_windows_match_the_true_positions():
    sim = _sim(scenario="excursions", events_per_kind=3)
    fl = sim.fleet
    kinds = Counter(e.what for e in sim.truth)
    assert kinds["excursion"] >= 3 and kinds["exclusion_entry"] >= 3
    for e in sim.truth:
        s = fl.subject_ids.index(e.subject_id)
        t = np.linspace(e.start, e.end, 200).astype(np.int64)
        x, y, kind = sim.model.true_position_m(np.full(len(t), s), t)
        pts = shapely.points(x, y)
        assert (kind[1:-1] == 2).all()
        if e.what == "excursion":
            d = shapely.distance(pts, fl.allowed_any_m[s])
            assert d.max() >= 500  # well beyond buffer and any GPS accuracy
            assert d[0] == 0 and d[-1] == 0
        else:
            zone = dict(fl.exclusions_m[s])[e.zone_id]
            inside = shapely.contains(zone, pts)
            assert inside.any() and not inside[0] and not inside[-1]
        # Outside its window the subject is back inside, clear of exclusions.
        after = np.arange(e.end + 1, e.end + 60_000, 500)
        x, y, _ = sim.model.true_position_m(np.full(len(after), s), after)
        assert shapely.contains_xy(fl.inclusion_m[s], x, y).all()


def test_the_engine_agrees_with_the_ground_truth(tmp_path):
    """Simulator -> `emfence replay` (the real engine, receive time = slot time) -> score:
    every expected alarm raised and cleared, nothing else raised."""
    gen, _, fl = fleet(150, 2, None)
    zp, sp = gen.write(tmp_path / "fleet")
    sim = Simulation(fl, rate=150.0, duration_s=90.0, start_ms=START_MS, config=fast_config(),
                     scenario="mixed", seed=2, time_scale=30.0)
    assert not sim.skipped
    expected_kinds = {e.expect for e in sim.truth if e.expect}
    assert expected_kinds == set(EXPECTED.values())
    (tmp_path / "fixes.jsonl").write_bytes(b"\n".join(sim.replay_lines()) + b"\n")
    (tmp_path / "c.toml").write_text(FAST_TOML)
    write_truth_header(tmp_path / "truth.jsonl", sim)
    rc = replay_main(["--zones", str(zp), "--subjects", str(sp),
                      "--fixes", str(tmp_path / "fixes.jsonl"),
                      "--out", str(tmp_path / "alarms.jsonl"), "--config", str(tmp_path / "c.toml"),
                      "--until", str(sim.end_ms)])
    assert rc == 0
    result = score(read_truth(tmp_path / "truth.jsonl"),
                   read_alarms(str(tmp_path / "alarms.jsonl")))
    assert result["expected"] >= 10
    assert result["missed"] == 0, result["missed_events"]
    assert result["false"] == 0, result["false_alarms"]
    assert result["not_cleared"] == 0, result["not_cleared_alarms"]


def test_truth_file_round_trips(tmp_path):
    sim = _sim()
    write_truth_header(tmp_path / "t.jsonl", sim)
    truth = read_truth(tmp_path / "t.jsonl")
    assert truth.start == START_MS and truth.end == sim.end_ms
    assert len(truth.events) == len(sim.truth)
    first = orjson.loads((tmp_path / "t.jsonl").read_bytes().splitlines()[1])
    assert set(first) == {"what", "device_id", "subject_id", "zone_id", "start", "end", "expect",
                          "detail"}


def test_cli_replay_out_is_deterministic_and_replays_cleanly(tmp_path):
    from emfence.cli import main as emfence_main

    gen, _, _ = fleet(60, 8, ("411303",))
    zp, sp = gen.write(tmp_path / "fleet")
    (tmp_path / "c.toml").write_text(FAST_TOML)
    base = ["simulate", "--zones", str(zp), "--subjects", str(sp), "--rate", "40",
            "--duration", "60",
            "--scenario", "mixed", "--seed", "8", "--start", str(START_MS), "--config",
            str(tmp_path / "c.toml"), "--time-scale", "30", "--events-per-kind", "1"]
    for name in ("a", "b"):
        assert emfence_main(base + ["--replay-out", str(tmp_path / f"{name}.jsonl"),
                                    "--truth", str(tmp_path / f"{name}.truth")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.truth").read_bytes() == (tmp_path / "b.truth").read_bytes()
    assert replay_main(["--zones", str(zp), "--subjects", str(sp),
                        "--fixes", str(tmp_path / "a.jsonl"),
                        "--out", str(tmp_path / "alarms.jsonl"),
                        "--config", str(tmp_path / "c.toml"),
                        "--until", str(START_MS + 60_000)]) == 0
    result = score(read_truth(tmp_path / "a.truth"), read_alarms(str(tmp_path / "alarms.jsonl")))
    assert result["expected"] >= 4 and result["missed"] == 0 and result["false"] == 0, result
