"""The device-rule scenario of issue 14 (foil on a bracelet, a clean power-off) through
the real engine (`emfence replay`, receive time = slot time) and `emfence score`: every
no_fix and power_off expected is raised and cleared, and nothing else is raised (an
offline during the power-off would be a false alarm)."""

from __future__ import annotations

import orjson
from sim_helpers import START_MS, fleet

from emfence.config import config_from_dict
from emfence.replay import main as replay_main
from simulators.events import DEVICE_RULE_EVENTS
from simulators.scenario import Simulation
from simulators.score import read_alarms, read_truth, score

RULES = {"offline_after_s": {"strict": 10, "ordinary": 15, "lenient": 20},
         "no_fix_after_s": {"strict": 12, "ordinary": 18, "lenient": 24}}
TOML = ("[rules.offline_after_s]\nstrict = 10\nordinary = 15\nlenient = 20\n"
        "[rules.no_fix_after_s]\nstrict = 12\nordinary = 18\nlenient = 24\n")


def test_foil_and_power_off_are_scored_with_no_miss_and_no_false_alarm(tmp_path):
    gen, _, fl = fleet(150, 2, None)
    zp, sp = gen.write(tmp_path / "fleet")
    sim = Simulation(fl, rate=150.0, duration_s=120.0, start_ms=START_MS,
                     config=config_from_dict({"rules": RULES}), scenario="device_rules",
                     seed=3, time_scale=30.0)
    assert not sim.skipped, sim.skipped
    assert {e.what for e in sim.truth} == set(DEVICE_RULE_EVENTS)
    (tmp_path / "fixes.jsonl").write_bytes(b"\n".join(sim.replay_lines()) + b"\n")
    (tmp_path / "c.toml").write_text(TOML)
    head = {"what": "run", "start": sim.start_ms, "end": sim.end_ms, "scenario": sim.scenario}
    (tmp_path / "truth.jsonl").write_bytes(
        b"\n".join([orjson.dumps(head)] + [e.to_json() for e in sim.truth]) + b"\n")
    rc = replay_main(["--zones", str(zp), "--subjects", str(sp),
                      "--fixes", str(tmp_path / "fixes.jsonl"),
                      "--out", str(tmp_path / "alarms.jsonl"), "--config", str(tmp_path / "c.toml"),
                      "--until", str(sim.end_ms)])
    assert rc == 0
    alarms = read_alarms(str(tmp_path / "alarms.jsonl"))
    result = score(read_truth(tmp_path / "truth.jsonl"), alarms)
    assert result["expected"] >= 4
    assert result["by_type"]["no_fix"]["matched"] >= 1
    assert result["by_type"]["power_off"]["matched"] >= 1
    assert result["missed"] == 0, result["missed_events"]
    assert result["false"] == 0, result["false_alarms"]
    assert result["not_cleared"] == 0, result["not_cleared_alarms"]
    assert not any(a["type"] == "offline" for a in alarms)  # held back by power_off
