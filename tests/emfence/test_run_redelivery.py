"""The redelivery horizon (emfence.run.redelivery): every processed message's digest is
recognised for at least ``ingest.redelivery_horizon_s`` after its window closed, and
dropped within one bucket after that; held against a plain dict of digest -> close time."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from emfence.config import ConfigError, config_from_dict
from emfence.run.acks import Acks
from emfence.run.options import Options, message_digest
from emfence.run.redelivery import BUCKETS, Horizon


def test_a_digest_is_kept_for_the_horizon_and_dropped_one_bucket_after():
    rng = random.Random(7)
    horizon_s = 120.0
    h = Horizon(horizon_s)
    closed_at: dict[bytes, float] = {}
    now = 1000.0
    for _ in range(200):  # windows closing every 0.2-3 s, over ~5 horizons
        now += rng.uniform(0.2, 3.0)
        window = {os.urandom(16) for _ in range(rng.randrange(0, 300))}
        h.add(window, now)
        closed_at.update(dict.fromkeys(window, now))
        items = list(closed_at.items())
        for d, t in rng.sample(items, min(200, len(items))):
            age = now - t
            if age < horizon_s:
                assert d in h, f"dropped {age:.1f} s after its window closed"
            elif age >= horizon_s * (1 + 1 / BUCKETS) + 3.0:
                assert d not in h, f"kept {age:.1f} s after its window closed"
        assert not any(os.urandom(16) in h for _ in range(50))
    kept = sum(1 for t in closed_at.values() if now - t < horizon_s * (1 + 1 / BUCKETS) + 3)
    assert len(h) <= kept
    assert h.nbytes >= 16 * len(h)


def test_digests_sharing_their_first_eight_bytes_are_told_apart():
    h = Horizon(60.0)
    head = os.urandom(8)
    kept = [head + os.urandom(8) for _ in range(5)]
    h.add(kept[:3], 0.0)
    h.add(kept[3:4], 20.0)  # a new bucket: the first three sealed
    assert all(d in h for d in kept[:4])
    assert kept[4] not in h
    assert head + bytes(8) not in h


def test_a_horizon_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        Horizon(0)
    with pytest.raises(ConfigError, match="ingest.redelivery_horizon_s"):
        config_from_dict({"ingest": {"redelivery_horizon_s": 0}})
    assert config_from_dict({}).ingest.redelivery_horizon_s == 120.0


def _acks(covered: set[bytes]) -> Acks:
    icfg = config_from_dict({"ingest": {"redelivery_horizon_s": 60}}).ingest
    return Acks(opts=Options("z", "s", "sqlite:///x.db", state_in="none"), icfg=icfg,
                store=None, events=None, tracks=None, outages=None, counters=Counter(),
                ack_all=lambda a: None, stopping=lambda: False, covered=covered)


def test_acks_recognise_a_message_acknowledged_many_windows_ago():
    """The last two windows are sets (as before); older ones, and the digests a restart
    restores, are answered by the horizon: "ack" (acknowledge now), never processed."""
    restored = message_digest("emfence/v1/330723/BR-1/fix", b'{"ts":1}')
    acks = _acks({restored})
    old = message_digest("emfence/v1/330723/BR-1/fix", b'{"ts":2}')
    acks.horizon.add({old}, 0.0)
    for k in range(5):  # five windows closed since: the sets no longer have either
        acks.covered.appendleft({os.urandom(16)})
    assert acks.seen(old) == "ack" and acks.seen(restored) == "ack"
    assert acks.counters["redelivered_late"] == 2
    assert acks.seen(message_digest("emfence/v1/330723/BR-1/fix", b'{"ts":3}')) is None


def test_the_horizon_is_asked_for_the_horizon_after_a_connect_only():
    """An acknowledgement is lost only with its connection: long after the last
    (re)connect a message skips the horizon lookup; a reconnect opens it again."""
    acks = _acks(set())
    old = message_digest("emfence/v1/330723/BR-1/fix", b'{"ts":2}')
    acks.horizon.add({old}, 0.0)
    for _ in range(3):
        acks.covered.appendleft(set())
    acks.horizon_until = 0.0  # connected for longer than the horizon
    assert acks.seen(old) is None
    acks.reconnected(2)
    assert acks.seen(old) == "ack"
