"""benchmarks.receive runs (a real mosquitto, both readers) and takes every message."""

from __future__ import annotations

import pytest

from benchmarks import receive

pytestmark = pytest.mark.mqtt


def test_both_readers_take_every_queued_message():
    out = receive.run(messages=1500, rounds=2)
    for reader in ("paho", "buffered"):
        assert len(out[reader]["messages_per_s"]) == 2
        assert all(x > 0 for x in out[reader]["cpu_us_per_message"])
    assert out["cpu_ratio"] > 0
