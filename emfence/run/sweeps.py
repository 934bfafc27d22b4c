"""The offline-sweep hold: when silence says something about devices, and when it does
not (docs/internals.md, "emfence run"; docs/operations.md, "Offline alarms after a start
or an outage"). One object owns the hold; the receive path
tells it what happened, the sweeper asks it whether a sweep may run."""

from __future__ import annotations

import logging
import time

from emfence.run.options import SILENT_PINGS, wall_ms

log = logging.getLogger("emfence.run")

SILENT_BROKER = "silence of the broker"


class SweepHold:
    """Offline sweeps are held after each connection until the broker's backlog has
    reached the worker (every drain marker back: :mod:`emfence.run.drain`). After a
    broker outage also for ``grace_s`` counted from the first device message after the
    reconnect, not from the reconnect: a clustered broker's failover can hold devices'
    publishes on a surviving node for longer than the worker takes to reconnect
    elsewhere, and devices need the grace to reconnect. After a silent broker for the
    grace. ``drain_wait_s`` after the grace at the latest sweeps run anyway (a broker
    that drops the markers, a fleet that sends nothing): said in the log.

    ``ack_wait_s`` (``ingest.broker_ack_wait_s``): a broker that re-sends a message it
    sent and got no acknowledgement for only after its ack wait (NATS) can deliver part
    of the backlog after the markers; whatever it sent before they came back it sends
    again by then plus its ack wait, so sweeps wait that long after the drain
    (``drained_ms``: when this object first saw it, within a sweep period).

    ``reason``: why sweeps are held (None: they run); ``until_ms``: when the grace ends
    (wall clock, epoch ms); ``drained``: every drain marker of this connection came back;
    ``missing``: the filters whose markers did not; ``awaiting_devices``: no device
    message yet since the reconnect after an outage; ``heard_at``: monotonic time of the
    last message (or broker answer) received."""

    def __init__(self, grace_s: float, ping_s: float, drain_wait_s: float,
                 ack_wait_s: float = 0.0):
        self.grace_ms = int(grace_s * 1000)
        self.wait_ms = int(drain_wait_s * 1000)
        self.ack_wait_ms = int(ack_wait_s * 1000)
        self.ping_s = ping_s
        self.reason: str | None = "start"
        self.connected_ms = wall_ms()
        self.until_ms = self.connected_ms + self.grace_ms
        self.drained = False
        self.drained_ms: int | None = None
        self.missing: list[str] = []
        self.awaiting_devices = False
        self.heard_at = time.monotonic()

    @classmethod
    def of(cls, icfg) -> SweepHold:
        """The hold of an ``[ingest]`` configuration."""
        return cls(icfg.restart_grace_s, icfg.health_interval_s, icfg.drain_wait_s,
                   icfg.broker_ack_wait_s)

    def heard(self) -> None:
        """Something arrived from the broker."""
        self.heard_at = time.monotonic()

    def device_message(self, now_ms: int) -> None:
        """The first device message after a reconnect: the grace counts from it."""
        self.awaiting_devices = False
        self.until_ms = max(self.until_ms, now_ms + self.grace_ms)

    def connected(self, reconnect: bool, now_ms: int) -> None:
        """A (re)connection: the grace counts from it (not from process start: loading
        zones or compiling kernels must not eat into it), after an outage from the first
        device message. Its drain markers are on their way."""
        self.heard()
        if reconnect:
            self.reason = "broker outage"
            self.awaiting_devices = True
        self.connected_ms = now_ms
        self.until_ms = now_ms + self.grace_ms
        self.drained, self.drained_ms = False, None

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
        if self.reason is None:
            return True
        graced = now_ms >= self.until_ms and not self.awaiting_devices
        if self.drained and self.drained_ms is None:
            self.drained_ms = now_ms
        drained = self.drained and now_ms >= self.drained_ms + self.ack_wait_ms
        also = (f" (and the broker's {self.ack_wait_ms / 1000:.0f} s ack wait)"
                if self.ack_wait_ms else "")
        if drained and self.reason == "start":
            log.info("offline sweeps start: the backlog is drained%s", also)
        elif drained and graced:
            log.info("offline sweeps start: the backlog is drained%s and the %.0f s grace "
                     "after the %s has passed", also, self.grace_ms / 1000, self.reason)
        elif now_ms >= max(self.until_ms, self.connected_ms + self.grace_ms,
                           self._ack_wait_end()) + self.wait_ms:
            self._gave_up()
        else:
            return False
        self.reason = None
        self.awaiting_devices = False
        return True

    def _ack_wait_end(self) -> int:
        """When the broker's ack wait after the drain ends (0: none to wait for)."""
        if self.drained_ms is None or not self.ack_wait_ms:
            return 0
        return self.drained_ms + self.ack_wait_ms

    def _gave_up(self) -> None:
        """Sweeps start ``drain_wait_s`` after the grace without what they wait for."""
        if not self.drained:
            log.error("offline sweeps start although the backlog is not known to be "
                      "drained: the drain markers of %s did not come back %.0f s after the "
                      "grace after the %s; does the broker let the worker publish under its "
                      "own account in those topics? (docs/operations.md)",
                      ", ".join(self.missing) or "the subscriptions", self.wait_ms / 1000,
                      self.reason)
        else:
            log.warning("offline sweeps start: no device message came %.0f s after the grace "
                        "after the %s", self.wait_ms / 1000, self.reason)

    def health(self) -> str:
        return "running" if self.reason is None else f"held ({self.reason})"
