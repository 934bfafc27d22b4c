"""Worker-group leases (alarms.leases): the conditional upsert that takes and renews a
lease on the database's clock, the epoch that grows at every change of holder, and the
fence that keeps a stale holder's events, checkpoint and outbox marks out of the store.
Real SQLite and real PostgreSQL (the SQL differs in its clock)."""

from __future__ import annotations

import threading
import time

import pytest
from alarms_helpers import raised, table_count

from alarms import open_store
from alarms.leases import Fence, LeaseFenced
from alarms.store import StoreError

TTL_MS = 300


def expire(store, group: str) -> None:
    """Sleep until ``group``'s lease has expired by the database's clock."""
    state = store.lease(group)
    time.sleep(max(state.left_ms + 20, 0) / 1000)
    assert store.lease(group).left_ms < 0


def test_the_epoch_grows_with_every_holder_and_a_stale_one_cannot_write(store):
    a = store.take_lease("g", "A", TTL_MS)
    assert (a.held, a.holder, a.epoch) == (True, "A", 1) and 0 < a.left_ms <= TTL_MS
    b = store.take_lease("g", "B", TTL_MS)
    assert (b.held, b.holder, b.epoch) == (False, "A", 1)  # not expired: no takeover
    renewed = store.take_lease("g", "A", TTL_MS, epoch=1)
    assert (renewed.held, renewed.epoch) == (True, 1) and renewed.expires_ms >= a.expires_ms
    assert not store.take_lease("g", "A", TTL_MS, epoch=7).held  # a claim it never had
    assert store.lease("other") is None and store.take_lease("other", "C", TTL_MS).epoch == 1
    with pytest.raises(StoreError, match="ttl_ms must be positive"):
        store.take_lease("g", "B", 0)

    expire(store, "g")
    b = store.take_lease("g", "B", TTL_MS)
    assert (b.held, b.holder, b.epoch) == (True, "B", 2)
    late = store.take_lease("g", "A", TTL_MS, epoch=1)  # A woke up after a pause
    assert (late.held, late.holder, late.epoch) == (False, "B", 2)

    # A's writes carry epoch 1: each is refused whole, and A is told.
    lost: list[LeaseFenced] = []
    store.fence = Fence("g", "A", 1, lost.append)
    with pytest.raises(LeaseFenced, match="'g' is no longer held by A at epoch 1"):
        store.record_events([raised("AL-1", at=1000)], 2000)
    with pytest.raises(LeaseFenced):
        store.save_checkpoint("g", b"state", b"", 2000)
    with pytest.raises(LeaseFenced):
        store.mark_delivered([1], 2000)
    assert len(lost) == 3 and all(e.epoch == 1 for e in lost)
    assert table_count(store, "events") == 0 and store.load_checkpoint("g") is None

    # B's writes (epoch 2) go through; A's mark of B's event is still refused.
    store.fence = Fence("g", "B", 2)
    seqs = store.record_events([raised("AL-1", at=1000)], 2000)
    store.save_checkpoint("g", b"state", b"", 2000)
    store.fence = Fence("g", "A", 1)
    with pytest.raises(LeaseFenced):
        store.mark_delivered(seqs, 2100)
    assert len(store.pending(10)) == 1

    # A clean stop releases at once; the next holder's epoch is 3, never an old one.
    assert not store.release_lease("g", "A", 1)
    assert store.release_lease("g", "B", 2)
    a = store.take_lease("g", "A", TTL_MS)
    assert (a.held, a.epoch) == (True, 3)
    store.fence = Fence("g", "A", 3)
    assert store.mark_delivered(seqs, 2200) == 1


@pytest.mark.postgres
def test_a_takeover_waits_for_the_holders_write_in_progress(pg_url):
    """PostgreSQL: the fence's FOR SHARE orders a write in progress before a takeover,
    and the holder's next write sees the new epoch; a session idle in a transaction past
    the bound is ended by the server (a paused holder's locks are released)."""
    holder, standby = open_store(pg_url), open_store(pg_url)
    try:
        assert holder.take_lease("g", "A", TTL_MS).epoch == 1
        expire(holder, "g")
        holder.fence = Fence("g", "A", 1)
        took: list = []
        taker = threading.Thread(target=lambda: took.append(
            standby.take_lease("g", "B", TTL_MS)))
        with holder._db.tx("a write in progress") as cur:
            holder._fenced(cur, "a write in progress")  # passes: nobody took it yet
            taker.start()
            time.sleep(0.3)
            assert took == []  # the takeover waits for this write to commit
        taker.join(10)
        assert took[0].held and took[0].epoch == 2
        with pytest.raises(LeaseFenced):
            holder.save_checkpoint("g", b"late", b"", 1)

        holder.bound_idle_transactions(200)
        result: list = []

        def paused_writer():  # a new thread: a new connection, with the bound
            try:
                with holder._db.tx("paused") as cur:
                    cur.execute("SELECT 1")
                    time.sleep(0.5)
                    cur.execute("SELECT 1")
            except StoreError as exc:
                result.append(exc)

        t = threading.Thread(target=paused_writer)
        t.start()
        t.join(10)
        assert result and "idle" in str(result[0]).lower(), result
    finally:
        holder.close_store()
        standby.close_store()
