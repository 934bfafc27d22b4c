"""The console's one door to the alarm store.

``AlarmStore`` is synchronous (one transaction per call). The console runs every store
call on one dedicated worker thread, so the event loop never blocks on SQLite or
PostgreSQL, and the console holds exactly one database connection (the store opens one
per thread) however many pages and live feeds are open.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class StoreGateway:
    """``await gateway.call("method", *args)`` runs ``store.method(*args)`` off the loop."""

    def __init__(self, store: Any):
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-store")

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = functools.partial(getattr(self.store, method), *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        """Stop the worker thread (queued calls are cancelled; the store stays open: it
        belongs to the caller of ``create_app``)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
