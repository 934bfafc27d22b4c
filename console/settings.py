"""The console's tunables: the ``[console]`` table of :mod:`emfence.config`.

Handlers read them from here, never from literals: :func:`console_settings` gives the
table of a loaded ``Config``, or the defaults when the console runs without one.
"""

from __future__ import annotations

from emfence.config import ConsoleConfig

ConsoleSettings = ConsoleConfig


def console_settings(config: object | None) -> ConsoleSettings:
    """``config.console`` when ``config`` is an emfence ``Config``, otherwise the defaults."""
    table = getattr(config, "console", None) if config is not None else None
    return table if isinstance(table, ConsoleConfig) else ConsoleConfig()
