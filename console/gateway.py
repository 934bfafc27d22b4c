"""The console's one door to the alarm store.

``AlarmStore`` is synchronous (one transaction per call) and thread-safe, with one
database connection per thread. The console runs every store call on a small pool of
its own worker threads, so the event loop never blocks on SQLite or PostgreSQL and the
console holds at most that many connections however many pages and live feeds are open.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any


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

    def close(self) -> None:
        """Stop the worker threads (queued calls are cancelled; the store stays open: it
        belongs to the caller of ``create_app``)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
