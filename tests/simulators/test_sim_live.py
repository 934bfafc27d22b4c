"""End to end on one machine: simulator -> mosquitto (project config + ACL) ->
`emfence run` (subprocess, SQLite store) -> alarms -> `emfence score`: nothing missed,
nothing false, every alarm cleared, from the MQTT alarm feed and from the store."""

from __future__ import annotations

import asyncio
import time

import pytest
from sim_helpers import FAST_TOML

from emfence.config import load_config
from simulators.cli import load_simulation, run_publish
from simulators.live import prepare_run_dir, start_rig
from simulators.score import read_alarms, read_truth, score

pytestmark = pytest.mark.mqtt

CONFIG = FAST_TOML + "\n[ingest]\nrestart_grace_s = 3\nhealth_interval_s = 1\n"


def test_simulator_engine_store_score(tmp_path):
    run = tmp_path / "run"
    zones, subjects, config_path, secret, passwords = prepare_run_dir(
        run, subjects_n=40, seed=4, counties=["411303", "411302"], config_toml=CONFIG)
    sim = load_simulation(zones, subjects, rate=60.0, duration_s=26.0, scenario="mixed", seed=4,
                          config=load_config(config_path), time_scale=30.0, events_per_kind=1,
                          start_ms=int(time.time() * 1000) + 5_000)
    expected = {e.expect for e in sim.truth if e.expect}
    assert expected == {"outbound", "exclusion", "offline", "tamper", "low_battery"}, sim.skipped
    rig = start_rig(run, zones, subjects, config_path, secret, passwords)
    try:
        stats = asyncio.run(run_publish(
            sim, rig.host, rig.port, credentials=rig.credentials(sim.fleet.device_ids),
            truth=run / "truth.jsonl", alarms_out=run / "alarms.jsonl",
            alarms_user="emfence-console",
            alarms_password=passwords["emfence-console"], linger_s=4.0, progress=False))
    finally:
        code = rig.stop_engine()
        rig.broker.close()
    assert code == 0, rig.engine_log_tail()
    assert stats.failed == 0 and stats.acked == stats.sent
    truth = read_truth(run / "truth.jsonl")
    for source in (str(run / "alarms.jsonl"), rig.store_url):
        result = score(truth, read_alarms(source))
        assert result["expected"] == sum(1 for e in sim.truth if e.expect)
        assert result["missed"] == 0, (source, result["missed_events"])
        assert result["false"] == 0, (source, result["false_alarms"])
        assert result["not_cleared"] == 0, (source, result["not_cleared_alarms"])
        assert result["latency"]["n"] == result["matched"]


@pytest.mark.slow
def test_a_start_overrun_by_set_up_still_scores_exactly(tmp_path):
    """`make demo`'s cold start: set-up took longer than planned, so the publisher moves the
    whole run later; the truth written must be the run that happened (else alarms at the
    real times are scored as missed plus false), and the clock starts there."""
    run = tmp_path / "run"
    zones, subjects, config_path, secret, passwords = prepare_run_dir(
        run, subjects_n=30, seed=5, counties=["411303", "411302"], config_toml=CONFIG)
    planned = int(time.time() * 1000) - 15_000  # set-up "overran" by 15 s
    sim = load_simulation(zones, subjects, rate=60.0, duration_s=20.0, scenario="mixed", seed=5,
                          config=load_config(config_path), time_scale=30.0, events_per_kind=1,
                          start_ms=planned)
    started: list[int] = []
    rig = start_rig(run, zones, subjects, config_path, secret, passwords)
    try:
        stats = asyncio.run(run_publish(
            sim, rig.host, rig.port, credentials=rig.credentials(sim.fleet.device_ids),
            truth=run / "truth.jsonl", alarms_out=run / "alarms.jsonl",
            alarms_user="emfence-console",
            alarms_password=passwords["emfence-console"], linger_s=4.0, progress=False,
            on_start=lambda s: started.append(s.start_ms)))
    finally:
        code = rig.stop_engine()
        rig.broker.close()
    assert code == 0, rig.engine_log_tail()
    assert stats.failed == 0 and stats.acked == stats.sent
    truth = read_truth(run / "truth.jsonl")
    assert started == [truth.start] and truth.start >= planned + 15_000
    result = score(truth, read_alarms(str(run / "alarms.jsonl")))
    assert result["expected"] == sum(1 for e in sim.truth if e.expect) > 0
    assert (result["missed"], result["false"]) == (0, 0), (result["missed_events"],
                                                           result["false_alarms"])
