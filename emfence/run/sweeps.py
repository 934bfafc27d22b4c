"""The offline-sweep hold: when silence says something about devices, and when it does
not (docs/internals.md, "emfence run"). One object owns the hold; the receive path
tells it what happened, the sweeper asks it whether a sweep may run."""

from __future__ import annotations

import logging
import time

from emfence.run.options import SILENT_PINGS, wall_ms

log = logging.getLogger("emfence.run")

SILENT_BROKER = "silence of the broker"


class SweepHold:
    """Offline sweeps are held after a start until the broker's backlog drains or
    ``grace_s`` passes; after a broker outage or a silent broker for the full grace.

    ``reason``: why sweeps are held (None: they run); ``until_ms``: when the grace ends;
    ``drained``: the engine's drain marker came back; ``heard_at``: monotonic time of
    the last message (or broker answer) received."""

    def __init__(self, grace_s: float, ping_s: float):
        self.grace_ms = int(grace_s * 1000)
        self.ping_s = ping_s
        self.reason: str | None = "start"
        self.until_ms = wall_ms() + self.grace_ms
        self.drained = False
        self.heard_at = time.monotonic()

    def heard(self) -> None:
        """Something arrived from the broker."""
        self.heard_at = time.monotonic()

    def connected(self, reconnect: bool, now_ms: int) -> None:
        """A (re)connection: the grace counts from it (not from process start: loading
        zones or compiling kernels must not eat into it); after an outage devices need
        the full grace to reconnect."""
        self.heard()
        if reconnect:
            self.reason = "broker outage"
        self.until_ms = now_ms + self.grace_ms
        self.drained = False

    def may_sweep(self, now_ms: int, period_s: float) -> bool:
        """Whether an offline sweep may run now (the broker connected)."""
        silent_s = time.monotonic() - self.heard_at
        if silent_s > SILENT_PINGS * self.ping_s + period_s:
            # Not even the engine's own ping came back: the connection is open but
            # nothing arrives, so silence says nothing about devices either. Once
            # messages flow again, devices' backlogs get the grace to arrive.
            if self.reason != SILENT_BROKER:
                log.warning("offline sweeps held: nothing received for %.1f s, not even "
                            "the engine's own ping", silent_s)
            self.reason = SILENT_BROKER
            self.until_ms = now_ms + self.grace_ms
            return False
        if self.reason is not None:
            if self.reason == "start" and self.drained:
                log.info("offline sweeps start: the backlog is drained")
            elif now_ms >= self.until_ms:
                log.info("offline sweeps start: the %.0f s grace after the %s has passed",
                         self.grace_ms / 1000, self.reason)
            else:
                return False
            self.reason = None
        return True

    def health(self) -> str:
        return "running" if self.reason is None else f"held ({self.reason})"
