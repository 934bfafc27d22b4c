"""Checkpoint write cost: a file (``--checkpoint``) against the store's row (the default).

    python -m benchmarks.checkpoint --json
    python -m benchmarks.checkpoint --devices 100000 --pg postgresql://emfence@db/emfence_bench

The live engine writes its state once per acknowledgement window (every
``ingest.checkpoint_interval_s`` or ``ingest.ack_window_messages``), beside processing
but on the acknowledgement path. This program builds the state of ``--devices`` devices
(one exclusion slot each, realistic non-constant times so that nothing compresses
better than it would live), then writes it ``--rounds`` times each way and reports the
bytes and the milliseconds per write (median and max):

- ``file``: ``engine.state.write_checkpoint`` (temp file, fsync, rename, fsync folder);
- ``sqlite``: ``AlarmStore.save_checkpoint`` on a SQLite store (WAL, synchronous=FULL)
  in a temporary folder;
- ``postgresql``: the same on ``--pg`` (a database that may be written to; its
  ``engine_checkpoints`` row ``bench-checkpoint`` is deleted afterwards).

Each includes serialising the snapshot (``checkpoint_bytes`` / ``np.savez``). ``copy``:
the processor's part of a full checkpoint (``snapshot_arrays``, a fresh copy).

Incremental checkpoints (engine.checkpoint_delta, ``--changed`` devices a window, 20 000
by default: one acknowledgement window at most): ``incremental.take``, the processor's
part (the live state compared with the last checkpoint's, the changed rows copied);
``incremental.take_numpy``, the same with the comparison in numpy (the reference twin,
side by side in the same run); ``incremental.bytes``, a delta's size; then the delta
serialised and written each way: appended to ``FILE.deltas``, a row of the SQLite
store, of the PostgreSQL store.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emfence.run.checkpoint_file import append_deltas
from engine.checkpoint_delta import DeltaChain, sync_rows_numpy
from engine.state import (
    NONE_MS,
    checkpoint_bytes,
    id_arrays,
    new_state,
    snapshot_arrays,
    write_checkpoint,
)


def synthetic_snapshot(n_devices: int, seed: int = 1, copy: bool = True
                       ) -> dict[str, np.ndarray]:
    """A snapshot of ``n_devices`` devices heard from in the last hour, a few with open
    episodes, one exclusion slot each (``copy=False``: the state's own arrays)."""
    rng = np.random.default_rng(seed)
    st = new_state(n_devices, n_devices)
    now = 1_763_800_000_000
    st.last_rx_ms[:] = now - rng.integers(0, 3_600_000, n_devices)
    st.deadline_ms[:] = st.last_rx_ms + 600_000
    st.last_fix_ts_ms[:] = st.last_rx_ms - rng.integers(0, 5_000, n_devices)
    st.last_status_ts_ms[:] = st.last_rx_ms - rng.integers(0, 60_000, n_devices)
    open_ = rng.random(n_devices) < 0.01
    st.outbound_at_ms[open_] = st.last_fix_ts_ms[open_]
    st.outbound_zone[open_] = 0
    st.exclusion_at_ms[:] = NONE_MS
    st.floor_ms[0] = st.deadline_ms.min()
    ids = id_arrays([f"BR-{i:08d}" for i in range(n_devices)],
                    [(f"BR-{i:08d}", f"victim-{i:08d}") for i in range(n_devices)],
                    ["county-411302"] + [f"victim-{i:08d}" for i in range(n_devices)])
    return snapshot_arrays(st, ids, np.zeros(16, np.int64), copy)


def report_window(live: dict[str, np.ndarray], rng, changed: int) -> None:
    """``changed`` devices report once, as a window's fixes would change them."""
    n = len(live["last_rx_ms"])
    d = rng.choice(n, size=min(changed, n), replace=False)
    live["last_rx_ms"][d] += rng.integers(1_000, 60_000, len(d))
    live["deadline_ms"][d] = live["last_rx_ms"][d] + 600_000
    live["last_fix_ts_ms"][d] = live["last_rx_ms"][d] - 500
    live["device_ms"][d, 3] = live["last_rx_ms"][d]
    live["last_pos"][d] = rng.normal(size=(len(d), 3))


def run_incremental(devices: int, rounds: int, changed: int, pg: str | None,
                    folder: Path) -> dict:
    """Deltas of ``changed`` devices a window after one full checkpoint, written each way."""
    from alarms.store import open_store

    live = synthetic_snapshot(devices, copy=False)
    rng = np.random.default_rng(2)
    # The compiled comparison (the engine's) and its numpy twin, each its own chain over
    # the same live state, taking turns to go first each window.
    chains = {"take": DeltaChain(10**9), "take_numpy": DeltaChain(10**9, sync_rows_numpy)}
    base = chains["take"].next(live)[1]
    chains["take_numpy"].next(live)
    deltas: list[dict] = []
    take_ms: dict[str, list[float]] = {k: [] for k in chains}

    def take(i: int) -> None:
        report_window(live, rng, changed)
        got = {}
        for name in sorted(chains, reverse=bool(i % 2)):
            t = time.perf_counter()
            got[name] = chains[name].next(live)
            take_ms[name].append((time.perf_counter() - t) * 1000)
        assert got["take"][0] == got["take_numpy"][0] == "delta"
        assert all(np.array_equal(got["take"][1][k], v) for k, v in got["take_numpy"][1].items()
                   if k.startswith("idx:"))
        deltas.append(got["take"][1])

    for i in range(rounds):
        take(i)
    data = [checkpoint_bytes(d) for d in deltas]
    out: dict = {"changed": changed, "take": _summary(take_ms["take"]),
                 "take_numpy": _summary(take_ms["take_numpy"]),
                 "bytes": int(statistics.median(len(x) for x in data)),
                 "serialise": _times(lambda: checkpoint_bytes(deltas[-1]), rounds)}
    log, size = folder / "engine.ckpt.deltas", [0]
    out["file"] = _times(lambda: size.__setitem__(0, append_deltas(
        log, [checkpoint_bytes(deltas[-1])], size[0])), rounds)
    urls = [("sqlite", f"sqlite:///{folder / 'inc.db'}")] + ([("postgresql", pg)] if pg else [])
    for name, url in urls:
        out[name] = _delta_rows(open_store(url), checkpoint_bytes(base), deltas[-1], rounds)
    return out


def _delta_rows(store, base: bytes, delta: dict, rounds: int) -> dict:
    """A delta written ``rounds`` times as the next row after ``base``, closing ``store``."""
    seq = iter(range(1, 10**9))
    try:
        store.save_checkpoint_chain("bench-checkpoint", base, [], b"", 0)
        out = _times(lambda: store.save_checkpoint_chain(
            "bench-checkpoint", None, [(next(seq), checkpoint_bytes(delta))],
            bytes(16 * 20_000), 0), rounds)
        store.delete_checkpoint("bench-checkpoint")
    finally:
        store.close_store()
    return out


def _times(fn, rounds: int) -> dict[str, float]:
    ms = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    return _summary(ms)


def _summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1)}


def run(devices: int, rounds: int, pg: str | None, changed: int = 20_000) -> dict:
    from alarms.store import open_store

    snap = synthetic_snapshot(devices)
    data = checkpoint_bytes(snap)
    digests = bytes(16 * 20_000)  # a full acknowledgement window of redelivery digests
    out: dict = {"devices": devices, "rounds": rounds, "state_bytes": len(data),
                 "digest_bytes": len(digests),
                 "serialise": _times(lambda: checkpoint_bytes(snap), rounds)}
    own = synthetic_snapshot(devices, copy=False)
    out["copy"] = _times(lambda: {k: a.copy() for k, a in own.items()}, rounds)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "engine.ckpt"
        out["file"] = _times(lambda: write_checkpoint(path, snap), rounds)
        store = open_store(f"sqlite:///{Path(d) / 'alarms.db'}")
        try:
            out["sqlite"] = _times(lambda: store.save_checkpoint(
                "bench-checkpoint", checkpoint_bytes(snap), digests, 0), rounds)
        finally:
            store.close_store()
    if pg:
        store = open_store(pg)
        try:
            out["postgresql"] = _times(lambda: store.save_checkpoint(
                "bench-checkpoint", checkpoint_bytes(snap), digests, 0), rounds)
            store.delete_checkpoint("bench-checkpoint")
        finally:
            store.close_store()
    if changed:
        with tempfile.TemporaryDirectory() as d:
            out["incremental"] = run_incremental(devices, rounds, changed, pg, Path(d))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--pg", help="PostgreSQL URL of a database to write to (optional)")
    p.add_argument("--changed", type=int, default=20_000,
                   help="devices changed a window for the incremental checkpoints (0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    result = run(args.devices, args.rounds, args.pg, args.changed)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
