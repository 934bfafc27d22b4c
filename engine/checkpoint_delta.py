"""Incremental checkpoints: a full checkpoint (the *base*) and then, per acknowledgement
window, only what changed since the previous checkpoint (a *delta*).

A checkpoint is a dict of named arrays (:meth:`engine.Engine.snapshot`). A
:class:`DeltaChain` keeps the arrays of the last checkpoint it handed out (its own copy,
allocated once: see below) and compares the live arrays against them, row by row, bit by
bit (so NaN positions and -0.0 compare as stored): a delta holds, per array, the indices
of the rows that differ and those rows; an array whose shape or dtype changed (a reload)
is held whole, and arrays that are gone are named. Restoring is the base followed by
every delta in order (:func:`apply_delta`): byte-identical to the full checkpoint of the
same moment. Each checkpoint carries its chain's id (random, 32 hex digits) and its
place in the chain (``CHAIN_SEQ``: 0 for the base), and a delta applies only to the
checkpoint right before it, so a delta of another chain or a gap is refused.

Why a kept copy and not a fresh one per window: copying the whole state into newly
allocated memory at national size (~470 MB) faults in every page anew, and those faults
contend with the checkpoint writer's own allocations; compared against memory that is
reused, the same state costs a fraction (benchmarks/README.md, "incremental
checkpoint").
"""

from __future__ import annotations

import io
import secrets
import zipfile
from collections.abc import Mapping

import numpy as np
from numba import njit

from contract.errors import EmfenceError
from engine.state import CheckpointError

CHAIN_ID = "chain_id"  # str: the chain the checkpoint belongs to
CHAIN_SEQ = "chain_seq"  # int64[1]: 0 for the base, n for the n-th delta after it
_IDX, _ROW, _ALL, _GONE = "idx:", "row:", "all:", "gone"
CHAIN_KEYS = (CHAIN_ID, CHAIN_SEQ)


class DeltaError(EmfenceError, ValueError):
    """A delta that does not continue the checkpoint it is applied to."""


def changed_rows(live: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``live`` that differ from ``ref`` (same shape and dtype):
    numpy, the reference twin of :func:`sync_rows`."""
    return np.flatnonzero((_words(live) != _words(ref)).any(axis=1))


def sync_rows_numpy(live: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """:func:`sync_rows` in numpy (the reference, and the benchmark's alternative)."""
    idx = changed_rows(live, ref)
    ref[idx] = live[idx]
    return idx


def _words(a: np.ndarray) -> np.ndarray:
    """``a`` as a 2-D view (rows x words) of unsigned integers of its item's width; a
    view, never a copy (:func:`sync_rows` writes through it)."""
    words = np.dtype(f"u{a.dtype.itemsize}")
    if a.size == 0:  # no element to write through (and no -1 to reshape to)
        return np.zeros((len(a), 0), words)
    v = np.reshape(a, (len(a), -1), copy=False)  # ValueError where a copy would be needed
    return v.view(words)


@njit(cache=True, nogil=True)
def _sync_words(live, ref, idx):
    """The rows of ``live`` that differ from ``ref`` (2-D, same shape): their indices
    into ``idx``, each such row copied into ``ref``; returns how many. One pass reading
    both once, nothing allocated."""
    n_rows, n_cols = live.shape
    n = 0
    for r in range(n_rows):
        for c in range(n_cols):
            if live[r, c] != ref[r, c]:
                for k in range(n_cols):
                    ref[r, k] = live[r, k]
                idx[n] = r
                n += 1
                break
    return n


def sync_rows(live: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``live`` that differ from ``ref`` (same shape and dtype,
    numbers, compared bit by bit: NaN and -0.0 as stored), after copying those rows into
    ``ref``. Compiled: the numpy twin (:func:`changed_rows`, then a scatter) made a
    temporary of every element and read the arrays three times, ~0.5-1.2 s a window
    at national size (benchmarks/README.md)."""
    idx = np.empty(len(live), np.int64)
    n = _sync_words(_words(live), _words(ref), idx)
    return idx[:n].copy()


def _rowwise(a: np.ndarray) -> bool:
    """Compared and written by rows: numbers (contiguous or not: the device row's column
    views, engine.state.DeviceState.device_row, are strided)."""
    return a.ndim >= 1 and a.dtype.kind in "iufb"


class DeltaChain:
    """Hands out the next checkpoint of a chain: a base (a full copy) when none was
    taken or :meth:`compact_due` says so, else a delta against the previous one.

    ``deltas_max``: deltas after which the next checkpoint is a base again (0: every
    checkpoint is a base); a base is also due once the deltas since the last one add up
    to the base's own size (restoring then reads at most twice a full checkpoint).
    ``sync``: how rows are compared and copied (:func:`sync_rows`, compiled; the tests
    and ``benchmarks.checkpoint`` pass the numpy twin :func:`sync_rows_numpy`).
    """

    def __init__(self, deltas_max: int, sync=None):
        if deltas_max < 0:
            raise ValueError(f"deltas_max must be >= 0, got {deltas_max}")
        self.deltas_max = deltas_max
        self.sync = sync_rows if sync is None else sync
        self.chain_id = ""
        self.seq = 0
        self.ref: dict[str, np.ndarray] = {}
        # The arrays last handed in (held, so that none is freed and its address reused):
        # one handed in again that is not compared row by row (the ids) has not changed.
        self._src: dict[str, np.ndarray] = {}
        self.base_bytes = 0
        self.delta_bytes = 0  # since the base

    def compact_due(self) -> bool:
        return (not self.chain_id or self.seq >= self.deltas_max
                or self.delta_bytes >= self.base_bytes)

    def next(self, live: Mapping[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
        """``("base" | "delta", arrays)`` for the state ``live`` (the engine's own arrays,
        not copied: nothing may change them during the call). The arrays returned are
        the caller's (copies)."""
        if self.compact_due():
            return "base", self.base(live)
        return "delta", self.delta(live)

    def base(self, live: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A full checkpoint starting a new chain (a copy for the caller; the chain keeps
        its own, reusing its memory where the shapes allow)."""
        self.chain_id, self.seq = secrets.token_hex(16), 0
        ref = {}
        for k, a in live.items():
            old = self.ref.get(k)
            if old is not None and old.shape == a.shape and old.dtype == a.dtype:
                np.copyto(old, a)
                ref[k] = old
            else:
                ref[k] = a.copy()
        self.ref, self._src = ref, dict(live)
        out = {k: a.copy() for k, a in ref.items()}
        self.base_bytes = sum(a.nbytes for a in out.values())
        self.delta_bytes = 0
        return self._stamp(out)

    def delta(self, live: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What changed since the last checkpoint of the chain (which then moves on)."""
        out: dict[str, np.ndarray] = {}
        for k, a in live.items():
            old = self.ref.get(k)
            if old is not None and old.shape == a.shape and old.dtype == a.dtype:
                if self._src.get(k) is a and not _rowwise(a):
                    continue  # the same never-written array (the ids)
                if _rowwise(a):
                    idx = self.sync(a, old)
                    if len(idx):
                        out[_IDX + k], out[_ROW + k] = idx, old[idx]
                    continue
                if np.array_equal(a, old):
                    continue
            self.ref[k] = a.copy()
            out[_ALL + k] = self.ref[k].copy()
        self._src = dict(live)
        gone = [k for k in self.ref if k not in live]
        for k in gone:
            del self.ref[k]
        if gone:
            out[_GONE] = np.array(gone, dtype=np.str_)
        self.seq += 1
        self.delta_bytes += sum(a.nbytes for a in out.values())
        return self._stamp(out)

    def _stamp(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out[CHAIN_ID] = np.array([self.chain_id], dtype=np.str_)
        out[CHAIN_SEQ] = np.array([self.seq], dtype=np.int64)
        return out


def chain_of(arrays: Mapping[str, np.ndarray]) -> tuple[str, int] | None:
    """(chain id, seq) of a checkpoint or a delta; None for one written before chains."""
    if CHAIN_ID not in arrays:
        return None
    return str(arrays[CHAIN_ID][0]), int(arrays[CHAIN_SEQ][0])


def is_delta(arrays: Mapping[str, np.ndarray]) -> bool:
    return any(k.startswith((_IDX, _ALL)) or k == _GONE for k in arrays)


def apply_delta(arrays: dict[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> None:
    """Bring the checkpoint ``arrays`` (a dict of writable arrays) forward by ``delta``,
    in place; :class:`DeltaError` if ``delta`` does not follow it."""
    have, nxt = chain_of(arrays), chain_of(delta)
    if have is None or nxt is None or nxt[0] != have[0] or nxt[1] != have[1] + 1:
        raise DeltaError(f"delta {nxt} does not follow checkpoint {have}")
    for k in delta:
        if k.startswith(_IDX):
            name = k[len(_IDX):]
            arrays[name][delta[k]] = delta[_ROW + name]
        elif k.startswith(_ALL):
            arrays[k[len(_ALL):]] = np.array(delta[k])
    if _GONE in delta:
        for k in delta[_GONE]:
            arrays.pop(str(k), None)
    arrays[CHAIN_SEQ] = np.array([nxt[1]], dtype=np.int64)


def without_chain(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's arrays without the chain's bookkeeping (what a full one holds)."""
    return {k: v for k, v in arrays.items() if k not in CHAIN_KEYS}


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` in memory (a checkpoint's or a delta's bytes)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def chain_arrays(base: bytes, deltas: list[bytes], where: str) -> dict[str, np.ndarray]:
    """The checkpoint ``base`` brought forward by ``deltas`` (all of them, in order), as
    arrays; :class:`engine.state.CheckpointError` naming ``where`` if they do not fit."""
    try:
        arrays = read_npz(base)
        for d in deltas:
            apply_delta(arrays, read_npz(d))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc}", where) from exc
    return arrays
