"""Schema migrations on a database written by an older emfence (SQLite and PostgreSQL).

Version 4 drops the alarms table's CHECK on ``type``: the types are contract.ALARM_TYPES,
checked when an event is recorded, so the rules added after version 1 (curfew,
leave_overdue, ...) are stored by databases created before them.
"""

from __future__ import annotations

import pytest
from alarms_helpers import raised

from alarms import StoreError, events, open_store, schema
from contract import ALARM_TYPES


@pytest.fixture
def new_types(monkeypatch) -> list[str]:
    """The contract's types beyond version 1's, and one more the contract gets later (a
    rule added after this code): the store must take it with no migration of its own."""
    later = "a_later_rule"
    monkeypatch.setattr(events, "ALARM_TYPES", (*ALARM_TYPES, later))
    return [*(t for t in ALARM_TYPES if t not in schema._V1_ALARM_TYPES), later]


def _open_at_version(url: str, version: int, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        m.setattr(schema, "SCHEMA_VERSION", version)
        return open_store(url)


def _insert_alarm(store, alarm_id: str, type_name: str) -> None:
    with store._db.tx("t") as cur:
        cur.execute("INSERT INTO alarms (alarm_id, type, subject_id, device_id, region, "
                    "raised_at, recorded_at, evidence) VALUES (?, ?, 'S', 'D', '411303', 1, 1, "
                    "'{}')", (alarm_id, type_name))


def test_version_3_database_refuses_a_new_type_and_version_4_takes_it(store_url, monkeypatch,
                                                                       new_types):
    old = _open_at_version(store_url, 3, monkeypatch)
    try:
        assert old.schema_version() == 3
        _insert_alarm(old, "OLD-1", "outbound")  # a row as version 3 wrote it
        with pytest.raises(StoreError):  # the version-1 CHECK on type
            _insert_alarm(old, "X-1", new_types[0])
    finally:
        old.close()

    store = open_store(store_url)  # migrates 3 -> current
    try:
        assert store.schema_version() == schema.SCHEMA_VERSION >= 4
        assert store.get_alarm("OLD-1")["type"] == "outbound"
        for i, type_name in enumerate(new_types):
            store.record_events([raised(f"NEW-{i}", at=2_000 + i, type=type_name)],
                                now_ms=3_000)
            assert store.get_alarm(f"NEW-{i}")["type"] == type_name
        # the store itself still refuses what the contract does not know
        with pytest.raises(StoreError, match="type must be one of"):
            store.record_events([raised("BAD-1", at=4_000, type="no_such_type")], now_ms=4_500)
    finally:
        store.close()

    again = open_store(store_url)  # a second connection sees the new definition
    try:
        again.record_events([raised("AGAIN-1", at=5_000, type=new_types[-1])], now_ms=5_500)
        assert again.get_alarm("AGAIN-1")["type"] == new_types[-1]
    finally:
        again.close()


def test_a_fresh_database_takes_every_contract_type(store_url, new_types):
    store = open_store(store_url)
    try:
        for i, type_name in enumerate((*ALARM_TYPES, *new_types)):
            _insert_alarm(store, f"F-{i}", type_name)
        stored = {store.get_alarm(f"F-{i}")["type"]
                  for i in range(len(ALARM_TYPES) + len(new_types))}
        assert stored == {*ALARM_TYPES, *new_types}
    finally:
        store.close()


def test_device_kind_and_suspension_are_kept_and_a_suspended_alarm_never_escalates(store):
    store.record_events([raised("K-1", at=1_000, device_kind="phone"),
                         raised("K-2", at=1_000, device_kind="bracelet", suspended=True)],
                        now_ms=1_000)
    phone, suspended = store.get_alarm("K-1"), store.get_alarm("K-2")
    assert (phone["device_kind"], phone["suspended"]) == ("phone", False)
    assert (suspended["device_kind"], suspended["suspended"]) == ("bracelet", True)
    assert "device_kind" not in phone["evidence"] and "suspended" not in suspended["evidence"]
    listed = {a["alarm_id"]: (a["device_kind"], a["suspended"]) for a in store.list_alarms()}
    assert listed == {"K-1": ("phone", False), "K-2": ("bracelet", True)}
    escalated = store.escalate_due(now_ms=10_000_000, after_ms=60_000)
    assert [e["alarm_id"] for e in escalated] == ["K-1"]
    with pytest.raises(StoreError, match="suspended must be a boolean"):
        store.record_events([raised("K-3", at=1_000, suspended="yes")], now_ms=1_000)
