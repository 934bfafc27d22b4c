"""The backlog-drained decision on a broker that keeps no order across subscriptions
(issue #17): NATS delivers each subscription from its own JetStream consumer, up to its
``max_ack_pending`` unacknowledged each, so a marker on a topic of its own comes back
while the devices' queued fixes still wait for acknowledgements (the worker
acknowledges a message once a checkpoint holds it): here after ~800 of 2000. The
worker's markers go into each device subscription's own topic space
(emfence/run/drain.py): "backlog drained" comes only after every queued message, on
NATS as on mosquitto (which keeps one queue per session, in order).

NATS (2.9 here) also holds part of a resumed session's backlog until its ``ack_wait``
(drained 10-15 s after the connect with ``ack_wait`` 5 s; 60 s with its default 30 s):
the markers wait behind it; the test's 5 s keeps it short."""

from __future__ import annotations

import re

import orjson
import pytest
from ingest_fleet import ENGINE_PW, LOADGEN_PW, REGION_A, REGION_B, fix, now_ms
from ingest_mqtt_helpers import PahoClient
from test_run_broker_limits import nats_with

from ingest.passwords import LOADGEN_USER, engine_account

pytestmark = pytest.mark.mqtt

CONFIG = """
[ingest]
health_interval_s = 1
restart_grace_s = 60
checkpoint_interval_s = 1
ack_window_messages = 100
"""
QUEUED = 2000
# Per subscription on NATS: above the three windows the worker may hold (100 each), so
# delivery never waits for NATS's ack_wait, below each subscription's backlog (1000).
MAX_ACK_PENDING = 400


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


def test_nats_backlog_is_drained_only_after_every_subscription_delivered_it(tmp_path, fleet,
                                                                            engines):
    nats = nats_with(tmp_path, f'max_ack_pending: {MAX_ACK_PENDING}, ack_wait: "5s"')
    try:
        check_drained_after_the_backlog(tmp_path, fleet, engines, nats,
                                        engine_account("worker-1"), ENGINE_PW)
    finally:
        nats.stop()


def test_mosquitto_backlog_is_drained_after_it_as_before(tmp_path, fleet, broker, engines):
    check_drained_after_the_backlog(tmp_path, fleet, engines, broker, LOADGEN_USER,
                                    LOADGEN_PW)
