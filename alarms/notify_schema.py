"""The notifications table (schema version 6): one row per alarm event x recipient x
channel, written in the transaction that records the event (the outbox of
:mod:`alarms.notify_outbox`), and kept as the record of who was told what and when.

``delivery_id`` is stable for an event, a recipient and a channel; it is unique, so
recording the same event again (a replay after a restart) adds no second row, and it
is the ``X-Emfence-Delivery`` header a receiver drops duplicates by.
"""

from __future__ import annotations

# (version 7 adds ``cancelled``: alarms.roster_schema)
NOTIFICATION_STATES = ("pending", "sent", "failed", "cancelled")

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
