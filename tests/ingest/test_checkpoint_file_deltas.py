"""``--checkpoint FILE``'s incremental checkpoints (emfence.run.checkpoint_file): the
log ``FILE.deltas`` after the full checkpoint in ``FILE``, read back up to its last whole
record, and only for the chain of the full one it follows."""

from __future__ import annotations

import numpy as np
import pytest

from emfence.run.checkpoint_file import (
    append_deltas,
    deltas_path,
    file_digest,
    load_chain,
    read_deltas,
)
from engine.checkpoint_delta import DeltaChain, without_chain
from engine.state import CheckpointError, checkpoint_bytes, write_checkpoint


def test_the_log_keeps_whole_records_and_a_retry_cuts_a_torn_one(tmp_path):
    log = tmp_path / "c.deltas"
    assert read_deltas(log) == []
    size = append_deltas(log, [b"one", b"two\x00"], 0)
    size = append_deltas(log, [b"three"], size)
    assert read_deltas(log) == [b"one", b"two\x00", b"three"]
    with open(log, "ab") as f:  # a write that failed half-way (a full disk, a crash)
        f.write(b"EFD1\x10\x00")
    assert read_deltas(log) == [b"one", b"two\x00", b"three"]
    size = append_deltas(log, [b"four"], size)  # the retry starts at the last whole record
    assert read_deltas(log) == [b"one", b"two\x00", b"three", b"four"]
    data = bytearray(log.read_bytes())
    data[-1] ^= 1  # a record whose bytes changed is not whole
    log.write_bytes(bytes(data))
    assert read_deltas(log) == [b"one", b"two\x00", b"three"]
    assert append_deltas(log, [b"new chain"], 0) == log.stat().st_size  # cut whole
    assert read_deltas(log) == [b"new chain"]


def _state(n: int) -> dict[str, np.ndarray]:
    return {"t": np.arange(n, dtype=np.int64), "p": np.full((n, 3), np.nan)}


def test_a_file_and_its_deltas_restore_the_newest_state_and_name_it(tmp_path):
    path = tmp_path / "engine.ckpt"
    live, chain = _state(50), DeltaChain(10)
    write_checkpoint(path, chain.next(live)[1])
    size = 0
    for i in range(3):
        live["t"][i] = -i
        live["p"][i * 7, 1] = i
        size = append_deltas(deltas_path(path), [checkpoint_bytes(chain.next(live)[1])], size)
        arrays, identity = load_chain(path)
        assert identity == f"{chain.chain_id}:{i + 1}"
        assert sorted(without_chain(arrays)) == sorted(live)
        for k, a in live.items():
            assert arrays[k].tobytes() == a.tobytes()
    # A new full checkpoint renamed in place; the log still holds the old chain's deltas
    # (a crash before the next append cut it): they are not applied to the new one.
    old_id = chain.chain_id
    chain = DeltaChain(10)
    live["t"][:] = 5
    write_checkpoint(path, chain.next(live)[1])
    arrays, identity = load_chain(path)
    assert identity == f"{chain.chain_id}:0" != f"{old_id}:0"
    assert arrays["t"].tolist() == [5] * 50


def test_a_file_of_an_earlier_release_is_named_by_its_digest(tmp_path):
    path = tmp_path / "engine.ckpt"
    write_checkpoint(path, _state(5))
    arrays, identity = load_chain(path)
    assert identity == file_digest(path) and arrays["t"].tolist() == [0, 1, 2, 3, 4]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_chain(path)
