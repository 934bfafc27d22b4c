"""Commands to devices (issue #16, the downlink; docs/wire-protocol.md, "Downlink";
docs/alarm-lifecycle.md, "device_commands").

The console never holds a broker connection: an operator's command is a row here,
``pending``; the ``emfence run`` worker of the device's region publishes it at QoS 1
and marks it ``sent`` on the broker's PUBACK, or ``expired`` when its ``expires_at``
passed before it could be sent; the device's reply makes it ``replied``. A reply is
recorded only when it comes from the device and region the command was sent to.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

import orjson

from alarms.db import Where, count, int_ms
from alarms.register_read import subject_version

COMMAND_STATES = ("pending", "sent", "replied", "expired")
# How long a command may wait for its device: after this it is not sent any more, and
# firmware answers ``expired`` to one it receives late (a vibrate an hour late is wrong).
COMMAND_TTL_MS = 10 * 60_000

# Frozen once released (schema version 12).
V12_DEVICE_COMMANDS: list[str] = [
    f"""
    CREATE TABLE device_commands (
        cmd_id      TEXT PRIMARY KEY,
        device_id   TEXT NOT NULL,
        region      TEXT NOT NULL,
        cmd         TEXT NOT NULL,
        args        TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in COMMAND_STATES)})),
        created_at  BIGINT NOT NULL,
        created_by  TEXT NOT NULL,
        expires_at  BIGINT NOT NULL,
        sent_at     BIGINT,
        reply       TEXT,
        replied_at  BIGINT
    )
    """,
    "CREATE INDEX device_commands_device ON device_commands (device_id, created_at)",
    "CREATE INDEX device_commands_state ON device_commands (state, region)",
]

COLUMNS = ("cmd_id", "device_id", "region", "cmd", "args", "state", "created_at",
           "created_by", "expires_at", "sent_at", "reply", "replied_at")


def new_cmd_id() -> str:
    """A fresh command id: 32 hex digits (fits the contract's ``[A-Za-z0-9_-]{1,64}``)."""
    return secrets.token_hex(16)


def _row(r: dict[str, Any]) -> dict[str, Any]:
    out = dict(r)
    out["args"] = orjson.loads(out["args"])
    out["reply"] = None if out["reply"] is None else orjson.loads(out["reply"])
    return out


class CommandStore:
    """The ``device_commands`` methods of the alarm store."""

    _db: Any

    def device_region(self, device_id: str) -> str | None:
        """The region of the subject the register's device is issued to now (None: the
        register does not know it, or it is not issued)."""
        with self._db.tx("device region", write=False) as cur:
            issue = cur.execute("SELECT subject_id FROM reg_device_issues WHERE device_id = ? "
                                "AND returned_at IS NULL", (device_id,)).one()
            version = None if issue is None else subject_version(cur, issue["subject_id"],
                                                                 None)
        return None if version is None else version["region"]

    def add_command(self, device_id: str, region: str, cmd: str, args: dict[str, int], *,
                    actor: str, now_ms: int, ttl_ms: int = COMMAND_TTL_MS) -> dict[str, Any]:
        """A new ``pending`` command (arguments checked by the caller with
        ``contract.commands.command_args``); returns its row."""
        now_ms = int_ms(now_ms, "now_ms")
        row = (new_cmd_id(), device_id, region, cmd, orjson.dumps(args).decode(), "pending",
               now_ms, actor, now_ms + int(ttl_ms), None, None, None)
        with self._db.tx("add command") as cur:
            cur.execute(f"INSERT INTO device_commands ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(COLUMNS))})", row)
        return _row(dict(zip(COLUMNS, row, strict=True)))

    def device_commands(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The device's newest commands, newest first."""
        with self._db.tx("device commands", write=False) as cur:
            rows = cur.execute(f"SELECT {', '.join(COLUMNS)} FROM device_commands "
                               "WHERE device_id = ? ORDER BY created_at DESC, cmd_id LIMIT ?",
                               (device_id, count(limit, "limit"))).all()
        return [_row(r) for r in rows]

    def pending_commands(self, regions: Iterable[str] | None, limit: int = 100
                         ) -> list[dict[str, Any]]:
        """Commands still to send of ``regions`` (None: all), oldest first."""
        where = Where("state = 'pending'").regions(regions)
        if where.nothing:
            return []
        with self._db.tx("pending commands", write=False) as cur:
            rows = cur.execute(f"SELECT {', '.join(COLUMNS)} FROM device_commands{where.sql} "
                               "ORDER BY created_at, cmd_id LIMIT ?",
                               (*where.params, count(limit, "limit"))).all()
        return [_row(r) for r in rows]

    def mark_command(self, cmd_id: str, state: str, now_ms: int) -> bool:
        """A pending command ``sent`` (PUBACKed at ``now_ms``) or ``expired``; False when
        it was not pending any more."""
        if state not in ("sent", "expired"):
            raise ValueError(f"a pending command becomes sent or expired, not {state!r}")
        set_sent = ", sent_at = ?" if state == "sent" else ""
        params = (state, int_ms(now_ms, "now_ms")) if state == "sent" else (state,)
        with self._db.tx("mark command") as cur:
            done = cur.execute(f"UPDATE device_commands SET state = ?{set_sent} "
                               "WHERE cmd_id = ? AND state = 'pending'",
                               (*params, cmd_id)).rowcount
        return done > 0

    def record_reply(self, cmd_id: str, device_id: str, region: str, reply: dict[str, Any],
                     now_ms: int) -> str:
        """The device's reply to ``cmd_id``, received at ``now_ms``: ``"replied"`` when
        recorded, ``"duplicate"`` when the command already has one (a QoS 1 redelivery),
        ``"unknown"`` when no command of that id was sent to that device in that region
        (a device can answer only its own commands)."""
        with self._db.tx("record reply") as cur:
            row = cur.execute("SELECT device_id, region, state FROM device_commands "
                              "WHERE cmd_id = ?", (cmd_id,)).one()
            if row is None or (row["device_id"], row["region"]) != (device_id, region):
                return "unknown"
            if row["state"] == "replied":
                return "duplicate"
            cur.execute("UPDATE device_commands SET state = 'replied', reply = ?, "
                        "replied_at = ? WHERE cmd_id = ?",
                        (orjson.dumps(reply).decode(), int_ms(now_ms, "now_ms"), cmd_id))
        return "replied"
