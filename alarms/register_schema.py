"""The register's tables (schema version 5): who is supervised, with which devices, in
which zones, on which leave, under which curfews and suspensions.

Every record is effective-dated in transaction time: a row is valid from
``valid_from_ms`` (the ``now_ms`` of the transaction that wrote it) until
``valid_to_ms`` (the transaction that replaced or removed it; NULL while it is current),
half-open ``[from, to)``. Device issues are dated by ``issued_at`` / ``returned_at``, a
leave by the times of its workflow steps. So the register as it was at any past moment
can be read back (:meth:`alarms.register.Register.snapshot`).

``reg_changes`` is the register's change sequence: one row per committed register
transaction (who, what, when); its largest ``seq`` is what running engines poll.
"""

from __future__ import annotations

SUBJECT_STATES = ("active", "ended")
LEAVE_STATES = ("requested", "approved", "refused", "returned", "cancelled")
ASSIGNMENT_ROLES = ("inclusion", "exclusion")
ZONE_KINDS = ("polygon", "circle")
ZONE_SOURCES = ("adcode", "drawn", "upload", "import")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# Frozen once released (version 5): a later change is a new migration.
V5_TABLES: list[str] = [
    """
    CREATE TABLE reg_changes (
        seq     {autopk},
        at      BIGINT NOT NULL,
        who     TEXT,
        action  TEXT NOT NULL,
        target  TEXT
    )
    """,
    "CREATE INDEX reg_changes_at ON reg_changes (at)",
    """
    CREATE TABLE reg_subjects (
        subject_id  TEXT PRIMARY KEY,
        created_at  BIGINT NOT NULL,
        created_by  TEXT
    )
    """,
    f"""
    CREATE TABLE reg_subject_versions (
        id             {{autopk}},
        subject_id     TEXT NOT NULL REFERENCES reg_subjects (subject_id),
        name           TEXT NOT NULL,
        region         TEXT NOT NULL,
        level          TEXT NOT NULL,
        officer        TEXT,
        note           TEXT,
        state          TEXT NOT NULL CHECK (state IN {_in(SUBJECT_STATES)}),
        ended_at       BIGINT,
        end_reason     TEXT,
        changed_by     TEXT,
        valid_from_ms  BIGINT NOT NULL,
        valid_to_ms    BIGINT
    )
    """,
    "CREATE INDEX reg_subject_versions_subject ON reg_subject_versions (subject_id, valid_from_ms)",
    """
    CREATE TABLE reg_devices (
        device_id   TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        created_at  BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE reg_device_issues (
        id           {autopk},
        device_id    TEXT NOT NULL REFERENCES reg_devices (device_id),
        subject_id   TEXT NOT NULL REFERENCES reg_subjects (subject_id),
        kind         TEXT NOT NULL,
        issued_at    BIGINT NOT NULL,
        issued_by    TEXT,
        returned_at  BIGINT,
        returned_by  TEXT
    )
    """,
    # a device is issued to at most one subject at a time, whatever the code above does
    ("CREATE UNIQUE INDEX reg_device_issues_open ON reg_device_issues (device_id) "
     "WHERE returned_at IS NULL"),
    "CREATE INDEX reg_device_issues_subject ON reg_device_issues (subject_id, issued_at)",
    f"""
    CREATE TABLE reg_zones (
        zone_id        TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        kind           TEXT NOT NULL CHECK (kind IN {_in(ZONE_KINDS)}),
        coord_sys      TEXT NOT NULL,
        radius_m       {{float}},
        source         TEXT NOT NULL CHECK (source IN {_in(ZONE_SOURCES)}),
        feature        TEXT NOT NULL,
        created_by     TEXT,
        valid_from_ms  BIGINT NOT NULL,
        valid_to_ms    BIGINT
    )
    """,
    f"""
    CREATE TABLE reg_assignments (
        id             {{autopk}},
        subject_id     TEXT NOT NULL REFERENCES reg_subjects (subject_id),
        zone_id        TEXT NOT NULL REFERENCES reg_zones (zone_id),
        role           TEXT NOT NULL CHECK (role IN {_in(ASSIGNMENT_ROLES)}),
        position       INTEGER NOT NULL,
        reason         TEXT,
        from_ms        BIGINT,
        to_ms          BIGINT,
        valid_from_ms  BIGINT NOT NULL,
        valid_to_ms    BIGINT
    )
    """,
    "CREATE INDEX reg_assignments_subject ON reg_assignments (subject_id, valid_from_ms)",
    f"""
    CREATE TABLE reg_leaves (
        leave_id      TEXT PRIMARY KEY,
        subject_id    TEXT NOT NULL REFERENCES reg_subjects (subject_id),
        zones         TEXT NOT NULL,
        start_ms      BIGINT NOT NULL,
        end_ms        BIGINT NOT NULL,
        reason        TEXT,
        state         TEXT NOT NULL CHECK (state IN {_in(LEAVE_STATES)}),
        requested_by  TEXT,
        requested_at  BIGINT NOT NULL,
        decided_by    TEXT,
        decided_at    BIGINT,
        decision_note TEXT,
        returned_by   TEXT,
        returned_at   BIGINT
    )
    """,
    "CREATE INDEX reg_leaves_subject ON reg_leaves (subject_id, start_ms)",
    "CREATE INDEX reg_leaves_state ON reg_leaves (state, requested_at)",
    """
    CREATE TABLE reg_curfews (
        curfew_id      TEXT PRIMARY KEY,
        subject_id     TEXT NOT NULL REFERENCES reg_subjects (subject_id),
        start_local    TEXT NOT NULL,
        end_local      TEXT NOT NULL,
        zone_id        TEXT NOT NULL REFERENCES reg_zones (zone_id),
        days           TEXT NOT NULL,
        from_ms        BIGINT,
        to_ms          BIGINT,
        reason         TEXT,
        created_by     TEXT,
        valid_from_ms  BIGINT NOT NULL,
        valid_to_ms    BIGINT
    )
    """,
    "CREATE INDEX reg_curfews_subject ON reg_curfews (subject_id)",
    """
    CREATE TABLE reg_suspensions (
        suspension_id  TEXT PRIMARY KEY,
        subject_id     TEXT NOT NULL REFERENCES reg_subjects (subject_id),
        type           TEXT NOT NULL,
        start_ms       BIGINT NOT NULL,
        end_ms         BIGINT NOT NULL,
        reason         TEXT NOT NULL,
        created_by     TEXT,
        valid_from_ms  BIGINT NOT NULL,
        valid_to_ms    BIGINT
    )
    """,
    "CREATE INDEX reg_suspensions_subject ON reg_suspensions (subject_id)",
]

# Version 9: the relations of issue #14 (docs/register.md, "Relations"). A prohibited
# contact is one pair (the smaller subject id first); a protected person's devices and
# the subjects they are protected from are JSON lists of ids; both versioned like a
# subject (valid_from_ms / valid_to_ms: a change closes the row and opens another).
V9_RELATIONS: list[str] = [
    """
    CREATE TABLE reg_contacts (
        id             {autopk},
        subject_a      TEXT NOT NULL REFERENCES reg_subjects (subject_id),
        subject_b      TEXT NOT NULL REFERENCES reg_subjects (subject_id),
        reason         TEXT,
        created_by     TEXT,
        valid_from_ms  BIGINT NOT NULL,
        valid_to_ms    BIGINT,
        CHECK (subject_a < subject_b)
    )
    """,
    "CREATE INDEX reg_contacts_a ON reg_contacts (subject_a, valid_from_ms)",
    "CREATE INDEX reg_contacts_b ON reg_contacts (subject_b, valid_from_ms)",
    """
    CREATE TABLE reg_protected_versions (
        id              {autopk},
        person_id       TEXT NOT NULL,
        name            TEXT NOT NULL,
        region          TEXT NOT NULL,
        devices         TEXT NOT NULL,
        protected_from  TEXT NOT NULL,
        note            TEXT,
        end_reason      TEXT,
        changed_by      TEXT,
        valid_from_ms   BIGINT NOT NULL,
        valid_to_ms     BIGINT
    )
    """,
    "CREATE INDEX reg_protected_person ON reg_protected_versions (person_id, valid_from_ms)",
]
