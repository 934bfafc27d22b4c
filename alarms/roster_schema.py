"""The duty roster and the escalation ladder (schema version 7).

The roster (docs/notifications.md, "The roster"): per region, the people an alarm's
notifications reach (``roster_people``: name, phone, e-mail, language, their role on the
ladder, the console account that links an officer in charge to the register's
``officer``) and their duty shifts in local time (``roster_shifts``, the time zone is
``register.timezone``).

The ladder: an alarm climbs from level 1 (at raise) to level 2 and 3 while nobody
acknowledges it (:meth:`alarms.lifecycle.AlarmLifecycle.escalate_due`).
``alarms.escalation_level`` is the level it has reached and ``escalation_level_at`` when;
each ``escalated`` event carries its ``level``, so the event log's key becomes
(alarm_id, event, level) (0 for the events that are not escalations); a notification an
acknowledgement or a close made moot is ``cancelled``.
"""

from __future__ import annotations

from typing import Any

from alarms.schema_edit import edit_sqlite_table

# roles on the ladder, and the level each is told at
ROLE_LEVELS = {
    "officer": 1,          # an officer in charge: told of the subjects whose officer they are
    "default_officer": 1,  # told when the subject's officer is not on the roster
    "duty": 1,             # the duty operator (on shift at the event's time)
    "squadron": 2,         # the squadron leader
    "brigade": 3,          # the brigade / bureau
}
ROLES = tuple(ROLE_LEVELS)
LANGS = ("zh", "en")
TOP_LEVEL = max(ROLE_LEVELS.values())
NOTIFICATION_STATES_V7 = ("pending", "sent", "failed", "cancelled")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


ROSTER_TABLES: list[str] = [
    f"""
    CREATE TABLE roster_people (
        person_id   TEXT PRIMARY KEY,
        region      TEXT NOT NULL,
        name        TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN {_in(ROLES)}),
        phone       TEXT,
        email       TEXT,
        lang        TEXT NOT NULL DEFAULT 'zh' CHECK (lang IN {_in(LANGS)}),
        account     TEXT,
        note        TEXT,
        updated_by  TEXT,
        updated_at  BIGINT NOT NULL
    )
    """,
    "CREATE INDEX roster_people_region ON roster_people (region, role)",
    """
    CREATE TABLE roster_shifts (
        id           {autopk},
        person_id    TEXT NOT NULL REFERENCES roster_people (person_id) ON DELETE CASCADE,
        days         TEXT NOT NULL,
        start_local  TEXT NOT NULL,
        end_local    TEXT NOT NULL
    )
    """,
    "CREATE INDEX roster_shifts_person ON roster_shifts (person_id, id)",
]

_OLD_STATE_CHECK = "CHECK (state IN ('pending', 'sent', 'failed'))"
_NEW_STATE_CHECK = f"CHECK (state IN {_in(NOTIFICATION_STATES_V7)})"


def _cancelled_state(cur: Any, dialect: str) -> None:
    """notifications.state may also be ``cancelled`` (widening a CHECK keeps every row
    valid, so SQLite's table definition is edited in place, as version 4 does)."""
    if dialect == "postgresql":
        cur.execute("ALTER TABLE notifications DROP CONSTRAINT IF EXISTS "
                    "notifications_state_check")
        cur.execute("ALTER TABLE notifications ADD CONSTRAINT notifications_state_check "
                    f"{_NEW_STATE_CHECK}")
        return
    edit_sqlite_table(cur, "notifications", _OLD_STATE_CHECK, _NEW_STATE_CHECK)


_EVENT_COLUMNS = "seq, alarm_id, event, region, type, topic, payload, created_at, delivered_at"


def _events_keyed_by_level(cur: Any, dialect: str) -> None:
    """events gets ``level`` (2 for the escalations stored so far, 0 for other events) and
    its key becomes (alarm_id, event, level). PostgreSQL swaps the constraint; SQLite
    cannot drop a UNIQUE constraint, so the table is rebuilt (create, copy, drop, rename:
    the procedure of SQLite's ALTER TABLE documentation), keeping every seq and the
    AUTOINCREMENT counter, so a seq is still never reused."""
    if dialect == "postgresql":
        cur.execute("ALTER TABLE events ADD COLUMN level INTEGER NOT NULL DEFAULT 0")
        cur.execute("UPDATE events SET level = 2 WHERE event = 'escalated'")
        # the key's name is PostgreSQL's choice (events_alarm_id_event_key): look it up
        for row in cur.execute("SELECT conname FROM pg_constraint WHERE conrelid = "
                               "'events'::regclass AND contype = 'u'").all():
            cur.execute(f'ALTER TABLE events DROP CONSTRAINT "{row["conname"]}"')
        cur.execute("ALTER TABLE events ADD CONSTRAINT events_alarm_event_level "
                    "UNIQUE (alarm_id, event, level)")
        return
    counter = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").scalar()
    cur.execute("""
        CREATE TABLE events_v7 (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,
            alarm_id      TEXT NOT NULL,
            event         TEXT NOT NULL CHECK (event IN
                          ('raised', 'cleared', 'escalated', 'acknowledged', 'closed')),
            region        TEXT NOT NULL,
            type          TEXT NOT NULL,
            topic         TEXT NOT NULL,
            payload       BLOB NOT NULL,
            created_at    BIGINT NOT NULL,
            delivered_at  BIGINT,
            level         INTEGER NOT NULL DEFAULT 0,
            UNIQUE (alarm_id, event, level)
        )""")
    cur.execute(f"INSERT INTO events_v7 ({_EVENT_COLUMNS}, level) SELECT {_EVENT_COLUMNS}, "
                "CASE WHEN event = 'escalated' THEN 2 ELSE 0 END FROM events ORDER BY seq")
    cur.execute("DROP TABLE events")
    cur.execute("ALTER TABLE events_v7 RENAME TO events")
    if counter is not None:
        cur.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'events'",
                    (int(counter),))
    cur.execute("CREATE INDEX events_undelivered ON events (seq) WHERE delivered_at IS NULL")
    cur.execute("CREATE INDEX events_region_seq ON events (region, seq)")


# Frozen once released (version 7): a later change is a new migration.
V7_STEPS: list[Any] = [
    *ROSTER_TABLES,
    "ALTER TABLE alarms ADD COLUMN escalation_level INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE alarms ADD COLUMN escalation_level_at BIGINT",
    ("UPDATE alarms SET escalation_level = 2, escalation_level_at = escalated_at "
     "WHERE escalated_at IS NOT NULL"),
    # escalate_due's scan for alarms to climb from level 2
    ("CREATE INDEX alarms_climbing ON alarms (escalation_level, escalation_level_at) "
     "WHERE workflow = 'new'"),
    _events_keyed_by_level,
    _cancelled_state,
]
