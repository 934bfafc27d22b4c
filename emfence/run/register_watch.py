"""Live register changes for `emfence run --store URL` (no --zones/--subjects): every
:data:`REGISTER_POLL_S` the register's change sequence is read; when it moved, or when an
assignment's own effective period began or ended since the model was taken (the
register's ``change_times``: no transaction marks that moment), a snapshot is taken and
compiled off the event loop and handed to the reload path SIGHUP uses
(``engine.reload`` keeps the rule state of devices whose entries did not change).

A change is applied within about two poll periods of its commit. A snapshot that does
not compile (a zone the register accepted but the geofence refuses, say) is logged in
one line and the current model kept until the next change. A store that cannot be read
is the alarm store's outage (:class:`emfence.run.health.Outages`): reported there, and
the poll goes on, so the change is applied once the store is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from contract.errors import EmfenceError
from emfence.run.health import READS, Outages, one_line
from emfence.run.model import ModelSource

log = logging.getLogger("emfence.run")

# How often the register's change sequence is read, s. A change reaches the engine
# within two periods plus the compile (the issue asks for 2 s).
REGISTER_POLL_S = 0.5


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ModelLoadFailed(EmfenceError, ValueError):
    """The zones and subjects were read but do not compile (the message says why)."""


async def load_model_async(source: ModelSource, outages: Outages | None):
    """``(zones, registry)`` from ``source``, read and compiled in a thread. A store
    failure is reported to ``outages`` and raised; a model that does not compile raises
    :class:`ModelLoadFailed` (logged by the caller)."""
    from alarms.store import StoreError

    try:
        model = await asyncio.to_thread(source.load)
    except StoreError as exc:
        if outages is not None:
            outages.failed(READS, exc)
        raise
    except Exception as exc:  # a bad model must not stop the engine
        if outages is not None and source.from_register:
            outages.ok(READS)  # the store answered: the snapshot itself is at fault
        raise ModelLoadFailed(one_line(exc)) from exc
    if outages is not None and source.from_register:
        outages.ok(READS)
    return model


class RegisterWatch:
    """Polls ``source.change_seq()``; on a change calls ``reload(why)`` (a coroutine that
    returns True once the new model is queued or the change has been judged, False when
    the store failed and the change must be tried again)."""

    def __init__(self, source: ModelSource, outages: Outages,
                 reload: Callable[[str], Awaitable[bool]], *, seq: int | None,
                 taken_ms: int | None = None, period_s: float = REGISTER_POLL_S):
        self.source = source
        self.outages = outages
        self.reload = reload
        self.seq = seq  # the sequence the running model was taken at (None: unknown)
        # When the running model's snapshot was taken (wall clock, epoch ms; at or before).
        self.taken_ms = _wall_ms() if taken_ms is None else taken_ms
        self.period_s = period_s

    async def poll_once(self) -> bool:
        """Read the sequence; reload when it moved. True when a reload was made."""
        from alarms.store import StoreError

        now = _wall_ms()
        try:
            seq = await asyncio.to_thread(self.source.change_seq)
            edges = [] if seq != self.seq else await asyncio.to_thread(
                self.source.change_times, self.taken_ms + 1, now)
        except StoreError as exc:
            self.outages.failed(READS, exc)
            return False
        self.outages.ok(READS)
        if seq == self.seq and not edges:
            return False
        why = (f"register change {seq}" if seq != self.seq
               else f"register: an effective period begins or ends at {edges[0]}")
        if await self.reload(why):
            self.seq, self.taken_ms = seq, now
            return True
        return False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.poll_once()
