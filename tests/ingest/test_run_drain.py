"""The backlog-drained decision with a marker per device subscription (issue #17,
emfence/run/drain.py): "backlog drained" only after every message queued for the
worker's four subscriptions, on mosquitto (one queue per session, in order) as fast as
with the single marker before.

The same check against NATS (each subscription a JetStream consumer of its own) is not
in the suite: NATS 2.9 sometimes holds part of a resumed backlog until its ``ack_wait``
and delivers it after the markers (docs/operations.md, "Offline alarms after a start or
an outage"). The remedy, ``ingest.broker_ack_wait_s`` (sweeps wait the broker's ack wait
after the drain), is held here on mosquitto: what it holds is the worker's decision."""

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


def _logged_at(log: str, text: str) -> float:
    """Seconds since midnight of the first log line containing ``text``."""
    line = next(line for line in log.splitlines() if text in line)
    hms = re.match(r"\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d{3}) ", line)
    h, m, s, ms = (int(x) for x in hms.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def test_sweeps_wait_the_brokers_ack_wait_after_the_drain(tmp_path, fleet, broker, engines):
    """ingest.broker_ack_wait_s (for NATS, whose re-sends come only after its ack_wait):
    after a start with a backlog the first offline sweep comes that long after the
    backlog drained, and the log says why. (The broker here is mosquitto: what is held
    is the worker's own decision, the same on any broker.)"""
    ack_wait_s = 4
    engine = engines(tmp_path, fleet, broker,
                     config=CONFIG + f"broker_ack_wait_s = {ack_wait_s}\n")
    engine.wait_log("backlog drained")
    assert engine.stop() == 0
    queue_backlog(broker.port, fleet, LOADGEN_USER, LOADGEN_PW)
    mark = len(engine.log())
    engine.start()
    engine.wait_log(f"offline sweeps start: the backlog is drained (and the broker's "
                    f"{ack_wait_s} s ack wait)", timeout_s=60, after=mark)
    log = engine.log()[mark:]
    waited = _logged_at(log, "offline sweeps start") - _logged_at(log, "backlog drained")
    assert ack_wait_s <= waited < ack_wait_s + 3, log[-3000:]
    assert engine.stop() == 0
