"""The console's tunables: the ``[console]`` table of :mod:`emfence.config`.

Handlers read them from here, never from literals: :func:`console_settings` gives the
table of a loaded ``Config``, or the defaults when the console runs without one.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

from emfence.config import ConsoleConfig

ConsoleSettings = ConsoleConfig


def console_settings(config: object | None) -> ConsoleSettings:
    """``config.console`` when ``config`` is an emfence ``Config``, otherwise the defaults."""
    table = getattr(config, "console", None) if config is not None else None
    return table if isinstance(table, ConsoleConfig) else ConsoleConfig()


def utc_offset_ms(zone: str, at_ms: int) -> int:
    """The UTC offset of the IANA zone ``zone`` at the instant ``at_ms`` (epoch ms), ms
    (Asia/Shanghai: 28 800 000 at any time since 1991)."""
    at = datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(zoneinfo.ZoneInfo(zone))
    offset = at.utcoffset()
    assert offset is not None
    return int(offset.total_seconds() * 1000)
