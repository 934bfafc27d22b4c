"""Commands to a device and its replies (wire contract v1, docs/wire-protocol.md,
"Downlink"): the payloads on ``emfence/v1/{region}/{device_id}/cmd`` (emfence -> device,
QoS 1) and ``emfence/v1/{region}/{device_id}/reply`` (device -> emfence, QoS 1).

Command: ``{"v": 1, "cmd_id", "cmd", "ts", "expires_ts"}`` plus ``interval_s`` and
``duration_s`` for ``interval``; reply: ``{"v": 1, "cmd_id", "ts", "result", "detail"}``.
Times are epoch milliseconds (UTC). The checks here are the one place the bounds live:
the console validates an operator's request with them, the simulator a received command.
"""

from __future__ import annotations

import re
from typing import Any

from contract.errors import EmfenceError

COMMANDS = ("vibrate", "locate", "interval")
RESULTS = ("ok", "rejected", "expired", "unsupported")
# interval: report every interval_s seconds for duration_s seconds, then as before
INTERVAL_S = (5, 3600)
DURATION_S = (60, 86_400)
CMD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_DETAIL_CHARS = 500


class CommandError(EmfenceError, ValueError):
    """A command or reply that breaks the contract; ``field`` names the bad key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _bounded_int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError(field, f"must be an integer number of seconds, got {value!r}")
    if not lo <= value <= hi:
        raise CommandError(field, f"must be between {lo} and {hi} seconds, got {value}")
    return value


def command_args(cmd: Any, interval_s: Any = None, duration_s: Any = None) -> dict[str, int]:
    """The arguments of ``cmd`` checked against the contract: ``{}`` for ``vibrate`` and
    ``locate``, ``{"interval_s", "duration_s"}`` for ``interval``; :class:`CommandError`
    naming the field otherwise."""
    if cmd not in COMMANDS:
        raise CommandError("cmd", f"must be one of {', '.join(COMMANDS)}, got {cmd!r}")
    if cmd != "interval":
        for field, value in (("interval_s", interval_s), ("duration_s", duration_s)):
            if value is not None:
                raise CommandError(field, f"only an interval command takes it, not {cmd}")
        return {}
    if interval_s is None or duration_s is None:
        raise CommandError("interval_s" if interval_s is None else "duration_s",
                           "is required for an interval command")
    return {"interval_s": _bounded_int(interval_s, "interval_s", *INTERVAL_S),
            "duration_s": _bounded_int(duration_s, "duration_s", *DURATION_S)}


def command_payload(cmd_id: str, cmd: str, args: dict[str, int], *, ts_ms: int,
                    expires_ts_ms: int) -> dict[str, Any]:
    """The JSON object published on the cmd topic."""
    return {"v": 1, "cmd_id": cmd_id, "cmd": cmd, "ts": ts_ms, "expires_ts": expires_ts_ms,
            **args}


def _envelope(doc: Any, what: str, times: tuple[str, ...]) -> None:
    """The fields a command and a reply share: ``"v": 1``, ``cmd_id``, and the epoch-ms
    integers named in ``times``."""
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise CommandError("v", f"a {what} is a JSON object with \"v\": 1")
    cmd_id = doc.get("cmd_id")
    if not isinstance(cmd_id, str) or not CMD_ID.fullmatch(cmd_id):
        raise CommandError("cmd_id", "must be [A-Za-z0-9_-]{1,64}")
    for field in times:
        if isinstance(doc.get(field), bool) or not isinstance(doc.get(field), int):
            raise CommandError(field, "must be epoch milliseconds (an integer)")


def parse_command(doc: Any) -> dict[str, Any]:
    """A received command object checked (what firmware does before acting on it)."""
    _envelope(doc, "command", ("ts", "expires_ts"))
    args = command_args(doc.get("cmd"), doc.get("interval_s"), doc.get("duration_s"))
    return {**doc, **args}


def reply_payload(cmd_id: str, result: str, *, ts_ms: int, detail: str = "") -> dict[str, Any]:
    """The JSON object a device publishes on its reply topic."""
    return {"v": 1, "cmd_id": cmd_id, "ts": ts_ms, "result": result, "detail": detail}


def parse_reply(doc: Any) -> dict[str, Any]:
    """A received reply checked: ``{"cmd_id", "ts", "result", "detail"}``."""
    _envelope(doc, "reply", ("ts",))
    if doc.get("result") not in RESULTS:
        raise CommandError("result", f"must be one of {', '.join(RESULTS)}")
    detail = doc.get("detail", "")
    if not isinstance(detail, str):
        raise CommandError("detail", "must be a string")
    return {"cmd_id": doc["cmd_id"], "ts": doc["ts"], "result": doc["result"],
            "detail": detail[:MAX_DETAIL_CHARS]}
