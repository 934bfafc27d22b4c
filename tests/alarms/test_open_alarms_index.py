"""Schema version 15 (SQLite and PostgreSQL): the partial index ``alarms_open`` on the
alarms not closed appears on a database written at version 14, stored alarms are kept,
and the status board's open-alarm query can read it instead of every alarm."""

from __future__ import annotations

from alarms_helpers import raised

from alarms import open_store, schema

T0 = 1_700_000_000_000
BOARD_QUERY = ("SELECT subject_id, device_id, type FROM alarms "
               "WHERE region IN (?) AND workflow <> 'closed'")


def _open_at_version(url: str, version: int, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        m.setattr(schema, "SCHEMA_VERSION", version)
        return open_store(url)


def _plan(store) -> str:
    """The query plan of the board's open-alarm query (sequential scans off on
    PostgreSQL, whose planner prefers them on a table this small)."""
    with store._db.tx("t") as cur:
        if store._db.dialect == "sqlite":
            cur.execute(f"EXPLAIN QUERY PLAN {BOARD_QUERY}", ("R-1",))
            return " ".join(str(r[-1]) for r in cur.cur.fetchall())
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(f"EXPLAIN {BOARD_QUERY}", ("R-1",))
        return " ".join(str(r[0]) for r in cur.cur.fetchall())


def test_a_version_14_database_gets_the_open_alarms_index(store_url, monkeypatch):
    old = _open_at_version(store_url, 14, monkeypatch)
    try:
        old.record_events([raised("OLD-1", at=T0, subject_id="S-1", device_id="B-1")],
                          now_ms=T0 + 1)
        assert "alarms_open" not in _plan(old)
    finally:
        old.close()
    store = open_store(store_url)
    try:
        assert store.schema_version() == schema.SCHEMA_VERSION >= 15
        assert "alarms_open" in _plan(store)
        assert store.get_alarm("OLD-1") is not None
    finally:
        store.close()
