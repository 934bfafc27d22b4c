"""The worker group's lease in `emfence run` (docs/operations.md, "Active and standby
workers"): workers started with one ``--name`` against one PostgreSQL store are a group,
and only the holder of the group's lease (:mod:`alarms.leases`) works.

- Standby (:meth:`Lease.wait`): before the engine's state is loaded, a worker takes the
  lease or waits for it, touching no broker: it answers ``/healthz`` 200 and ``/readyz``
  503 ``"standby: ..."`` on its ``--http`` / ``--metrics-http`` address, compiles the
  rule kernels, and reads the lease every third of ``ha.lease_ttl_s`` (or at its expiry,
  if sooner). Once the lease is its own, `emfence run` loads the group's checkpoint from
  the store and connects with the group's persistent session, as after a restart.
- Holder (:meth:`Lease.attach` to the service): renews every third of the TTL; its store
  writes of events, the checkpoint and outbox marks carry its epoch (``store.fence``);
  it connects to the broker only on a lease confirmed less than two thirds of the TTL
  ago; ``/readyz`` needs the lease.
- Stepping down: a renewal that finds another holder, or a write the store fenced
  (another worker took the lease while this one was paused or cut off), ends the process
  at once with :data:`EXIT_LEASE_LOST` and one log line, without a checkpoint, an
  acknowledgement or a goodbye on the broker (the session is the new holder's now); the
  service manager restarts it, as a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable

from alarms.leases import Fence, LeaseFenced, LeaseState
from alarms.store import StoreError
from emfence.run.health import READS, Outages

log = logging.getLogger("emfence.run")

# Exit code of a worker that lost its group's lease (fenced, or another holder found at a
# renewal): not a failure; the service manager restarts it as a standby.
EXIT_LEASE_LOST = 6


class StandbyStopped(Exception):
    """A SIGINT or SIGTERM ended the wait of a standby (it exits 0)."""


def holder_id() -> str:
    """This process's name in the lease row: host, pid and a few random characters (a
    pid is reused after a restart, the random part is not)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def holder_gone(holder: str) -> bool:
    """Is ``holder`` (:func:`holder_id`) a process of this machine that no longer runs?
    False when unsure (another machine, a pid now used by another process)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process)
    return False


def when(ms: int) -> str:
    """Epoch ms as UTC time of day, for log lines and readiness reasons."""
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d} UTC"


class Lease:
    """One worker's view of its group's lease; ``store`` an :class:`alarms.store.AlarmStore`,
    ``group`` the ``--name``, ``ttl_s`` ``ha.lease_ttl_s``."""

    def __init__(self, store, *, group: str, ttl_s: float, holder: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 step_down: Callable[[str], None] | None = None):
        self.store = store
        self.group = group
        self.ttl_s = ttl_s
        self.holder = holder or holder_id()
        self.clock = clock
        self.epoch = 0  # 0: never held
        self.seen: LeaseState | None = None  # the row as last read
        self.confirmed_at: float | None = None  # clock() before the last renewal that held
        self.step_down = step_down or exit_lost
        self.renewals = 0
        self.outages = Outages()  # the service's (attach): a failed renewal is its outage

    @property
    def ttl_ms(self) -> int:
        return round(self.ttl_s * 1000)

    @property
    def held(self) -> bool:
        """Held by this worker, by its own clock: confirmed less than a TTL ago."""
        return (self.confirmed_at is not None
                and self.clock() - self.confirmed_at < self.ttl_s)

    def standby_reason(self) -> str:
        s = self.seen
        if s is None:
            return f"standby: the lease of worker group {self.group} is not taken yet"
        return (f"standby: lease held by {s.holder} until {when(s.expires_ms)} "
                f"(worker group {self.group}, epoch {s.epoch})")

    # ----- taking and renewing (worker threads: the store is synchronous) -------------

    def take(self) -> bool:
        """Take the lease if it is free or expired, or renew our own; True if held."""
        started = self.clock()
        state = self.store.take_lease(self.group, self.holder, self.ttl_ms, self.epoch)
        self.seen = state
        if not state.held:
            return False
        if state.epoch != self.epoch:
            if not self.epoch:  # the store's connections opened from now on (threads)
                self.store.bound_idle_transactions(self.ttl_ms)
            self.epoch = state.epoch
            self.store.fence = Fence(self.group, self.holder, state.epoch, self._fenced)
        self.confirmed_at = started
        return True

    def poll(self) -> bool:
        """A standby's look at the lease: a plain read, and a take only once it has
        expired (never waiting on the holder's writes); True if now held."""
        state = self.store.lease(self.group)
        if state is not None and state.left_ms >= 0:
            self.seen = state
            return False
        return self.take()

    def reclaim(self) -> bool:
        """At start: take the lease, also before its expiry when its holder is a process
        of this machine that no longer runs (this worker's previous run, killed: a restart
        need not wait out the dead run's lease); True if held."""
        state = self.store.lease(self.group)
        if state is not None and state.left_ms >= 0 and holder_gone(state.holder):
            log.info("the lease of worker group %s is held by %s, a process of this machine "
                     "that no longer runs: taking it over now", self.group, state.holder)
            self.store.release_lease(self.group, state.holder, state.epoch)
        return self.take()

    def release(self) -> bool:
        """After a stop: let the lease expire now so a standby takes over at once; True
        if this worker still held it."""
        return bool(self.epoch) and self.store.release_lease(self.group, self.holder,
                                                             self.epoch)

    def _fenced(self, exc: LeaseFenced) -> None:
        self.step_down(f"a store write was fenced ({exc})")

    # ----- standby ----------------------------------------------------------------------

    async def wait(self, listen: list[str], warm_up: Callable[[], None] | None = None
                   ) -> bool:
        """Take the lease, or wait for it as a standby (module doc); False when a
        SIGINT/SIGTERM ended the wait."""
        if await asyncio.to_thread(self.reclaim):
            return True
        from emfence.run.lease_http import serve_standby

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("%s; waiting as a standby", self.standby_reason())
        servers = [asyncio.create_task(serve_standby(self, where), name="standby-http")
                   for where in listen]
        if warm_up is not None:  # meanwhile (a thread: the wait goes on)
            servers.append(asyncio.create_task(asyncio.to_thread(warm_up), name="warm-up"))
        try:
            while not stop.is_set():
                left_s = (self.seen.left_ms / 1000 if self.seen is not None else 0)
                pause = min(self.ttl_s / 3, max(left_s + 0.01, 0.01))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await stop.wait()
                if stop.is_set():
                    return False
                try:
                    if await asyncio.to_thread(self.poll):
                        log.info("took the lease of worker group %s (epoch %d): loading the "
                                 "group's checkpoint from the store", self.group, self.epoch)
                        return True
                except StoreError as exc:
                    log.warning("standby: cannot read the lease (retrying): %s", exc)
            return False
        finally:
            for task in servers:
                task.cancel()  # (a warm-up under way finishes in its thread)
            await asyncio.gather(*servers, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    # ----- holder -----------------------------------------------------------------------

    def attach(self, service) -> None:
        """Make ``service`` (:class:`emfence.run.service.Service`) a holder's: ready only
        with the lease, connecting only on a confirmed lease."""
        service.ops.readiness.append(
            lambda: None if self.held else
            f"the lease of worker group {self.group} is not confirmed (renewing)")
        service.receiver.may_connect = self.confirm
        self.outages = service.outages
        log.info("holding the lease of worker group %s (epoch %d, %s)", self.group,
                 self.epoch, self.holder)

    async def run(self) -> None:
        """Renew every third of the TTL until cancelled; step down when another holder
        has it. A store error is retried (a third as often): the fence keeps a worker
        that is cut off from writing after a takeover."""
        while True:
            await asyncio.sleep(self.ttl_s / 3 if self.held else self.ttl_s / 9)
            await self.renew()

    async def renew(self) -> bool:
        try:
            held = await asyncio.to_thread(self.take)
        except StoreError as exc:
            # part of the store's outage: said once when it starts, once when it ends
            self.outages.failed(READS, exc)
            return False
        self.outages.ok(READS)
        if not held:
            self.step_down(f"{self.seen.holder} holds the lease at epoch {self.seen.epoch}")
        self.renewals += 1
        return held

    async def confirm(self) -> None:
        """Before each connection to the broker: return once the lease was confirmed
        less than two thirds of the TTL ago (renewing it first if not), so that a worker
        woken after a pause never takes the group's session from a new holder."""
        while self.confirmed_at is None or self.clock() - self.confirmed_at > self.ttl_s * 2 / 3:
            if not await self.renew():
                await asyncio.sleep(self.ttl_s / 9)


def exit_lost(why: str) -> None:
    """Step down: one log line, then end the process at once (module doc)."""
    log.critical("lost the lease of its worker group: %s; stepping down without writing, "
                 "publishing or acknowledging anything more: exiting %d (restarted, it "
                 "waits as a standby)", why, EXIT_LEASE_LOST)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_LEASE_LOST)
