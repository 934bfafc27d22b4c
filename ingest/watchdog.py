"""The engine's watchdog: a thread that notices when the engine shows no sign of life.

The engine calls :meth:`Watchdog.alive` whenever something proves its MQTT path works:
a message received (devices', or its own ping on the drain topic, sent every
``ingest.health_interval_s``), a health message acknowledged by the broker, a
connection attempt made. When nothing of that happens for ``limit_s``, the engine is
stalled (a task waiting for ever, a broker that holds the connection open but says
nothing) and ``on_stall`` is called, once, from the watchdog's thread.

A thread, not a task: it must still run when the event loop is blocked, or when the
tasks that would have to notice are the ones stuck.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How often the thread looks at most, s (less for a short limit).
CHECK_PERIOD_S = 1.0


class Watchdog:
    """Calls ``on_stall(idle_s, what)`` once when :meth:`alive` has not been called for
    ``limit_s`` seconds, or when a deadline set by :meth:`finish_within` passes
    (``what``: ``"running"`` or ``"stopping"``)."""

    def __init__(self, limit_s: float, on_stall: Callable[[float, str], None], *,
                 clock: Callable[[], float] = time.monotonic):
        if limit_s <= 0:
            raise ValueError(f"limit_s must be positive, got {limit_s}")
        self.limit_s = limit_s
        self._on_stall = on_stall
        self._clock = clock
        self._last = clock()
        self._deadline: float | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def alive(self) -> None:
        """Something just proved the engine works (called from the event loop)."""
        self._last = self._clock()

    def idle_s(self) -> float:
        """Seconds since the last sign of life."""
        return self._clock() - self._last

    def finish_within(self, seconds: float) -> None:
        """From now on the process must be done within ``seconds`` (a clean shutdown,
        which receives nothing and may take as long as it is allowed to)."""
        if self._deadline is None:
            self._deadline = self._clock() + seconds

    def start(self) -> None:
        self._last = self._clock()
        self._thread = threading.Thread(target=self._run, name="emfence-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        period = min(CHECK_PERIOD_S, self.limit_s / 4)
        while not self._done.wait(period):
            now = self._clock()
            if self._deadline is not None:
                if now > self._deadline:
                    self._on_stall(now - self._last, "stopping")
                    return
            elif now - self._last > self.limit_s:
                self._on_stall(now - self._last, "running")
                return
