"""The shared vocabulary of emfence: what one package hands another.

The one package every layer may import (docs/internals.md, "Layers"): it imports nothing
of emfence's own, only numpy. Four things live here, each in one small module:

- :mod:`contract.alarms`: the alarm types, the alarm identity and the alarm event;
- :mod:`contract.records`: the record batch the engine takes;
- :mod:`contract.topics`: the MQTT topic scheme (wire contract v1);
- :mod:`contract.commands`: commands to a device and its replies (the downlink).

``from contract import ALARM_TYPES, RecordBatch, alarm_event, alarm_topic``
"""

from contract.alarms import (
    ALARM_TYPES,
    ENGINE_EVENTS,
    EVIDENCE_TYPES,
    WARNING_TYPES,
    AlarmEvent,
    alarm_event,
    alarm_id,
)
from contract.errors import EmfenceError
from contract.records import (
    COORD_SYS_CODES,
    K_FIX,
    K_STATUS,
    POWER_CODES,
    STRAP_CODES,
    RecordBatch,
    RecordBuilder,
)
from contract.topics import (
    TOPIC_PREFIX,
    alarm_topic,
    command_topic,
    deadletter_topic,
    device_topic,
    drain_topic,
    health_topic,
    reply_topic,
)

__all__ = [
    "ALARM_TYPES",
    "COORD_SYS_CODES",
    "ENGINE_EVENTS",
    "EVIDENCE_TYPES",
    "K_FIX",
    "K_STATUS",
    "POWER_CODES",
    "STRAP_CODES",
    "TOPIC_PREFIX",
    "WARNING_TYPES",
    "AlarmEvent",
    "EmfenceError",
    "RecordBatch",
    "RecordBuilder",
    "alarm_event",
    "alarm_id",
    "alarm_topic",
    "command_topic",
    "deadletter_topic",
    "device_topic",
    "drain_topic",
    "health_topic",
    "reply_topic",
]
