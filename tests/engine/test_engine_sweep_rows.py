"""The offline sweep over one deadline stream and one row per device (engine.state,
``device_row``): the sweep kernel against a plain two-pass loop (the no-fix deadlines,
then the offline deadlines, as the sweep read them before the row), and the invariant
that keeps one stream enough: after any sequence of messages, sweeps and restores, each
device's ``deadline_ms`` is the earlier of its offline and its no-fix deadline, and the
floor is at most every one of them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_device_rules_vs_reference import STEP, _sequence, batch_of
from test_engine_vs_reference import ZONES

from emfence.config import config_from_dict
from engine import Engine, load_registry
from engine import kernels as K
from engine.state import (
    D_LAST_FIX_RX,
    D_NO_FIX_AT,
    D_NO_FIX_FROM,
    D_POWER_OFF_AT,
    NO_DEADLINE_MS,
    NONE_MS,
    R_OFFLINE_DEADLINE,
    ROW_VIEWS,
    checkpoint_bytes,
    new_state,
)

T0 = 1_750_000_000_000


def two_pass_sweep(dev: list[dict], now: int) -> list[tuple]:
    """The sweep as two plain passes over the devices (dicts of the fields, changed in
    place): no_fix, then offline; returns (device, type, at, aux, lat) per event."""
    out = []
    for d, v in enumerate(dev):
        nd = v["nf"]
        if nd < now and v["last_fix_rx"] > v["from"]:  # a newer fix restarted the count
            nd += v["last_fix_rx"] - v["from"]
            v["from"], v["nf"] = v["last_fix_rx"], nd
        if nd < now:
            if nd < v["off"] and v["last_rx"] > v["from"] and v["power_off"] == NONE_MS:
                v["no_fix_at"] = nd
                aux = None if v["last_fix_rx"] == NONE_MS else v["last_fix_rx"]
                out.append((d, K.T_NO_FIX, nd, aux, v["lat"]))
            v["nf"], v["from"] = NO_DEADLINE_MS, NONE_MS
    for d, v in enumerate(dev):
        if v["off"] < now:
            if v["power_off"] == NONE_MS:
                v["offline_at"] = v["off"]
                out.append((d, K.T_OFFLINE, v["off"], v["last_rx"], v["lat"]))
            v["off"] = v["nf"] = NO_DEADLINE_MS
            v["from"] = NONE_MS
    return out


TIME = st.integers(-50_000, 50_000)
DEVICE = st.fixed_dictionaries({
    "last_rx": TIME, "from": st.one_of(st.just(None), TIME),
    "last_fix_rx": st.one_of(st.just(None), TIME), "power_off": st.booleans(),
    "off": st.one_of(st.just(None), TIME), "nf_after": st.integers(1, 40_000),
    "lat": st.floats(-60, 60)})


def _state(devices: list[dict]):
    """A state as the engine keeps it (offline deadline, no-fix count and its deadline,
    deadline_ms their earlier one), and the same as plain dicts."""
    s = new_state(len(devices), 0)
    plain = []
    for d, g in enumerate(devices):
        v = {"last_rx": T0 + g["last_rx"], "power_off": T0 if g["power_off"] else NONE_MS,
             "from": NONE_MS if g["from"] is None else T0 + g["from"],
             "last_fix_rx": NONE_MS if g["last_fix_rx"] is None else T0 + g["last_fix_rx"],
             "off": NO_DEADLINE_MS if g["off"] is None else T0 + g["off"],
             "lat": g["lat"], "no_fix_at": NONE_MS, "offline_at": NONE_MS}
        v["nf"] = NO_DEADLINE_MS if g["from"] is None else v["from"] + g["nf_after"]
        s.last_rx_ms[d] = v["last_rx"]
        s.device_ms[d, D_POWER_OFF_AT] = v["power_off"]
        s.device_ms[d, D_NO_FIX_FROM] = v["from"]
        s.device_ms[d, D_LAST_FIX_RX] = v["last_fix_rx"]
        s.device_row[d, R_OFFLINE_DEADLINE] = v["off"]
        s.no_fix_deadline_ms[d] = v["nf"]
        s.last_pos[d] = (v["lat"], 120.0, 10.0)
        plain.append(v)
    np.minimum(s.device_row[:, R_OFFLINE_DEADLINE], s.no_fix_deadline_ms, out=s.deadline_ms)
    s.floor_ms[0] = s.deadline_ms.min()
    return s, plain


@settings(max_examples=150, deadline=None)
@given(st.lists(DEVICE, min_size=1, max_size=30), TIME, st.integers(1, 4))
def test_the_sweep_matches_two_plain_passes(devices, now_offset, buffer_rows):
    """Same events in the same order (every no_fix first, then every offline, each in
    device order), same evidence and the same state after; from event buffers too small
    (they grow)."""
    s, plain = _state(devices)
    now = T0 + now_offset
    want = two_pass_sweep(plain, now)
    ev_i, ev_f = K.new_events(buffer_rows)
    ev_i, ev_f, m = K.sweep(s, np.int64(now), ev_i, ev_f, np.zeros(K.N_COUNTERS, np.int64))
    got = [(int(ev_i[k, K.EV_DEVICE]), int(ev_i[k, K.EV_TYPE]), int(ev_i[k, K.EV_AT]),
            None if np.isnan(ev_f[k, K.EF_AUX]) else int(ev_f[k, K.EF_AUX]),
            float(ev_f[k, K.EF_LAT])) for k in range(m)]
    assert got == want
    for d, v in enumerate(plain):
        assert s.device_row[d, R_OFFLINE_DEADLINE] == v["off"]
        assert s.no_fix_deadline_ms[d] == v["nf"]
        assert s.device_ms[d, D_NO_FIX_FROM] == v["from"]
        assert s.device_ms[d, D_NO_FIX_AT] == v["no_fix_at"]
        assert s.offline_at_ms[d] == v["offline_at"]
        assert s.deadline_ms[d] == min(v["off"], v["nf"])
    assert s.floor_ms[0] == s.deadline_ms.min()


def assert_one_stream(engine: Engine) -> None:
    """deadline_ms is the earlier of both deadlines, the floor bounds it, and the row's
    views are views of the row."""
    s = engine.state
    np.testing.assert_array_equal(
        s.deadline_ms, np.minimum(s.device_row[:, R_OFFLINE_DEADLINE], s.no_fix_deadline_ms))
    assert s.floor_ms[0] <= s.deadline_ms.min()
    assert all(np.shares_memory(getattr(s, f), s.device_row) for f in ROW_VIEWS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=30), offline_s=st.sampled_from([30, 90]),
       no_fix_s=st.sampled_from([20, 60, 120]), sweeps=st.lists(st.booleans(), max_size=30),
       restore_at=st.integers(0, 30))
def test_the_sweep_deadline_is_the_earlier_of_both_after_any_sequence(
        steps, offline_s, no_fix_s, sweeps, restore_at):
    """Messages one at a time (fixes, statuses, power off and on, duplicates, late ones,
    receive gaps around the thresholds), a sweep after some, a restore from a checkpoint
    once: the invariant holds after every step."""
    subj = {"subjects": [{"subject_id": "S-1", "region": "411302", "level": "strict",
                          "devices": [{"device_id": "D-1"}, {"device_id": "D-2"}]}]}
    config = config_from_dict({"rules": {"offline_after_s": offline_s,
                                         "no_fix_after_s": no_fix_s}})
    engine = Engine(ZONES, load_registry(subj, ZONES), config)
    records = _sequence(steps, T0)
    clock = records[0]["rx"]
    for k, rec in enumerate(records):
        if k == restore_at:
            engine = Engine.restore_bytes(checkpoint_bytes(engine.snapshot()), ZONES,
                                          load_registry(subj, ZONES), config)
            assert_one_stream(engine)
        _, clock = engine.process(batch_of(engine, [rec]), clock_now_ms=clock)
        assert_one_stream(engine)
        if k < len(sweeps) and sweeps[k]:
            engine.sweep(clock + 45_000)
            assert_one_stream(engine)
    engine.sweep(clock + 10**7)
    assert_one_stream(engine)
    assert (engine.state.deadline_ms == NO_DEADLINE_MS).all()  # all silent now


def test_a_checkpoint_keeps_its_layout_and_restores_either_meaning_of_deadline_ms():
    """The checkpoint holds the row's views as separate arrays, as before the row (no
    ``device_row``), and one written before it (deadline_ms the offline deadline alone)
    restores to the same state: restore recomputes the deadlines."""
    subj = {"subjects": [{"subject_id": "S-1", "region": "411302", "level": "strict",
                          "devices": [{"device_id": "D-1"}, {"device_id": "D-2"}]}]}
    config = config_from_dict({"rules": {"offline_after_s": 90, "no_fix_after_s": 20}})
    engine = Engine(ZONES, load_registry(subj, ZONES), config)
    records = _sequence([(500, "status", "new"), (5_000, "fix", "new"),
                         (1, "status", "new")], T0)
    engine.process(batch_of(engine, records), clock_now_ms=records[0]["rx"])
    arrays = engine.snapshot()
    assert "device_row" not in arrays and set(ROW_VIEWS) <= set(arrays)
    assert (arrays["deadline_ms"] < engine.state.device_row[:, R_OFFLINE_DEADLINE]).any()
    old = dict(arrays, deadline_ms=engine.state.device_row[:, R_OFFLINE_DEADLINE].copy())
    a, b = (Engine.restore_bytes(checkpoint_bytes(x), ZONES, load_registry(subj, ZONES),
                                 config) for x in (arrays, old))
    for f in a.state._fields:
        np.testing.assert_array_equal(getattr(a.state, f), getattr(b.state, f), err_msg=f)
    np.testing.assert_array_equal(a.state.deadline_ms, engine.state.deadline_ms)
    assert_one_stream(a)
