"""The notifications table (schema version 6): one row per alarm event x recipient x
channel, written in the transaction that records the event (the outbox of
:mod:`alarms.notify_outbox`), and kept as the record of who was told what and when.

``delivery_id`` is stable for an event, a recipient and a channel; it is unique, so
recording the same event again (a replay after a restart) adds no second row, and it
is the ``X-Emfence-Delivery`` header a receiver drops duplicates by.
"""

from __future__ import annotations

import re
from typing import Any

# the states version 6 was released with (version 7 adds ``cancelled``:
# alarms.roster_schema; version 8 ``summarized``, below)
NOTIFICATION_STATES = ("pending", "sent", "failed")

# Frozen once released (version 6): a later change is a new migration.
V6_TABLES: list[str] = [
    """
    CREATE TABLE notifications (
        id           {autopk},
        delivery_id  TEXT NOT NULL UNIQUE,
        alarm_id     TEXT NOT NULL,
        event        TEXT NOT NULL,
        region       TEXT NOT NULL,
        channel      TEXT NOT NULL,
        recipient    TEXT NOT NULL,
        level        INTEGER NOT NULL,
        body         {blob} NOT NULL,
        state        TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sent', 'failed')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      BIGINT NOT NULL,
        created_at   BIGINT NOT NULL,
        sent_at      BIGINT,
        last_error   TEXT
    )
    """,
    "CREATE INDEX notifications_due ON notifications (next_at) WHERE state = 'pending'",
    "CREATE INDEX notifications_alarm ON notifications (alarm_id, id)",
]


# Version 8: storm summaries. A notification folded into a summary message (one message
# instead of many to one recipient, alarms.notify_storm) is ``summarized``, and
# ``summary_id`` names the summary's delivery id; the summary is a row of its own
# (event ``summary``). The storm check counts a recipient's recent messages by
# (channel, recipient, sent_at).
SUMMARIZED = "summarized"


def _state_check_sql(states: list[str]) -> str:
    return "CHECK (state IN (" + ", ".join(f"'{s}'" for s in states) + "))"


def add_summarized_state(cur: Any, dialect: str) -> None:
    """``notifications.state`` may also be ``summarized``. The CHECK is widened from
    whatever states it lists now (another migration may have added its own), keeping
    every row valid: PostgreSQL swaps the constraint; SQLite's table definition is edited
    in place in the migration's transaction, with the schema version bumped so every
    connection reloads it (SQLite's documented procedure for such changes)."""
    if dialect == "postgresql":
        d = cur.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                        "WHERE conname = 'notifications_state_check'").scalar()
        states = re.findall(r"'([a-z_]+)'", d or "") or list(NOTIFICATION_STATES)
        cur.execute("ALTER TABLE notifications DROP CONSTRAINT IF EXISTS "
                    "notifications_state_check")
        cur.execute("ALTER TABLE notifications ADD CONSTRAINT notifications_state_check "
                    + _state_check_sql([*states, SUMMARIZED]))
        return
    sql = cur.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                      "name = 'notifications'").scalar()
    old = re.search(r"CHECK \(state IN \(([^)]*)\)\)", sql)
    if old is None:
        raise RuntimeError("notifications: no CHECK on state to widen")
    states = re.findall(r"'([a-z_]+)'", old.group(1))
    version = cur.execute("PRAGMA schema_version").scalar()
    cur.execute("PRAGMA writable_schema=ON")
    try:
        cur.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) "
                    "WHERE type = 'table' AND name = 'notifications'",
                    (old.group(0), _state_check_sql([*states, SUMMARIZED])))
        cur.execute(f"PRAGMA schema_version={int(version) + 1}")
    finally:
        cur.execute("PRAGMA writable_schema=OFF")


# Frozen once released (version 8): a later change is a new migration.
V7_SUMMARIES: list[Any] = [
    add_summarized_state,
    "ALTER TABLE notifications ADD COLUMN summary_id TEXT",
    ("CREATE INDEX notifications_recipient ON notifications (channel, recipient, sent_at) "
     "WHERE state = 'sent'"),
]
