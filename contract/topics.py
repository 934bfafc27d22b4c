"""The MQTT topic scheme, wire contract v1 (docs/wire-protocol.md): every topic emfence
publishes or subscribes to is built here. ``{region}`` and ``{device_id}`` are
``[A-Za-z0-9_-]{1,64}``; the builders do not check them (the decoders do, on input).
Pass ``"+"`` for a level to get a subscription filter."""

from __future__ import annotations

TOPIC_PREFIX = "emfence/v1"
# What a device publishes (fix, status, reply) and what it is sent (cmd).
DEVICE_KINDS = ("fix", "status", "cmd", "reply")


def device_topic(region: str, device_id: str, kind: str) -> str:
    """``emfence/v1/{region}/{device_id}/{kind}``, kind ``fix``, ``status``, ``cmd`` or
    ``reply``."""
    return f"{TOPIC_PREFIX}/{region}/{device_id}/{kind}"


def command_topic(region: str, device_id: str) -> str:
    """``emfence/v1/{region}/{device_id}/cmd``: commands to a device (QoS 1)."""
    return device_topic(region, device_id, "cmd")


def reply_topic(region: str, device_id: str) -> str:
    """``emfence/v1/{region}/{device_id}/reply``: a device's replies to its commands."""
    return device_topic(region, device_id, "reply")


def alarm_topic(region: str, alarm_type: str) -> str:
    """``emfence/v1/{region}/alarms/{type}``: where the outbox publishes alarm events."""
    return f"{TOPIC_PREFIX}/{region}/alarms/{alarm_type}"


def deadletter_topic(region: str) -> str:
    """``emfence/v1/{region}/deadletter``: rejected input of that region's devices."""
    return f"{TOPIC_PREFIX}/{region}/deadletter"


def health_topic(engine_name: str) -> str:
    """``emfence/v1/engine/{name}/health``: the retained health document of a worker."""
    return f"{TOPIC_PREFIX}/engine/{engine_name}/health"


def drain_topic(engine_name: str) -> str:
    """``emfence/v1/engine/{name}/drain``: the marker a worker sends itself after a
    (re)connect; receiving it back means the broker's backlog has been drained."""
    return f"{TOPIC_PREFIX}/engine/{engine_name}/drain"
