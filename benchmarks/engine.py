"""Engine benchmark: rule kernels, offline sweep, state size, replay against parsing.

    python -m benchmarks.engine --json

Measures, in one run and on one core (the rule kernel is serial; NUMBA_NUM_THREADS=1 is
set before numba loads so nothing else runs in parallel either):

- ``process_batch``: fixes/s through ``Engine.process_fixes`` (kernels + state machine +
  event conversion, no I/O) with ``--devices`` devices on real county boundaries (the
  157 counties of Henan, GCJ-02 outlines converted on load), one exclusion circle per
  subject, fixes mostly inside the county and some near the circle or outside; in
  live-sized micro-batches (2 000) and large batches (100 000);
- small batches: microseconds per ``Engine.process_fixes`` and ``Engine.process_records``
  call of 1, 10 and 100 scattered fixes (the live service's micro-batches at low load:
  the fixed cost per call is latency on every message);
- ``sweep``: ms per offline sweep over ``--sweep-devices`` devices: a full pass with
  nothing due (the worst case that emits nothing), a full pass raising 1 %, and the
  early-out when nothing can be due;
- bytes of state per device (measured from the arrays);
- ``emfence replay`` on a generated file against reading + ``orjson.loads`` of every
  line (parse-only) and against parse + the wire-contract validation (``ingest.decode``):
  lines/s of each and the ratios; the engine is built before the replay's clock starts
  and its build time is reported on its own (``--only replay`` runs just this case).

Targets (docs/DESIGN): >= 2 M fixes/s per core with 100 k devices, sweep of 1 M devices
<= 5 ms, <= 256 bytes per device.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import gc
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks.engine_fleet import T0, arrival_order, build_fleet, make_fixes


def _timed_engine_class():
    """Engine that also adds up the time spent turning event rows into dicts (the Python
    part of a batch), so a run can say how its time splits between kernel and events."""
    from engine import Engine

    class TimedEngine(Engine):
        dicts_s = 0.0

        def _to_dicts(self, ev_i, ev_f, n):
            t = time.perf_counter()
            out = super()._to_dicts(ev_i, ev_f, n)
            self.dicts_s += time.perf_counter() - t
            return out

    return TimedEngine


# Every timed loop starts after a full collection: the setup (fleet, registry, a fresh
# Engine) leaves ~0.5 M objects for the collector, and a full collection over them that
# happened to fall into a timed loop cost up to 0.4 s of a 1 s run (gc.callbacks).
# Collections the timed work causes itself still count: the collector stays on.
def bench_batch(zones, subjects, fixes, batch: int, repeat: int, label: str) -> dict:
    """Steady state: the first round (one fix per device, every device's first full
    evaluation) is processed untimed, then the remaining rounds are timed in batches.
    ``event_dicts_share``: the share of the best run's time spent building event dicts."""
    from emfence.config import Config
    from engine import load_registry

    Engine = _timed_engine_class()
    registry = load_registry(subjects, zones)
    dev, ts, lat, lon, acc, coord, rx = fixes
    n = len(dev)
    warm = min(registry.n_devices, n // 2)
    best = None
    n_events = 0
    engine = None
    dicts_s = 0.0
    for _ in range(repeat):
        engine = Engine(zones, registry, Config())
        engine.process_fixes(dev[:warm], ts[:warm], lat[:warm], lon[:warm], acc[:warm],
                             coord[:warm], rx[:warm])
        before = engine.counters
        engine.dicts_s = 0.0
        gc.collect()  # no collection of the setup's garbage in the timed loop
        t = time.perf_counter()
        events = 0
        for i in range(warm, n, batch):
            j = min(i + batch, n)
            events += len(engine.process_fixes(dev[i:j], ts[i:j], lat[i:j], lon[i:j], acc[i:j],
                                               coord[i:j], rx[i:j]))
        dt = time.perf_counter() - t
        if best is None or dt < best:
            best, dicts_s = dt, engine.dicts_s
        n_events = events
    c = engine.counters
    timed_fixes = max(c["fixes"] - before["fixes"], 1)
    settled = (c["settled_fixes"] - before["settled_fixes"]) / timed_fixes
    grid = (c.get("grid_fixes", 0) - before.get("grid_fixes", 0)) / timed_fixes
    return {"tracks": label, "batch": batch, "fixes": n - warm, "seconds": round(best, 4),
            "fixes_per_s": round((n - warm) / best), "events": n_events,
            "settled_share": round(settled, 3), "grid_share": round(grid, 3),
            "event_dicts_share": round(dicts_s / best, 3),
            "bytes_per_device": round(engine.bytes_per_device(), 1)}


def bench_small(zones, subjects, fixes, calls: int = 2000) -> dict:
    """Median microseconds per call for batches of 1, 10 and 100 fixes (scattered, after
    the warm-up round), through process_fixes and through process_records (the live
    service's call, fixes given as records)."""
    from emfence.config import Config
    from engine import Engine, load_registry

    registry = load_registry(subjects, zones)
    dev, ts, lat, lon, acc, coord, rx = fixes
    warm = min(registry.n_devices, len(dev) // 2)
    engine = Engine(zones, registry, Config())
    engine.process_fixes(dev[:warm], ts[:warm], lat[:warm], lon[:warm], acc[:warm],
                         coord[:warm], rx[:warm])
    out = {}
    i = warm
    for size in (1, 10, 100):
        k = max(calls // size, 50) if size > 1 else calls
        for api in ("process_fixes", "process_records"):
            times = []
            for _ in range(k):
                if i + size > len(dev):
                    i = warm
                sl = slice(i, i + size)
                i += size
                cols = (dev[sl], ts[sl], lat[sl], lon[sl], acc[sl], coord[sl], rx[sl])
                if api == "process_fixes":
                    t = time.perf_counter()
                    engine.process_fixes(*cols)
                    times.append(time.perf_counter() - t)
                else:
                    kind = np.zeros(size, np.uint8)
                    battery = np.full(size, np.nan)
                    strap = np.full(size, -1, np.int8)
                    t = time.perf_counter()
                    engine.process_records(kind, dev[sl], ts[sl], rx[sl], lat[sl], lon[sl],
                                           acc[sl], coord[sl], battery, strap)
                    times.append(time.perf_counter() - t)
            out[f"{api}_{size}_us"] = round(statistics.median(times) * 1e6, 1)
    return out


def bench_shapely(zones, subjects, fixes, n: int) -> dict:
    """The same rules with shapely and a Python loop per fix (engine.shapely_core), on the
    first ``n`` fixes after the warm-up round, against Engine on the same fixes."""
    from emfence.config import Config
    from engine import Engine, load_registry
    from engine.shapely_core import ShapelyEngine

    registry = load_registry(subjects, zones)
    dev, ts, lat, lon, acc, coord, rx = fixes
    warm = min(registry.n_devices, len(dev) // 2)
    out = {}
    for name, cls in (("shapely", ShapelyEngine), ("numba", Engine)):
        engine = cls(zones, registry, Config())
        engine.process_fixes(dev[:warm], ts[:warm], lat[:warm], lon[:warm], acc[:warm],
                             coord[:warm], rx[:warm])
        sl = slice(warm, warm + n)
        t = time.perf_counter()
        events = engine.process_fixes(dev[sl], ts[sl], lat[sl], lon[sl], acc[sl], coord[sl],
                                      rx[sl])
        dt = time.perf_counter() - t
        out[f"{name}_fixes_per_s"] = round(n / dt)
        out[f"{name}_events"] = len(events)
    out["fixes"] = n
    out["numba_vs_shapely"] = round(out["numba_fixes_per_s"] / out["shapely_fixes_per_s"], 1)
    return out


def bench_sweep(n_devices: int, repeat: int) -> dict:
    from engine import kernels as K
    from engine.state import new_state

    rng = np.random.default_rng(3)
    st = new_state(n_devices, 0)
    now = T0 + 10_000_000
    base_deadline = now + rng.integers(1, 3_600_000, n_devices)
    counters = np.zeros(K.N_COUNTERS, np.int64)
    ev_i, ev_f = K.new_events(n_devices // 50)
    K.sweep(st, now, ev_i, ev_f, counters)  # compile/load

    def timed(prepare) -> list[float]:
        out = []
        for _ in range(repeat):
            prepare()
            t = time.perf_counter()
            K.sweep(st, now, ev_i, ev_f, counters)
            out.append((time.perf_counter() - t) * 1000)
        return out

    def nothing_due_stale_floor():
        st.deadline_ms[:] = base_deadline
        st.floor_ms[0] = 0  # force the full pass: the floor says "maybe due"

    due = rng.random(n_devices) < 0.01

    def one_pct_due():
        st.deadline_ms[:] = base_deadline
        st.deadline_ms[due] = now - 1000
        st.offline_at_ms[:] = K.NONE_MS
        st.floor_ms[0] = 0

    def floor_valid():
        st.deadline_ms[:] = base_deadline
        st.floor_ms[0] = base_deadline.min()

    full = timed(nothing_due_stale_floor)
    raising = timed(one_pct_due)
    early = timed(floor_valid)
    return {"devices": n_devices,
            "full_pass_ms_median": round(statistics.median(full), 3),
            "full_pass_ms_max": round(max(full), 3),
            "full_pass_1pct_due_ms_median": round(statistics.median(raising), 3),
            "raised_per_sweep": int(due.sum()),
            "early_out_ms_median": round(statistics.median(early), 4)}


def write_replay_file(path: Path, fixes, registry, n_lines: int) -> None:
    dev, ts, lat, lon, acc, _, rx = fixes
    ids = registry.device_ids
    with open(path, "wb") as fh:
        for i in range(n_lines):
            d = int(dev[i])
            if i % 20 == 19:
                rec = {"device_id": ids[d], "ts": int(ts[i]), "battery": 80, "strap": "ok",
                       "rx": int(rx[i])}
            else:
                rec = {"device_id": ids[d], "ts": int(ts[i]), "lat": round(float(lat[i]), 6),
                       "lon": round(float(lon[i]), 6), "acc": float(acc[i]), "rx": int(rx[i])}
            fh.write(orjson.dumps(rec) + b"\n")


def bench_replay(zones, subjects, fixes, n_lines: int, repeat: int) -> dict:
    from emfence.config import Config
    from emfence.replay import replay
    from engine import Engine, load_registry
    from ingest.decode import parse_fix, parse_status

    registry = load_registry(subjects, zones)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fixes.jsonl"
        write_replay_file(path, fixes, registry, n_lines)
        size = path.stat().st_size

        def parse_only():
            loads = orjson.loads
            with open(path, "rb") as fh:
                for line in fh:
                    loads(line)

        def parse_validate():
            loads = orjson.loads
            with open(path, "rb") as fh:
                for line in fh:
                    obj = loads(line)
                    if "lat" in obj:
                        parse_fix(obj, where="")
                    else:
                        parse_status(obj, where="")

        def full_replay():
            # The engine (register, zones, relation pairs: a fixed cost, not per line) is
            # built before the clock starts and timed on its own (engine_build_s).
            engine = Engine(zones, registry, Config())
            t = time.perf_counter()
            with open(path, "rb") as fh:
                replay(fh, engine, io.BytesIO(), config=Config())
            return time.perf_counter() - t

        def engine_build():
            Engine(zones, registry, Config())

        full_replay()  # compile/load
        times = {}
        for _ in range(repeat):  # alternating, best of each
            for name, fn in (("parse_only", parse_only), ("parse_validate", parse_validate),
                             ("replay", full_replay), ("engine_build", engine_build)):
                gc.collect()
                t = time.perf_counter()
                inner = fn()
                dt = inner if inner is not None else time.perf_counter() - t
                times[name] = min(times.get(name, dt), dt)
    with_build = times["replay"] + times["engine_build"]
    return {"lines": n_lines, "file_mb": round(size / 1e6, 1),
            "parse_only_lines_per_s": round(n_lines / times["parse_only"]),
            "parse_validate_lines_per_s": round(n_lines / times["parse_validate"]),
            "replay_lines_per_s": round(n_lines / times["replay"]),
            "engine_build_s": round(times["engine_build"], 3),
            "replay_vs_parse_only": round(times["parse_only"] / times["replay"], 3),
            "replay_with_engine_build_vs_parse_only": round(times["parse_only"] / with_build, 3),
            "replay_vs_parse_validate": round(times["parse_validate"] / times["replay"], 3)}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--fixes", type=int, default=1_000_000)
    p.add_argument("--circles", type=int, default=2000,
                   help="exclusion circles shared by subjects")
    p.add_argument("--sweep-devices", type=int, default=1_000_000)
    p.add_argument("--replay-lines", type=int, default=300_000)
    p.add_argument("--shapely-fixes", type=int, default=20_000,
                   help="fixes for the ShapelyEngine comparison (0: skip)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", choices=("replay",),
                   help="run only this case (replay: the fleet, the walking fixes and the "
                        "replay comparison; nothing else is built or timed)")
    p.add_argument("--order", choices=("device", "random"), default="device",
                   help="each round of fixes in device index order (default: the figures "
                        "recorded so far) or in a random order, as a live fleet's arrive "
                        "(a million devices: 2.7-2.9x slower, benchmarks/README.md)")
    p.add_argument("--phones", choices=("carried", "independent"), default="carried",
                   help="each subject's phone carried with the bracelet (default) or moving "
                        "on its own: every subject separated, a storm of separation alarms")
    return p.parse_args(argv)


def run_replay_only(args: argparse.Namespace) -> dict:
    """``--only replay``: the replay comparison alone, on the same fleet and fixes."""
    zones, subjects, pools, county_of, circle_xy, circle_of = build_fleet(args.devices,
                                                                          args.circles)
    lines = [z.geometry.boundary for z in zones.zones[: len(pools)]]
    walking = make_fixes(args.fixes, args.devices, pools, county_of, circle_xy, circle_of, True,
                         lines, carried=args.phones == "carried")
    return {"benchmark": "engine", "only": "replay", "devices": args.devices,
            "replay": bench_replay(zones, subjects, walking,
                                   min(args.replay_lines, args.fixes), args.repeat)}


def run(args: argparse.Namespace) -> dict:
    """Every measurement of the benchmark, as the dict ``--json`` prints."""
    import numba

    if args.only == "replay":
        return run_replay_only(args)
    t = time.perf_counter()
    zones, subjects, pools, county_of, circle_xy, circle_of = build_fleet(args.devices,
                                                                          args.circles)
    lines = [z.geometry.boundary for z in zones.zones[: len(pools)]]
    carried = args.phones == "carried"
    walking = make_fixes(args.fixes, args.devices, pools, county_of, circle_xy, circle_of, True,
                         lines, carried=carried)
    scattered = make_fixes(args.fixes, args.devices, pools, county_of, circle_xy, circle_of, False,
                           carried=carried)
    if args.order == "random":
        walking = arrival_order(walking, args.devices)
        scattered = arrival_order(scattered, args.devices)
    setup_s = time.perf_counter() - t
    result = {
        "benchmark": "engine",
        "order": args.order,
        "numba_threads": numba.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "devices": args.devices,
        "phones": args.phones,
        "zones": len(zones.zone_ids),
        "setup_s": round(setup_s, 1),
        "process_batch": [bench_batch(zones, subjects, fx, b, args.repeat, label)
                          for label, fx in (("walking", walking), ("scattered", scattered))
                          for b in (2000, 100_000)],
        "small_batches": bench_small(zones, subjects, scattered),
        "sweep": bench_sweep(args.sweep_devices, max(args.repeat, 20)),
        "replay": bench_replay(zones, subjects, walking, min(args.replay_lines, args.fixes),
                               args.repeat),
    }
    if args.shapely_fixes:
        n = min(args.shapely_fixes, args.fixes - min(args.devices, args.fixes // 2))
        result["shapely_core"] = {label: bench_shapely(zones, subjects, fx, n)
                                  for label, fx in (("walking", walking), ("scattered", scattered))}
    result["bytes_per_device"] = result["process_batch"][0]["bytes_per_device"]
    result["targets"] = {
        "fixes_per_s_min": 2_000_000,
        # walking, 100 k
        "fixes_per_s_met": result["process_batch"][1]["fixes_per_s"] >= 2_000_000,
        "scattered_fixes_per_s_met": result["process_batch"][3]["fixes_per_s"] >= 2_000_000,
        "sweep_ms_max": 5.0,
        "sweep_ms_met": result["sweep"]["full_pass_ms_median"] <= 5.0,
        "bytes_per_device_max": 256,
        "bytes_per_device_met": result["bytes_per_device"] <= 256,
    }
    return result


def format_text(result: dict) -> str:
    """The readable table of a :func:`run` result."""
    if result.get("only") == "replay":
        return _format_replay(result["replay"])
    lines = [(f"engine benchmark: {result['devices']} devices, {result['zones']} zones, "
              f"numba threads {result['numba_threads']}")]
    for r in result["process_batch"]:
        lines.append(f"  process_batch {r['tracks']:<9} batch {r['batch']:>6}: "
                     f"{r['fixes_per_s'] / 1e6:6.2f} M fixes/s  "
                     f"(settled {r['settled_share']:.0%}, "
                     f"grid {r['grid_share']:.0%}, {r['events']} events, "
                     f"{r['event_dicts_share']:.0%} of the time in event dicts)")
    sb = result["small_batches"]
    lines.append("  small batches (us per call, median): " + ", ".join(
        f"{k.removesuffix('_us')} {v}" for k, v in sb.items()))
    sw = result["sweep"]
    lines.append(f"  sweep {sw['devices']} devices: full pass {sw['full_pass_ms_median']} ms "
                 f"(max {sw['full_pass_ms_max']}), 1 % due "
                 f"{sw['full_pass_1pct_due_ms_median']} ms, "
                 f"nothing due {sw['early_out_ms_median']} ms")
    lines.append(f"  state: {result['bytes_per_device']} bytes per device")
    lines.append(_format_replay(result["replay"]))
    for label, r in result.get("shapely_core", {}).items():
        lines.append(f"  shapely_core {label}: {r['shapely_fixes_per_s']} fixes/s vs numba "
                     f"{r['numba_fixes_per_s']} ({r['numba_vs_shapely']}x)")
    lines.append(f"  targets met: {result['targets']}")
    return "\n".join(lines)


def _format_replay(rp: dict) -> str:
    return (f"  replay {rp['lines']} lines: {rp['replay_lines_per_s']} lines/s; parse only "
            f"{rp['parse_only_lines_per_s']} ({rp['replay_vs_parse_only']}x), "
            f"parse + validate "
            f"{rp['parse_validate_lines_per_s']} ({rp['replay_vs_parse_validate']}x); "
            f"engine built in {rp['engine_build_s']} s beforehand (with it: "
            f"{rp['replay_with_engine_build_vs_parse_only']}x parse only)")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    result = run(args)
    print(json.dumps(result) if args.json else format_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
