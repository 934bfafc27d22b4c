"""Schema version 5 on a database written by emfence at version 4 (SQLite and
PostgreSQL): the register's tables appear, stored alarms are kept, and an alarm stored
before can be filed with the new disposition ``supervision_ended`` when its subject's
supervision ends."""

from __future__ import annotations

import pytest
from alarms_helpers import raised
from register_helpers import T0, subject

from alarms import StoreError, open_store, schema


def _open_at_version(url: str, version: int, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        m.setattr(schema, "SCHEMA_VERSION", version)
        return open_store(url)


def _close_directly(store, alarm_id: str, disposition: str) -> None:
    with store._db.tx("t") as cur:
        cur.execute("UPDATE alarms SET workflow = 'closed', disposition = ? WHERE alarm_id = ?",
                    (disposition, alarm_id))


def test_a_version_4_database_gets_the_register(store_url, monkeypatch, cnmaps_dir):
    old = _open_at_version(store_url, 4, monkeypatch)
    try:
        assert old.schema_version() == 4
        old.record_events([raised("OLD-open", at=T0, subject_id="S-1", device_id="B-1"),
                           raised("OLD-filed", at=T0 + 1, subject_id="S-1", device_id="B-1",
                                  type="tamper")], now_ms=T0 + 2)
        _close_directly(old, "OLD-filed", "gps_drift")
        with pytest.raises(StoreError):  # version 4's CHECK does not know it
            _close_directly(old, "OLD-open", "supervision_ended")
        with pytest.raises(StoreError, match="reg_subjects"), \
                old._db.tx("t", write=False) as cur:
            cur.execute("SELECT COUNT(*) FROM reg_subjects")
    finally:
        old.close()

    store = open_store(store_url)  # migrates 4 -> 5
    try:
        assert store.schema_version() == schema.SCHEMA_VERSION == 5
        assert store.get_alarm("OLD-open")["workflow"] == "new"
        reg = store.register
        reg.adcode_dir = str(cnmaps_dir)
        reg.import_adcode("411303", actor="admin", now_ms=T0 + 10)
        reg.create_subject(subject("S-1", devices=("B-1",)), actor="dora", now_ms=T0 + 11)
        ended = reg.end_subject("S-1", actor="dora", now_ms=T0 + 12, reason="刑满")
        assert ended["alarms_closed"] == ["OLD-open"]
        assert store.get_alarm("OLD-open")["disposition"] == "supervision_ended"
        assert store.get_alarm("OLD-filed")["disposition"] == "gps_drift"
    finally:
        store.close()

    again = open_store(store_url)  # a later connection reads the widened definition too
    try:
        again.record_events([raised("NEW-1", at=T0 + 20, subject_id="S-9")], now_ms=T0 + 21)
        _close_directly(again, "NEW-1", "supervision_ended")
        assert again.get_alarm("NEW-1")["disposition"] == "supervision_ended"
        assert again.register.change_seq() == 3
        with pytest.raises(StoreError):  # the CHECK is still there for anything else
            _close_directly(again, "NEW-1", "no_such_disposition")
    finally:
        again.close()
