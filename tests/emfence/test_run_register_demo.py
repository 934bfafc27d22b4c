"""`make demo` (``python -m emfence.demo`` with its defaults) end to end: the fleet is
enrolled in the register, the engine runs from it, a leave into a neighbouring county is
approved while it runs and honoured (no outbound for that excursion), and the score
against the simulator's ground truth stays perfect."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def test_the_demo_approves_a_leave_and_the_engine_honours_it(tmp_path):
    run = tmp_path / "demo-run"
    proc = subprocess.run([sys.executable, "-m", "emfence.demo", "--run-dir", str(run)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    engine_log = (run / "engine.log").read_text()
    assert "reloaded:" in engine_log  # the approval, applied live
    [(leave_id, subject, zone, applied_s)] = re.findall(
        r"leave (\S+) of (\S+) to (\d{6}) \(\S+\) requested by demo-officer, approved by "
        r"demo-supervisor; the running engine applied it in ([\d.]+) s, no restart", out)
    assert float(applied_s) < 2.0
    assert (f"leave {leave_id} of {subject} to {zone} " in out
            and ": honoured, its excursion into the county raised no outbound alarm" in out)
    assert re.search(r"expected (\d+)  matched \1  missed 0  false 0", out), out[-2000:]
    # the demo's webhook receiver got every notification the store marked sent, signed
    [(received, dups, bad, sent, _pending)] = re.findall(
        r"webhook receiver: (\d+) notifications received \(signature checked\), (\d+) "
        r"duplicates, (\d+) bad signatures; the store: (\d+) sent, (\d+) pending", out)
    assert int(received) > 0 and int(received) == int(sent), out[-2000:]
    assert (dups, bad) == ("0", "0")
    assert out.count("webhook <- RAISED") + out.count("webhook <- CLEARED") + out.count(
        "webhook <- ESCALATED") == int(received)

    # the ground truth says so, and the alarms agree
    truth = [orjson.loads(ln) for ln in (run / "truth.jsonl").read_bytes().splitlines()]
    on_leave = [e for e in truth if e.get("what") == "excursion_on_leave"]
    assert on_leave and {e["subject_id"] for e in on_leave} == {subject}
    assert all(e["expect"] is None and e["detail"]["leave_zone"] == zone for e in on_leave)
    devices = {e["device_id"] for e in on_leave}
    alarms = [orjson.loads(ln) for ln in (run / "alarms.jsonl").read_bytes().splitlines()]
    assert not [a for a in alarms if a.get("type") == "outbound"
                and a.get("device_id") in devices]
    assert [a for a in alarms if a.get("type") == "outbound"]  # the others still raise
