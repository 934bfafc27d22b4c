"""The shared vocabulary: the record batch is built one way and checked, the alarm event
has one key order, the topics follow wire contract v1, and the engine's type codes are
indices into the one list of alarm types."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from contract import (
    ALARM_TYPES,
    K_FIX,
    K_STATUS,
    POWER_CODES,
    RecordBatch,
    RecordBuilder,
    alarm_event,
    alarm_id,
    alarm_topic,
    deadletter_topic,
    device_topic,
    drain_topic,
    health_topic,
)
from engine import kernels as K

DTYPES = {"kind": np.uint8, "device_idx": np.int32, "ts_ms": np.int64, "rx_ms": np.int64,
          "lat": np.float64, "lon": np.float64, "acc_m": np.float64, "coord_sys": np.uint8,
          "battery_pct": np.float64, "strap": np.int8, "power": np.int8}


def _assert_kernel_ready(batch: RecordBatch, n: int) -> None:
    assert batch._fields == tuple(DTYPES)
    for name, col in zip(batch._fields, batch, strict=True):
        assert col.dtype == DTYPES[name], name
        assert col.shape == (n,), name
        assert col.flags.c_contiguous, name


def test_fixes_statuses_and_records_are_coerced_to_the_kernel_dtypes():
    f = RecordBatch.fixes(device_idx=[0, 1], ts_ms=[5, 6], rx_ms=[7, 8], lat=[30, 31],
                          lon=[120, 121], acc_m=[5, 9], coord_sys=[0, 1])
    _assert_kernel_ready(f, 2)
    assert f.kind.tolist() == [K_FIX, K_FIX]
    assert np.isnan(f.battery_pct).all() and f.strap.tolist() == [-1, -1]
    assert f.power.tolist() == [-1, -1]
    s = RecordBatch.statuses(device_idx=[3], ts_ms=[5], rx_ms=[6], battery_pct=[12.5], strap=[1])
    _assert_kernel_ready(s, 1)
    assert s.kind.tolist() == [K_STATUS] and np.isnan(s.lat).all()
    assert s.power.tolist() == [-1]  # left out: absent
    p = RecordBatch.statuses(device_idx=[3, 4], ts_ms=[5, 6], rx_ms=[6, 7],
                             battery_pct=[12.5, 3], strap=[1, -1], power=[1, 0])
    _assert_kernel_ready(p, 2)
    assert p.power.tolist() == [POWER_CODES["off"], POWER_CODES["on"]]
    r = RecordBatch.records(kind=[0, 1], device_idx=[0, 0], ts_ms=[1, 2], rx_ms=[1, 2],
                            lat=[30, math.nan], lon=[120, math.nan], acc_m=[5, math.nan],
                            coord_sys=[0, 0], battery_pct=[math.nan, 50], strap=[-1, 0])
    _assert_kernel_ready(r, 2)
    _assert_kernel_ready(RecordBatch.empty(), 0)


def test_a_column_of_the_wrong_length_or_shape_is_named():
    with pytest.raises(ValueError, match=r"ts_ms has 1 elements, expected 2"):
        RecordBatch.fixes(device_idx=[0, 1], ts_ms=[5], rx_ms=[7, 8], lat=[30, 31],
                          lon=[120, 121], acc_m=[5, 9], coord_sys=[0, 1])
    with pytest.raises(ValueError, match=r"strap must be one-dimensional"):
        RecordBatch.statuses(device_idx=[0], ts_ms=[5], rx_ms=[6], battery_pct=[1.0],
                             strap=[[1]])
    with pytest.raises(ValueError, match=r"power has 2 elements, expected 1"):
        RecordBatch.statuses(device_idx=[0], ts_ms=[5], rx_ms=[6], battery_pct=[1.0],
                             strap=[1], power=[1, 1])
    with pytest.raises(TypeError):
        RecordBatch.fixes([0], [5], [6], [30], [120], [5], [0])  # keywords only


def test_builder_gives_the_same_batch_as_the_columns():
    b = RecordBuilder()
    b.add_fix(2, 1000, 1001, 30.5, 120.25, 12.0, 1)
    b.add_status(1, 1002, 1003, math.nan, 1)
    b.add_fix(0, 1004, 1005, 30.0, 120.0, 50.0, 0)
    b.add_status(2, 1006, 1007, 15.0, -1, 1)
    assert len(b) == 4
    got = b.take()
    want = RecordBatch.records(
        kind=[0, 1, 0, 1], device_idx=[2, 1, 0, 2], ts_ms=[1000, 1002, 1004, 1006],
        rx_ms=[1001, 1003, 1005, 1007], lat=[30.5, math.nan, 30.0, math.nan],
        lon=[120.25, math.nan, 120.0, math.nan], acc_m=[12.0, math.nan, 50.0, math.nan],
        coord_sys=[1, 0, 0, 0], battery_pct=[math.nan, math.nan, math.nan, 15.0],
        strap=[-1, 1, -1, -1], power=[-1, -1, -1, 1])
    _assert_kernel_ready(got, 4)
    for name, a, w in zip(got._fields, got, want, strict=True):
        np.testing.assert_array_equal(a, w, err_msg=name)
    assert len(b) == 0  # take() empties the builder
    _assert_kernel_ready(b.take(), 0)


def test_select_keeps_a_valid_batch():
    r = RecordBatch.fixes(device_idx=[0, 1, 2], ts_ms=[5, 6, 7], rx_ms=[7, 8, 9],
                          lat=[30, 31, 32], lon=[120, 121, 122], acc_m=[5, 9, 1],
                          coord_sys=[0, 1, 0])
    one = r.select(slice(1, 2))
    _assert_kernel_ready(one, 1)
    assert one.device_idx.tolist() == [1] and one.lat.tolist() == [31.0]
    _assert_kernel_ready(r.select(np.array([2, 0])), 2)


def test_alarm_event_keys_and_bytes():
    ev = alarm_event(True, "exclusion", "S-1", "B-1", "victim", "330723", 1000, 1000, False,
                     (30.1, 120.2, 12.345, 8.0))
    assert list(ev) == ["event", "alarm_id", "type", "subject_id", "device_id", "zone_id",
                        "region", "at", "late", "lat", "lon", "distance_m", "acc"]
    assert ev["alarm_id"] == alarm_id("B-1", "exclusion", "victim", 1000, False)
    assert ev["distance_m"] == 12.3
    cleared = alarm_event(False, "offline", "S-1", "B-1", None, "330723", 2000, 1000, False)
    assert orjson.dumps(cleared) == (
        b'{"event":"cleared","alarm_id":"' + alarm_id("B-1", "offline", None, 1000, False).encode()
        + b'","type":"offline","subject_id":"S-1","device_id":"B-1","zone_id":null,'
          b'"region":"330723","at":2000,"late":false}')
    # raised and cleared of one episode share the id; a late pair never shares a live one
    assert alarm_id("B-1", "offline", None, 1000, False) == cleared["alarm_id"]
    assert alarm_id("B-1", "offline", None, 1000, True) != cleared["alarm_id"]


def test_engine_type_codes_index_the_alarm_types():
    codes = {"outbound": K.T_OUTBOUND, "exclusion": K.T_EXCLUSION, "offline": K.T_OFFLINE,
             "tamper": K.T_TAMPER, "low_battery": K.T_LOW_BATTERY}
    assert {ALARM_TYPES[c]: c for c in codes.values()} == codes


def test_topics_follow_wire_contract_v1():
    assert device_topic("330723", "B-1", "fix") == "emfence/v1/330723/B-1/fix"
    assert device_topic("+", "+", "status") == "emfence/v1/+/+/status"
    assert alarm_topic("330723", "outbound") == "emfence/v1/330723/alarms/outbound"
    assert deadletter_topic("330723") == "emfence/v1/330723/deadletter"
    assert health_topic("w1") == "emfence/v1/engine/w1/health"
    assert drain_topic("w1") == "emfence/v1/engine/w1/drain"
