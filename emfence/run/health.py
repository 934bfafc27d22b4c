"""Health: outages of the writes the acknowledgements wait for, and the watchdog's
verdict on a stalled engine."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from emfence.run.options import EXIT_STALLED, SHUTDOWN_FLUSH_S, STALL_REPORT_S, wall_ms

log = logging.getLogger("emfence.run")


class Outage:
    """A write the acknowledgements wait for that keeps failing (a full disk, a store that
    is away): one log line when it starts, one when it ends, with its duration; the
    health document lists the outages in progress."""

    def __init__(self, what: str):
        self.what = what
        self.since_ms: int | None = None
        self.reason = ""
        self.failures = 0

    def failed(self, exc: BaseException, holding: str) -> None:
        self.failures += 1
        self.reason = str(exc)
        if self.since_ms is None:
            self.since_ms = wall_ms()
            log.error("%s failed, an outage: %s; %s until it works again (retrying)",
                      self.what, exc, holding)

    def ok(self) -> None:
        if self.since_ms is not None:
            log.warning("%s works again after an outage of %.1f s (%d failed attempts)",
                        self.what, (wall_ms() - self.since_ms) / 1000, self.failures)
            self.since_ms = None
            self.failures = 0

    def health(self) -> dict[str, Any]:
        return {"what": self.what, "since": self.since_ms, "failures": self.failures,
                "reason": self.reason}


class Outages:
    """The three writes the acknowledgements wait for: ``events``, ``tracks``,
    ``checkpoint``."""

    def __init__(self, watchdog=None):
        self.watchdog = watchdog
        self.by_what = {k: Outage(what) for k, what in (
            ("events", "alarm store write"), ("tracks", "track store write"),
            ("checkpoint", "checkpoint write"))}

    def failed(self, what: str, exc: Exception, held: str) -> None:
        """A write of ``what`` failed and will be retried.

        An outage, not a stall: acknowledgements (and so the broker's deliveries, the
        engine's own pings included once the in-flight window is full) pause while the
        logs and health say why, so the watchdog must not take it for a stuck engine."""
        if self.watchdog is not None:
            self.watchdog.alive()
        self.by_what[what].failed(exc, held)

    def ok(self, what: str) -> None:
        self.by_what[what].ok()

    def health(self) -> list[dict[str, Any]]:
        return [o.health() for o in self.by_what.values() if o.since_ms is not None]


def stalled(idle_s: float, when: str, *, limit_s: float, report) -> None:
    """The watchdog's verdict (called in its thread): log it, try ``report()`` (a
    concurrent future publishing health ``stalled``, or None) for :data:`STALL_REPORT_S`,
    and end the process with :data:`EXIT_STALLED` (whatever is stuck cannot be trusted to
    stop; nothing is lost: unacknowledged messages wait in the broker, undelivered alarms
    in the outbox)."""
    if when == "stopping":
        log.critical("watchdog: the shutdown did not finish within %.0f s; exiting %d "
                     "without it (unacknowledged messages wait in the broker, "
                     "undelivered alarms in the outbox)", limit_s + SHUTDOWN_FLUSH_S,
                     EXIT_STALLED)
    else:
        log.critical("watchdog: nothing received from the broker for %.1f s (ingest."
                     "watchdog_s = %g), not even the engine's own ping: the engine is "
                     "stalled; exiting %d so that the service manager restarts it "
                     "(unacknowledged messages wait in the broker, undelivered alarms "
                     "in the outbox)", idle_s, limit_s, EXIT_STALLED)
    future = report()
    if future is not None:
        try:
            future.result(STALL_REPORT_S)
        except Exception as exc:  # noqa: BLE001 - best effort: the exit must happen anyway
            future.cancel()
            log.error("watchdog: health 'stalled' not acknowledged by the broker: %r", exc)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_STALLED)


