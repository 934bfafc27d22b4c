"""Incremental checkpoints (engine.checkpoint_delta): a full checkpoint brought forward by
its deltas is byte for byte the full checkpoint of the same moment."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import T0, Feed, make_engine, offset
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_checkpoint import open_everything
from test_engine_rules import FEATURES, INSIDE, east, subject

from engine import Engine
from engine.checkpoint_delta import (
    DeltaChain,
    DeltaError,
    apply_delta,
    chain_arrays,
    read_npz,
    sync_rows,
    sync_rows_numpy,
    without_chain,
)
from engine.state import CheckpointError, checkpoint_bytes

pytestmark = pytest.mark.kernel

DTYPES = (np.int64, np.int32, np.int8, np.float64, np.float32)


def assert_same_bytes(got: dict, want: dict) -> None:
    """Same names, dtypes, shapes and bytes (NaN and -0.0 as stored)."""
    assert sorted(got) == sorted(want)
    for k, a in want.items():
        b = got[k]
        assert (b.dtype, b.shape) == (a.dtype, a.shape), k
        assert b.tobytes() == a.tobytes(), k


def random_array(rng, dtype, rows: int, cols: int) -> np.ndarray:
    shape = (rows,) if cols == 0 else (rows, cols)
    if dtype in (np.float64, np.float32):
        a = rng.normal(size=shape).astype(dtype)
        a[rng.random(shape) < 0.2] = np.nan
        a[rng.random(shape) < 0.1] = -0.0
        return a
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def mutate(rng, live: dict[str, np.ndarray], step: int) -> None:
    """A random change of the live arrays: some rows, an array reshaped, one gone or new,
    a string array replaced, or nothing."""
    what = rng.integers(0, 8)
    names = [k for k in live if live[k].dtype.kind != "U"]
    if what <= 3 and names:  # rows change (in place, as the kernels do)
        k = names[rng.integers(len(names))]
        a = live[k]
        if len(a):
            rows = rng.integers(0, len(a), size=rng.integers(1, len(a) + 1))
            a[rows] = random_array(rng, a.dtype.type, len(rows), a.shape[1] if a.ndim > 1
                                   else 0)
            if a.dtype.kind == "f" and rng.random() < 0.5:
                a[rows[0]] = -a[rows[0]]  # NaN / -0.0 sign flips: bits differ
    elif what == 4 and names:  # a reload: another shape
        k = names[rng.integers(len(names))]
        a = live[k]
        live[k] = random_array(rng, a.dtype.type, int(rng.integers(0, 12)),
                               a.shape[1] if a.ndim > 1 else 0)
    elif what == 5 and len(live) > 1:
        del live[sorted(live)[rng.integers(len(live))]]
    elif what == 6:
        live[f"new{step}"] = random_array(rng, DTYPES[rng.integers(len(DTYPES))],
                                          int(rng.integers(0, 10)), int(rng.integers(0, 3)))
    elif what == 7:
        live["ids"] = np.array([f"D-{rng.integers(100)}" for _ in range(rng.integers(0, 6))],
                               dtype=np.str_)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 25),
       deltas_max=st.integers(0, 6))
def test_base_plus_deltas_is_byte_identical_to_a_full_checkpoint(seed, steps, deltas_max):
    rng = np.random.default_rng(seed)
    live = {f"a{i}": random_array(rng, DTYPES[i % len(DTYPES)], int(rng.integers(0, 30)),
                                  i % 3) for i in range(7)}
    live["ids"] = np.array(["D-1", "D-2"], dtype=np.str_)
    row = random_array(rng, np.int64, int(rng.integers(0, 30)), 4)  # strided column views,
    live["v0"], live["v2"] = row[:, 0], row[:, 2]  # as engine.state's device_row's
    chain = DeltaChain(deltas_max)
    twin = DeltaChain(deltas_max, sync_rows_numpy)  # the comparison in numpy
    base, deltas = None, []
    for step in range(steps):
        kind, arrays = chain.next(live)
        twin_kind, twin_arrays = twin.next(live)
        assert kind == twin_kind
        assert_same_bytes(without_chain(arrays), without_chain(twin_arrays))
        data = checkpoint_bytes(arrays)  # through the bytes the store or the file keeps
        if kind == "base":
            base, deltas = data, []
        else:
            deltas.append(data)
        assert len(deltas) <= deltas_max
        restored = chain_arrays(base, deltas, "test")
        assert_same_bytes(without_chain(restored), live)
        mutate(rng, live, step)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(0, 40), cols=st.integers(0, 3),
       dtype=st.sampled_from((*DTYPES, np.int16, np.float16, np.uint64)),
       strided=st.booleans())
def test_sync_rows_is_its_numpy_twin(seed, rows, cols, dtype, strided):
    """The compiled comparison finds the rows numpy finds, bit by bit (NaN payloads,
    -0.0), and leaves the reference equal to the live array; 1-D, 2-D, strided."""
    rng = np.random.default_rng(seed)
    def draw(n: int, c: int) -> np.ndarray:
        if dtype == np.float16:
            return rng.normal(size=(n, c) if c else n).astype(np.float16)
        return random_array(rng, dtype, n, c)

    def flip(x):  # the sign (floats: NaN and 0.0 too) or every bit
        return -x if np.dtype(dtype).kind == "f" else ~x

    live = draw(rows, cols)
    if strided and cols:
        live = live[:, cols - 1]
    ref = live.copy()
    if len(live):
        for r in rng.integers(0, len(live), size=rng.integers(0, len(live) + 1)):
            ref[r] = draw(1, 0)[0] if rng.random() < 0.5 else flip(ref[r])
    if dtype in (np.float64, np.float32) and len(live):
        bits = ref.view(np.dtype(f"u{ref.dtype.itemsize}"))
        bits.reshape(-1)[:1] ^= 1  # another NaN payload or the smallest step: differs
    twin = ref.copy()
    want = sync_rows_numpy(live, twin)
    got = sync_rows(live, ref)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64
    assert ref.tobytes() == twin.tobytes() == np.ascontiguousarray(live).tobytes()


def test_a_delta_holds_only_the_rows_that_changed():
    n = 100_000
    live = {"t": np.arange(n, dtype=np.int64), "p": np.full((n, 3), np.nan)}
    chain = DeltaChain(10)
    assert chain.next(live)[0] == "base"
    live["t"][[5, 70_000]] = -1
    live["p"][9, 2] = 1.5
    kind, d = chain.next(live)
    assert kind == "delta"
    assert d["idx:t"].tolist() == [5, 70_000] and d["row:t"].tolist() == [-1, -1]
    assert d["idx:p"].tolist() == [9]
    np.testing.assert_array_equal(d["row:p"], [[np.nan, np.nan, 1.5]])  # (NaN equals NaN)
    assert sum(a.nbytes for a in d.values()) < 1000
    kind, d = chain.next(live)  # nothing changed: the chain's bookkeeping only
    assert kind == "delta" and sorted(d) == ["chain_id", "chain_seq"]


def test_a_full_checkpoint_comes_after_deltas_max_or_a_full_ones_worth():
    live = {"t": np.zeros(1000, np.int64)}
    chain = DeltaChain(3)
    kinds = []
    for i in range(9):
        live["t"][i] = i + 1
        kinds.append(chain.next(live)[0])
    assert kinds == ["base", "delta", "delta", "delta"] * 2 + ["base"]
    chain = DeltaChain(100)
    assert chain.next(live)[0] == "base"
    live["t"][:] += 1  # every row: a delta as big as the full one
    assert chain.next(live)[0] == "delta"
    assert chain.next(live)[0] == "base"
    assert [DeltaChain(0).next(live)[0] for _ in range(2)] == ["base", "base"]


def test_a_delta_applies_only_to_the_checkpoint_it_follows():
    live = {"t": np.zeros(10, np.int64)}
    chain, other = DeltaChain(10), DeltaChain(10)
    base = chain.next(live)[1]
    other_base = other.next(live)[1]
    live["t"][1] = 7
    d1, d2 = chain.next(live)[1], chain.next(live)[1]
    with pytest.raises(DeltaError):
        apply_delta(dict(other_base), d1)  # another chain
    with pytest.raises(DeltaError):
        apply_delta(dict(base), d2)  # a gap
    with pytest.raises(CheckpointError, match="^w: cannot read checkpoint"):
        chain_arrays(checkpoint_bytes(base), [checkpoint_bytes(d2)], "w")
    arrays = chain_arrays(checkpoint_bytes(base), [checkpoint_bytes(d1), checkpoint_bytes(d2)],
                          "w")
    assert arrays["t"].tolist() == [0, 7] + [0] * 8
    assert read_npz(checkpoint_bytes(d2))["chain_seq"].tolist() == [2]


def test_an_engine_restored_from_base_and_deltas_equals_one_from_a_full_checkpoint():
    """A live engine: each batch's delta against its own arrays; the chain restores the
    engine's full snapshot byte for byte, and the same open alarms and counters."""
    f = Feed(make_engine(FEATURES, [subject(devices=("B-1", "P-1"))]))
    chain = DeltaChain(50)
    kind, snap = chain.next(f.engine.snapshot(copy=False))
    base, deltas = checkpoint_bytes(snap), []
    steps = [lambda: open_everything(f),
             lambda: f.fix("P-1", T0 + 5000, *offset(*INSIDE, 10, 10)),
             lambda: f.fix("B-1", T0 + 9000, *INSIDE),
             lambda: f.sweep(T0 + 10**7),
             lambda: f.fix("B-1", T0 + 10**7 + 1, *east(500))]
    kinds = []
    for step in steps:
        step()
        kind, d = chain.next(f.engine.snapshot(copy=False))
        kinds.append(kind)
        if kind == "base":  # (the deltas of two devices soon add up to a full one)
            base, deltas = checkpoint_bytes(d), []
        else:
            deltas.append(checkpoint_bytes(d))
        arrays = chain_arrays(base, deltas, "test")
        assert_same_bytes(without_chain(arrays), f.engine.snapshot())
        full = Engine.restore_bytes(checkpoint_bytes(f.engine.snapshot()), f.engine.zones,
                                    f.engine.registry, f.engine.config)
        inc = Engine.restore_bytes(arrays, f.engine.zones, f.engine.registry,
                                   f.engine.config)
        assert inc.counters == full.counters == f.engine.counters
        assert sorted(a["alarm_id"] for a in inc.open_alarms()) == sorted(
            a["alarm_id"] for a in full.open_alarms())
        assert_same_bytes(inc.snapshot(), full.snapshot())
    assert kinds[:2] == ["delta", "delta"]
