"""Durable alarms: the store (SQLite / PostgreSQL), the operator lifecycle, escalation and
the MQTT publisher of the outbox. See docs/alarm-lifecycle.md."""

from alarms.register_check import RegisterError
from alarms.schema import DISPOSITIONS, EVENTS, FALSE_ALARM_DISPOSITIONS, ROLES
from alarms.store import (
    AlarmActionError,
    AlarmStore,
    StoreError,
    UserError,
    open_store,
)
from contract.alarms import ALARM_TYPES

__all__ = [
    "ALARM_TYPES",
    "DISPOSITIONS",
    "EVENTS",
    "FALSE_ALARM_DISPOSITIONS",
    "ROLES",
    "AlarmActionError",
    "AlarmStore",
    "RegisterError",
    "StoreError",
    "UserError",
    "open_store",
]
