"""The engine's per-batch path runs only serial kernels: no numba parallel region (whose
worker threads would spin after it and take CPU from the live service's event loop)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

from engine_helpers import circle_feature, compiled, county_feature

ROOT = Path(__file__).resolve().parent.parent.parent

SCRIPT = textwrap.dedent("""
    import pickle, sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import numba
    from numba.np.ufunc import parallel
    from engine_helpers import T0
    from emfence.config import Config
    from engine import Engine, load_registry

    # Compiling zones uses geofence's parallel kernels (start-up, not a batch): the zones
    # were compiled by the test and are unpickled here.
    with open({zones!r}, "rb") as fh:
        zones = pickle.load(fh)
    subjects = [{{"subject_id": f"S-{{s}}", "region": "330723", "level": "strict",
                 "devices": [{{"device_id": f"B-{{s}}"}}], "inclusion": ["330723"],
                 "exclusion": ["victim"]}} for s in range(50)]
    engine = Engine(zones, load_registry({{"subjects": subjects}}, zones), Config())
    before = parallel._is_initialized
    rng = np.random.default_rng(1)
    n = 30_000  # above geofence's threshold for parallel GCJ-02 batches
    dev = rng.integers(0, 50, n).astype(np.int32)
    ts = T0 + np.arange(n, dtype=np.int64) * 1000
    lon = rng.uniform(119.0, 119.6, n)
    lat = rng.uniform(28.4, 28.9, n)
    coord = (rng.random(n) < 0.5).astype(np.uint8)  # GCJ-02 fixes are converted in the kernel
    events = engine.process_fixes(dev, ts, lat, lon, np.full(n, 10.0), coord, ts)
    engine.process_statuses(dev[:100], ts[:100] + 1, ts[:100] + 1, np.full(100, 10.0),
                            np.ones(100, np.int8), np.full(100, -1, np.int8))
    engine.sweep(int(ts[-1]) + 10**8)
    kinds = engine.process_records(np.zeros(3, np.uint8), dev[:3], ts[:3] + 10**9,
                                   ts[:3] + 10**9, lat[:3], lon[:3], np.full(3, 5.0),
                                   coord[:3], np.full(3, np.nan), np.full(3, -1, np.int8),
                                   clock_now_ms=int(ts[-1]))
    print(before, parallel._is_initialized, len(events), engine.counters["fixes"])
""")


def test_batches_and_sweeps_start_no_parallel_region(tmp_path):
    zones = compiled([county_feature("330723"), circle_feature("victim", 119.27, 28.61, 500.0)])
    path = tmp_path / "zones.pickle"
    path.write_bytes(pickle.dumps(zones))
    script = SCRIPT.format(tests=str(ROOT / "tests" / "engine"), zones=str(path))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    before, after, n_events, n_fixes = out
    # numba's thread pool is launched by the first parallel region of the process: it was
    # not running after start-up, and the batches, statuses and sweeps did not launch it.
    assert before == "False" and after == "False"
    assert int(n_events) > 0 and int(n_fixes) == 30_003
