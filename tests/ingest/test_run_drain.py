"""The backlog-drained decision with a marker per device subscription (issue #17,
emfence/run/drain.py): "backlog drained" only after every message queued for the
worker's four subscriptions, on mosquitto (one queue per session, in order) as fast as
with the single marker before.

The same check against NATS (each subscription a JetStream consumer of its own) is not
in the suite: NATS 2.9 sometimes holds part of a resumed backlog until its ``ack_wait``
and delivers it after the markers (docs/operations.md, "Offline alarms after a start or
an outage")."""

from __future__ import annotations

import re

import orjson
import pytest
from ingest_fleet import LOADGEN_PW, REGION_A, REGION_B, fix, now_ms
from ingest_mqtt_helpers import PahoClient

from ingest.passwords import LOADGEN_USER

pytestmark = pytest.mark.mqtt

CONFIG = """
[ingest]
health_interval_s = 1
restart_grace_s = 60
checkpoint_interval_s = 1
ack_window_messages = 100
"""
QUEUED = 2000


def queue_backlog(port: int, fleet, user: str, password: str) -> int:
    """Fixes and statuses of both regions (four subscriptions) published while the worker
    is away; how many."""
    pub = PahoClient(port, user, password, client_id="test-backlog")
    t0, n = now_ms() - 600_000, 0
    devices = [(REGION_A, d) for d in fleet.ids(REGION_A)] + \
              [(REGION_B, d) for d in fleet.ids(REGION_B)]
    try:
        for i in range(QUEUED // 2):
            region, d = devices[i % len(devices)]
            pub.publish(f"emfence/v1/{region}/{d}/fix", orjson.dumps(fix(t0 + i, fleet.home)))
            pub.publish(f"emfence/v1/{region}/{d}/status",
                        orjson.dumps({"ts": t0 + i, "battery": 90}))
            n += 2
    finally:
        pub.close()
    return n


def drained_after(engine, mark: int) -> int:
    """The messages the worker received before its backlog-drained line after ``mark``."""
    engine.wait_log("backlog drained", after=mark)
    line = re.search(r"backlog drained: (\d+) messages", engine.log()[mark:])
    return int(line.group(1))


def check_drained_after_the_backlog(tmp_path, fleet, engines, broker, user, password):
    engine = engines(tmp_path, fleet, broker, config=CONFIG,
                     extra=["--regions", f"{REGION_A},{REGION_B}"])
    engine.wait_log("backlog drained")  # the session and its subscriptions exist
    assert engine.stop() == 0
    queued = queue_backlog(broker.port, fleet, user, password)
    mark = len(engine.log())
    engine.start()
    assert drained_after(engine, mark) == queued, engine.log()[mark:][-3000:]
    engine.wait_log("offline sweeps start: the backlog is drained", after=mark)
    assert engine.stop() == 0


def test_mosquitto_backlog_is_drained_after_it_as_before(tmp_path, fleet, broker, engines):
    check_drained_after_the_backlog(tmp_path, fleet, engines, broker, LOADGEN_USER,
                                    LOADGEN_PW)
