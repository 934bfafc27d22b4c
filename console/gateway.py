"""The console's one door to the alarm store.

``AlarmStore`` is synchronous (one transaction per call) and thread-safe, with one
database connection per thread. The console runs every store call on a small pool of
its own worker threads, so the event loop never blocks on SQLite or PostgreSQL and the
console holds at most that many connections however many pages and live feeds are open.

Each store method the console uses has a method of the same name here, with the same
arguments: ``await gateway.get_user(name)`` runs ``store.get_user(name)`` off the loop.
Only these reach the store, so a grep for a store method finds every console caller.

The map's register model (:meth:`StoreGateway.register_map`) is rebuilt on a thread of
its own: a rebuild reads the whole register (seconds with 10 000 subjects) and the
requests that wait for it must not hold the pool's threads, or the status board, the
alarm list and the logins queue behind the map (benchmarks/console_first_screen.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from alarms.store import AlarmStore, LoginAttempt
    from console.register_model import RegisterMap

log = logging.getLogger("emfence.console")

T = TypeVar("T")
Row = dict[str, Any]


class StoreGateway:
    """The store methods the console uses, each run on the gateway's worker threads."""

    def __init__(self, store: AlarmStore, threads: int = 4):
        if threads < 1:
            raise ValueError(f"store threads must be at least 1, got {threads}")
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="console-store")
        self._map_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-map")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    # --- accounts, logins and the audit trail -----------------------------------------

    async def get_user(self, name: str) -> Row | None:
        return await self._run(self.store.get_user, name)

    async def list_users(self) -> list[Row]:
        return await self._run(self.store.list_users)

    async def set_user_lang(self, name: str, lang: str | None, now_ms: int, *,
                            by: str | None = None, ip: str | None = None,
                            action: str = "user.lang") -> None:
        await self._run(self.store.set_user_lang, name, lang, now_ms, by=by, ip=ip,
                        action=action)

    async def begin_login(self, name: str, ip: str | None, now_ms: int, *, window_ms: int,
                          max_failed_per_name: int, max_failed_per_ip: int) -> LoginAttempt:
        return await self._run(self.store.begin_login, name, ip, now_ms, window_ms=window_ms,
                               max_failed_per_name=max_failed_per_name,
                               max_failed_per_ip=max_failed_per_ip)

    async def finish_login(self, attempt_id: int, name: str, ok: bool, now_ms: int,
                           ip: str | None = None) -> None:
        await self._run(self.store.finish_login, attempt_id, name, ok, now_ms, ip)

    async def audit(self, who: str | None, action: str, target: str | None, detail: Any,
                    now_ms: int, ip: str | None = None) -> None:
        await self._run(self.store.audit, who, action, target, detail, now_ms, ip)

    async def audit_log(self, *, who: str | None = None, action: str | None = None,
                        before_id: int | None = None, limit: int = 200) -> list[Row]:
        return await self._run(self.store.audit_log, who=who, action=action,
                               before_id=before_id, limit=limit)

    # --- alarms and their workflow ----------------------------------------------------

    async def list_alarms(self, regions: Iterable[str] | None, types: Iterable[str] | None,
                          states: Iterable[str] | None, *, escalated: bool | None,
                          before: tuple[int, str] | None, limit: int,
                          subject_id: str | None = None) -> list[Row]:
        return await self._run(self.store.list_alarms, regions, types, states,
                               escalated=escalated, before=before, limit=limit,
                               subject_id=subject_id)

    async def get_alarm(self, alarm_id: str) -> Row | None:
        return await self._run(self.store.get_alarm, alarm_id)

    async def actions(self, alarm_id: str) -> list[Row]:
        return await self._run(self.store.actions, alarm_id)

    async def acknowledge(self, alarm_id: str, user: str, note: str | None, now_ms: int, *,
                          ip: str | None = None) -> Row:
        return await self._run(self.store.acknowledge, alarm_id, user, note, now_ms, ip=ip)

    async def close_alarm(self, alarm_id: str, user: str, disposition: str, note: str | None,
                          now_ms: int, *, ip: str | None = None) -> Row:
        return await self._run(self.store.close_alarm, alarm_id, user, disposition, note,
                               now_ms, ip=ip)

    async def add_note(self, alarm_id: str, user: str, note: str, now_ms: int, *,
                       ip: str | None = None) -> None:
        await self._run(self.store.add_note, alarm_id, user, note, now_ms, ip=ip)

    async def notifications(self, alarm_id: str) -> list[Row]:
        return await self._run(self.store.alarm_notifications, alarm_id)

    async def notification_counts(self, regions: Iterable[str] | None) -> dict[str, int]:
        return await self._run(self.store.notification_counts, regions)

    async def stats(self, regions: Iterable[str] | None, from_ms: int, to_ms: int, *,
                    day_offset_ms: int = 0) -> Row:
        return await self._run(self.store.stats, regions, from_ms, to_ms,
                               day_offset_ms=day_offset_ms)

    async def alarm_register(self, region: str, from_ms: int, to_ms: int, *,
                             limit: int) -> tuple[list[Row], dict[str, list[Row]]]:
        """The alarms of ``region`` raised in [``from_ms``, ``to_ms``) (at most ``limit``)
        and each one's actions, for the register export; one trip to a worker thread."""

        def read() -> tuple[list[Row], dict[str, list[Row]]]:
            alarms = self.store.list_alarms([region], since_ms=from_ms, until_ms=to_ms,
                                            limit=limit)
            return alarms, {a["alarm_id"]: self.store.actions(a["alarm_id"]) for a in alarms}

        return await self._run(read)

    async def evidence(self, alarm_id: str, subject_id: str, from_ms: int, to_ms: int,
                       at_ms: int) -> Row:
        """What an alarm's evidence pack holds, read in one trip: its event-log rows
        (payload bytes as stored), its actions, the subject's fixes with ``from_ms`` ≤ ts ≤
        ``to_ms``, the register as of ``at_ms`` and its changes in [``from_ms``, ``to_ms``]."""

        def read() -> Row:
            store = self.store
            return {"events": store.alarm_events(alarm_id), "actions": store.actions(alarm_id),
                    "fixes": store.track(None, from_ms, to_ms, subject_id=subject_id),
                    "register": store.register.snapshot(at_ms),
                    "changes": store.register.change_times(from_ms, to_ms)}

        return await self._run(read)

    async def subject_alarms(self, subject_id: str, from_ms: int, to_ms: int, *,
                             limit: int) -> list[Row]:
        """The subject's alarms raised in [``from_ms``, ``to_ms``), at most ``limit``."""
        return await self._run(self.store.list_alarms, subject_id=subject_id,
                               since_ms=from_ms, until_ms=to_ms, limit=limit)

    # --- the supervision register (subjects, devices, zones, leave, curfews) ---------

    async def register(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """``store.register.<method>(*args, **kwargs)`` off the loop: the register's
        methods (``alarms`` ``Register``) keep their own names and arguments, so a grep
        for e.g. ``"approve_leave"`` finds every console caller."""
        return await self._run(getattr(self.store.register, method), *args, **kwargs)

    async def roster(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """``store.roster.<method>(*args, **kwargs)`` off the loop (the duty roster,
        ``alarms.roster``)."""
        return await self._run(getattr(self.store.roster, method), *args, **kwargs)

    async def protected_positions(self, person_id: str) -> list[Row]:
        """A protected person's devices' newest positions (alarms.protected_positions)."""
        return await self._run(self.store.protected_positions, person_id)

    async def device_region(self, device_id: str) -> str | None:
        return await self._run(self.store.device_region, device_id)

    async def add_command(self, device_id: str, region: str, cmd: str, args: dict[str, int],
                          *, actor: str, now_ms: int) -> Row:
        return await self._run(self.store.add_command, device_id, region, cmd, args,
                               actor=actor, now_ms=now_ms)

    async def device_commands(self, device_id: str, limit: int = 50) -> list[Row]:
        return await self._run(self.store.device_commands, device_id, limit)

    async def register_map(self, model: RegisterMap) -> Any:
        """``model.current(store.register)``: the register's zones and subjects for the
        map (see :class:`console.register_model.RegisterMap`)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._map_pool, model.current, self.store.register)

    # --- the event log (the live feed) and the stored fixes -------------------------

    async def last_seq(self) -> int:
        return await self._run(self.store.last_seq)

    async def events_since(self, seq: int, regions: Iterable[str] | None = None,
                           limit: int | None = None) -> list[Row]:
        # Without a limit the store's own default applies.
        if limit is None:
            return await self._run(self.store.events_since, seq, regions)
        return await self._run(self.store.events_since, seq, regions, limit)

    async def track(self, from_ms: int, to_ms: int, *, subject_id: str) -> list[Row]:
        """The subject's fixes with ``from_ms`` ≤ ts ≤ ``to_ms``, oldest first."""
        return await self._run(self.store.track, None, from_ms, to_ms, subject_id=subject_id)

    async def last_positions(self, regions: Iterable[str] | None) -> list[Row]:
        return await self._run(self.store.last_positions, regions)

    async def board(self, regions: Iterable[str] | None, now_ms: int, *,
                    timezone: str = "Asia/Shanghai") -> list[Row]:
        """The status board's rows (alarms.board); curfews in ``timezone``."""
        return await self._run(self.store.board, regions, now_ms, timezone=timezone)

    # --- writes nobody can wait for, and the end ------------------------------------

    def submit_audit(self, who: str | None, action: str, target: str | None, detail: Any,
                     now_ms: int, ip: str | None = None) -> Future | None:
        """Write an audit row without waiting for it: for a row that must still be
        written where nothing can be awaited any more (a live feed's stream being torn
        down). A failure is logged; None if the gateway is already closed."""
        try:
            future = self._pool.submit(self.store.audit, who, action, target, detail,
                                       now_ms, ip)
        except RuntimeError:  # the pool is shut down: the console is stopping
            log.error("store call audit after the console stopped: not done")
            return None

        def done(f: Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("store call audit failed: %s", f.exception())

        future.add_done_callback(done)
        return future

    def close(self) -> None:
        """Stop the worker threads (queued calls are cancelled; the store stays open: it
        belongs to the caller of ``create_app``)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._map_pool.shutdown(wait=False, cancel_futures=True)
