"""Health: outages of the writes the acknowledgements wait for, and the watchdog's
verdict on a stalled engine."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from emfence.run.options import EXIT_STALLED, SHUTDOWN_FLUSH_S, STALL_REPORT_S, wall_ms

log = logging.getLogger("emfence.run")


def one_line(exc: BaseException) -> str:
    """``str(exc)`` on one line (a driver's message may have several: PostgreSQL adds "Is
    the server running on that host ...?" on a line of its own)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


# A failed read of the outbox or the escalation check: proof of an outage like a failed
# write, but nothing waits on it; any working call of the store ends it.
READS = "reads"


class Outage:
    """A resource the acknowledgements wait for (the alarm store, the checkpoint file)
    that keeps failing: one log line when it starts, one when it ends with its duration and
    what was held back meanwhile; the health document lists it while it lasts.

    ``failed(part, exc)`` and ``ok(part)`` come from each part that uses the resource
    (``events``, ``tracks``, ``checkpoint``, :data:`READS`), in any thread. The outage ends
    when every part that failed during it has worked again. ``held()`` says what waits
    now: ``(alarm events, track rows, messages unacknowledged)``; the peak is reported.
    """

    def __init__(self, what: str, held: Callable[[], tuple[int, int, int]]):
        self.what = what
        self.held = held
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.since_ms: int | None = None
        self.reason = ""
        self.failures = 0
        self.failing: set[str] = set()
        self.peak = (0, 0, 0)

    @property
    def active(self) -> bool:
        return self.since_ms is not None

    def _sample(self) -> None:
        self.peak = tuple(max(a, b) for a, b in zip(self.peak, self.held(), strict=True))

    def failed(self, part: str, exc: BaseException) -> None:
        with self.lock:
            self.failures += 1
            self.reason = one_line(exc)
            self.failing.add(part)
            self._sample()
            if self.since_ms is not None:
                return
            self.since_ms = wall_ms()
        log.error("%s failed, an outage: %s; alarm events, track rows and acknowledgements "
                  "wait in memory until it works again (retrying with backoff; the broker "
                  "keeps the messages not acknowledged)", self.what, self.reason)

    def ok(self, part: str) -> None:
        with self.lock:
            if self.since_ms is None:
                return
            self._sample()
            self.failing -= {part, READS}  # a call that works: the resource is back
            if self.failing:
                return
            took_s = (wall_ms() - self.since_ms) / 1000
            failures, (events, rows, unacked) = self.failures, self.peak
            self._reset()
        log.warning("%s works again after an outage of %.1f s (%d failed attempts); held "
                    "back meanwhile: %d alarm events, %d track rows, %d messages "
                    "unacknowledged, now written and acknowledged in order", self.what,
                    took_s, failures, events, rows, unacked)

    def health(self) -> dict[str, Any]:
        events, rows, unacked = self.peak
        return {"what": self.what, "since": self.since_ms, "failures": self.failures,
                "reason": self.reason, "held_back": {
                    "alarm_events": events, "track_rows": rows, "unacknowledged": unacked}}


class Outages:
    """The resources the acknowledgements wait for: the alarm store (alarm events, track
    rows, outbox and escalation reads, and the checkpoint when the state is kept in the
    store) and, with ``--checkpoint``, the checkpoint file."""

    def __init__(self, watchdog=None, *, checkpoint_in_store: bool = True):
        self.watchdog = watchdog
        self.checkpoint_in_store = checkpoint_in_store
        # () -> (alarm events, track rows, messages unacknowledged) waiting now; the
        # service sets it once its parts exist.
        self.held: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
        self.store = Outage("alarm store", lambda: self.held())
        self.checkpoint_file = Outage("checkpoint file", lambda: self.held())

    def of(self, part: str) -> Outage:
        """The outage ``part`` (``events``, ``tracks``, ``checkpoint``, ``reads``) belongs to."""
        if part == "checkpoint" and not self.checkpoint_in_store:
            return self.checkpoint_file
        return self.store

    def failed(self, part: str, exc: BaseException) -> None:
        """A use of the resource by ``part`` failed and will be retried.

        An outage, not a stall: acknowledgements (and so the broker's deliveries, the
        engine's own pings included once the in-flight window is full) pause while the
        logs and health say why, so the watchdog must not take it for a stuck engine."""
        if self.watchdog is not None:
            self.watchdog.alive()
        self.of(part).failed(part, exc)

    def ok(self, part: str) -> None:
        self.of(part).ok(part)

    def health(self) -> list[dict[str, Any]]:
        return [o.health() for o in (self.store, self.checkpoint_file) if o.active]


class WatchedStore:
    """The store as the outbox publisher and the escalation loop use it: a call that
    fails with a ``StoreError`` is a failed read of the store's outage (it may start one),
    a call that works ends an outage nothing else holds. Everything else passes through."""

    def __init__(self, store, outages: Outages):
        self._store = store
        self._outages = outages

    def __getattr__(self, name: str):
        from alarms.store import StoreError

        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                result = attr(*args, **kwargs)
            except StoreError as exc:
                self._outages.failed(READS, exc)
                raise
            self._outages.ok(READS)
            return result

        return call


class QuietDuringOutage(logging.Filter):
    """While the alarm store is out, the same failure as other parts see it (the outbox
    reader, the escalation check, the store's reconnects) goes to DEBUG: the outage's own
    two lines say it, not a line (or two) per retry. Install on the loggers of
    :data:`QUIET_LOGGERS`."""

    def __init__(self, outage: Outage):
        super().__init__()
        self.outage = outage
        self.quieted = 0

    def filter(self, record: logging.LogRecord) -> bool:
        from alarms.store import StoreError

        if record.levelno < logging.WARNING or not self.outage.active:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        about_store = (record.name == STORE_LOGGER
                       or any(isinstance(a, StoreError) for a in args))
        if not about_store:
            return True  # e.g. a failed publish: not the store's outage
        self.quieted += 1
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


STORE_LOGGER = "emfence.alarms.store"
QUIET_LOGGERS = (STORE_LOGGER, "emfence.alarms.publisher")


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


def health_document(self: Any, status: str) -> dict[str, Any]:
    """The health document of a running :class:`emfence.run.service.Service` (``self``):
    status, sweep state, queue depths and counters."""
    degraded = self.receiver.degraded  # a subscription refused on a reconnect
    if degraded is not None and status == "online":
        status = "degraded"
    return {
        "status": status, "name": self.opts.name, "at": wall_ms(),
        "degraded": degraded,
        "started_at": self.started_ms,
        "regions": self.opts.regions or ["+"],
        "devices": len(self.registry.device_ids),
        "offline_sweeps": self.hold.health(),
        "backlog_drained": self.hold.drained,
        "unacknowledged": self.acks.since_checkpoint,
        "track_queue": len(self.tracks),
        "deadletter_queue": self.receiver.deadletters.qsize(),
        "watchdog": None if self.watchdog is None else {
            "idle_s": round(self.watchdog.idle_s(), 1),
            "limit_s": self.icfg.watchdog_s},
        "outages": self.outages.health(),
        "counters": dict(sorted(self.counters.items())),
        "outbox": dict(self.outbox.counters),
        "notify": None if self.notifier is None else dict(self.notifier.counters),
        "rejections": dict(sorted(self.rejects.items())),
        "engine": self.engine.counters,
    }
