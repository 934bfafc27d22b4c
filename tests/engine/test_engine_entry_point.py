"""The engine calls its kernels through native entry points resolved once (engine.native.
entry_point), not through numba's dispatcher: held here against a twin engine whose
calls go through the dispatchers, on real county boundaries, with every argument form a
caller may pass (other dtypes, read-only and strided arrays, batches of one)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from engine_helpers import T0, circle_feature, compiled, county_feature
from numba import config as numba_config

from emfence.config import Config
from engine import Engine, load_registry
from engine import kernels as K

COUNTY = "330723"


def _fleet(n_subjects: int = 12):
    county = county_feature(COUNTY)
    zones0 = compiled([county])
    geom = zones0.zones[0].geometry
    c = shapely.point_on_surface(geom)
    features = [county, circle_feature("victim", c.x, c.y, 1500.0)]
    zones = compiled(features)
    subjects = [{"subject_id": f"S-{s}", "region": COUNTY, "level": ("strict", "ordinary")[s % 2],
                 "devices": [{"device_id": f"B-{s}"}, {"device_id": f"P-{s}"}],
                 "inclusion": [COUNTY], "exclusion": ["victim"]} for s in range(n_subjects)]
    return zones, subjects, (c.x, c.y)


def _records(zones, centre, n: int, n_devices: int, seed: int):
    """Mixed fixes (scattered over the county's bbox and around the circle, some GCJ-02)
    and statuses, in arrival order, with a receive clock that sometimes jumps far ahead
    (offline raised and cleared)."""
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = zones.zones[0].geometry.bounds
    kind = (rng.random(n) < 0.15).astype(np.uint8)
    dev = rng.integers(0, n_devices, n).astype(np.int32)
    ts = T0 + np.cumsum(rng.integers(0, 40_000, n)).astype(np.int64)
    ts[rng.random(n) < 0.05] -= 120_000  # some late
    rx = ts + rng.integers(0, 3_000, n)
    rx[rng.random(n) < 0.02] += 4_000_000  # silence long enough for offline
    near = rng.random(n) < 0.3
    lon = np.where(near, centre[0] + rng.normal(0, 0.02, n),
                   rng.uniform(minx - 0.05, maxx + 0.05, n))
    lat = np.where(near, centre[1] + rng.normal(0, 0.02, n),
                   rng.uniform(miny - 0.05, maxy + 0.05, n))
    acc = rng.choice([5.0, 20.0, 80.0], n)
    coord = (rng.random(n) < 0.2).astype(np.uint8)
    battery = np.where(rng.random(n) < 0.5, rng.uniform(0, 40, n), np.nan)
    strap = rng.integers(-1, 2, n).astype(np.int8)
    return kind, dev, ts, rx, lat, lon, acc, coord, battery, strap


def _twin(engine: Engine) -> Engine:
    """The same engine calling through numba's dispatchers."""
    engine._process_batch = K.process_batch
    engine._sweep = K.sweep
    return engine


def _assert_same(a: Engine, b: Engine) -> None:
    for name in a.state._fields:
        np.testing.assert_array_equal(getattr(a.state, name), getattr(b.state, name),
                                      err_msg=name)
    assert a.counters == b.counters


@pytest.mark.skipif(numba_config.DISABLE_JIT, reason="no compiled entry points without JIT")
def test_entry_point_is_resolved_not_the_dispatcher():
    zones, subjects, _ = _fleet(2)
    e = Engine(zones, load_registry({"subjects": subjects}, zones), Config())
    assert e._process_batch is not K.process_batch
    assert e._sweep is not K.sweep
    assert type(e._process_batch).__name__ == "builtin_function_or_method"


@pytest.mark.parametrize("seed", range(3))
def test_entry_point_matches_the_dispatcher(seed):
    zones, subjects, centre = _fleet()
    registry = load_registry({"subjects": subjects}, zones)
    fast = Engine(zones, registry, Config())
    slow = _twin(Engine(zones, registry, Config()))
    recs = _records(zones, centre, 3000, registry.n_devices, seed)
    rng = np.random.default_rng(100 + seed)
    clock_fast = clock_slow = None
    got, want = [], []
    i = 0
    while i < len(recs[0]):
        j = min(i + int(rng.choice([1, 7, 100, 500])), len(recs[0]))
        part = [a[i:j] for a in recs]
        if rng.random() < 0.3:  # read-only columns (e.g. np.frombuffer of a received buffer)
            part = [np.frombuffer(a.tobytes(), dtype=a.dtype) for a in part]
        if rng.random() < 0.3:  # other dtypes and a strided view: the wrapper coerces them
            part[1] = part[1].astype(np.int64)
            part[4] = np.repeat(part[4], 2)[::2]
            part[0] = part[0].tolist()
        ev, clock_fast = fast.process_records(*part, clock_now_ms=clock_fast or int(part[3][0]))
        got += ev
        ev, clock_slow = slow.process_records(*part, clock_now_ms=clock_slow or int(part[3][0]))
        want += ev
        i = j
    end = clock_fast + 10_000_000
    got += fast.sweep(end)
    want += slow.sweep(end)
    assert got == want
    types = {(e["type"], e["event"]) for e in got}
    # The comparison covered every kind of event the kernel can emit.
    for typ in ("outbound", "exclusion", "offline", "tamper", "low_battery"):
        assert (typ, "raised") in types and (typ, "cleared") in types, typ
    _assert_same(fast, slow)


def test_fixes_and_statuses_calls_match_the_dispatcher_after_a_reload():
    zones, subjects, centre = _fleet()
    registry = load_registry({"subjects": subjects}, zones)
    fast = Engine(zones, registry, Config())
    slow = _twin(Engine(zones, registry, Config()))
    kind, dev, ts, rx, lat, lon, acc, coord, battery, strap = _records(
        zones, centre, 1200, registry.n_devices, 7)
    fx = kind == 0
    charging = np.full(int((~fx).sum()), -1, np.int8)
    for e in (fast, slow):
        e.process_fixes(dev[fx][:600], ts[fx][:600], lat[fx][:600], lon[fx][:600],
                        acc[fx][:600], coord[fx][:600], rx[fx][:600])
        e.process_statuses(dev[~fx], ts[~fx], rx[~fx], battery[~fx], strap[~fx], charging)
    # Reload with a smaller registry: the entry points are resolved again for the new
    # arrays; the twin keeps calling the dispatchers.
    smaller = load_registry({"subjects": subjects[:-3]}, zones)
    fast.reload(zones, smaller)
    slow.reload(zones, smaller)
    _twin(slow)
    keep = dev[fx][600:] < smaller.n_devices
    args = [a[fx][600:][keep] for a in (dev, ts, lat, lon, acc, coord, rx)]
    got = fast.process_fixes(*args)
    want = slow.process_fixes(*args)
    assert got == want and got
    assert fast.sweep(int(rx.max()) + 10_000_000) == slow.sweep(int(rx.max()) + 10_000_000)
    _assert_same(fast, slow)


def test_the_kernels_long_lived_arrays_are_shared_not_copied():
    """engine.kernel_args: the state, registry, zone and relation arrays reach the kernel
    as one reference built at bind time (a structref; a NamedTuple without JIT). They are
    the engine's own arrays: what the engine writes into them in place (a restore adopts
    the old state that way) the kernel reads on the next call."""
    zones, subjects, centre = _fleet(2)
    e = Engine(zones, load_registry({"subjects": subjects}, zones), Config())
    k = e._rule_args[0]
    assert type(k).__name__ == ("KernelArgs" if numba_config.DISABLE_JIT else "KernelArgsRef")
    one = (np.zeros(1, np.int32), np.array([T0 + 60_000]), np.array([centre[1]]),
           np.array([centre[0]]), np.array([10.0]), np.zeros(1, np.uint8),
           np.array([T0 + 60_000]))
    e.state.last_fix_ts_ms[0] = T0 + 120_000  # in place: a newer fix was already taken
    e.process_fixes(*one)
    assert e.counters["late_fixes"] == 1 and e.counters["fixes"] == 1
    assert e._rule_args[0] is k  # a call rebuilds nothing
