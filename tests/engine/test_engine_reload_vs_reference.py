"""The vectorised reload (engine.remap, engine.state.adopt, engine.relations) against the
loops it replaced (reload_reference): on random registers that add, remove and move
devices between subjects, change zones, leaves, relations, the reloaded (and the
restored) engine's state is exactly the reference's."""

from __future__ import annotations

import numpy as np
import pytest
import reload_reference as ref
from engine_helpers import T0, box_feature, compiled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emfence.config import config_from_dict
from engine import Engine, load_registry
from engine.relations import _separation_pairs, relation_arrays
from engine.remap import index_of
from engine.state import EXT_FRESH, NONE_MS, checkpoint_bytes

pytestmark = pytest.mark.kernel

# Zone sets a register is drawn against: the same ids in another order, some gone, new.
ALL_ZONES = [box_feature(f"Z{i}", 120 + i * 0.1, 30, 120.05 + i * 0.1, 30.05)
             for i in range(8)]
ZONE_SETS = [compiled([ALL_ZONES[i] for i in order])
             for order in ((0, 1, 2, 3, 4, 5), (5, 0, 2, 3, 6, 7), (1, 3, 5, 7, 0))]
SUBJECTS = [f"S-{i}" for i in range(7)]
DEVICES = [f"D-{i}" for i in range(18)]
PERSONS = ["V-0", "V-1"]


@st.composite
def registers(draw) -> tuple[int, dict]:
    """(zone set, subjects file) from small id pools: two draws share most ids."""
    z = draw(st.integers(0, len(ZONE_SETS) - 1))
    zone_ids = ZONE_SETS[z].zone_ids
    sids = draw(st.lists(st.sampled_from(SUBJECTS), max_size=6, unique=True))
    devices = draw(st.permutations(DEVICES))
    subjects = []
    for sid in sids:
        n = draw(st.integers(1, 3))
        devs, devices = devices[:n], devices[n:]
        subjects.append({
            "subject_id": sid, "region": "R", "level": draw(st.sampled_from(
                ["strict", "ordinary", "lenient"])),
            "devices": [{"device_id": d, "kind": draw(st.sampled_from(["bracelet", "phone"]))}
                        for d in devs],
            "inclusion": draw(st.lists(st.sampled_from(zone_ids), max_size=2, unique=True)),
            "exclusion": draw(st.lists(st.sampled_from(zone_ids), max_size=4, unique=True)),
            "leaves": [{"start": T0, "end": T0 + 1000, "zones": [zone_ids[0]]}]
            if draw(st.booleans()) else [],
        })
    for s in subjects:
        s["contacts"] = draw(st.lists(st.sampled_from(sids), max_size=2, unique=True)
                             .filter(lambda c, me=s["subject_id"]: me not in c))
    data = {"subjects": subjects}
    if sids and draw(st.booleans()):
        data["protected"] = [{"person_id": pid, "region": "R",
                              "devices": [{"device_id": f"{pid}-{k}", "kind": "victim"}
                                          for k in range(draw(st.integers(1, 2)))],
                              "protected_from": draw(st.lists(st.sampled_from(sids),
                                                              min_size=1, unique=True))}
                             for pid in PERSONS[:draw(st.integers(1, 2))]]
    return z, data


def scramble(engine: Engine, seed: int) -> None:
    """Random rule state everywhere (zone indices valid for the engine's zones)."""
    rng = np.random.default_rng(seed)
    st_, n_zones = engine.state, len(engine.zones.zone_ids)

    def times(shape) -> np.ndarray:
        return np.where(rng.random(shape) < 0.4, NONE_MS, T0 + rng.integers(0, 10**6, shape))

    for name in ("last_rx_ms", "last_fix_ts_ms", "last_status_ts_ms", "outbound_at_ms",
                 "offline_at_ms", "tamper_at_ms", "battery_at_ms", "exclusion_at_ms",
                 "approach_at_ms", "border_at_ms", "no_fix_deadline_ms", "device_ms"):
        arr = getattr(st_, name)
        arr[...] = times(arr.shape)
    st_.out_run[:] = rng.integers(0, 121, len(st_.out_run))
    st_.outbound_zone[:] = rng.integers(-1, n_zones, len(st_.outbound_zone))
    st_.border_zone[:] = rng.integers(-1, n_zones, len(st_.border_zone))
    st_.last_pos[:] = rng.random(st_.last_pos.shape)
    rows = st_.ext[1:]
    busy = rng.random(len(rows)) < 0.5
    rows[busy] = times(rows[busy].shape)
    rows[busy, 0] = rng.integers(0, 2, busy.sum())
    rows[busy, 6] = rng.integers(-1, n_zones, busy.sum())
    rows[~busy] = EXT_FRESH
    for table in engine.rel_state:
        table[...] = times(table.shape)
    engine.rel_state.sep[:, 1] = rng.integers(0, 2, len(engine.rel_state.sep))  # the side
    engine.rel_state.contact[:, 2] = 0  # the first subject's first device


def assert_same(a: Engine, b: Engine) -> None:
    for name in a.state._fields:
        x, y = getattr(a.state, name), getattr(b.state, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    for name in a.relations._fields:
        x, y = getattr(a.relations, name), getattr(b.relations, name)
        assert x.dtype == y.dtype and x.flags.c_contiguous == y.flags.c_contiguous, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    for x, y in zip(a.rel_state, b.rel_state, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a._rel_keys == b._rel_keys
    assert a._per_subject.to_array().tolist() == b._per_subject.to_array().tolist()
    assert a.open_alarms() == b.open_alarms()
    ids = a.snapshot()
    assert ids["slot_devices"].tolist() == [k[0] for k in ref.slot_keys(b.registry)]
    assert ids["slot_zones"].tolist() == [k[1] for k in ref.slot_keys(b.registry)]
    assert ids["device_ids"].tolist() == b.registry.device_ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(registers(), min_size=2, max_size=3), st.integers(0, 2**32 - 1),
       st.sampled_from(["subject", "device"]))
def test_reload_and_restore_equal_the_reference(chain, seed, alarm_per):
    config = config_from_dict({"rules": {"alarm_per": alarm_per}})
    z, data = chain[0]
    zones = ZONE_SETS[z]
    fast = Engine(zones, load_registry(data, zones), config)
    scramble(fast, seed)
    slow = Engine(zones, fast.registry, config)
    for f, s in zip(fast.state + fast.rel_state, slow.state + slow.rel_state, strict=True):
        s[...] = f
    for k, (z, data) in enumerate(chain[1:]):
        zones = ZONE_SETS[z]
        registry = load_registry(data, zones)
        assert registry.slot_keys() == ref.slot_keys(registry)
        blob = checkpoint_bytes(fast.snapshot())
        restored = Engine.restore_bytes(blob, zones, registry, config)
        assert_same(restored, ref.restore_bytes(blob, zones, registry, config))
        assert fast.reload(zones, registry) == ref.reload(slow, zones, registry)
        assert_same(fast, slow)
        scramble(fast, seed + k + 1)  # (and the same again into the reference's)
        for f, s in zip(fast.state + fast.rel_state, slow.state + slow.rel_state,
                        strict=True):
            s[...] = f


@settings(max_examples=60, deadline=None)
@given(registers())
def test_separation_pairs_and_relations_equal_the_reference(drawn):
    z, data = drawn
    registry = load_registry(data, ZONE_SETS[z])
    pairs, keys = _separation_pairs(registry)
    ref_pairs, ref_keys = ref.separation_pairs(registry)
    assert pairs.tolist() == [list(p) for p in ref_pairs] and keys == ref_keys
    arrays, rel_keys = relation_arrays(registry)
    ref_arrays, ref_rel_keys = ref.relation_arrays(registry)
    assert rel_keys == ref_rel_keys
    for name in arrays._fields:
        x, y = getattr(arrays, name), getattr(ref_arrays, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@given(st.lists(st.sampled_from(["a", "b", "cc", "", "d-1"]), max_size=12),
       st.lists(st.sampled_from(["a", "b", "cc", "", "x"]), max_size=12))
def test_index_of_is_a_dict_built_in_order(ids, queries):
    pos = {v: i for i, v in enumerate(ids)}
    expected = [pos.get(q, -1) for q in queries]
    got = index_of(np.array(ids, dtype=np.str_), np.array(queries, dtype=np.str_))
    assert got.tolist() == expected and got.dtype == np.int64
    as_int = index_of(np.array([hash(v) % 7 for v in ids], dtype=np.int64),
                      np.array([hash(v) % 7 for v in queries], dtype=np.int64))
    pos = {hash(v) % 7: i for i, v in enumerate(ids)}
    assert as_int.tolist() == [pos.get(hash(q) % 7, -1) for q in queries]
