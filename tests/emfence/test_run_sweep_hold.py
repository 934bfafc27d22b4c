"""The offline-sweep hold (emfence/run/sweeps.py) and the drain markers it waits for
(emfence/run/drain.py), without a broker: when sweeps may run after a start, after a
broker outage, and when the markers or the devices never come."""

from __future__ import annotations

import logging

import paho.mqtt.client as paho

from emfence.run.drain import MARKER, DrainMarkers
from emfence.run.sweeps import SweepHold
from ingest.mqtt import subscriptions

GRACE_S, PING_S, WAIT_S, PERIOD_S = 3.0, 1.0, 20.0, 0.1
T0 = 1_800_000_000_000  # epoch ms


def hold() -> SweepHold:
    h = SweepHold(GRACE_S, PING_S, WAIT_S)
    h.connected(False, T0)
    return h


def test_a_marker_per_device_subscription_in_its_own_topic_space():
    markers = DrainMarkers("worker-1", ["330723", "330702"])
    assert len(markers.topics) == 4
    for topic, topic_filter in markers.topics.items():
        assert paho.topic_matches_sub(topic_filter, topic)
        # under the worker's own account where a device id goes: what mosquitto's
        # `pattern write emfence/v1/+/%u/fix` (and /status) lets every account publish
        kind = topic.rsplit("/", 1)[1]
        assert paho.topic_matches_sub(f"emfence/v1/+/emfence-worker-1/{kind}", topic)
    assert sorted(markers.topics.values()) == sorted(subscriptions(["330723", "330702"]))
    every = DrainMarkers("worker-1", None)
    assert sorted(every.topics) == ["emfence/v1/engine/emfence-worker-1/fix",
                                    "emfence/v1/engine/emfence-worker-1/status"]


def test_drained_once_every_marker_of_this_connection_is_back():
    markers = DrainMarkers("worker-1", ["330723"])
    old = markers.start()
    sent = markers.start()  # a reconnect: the earlier connection's markers are stale
    assert {t for t, _ in sent} == set(markers.topics)
    assert all(p.startswith(MARKER) for _, p in sent)
    (fix_topic, payload), (status_topic, _) = sorted(sent)
    assert markers.arrived(fix_topic, old[0][1]) is False  # stale: acknowledged, ignored
    assert markers.arrived(fix_topic, b'{"ts": 1, "lat": 1, "lon": 1}') is None  # a device's
    assert markers.arrived(fix_topic, payload) is False
    assert markers.missing() == ["emfence/v1/330723/+/status"]
    assert markers.arrived(fix_topic, payload) is False  # counted once
    assert markers.arrived(status_topic, payload) is True
    assert markers.missing() == []


def test_no_marker_is_awaited_for_a_refused_subscription():
    markers = DrainMarkers("worker-1", ["330723"])
    sent = markers.start(["emfence/v1/330723/+/status"])
    assert sent == [("emfence/v1/330723/emfence-worker-1/fix", markers.nonce)]
    assert markers.arrived(sent[0][0], sent[0][1]) is True


def test_after_a_start_sweeps_run_as_soon_as_the_backlog_is_drained():
    h = hold()
    assert not h.may_sweep(T0 + 10, PERIOD_S)
    h.drained = True
    assert h.may_sweep(T0 + 20, PERIOD_S)
    assert h.health() == "running"


def test_after_a_start_the_grace_alone_does_not_release_an_undrained_backlog(caplog):
    h = hold()
    h.missing = ["emfence/v1/330723/+/fix"]
    assert not h.may_sweep(T0 + int((GRACE_S + WAIT_S) * 1000) - 1, PERIOD_S)
    with caplog.at_level(logging.ERROR, "emfence.run"):
        h.heard()
        assert h.may_sweep(T0 + int((GRACE_S + WAIT_S) * 1000), PERIOD_S)
    assert "drain markers of emfence/v1/330723/+/fix did not come back" in caplog.text


def test_after_an_outage_the_grace_counts_from_the_first_device_message():
    """A failover can hold devices' publishes on a surviving node for longer than the
    worker takes to reconnect elsewhere: the grace waits for the devices' messages."""
    h = hold()
    h.drained = True
    assert h.may_sweep(T0 + 10, PERIOD_S)
    h.connected(True, T0 + 1000)
    h.drained = True  # the markers came back at once: nothing queued for the worker yet
    late = T0 + 1000 + int(GRACE_S * 1000) * 3
    assert not h.may_sweep(late, PERIOD_S)
    assert h.health() == "held (broker outage)"
    h.device_message(late)
    assert not h.awaiting_devices
    assert not h.may_sweep(late + int(GRACE_S * 1000) - 1, PERIOD_S)
    assert h.may_sweep(late + int(GRACE_S * 1000), PERIOD_S)


def test_after_an_outage_the_markers_are_waited_for_too():
    h = hold()
    h.connected(True, T0)
    h.device_message(T0)
    assert not h.may_sweep(T0 + int(GRACE_S * 1000) + 1, PERIOD_S)  # not drained
    h.drained = True
    assert h.may_sweep(T0 + int(GRACE_S * 1000) + 2, PERIOD_S)


def test_a_fleet_that_sends_nothing_after_an_outage_is_swept_after_the_wait(caplog):
    h = hold()
    h.connected(True, T0)
    h.drained = True
    end = T0 + int((GRACE_S + WAIT_S) * 1000)
    assert not h.may_sweep(end - 1, PERIOD_S)
    with caplog.at_level(logging.WARNING, "emfence.run"):
        assert h.may_sweep(end, PERIOD_S)
    assert "no device message came" in caplog.text


def test_a_broker_that_re_sends_after_its_ack_wait_holds_sweeps_that_long(caplog):
    """ingest.broker_ack_wait_s: NATS re-sends a message it got no acknowledgement for
    only after its ack_wait, and can deliver part of a resumed backlog after the drain
    markers; what it sent before they came back it sends again by then plus ack_wait:
    after a start, and after a reconnect, sweeps wait that long after the drain."""
    ack_wait_s = 30.0
    h = SweepHold(GRACE_S, PING_S, WAIT_S, ack_wait_s)
    h.connected(False, T0)
    assert not h.may_sweep(T0 + 5_000, PERIOD_S)
    h.drained = True  # the markers came back
    h.heard()
    assert not h.may_sweep(T0 + 5_100, PERIOD_S)  # seen drained here
    assert not h.may_sweep(T0 + 5_100 + int(ack_wait_s * 1000) - 1, PERIOD_S)
    with caplog.at_level(logging.INFO, "emfence.run"):
        assert h.may_sweep(T0 + 5_100 + int(ack_wait_s * 1000), PERIOD_S)
    assert "the backlog is drained (and the broker's 30 s ack wait)" in caplog.text
    later = T0 + 600_000
    h.connected(True, later)  # a broker outage: the grace from the first device message
    assert h.drained_ms is None
    h.device_message(later + 10)
    h.drained = True
    h.heard()
    assert not h.may_sweep(later + 20, PERIOD_S)  # seen drained here
    assert not h.may_sweep(later + 10 + int(GRACE_S * 1000), PERIOD_S)  # grace, not ack wait
    assert not h.may_sweep(later + 19 + int(ack_wait_s * 1000), PERIOD_S)
    assert h.may_sweep(later + 20 + int(ack_wait_s * 1000), PERIOD_S)


def test_without_an_ack_wait_nothing_changes():
    h = SweepHold(GRACE_S, PING_S, WAIT_S, 0.0)
    h.connected(False, T0)
    h.drained = True
    assert h.may_sweep(T0 + 1, PERIOD_S)
