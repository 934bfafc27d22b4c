"""The console's one door to the alarm store.

``AlarmStore`` is synchronous (one transaction per call) and thread-safe, with one
database connection per thread. The console runs every store call on a small pool of
its own worker threads, so the event loop never blocks on SQLite or PostgreSQL and the
console holds at most that many connections however many pages and live feeds are open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("emfence.console")


class StoreGateway:
    """``await gateway.call("method", *args)`` runs ``store.method(*args)`` off the loop."""

    def __init__(self, store: Any, threads: int = 4):
        if threads < 1:
            raise ValueError(f"store threads must be at least 1, got {threads}")
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="console-store")

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = functools.partial(getattr(self.store, method), *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future | None:
        """Run ``store.method(*args)`` without waiting for it: for a write that must still
        happen where nothing can be awaited any more (a live feed's stream being torn
        down). A failure is logged; None if the gateway is already closed."""
        try:
            future = self._pool.submit(getattr(self.store, method), *args, **kwargs)
        except RuntimeError:  # the pool is shut down: the console is stopping
            log.error("store call %s after the console stopped: not done", method)
            return None

        def done(f: Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("store call %s failed: %s", method, f.exception())

        future.add_done_callback(done)
        return future

    def close(self) -> None:
        """Stop the worker threads (queued calls are cancelled; the store stays open: it
        belongs to the caller of ``create_app``)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
