"""A worker's incremental checkpoints in the store (alarms.checkpoints): the full
checkpoint, the deltas after it and the digests of the newest, written in one fenced
transaction, read back in one. Real SQLite and real PostgreSQL."""

from __future__ import annotations

import pytest
from alarms_helpers import table_count

from alarms.leases import Fence, LeaseFenced
from alarms.store import StoreError


def test_deltas_follow_their_full_checkpoint_and_go_with_the_next(store):
    assert store.load_checkpoint_chain("north") is None
    store.save_checkpoint_chain("north", b"base-1", [], b"d1", 1000)
    store.save_checkpoint_chain("north", None, [(1, b"delta-1")], b"d2", 1100)
    store.save_checkpoint_chain("north", None, [(2, b"delta-2\x00"), (3, b"delta-3")], b"d3",
                                1200)
    store.save_checkpoint("south", b"other", b"s", 1001)
    assert store.load_checkpoint_chain("north") == (
        b"base-1", [b"delta-1", b"delta-2\x00", b"delta-3"], b"d3", 1200)
    assert store.load_checkpoint("north") == (b"base-1", b"d1", 1000)  # (its own row)
    assert store.load_checkpoint_chain("south") == (b"other", [], b"s", 1001)
    # A new full checkpoint replaces the old one and its deltas, in the same transaction.
    store.save_checkpoint_chain("north", b"base-2", [(1, b"after-2")], b"d4", 1300)
    assert store.load_checkpoint_chain("north") == (b"base-2", [b"after-2"], b"d4", 1300)
    store.save_checkpoint("north", b"base-3", b"d5", 1400)
    assert store.load_checkpoint_chain("north") == (b"base-3", [], b"d5", 1400)
    store.save_checkpoint_chain("north", None, [(1, b"x")], b"d6", 1500)
    assert store.delete_checkpoint("north") is True
    assert store.load_checkpoint_chain("north") is None
    assert table_count(store, "engine_checkpoint_deltas") == 0


def test_a_delta_without_its_full_checkpoint_or_twice_is_refused_whole(store):
    with pytest.raises(StoreError, match="no checkpoint of worker 'w' for its deltas"):
        store.save_checkpoint_chain("w", None, [(1, b"delta")], b"d", 1000)
    assert table_count(store, "engine_checkpoint_deltas") == 0
    store.save_checkpoint_chain("w", b"base", [(1, b"delta")], b"d1", 1000)
    with pytest.raises(StoreError):
        store.save_checkpoint_chain("w", None, [(2, b"two"), (1, b"again")], b"d2", 1100)
    assert store.load_checkpoint_chain("w") == (b"base", [b"delta"], b"d1", 1000)


def test_a_stale_holder_writes_no_delta(store):
    """Every checkpoint write is fenced by the lease's epoch, deltas included."""
    store.take_lease("g", "A", 60_000)
    store.fence = Fence("g", "A", 1)
    store.save_checkpoint_chain("g", b"base", [], b"d0", 1000)
    store.save_checkpoint_chain("g", None, [(1, b"delta-1")], b"d1", 1100)
    store.fence = None
    assert store.release_lease("g", "A", 1)
    assert store.take_lease("g", "B", 60_000).epoch == 2
    lost = []
    store.fence = Fence("g", "A", 1, lost.append)
    with pytest.raises(LeaseFenced):
        store.save_checkpoint_chain("g", None, [(2, b"stale")], b"stale", 1200)
    with pytest.raises(LeaseFenced):
        store.save_checkpoint_chain("g", b"stale-base", [], b"stale", 1200)
    assert len(lost) == 2
    store.fence = Fence("g", "B", 2)
    assert store.load_checkpoint_chain("g") == (b"base", [b"delta-1"], b"d1", 1100)
    store.save_checkpoint_chain("g", None, [(2, b"delta-2")], b"d2", 1300)
    assert store.load_checkpoint_chain("g") == (b"base", [b"delta-1", b"delta-2"], b"d2", 1300)
