"""The console's tunables, with their defaults and units.

``emfence.config.Config`` has no ``[console]`` table yet; :func:`console_settings` reads
one when it exists (``config.console``) and otherwise uses these defaults, so the
console never hides a literal in a handler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ConsoleSettings:
    # A session ends after this long without a request, s...
    session_idle_s: float = 1800.0
    # ...and at the latest this long after login, s (an operator's shift plus slack).
    session_max_s: float = 12 * 3600.0
    # Failed logins allowed per account name within the window below...
    login_fail_per_user: int = 5
    # ...and per client IP address (an office behind one NAT shares an address).
    login_fail_per_ip: int = 20
    # The sliding window both login limits count over, s.
    login_window_s: float = 900.0
    # How often a live feed asks the store for new events, s.
    feed_poll_s: float = 0.5
    # A comment line is sent on an idle feed this often, s, so proxies keep it open.
    feed_keepalive_s: float = 15.0
    # Track around an alarm: default window before and after `at`, ms...
    track_window_ms: int = 3_600_000
    # ...and the widest window a client may ask for on either side, ms.
    track_window_max_ms: int = 24 * 3_600_000
    # Zone outlines are simplified to this tolerance for drawing, metres.
    zone_simplify_m: float = 20.0
    # Worker threads for store calls (each holds one database connection): a slow
    # statistics query must not hold up the live feeds.
    store_threads: int = 4
    # Largest page of alarms one list request returns.
    list_limit_max: int = 1000


def console_settings(config: object | None) -> ConsoleSettings:
    """The console settings: each key of ``config.console`` when the config has that
    table and key, otherwise the default above."""
    table = getattr(config, "console", None) if config is not None else None
    if table is None:
        return ConsoleSettings()
    values = {
        f.name: getattr(table, f.name)
        for f in dataclasses.fields(ConsoleSettings)
        if hasattr(table, f.name)
    }
    return ConsoleSettings(**values)
