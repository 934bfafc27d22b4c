"""Track rows: every accepted fix of a registered device, queued (bounded) and written
to the store in large transactions; and the retention purge."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque

import numpy as np

from contract import K_FIX, K_STATUS, POWER_CODES, STRAP_CODES, RecordBatch
from emfence.run.options import PURGE_PERIOD_S, TRACK_FLUSH_S, TRACK_ROWS_PER_WRITE, wall_ms
from engine.positions import Positions

log = logging.getLogger("emfence.run")
_STRAP = {code: name for name, code in STRAP_CODES.items()}
_POWER = {code: name for name, code in POWER_CODES.items()}


def _merge_status(old: tuple, new: tuple) -> tuple:
    """Two statuses of a device as the store keeps them (alarms.device_status): the
    newer's fields, the other's where the newer lacks one; the latest receive time."""
    first, second = (new, old) if new[2] >= old[2] else (old, new)
    return (*first[:3], *(a if a is not None else b for a, b in zip(first[3:6], second[3:6],
                                                                    strict=True)),
            max(old[6], new[6]))


class TrackWriter:
    """Owns the track queue and its marks: ``queued`` rows ever queued, ``done`` rows ever
    taken off the queue's head (written or dropped). A window waits for its own rows,
    not for rows queued while it waits."""

    def __init__(self, store, tracks_config, counters: Counter, outages):
        self.store = store
        self.cfg = tracks_config
        self.counters = counters
        self.outages = outages  # failed writes are outages, retried
        self.rows: deque = deque()
        # a protected person's devices: the newest fix of each, for supervisors only
        # (alarms.protected_positions), never a track row
        self.protected: dict[str, tuple] = {}
        # each subject device's newest status of the flush (alarms.device_status: battery,
        # strap, power, receive time for the status board), one row per device
        self.status: dict[str, tuple] = {}
        self.queued = 0
        self.done = 0
        self.lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    def queue(self, records: RecordBatch, positions: Positions, device: list[str], src: list,
              registry) -> None:
        """Queue the fixes of registered devices among ``records`` (``device`` and ``src``:
        each record's device id and source) at the WGS-84 ``positions`` the engine ruled
        on (``Engine.process(records, positions=...)``: a GCJ-02 fix is converted once, by
        the kernel, and the track shows exactly where the rules placed it). A fix with no
        position (NaN: the engine failed on it, and it was dead-lettered) has no row. A
        protected person's device (registered after every subject's) has none either: a
        victim's positions are never shown to operators (docs/rules.md, "Proximity"), and
        the track store and its map are theirs; its newest fix is kept for supervisors
        alone (:meth:`_protected`)."""
        lat, lon = positions
        self._statuses(records, device, registry)
        fixes = (records.kind == K_FIX) & ~np.isnan(lat)
        self._protected(records, lat, lon, device, registry,
                        np.flatnonzero(fixes & (records.device_idx >= registry.n_subject_devices)
                                       & (records.device_idx < registry.n_devices)))
        sel = np.flatnonzero(fixes & (records.device_idx >= 0)
                             & (records.device_idx < registry.n_subject_devices))
        if sel.size == 0:
            return
        idx = records.device_idx[sel].tolist()
        ts, rx = records.ts_ms[sel].tolist(), records.rx_ms[sel].tolist()
        acc = records.acc_m[sel].tolist()
        lat_l, lon_l = lat[sel].tolist(), lon[sel].tolist()
        subject_of, region_of = registry.subject_of, registry.device_region
        for j, i in enumerate(sel.tolist()):
            d = idx[j]
            self.rows.append((device[i], subject_of(d), region_of(d), ts[j],
                              lat_l[j], lon_l[j], acc[j], src[i], rx[j]))
        self.queued += len(sel)
        self._bound()

    def _protected(self, records: RecordBatch, lat, lon, device: list[str], registry,
                   sel: np.ndarray) -> None:
        for i in sel.tolist():
            d = int(records.device_idx[i])
            self._keep_newest((device[i], registry.subject_of(d), int(records.ts_ms[i]),
                               float(lat[i]), float(lon[i]), float(records.acc_m[i]),
                               int(records.rx_ms[i])))

    def _statuses(self, records: RecordBatch, device: list[str], registry) -> None:
        """Keep the newest status of each subject device (as in :meth:`queue`, never a
        protected person's) for :meth:`flush`."""
        sel = np.flatnonzero((records.kind == K_STATUS) & (records.device_idx >= 0)
                             & (records.device_idx < registry.n_subject_devices))
        for i in sel.tolist():
            battery = float(records.battery_pct[i])
            row = (device[i], registry.device_region(int(records.device_idx[i])),
                   int(records.ts_ms[i]), None if np.isnan(battery) else battery,
                   _STRAP.get(int(records.strap[i])), _POWER.get(int(records.power[i])),
                   int(records.rx_ms[i]))
            old = self.status.get(device[i])
            self.status[device[i]] = row if old is None else _merge_status(old, row)

    def _keep_newest(self, row: tuple) -> None:
        """``row`` (device id, person id, ts, ...) unless its device's kept one is newer."""
        old = self.protected.get(row[0])
        if old is None or row[2] > old[2]:
            self.protected[row[0]] = row

    def _keep_status(self, row: tuple) -> None:
        """Give back a status row that was not written: merged under a newer one kept
        since (the newer one's fields win where it has them)."""
        kept = self.status.get(row[0])
        self.status[row[0]] = row if kept is None else _merge_status(row, kept)

    async def _write_kept(self, name: str, write, keep) -> bool:
        """Write the newest-per-device rows kept in ``self.<name>`` with ``write``; if
        the store fails, give each back through ``keep`` (never over a newer one kept
        meanwhile) and return False (the flush stops; a later one retries)."""
        rows = list(getattr(self, name).values())
        setattr(self, name, {})
        try:
            await asyncio.to_thread(write, rows)
        except Exception as exc:  # noqa: BLE001 - keep the newest and retry later
            for r in rows:
                keep(r)
            self.counters["store_errors"] += 1
            self.outages.failed("tracks", exc)
            return False
        return True

    def _bound(self) -> None:
        overflow = len(self.rows) - self.cfg.queue_rows
        if overflow > 0:
            for _ in range(overflow):
                self.rows.popleft()
            self.done += overflow
            self.counters["tracks_dropped"] += overflow
            log.warning("track queue over %d rows: dropped the %d oldest (the store is too "
                        "slow); rules are unaffected", self.cfg.queue_rows, overflow)

    async def flush(self, upto: int | None = None) -> None:
        """Write queued track rows: the first ``upto`` ever queued (default: those queued
        now). Not the rows queued while it writes: processing goes on meanwhile, and a
        flush chasing the queue's tail would hold up the acknowledgement waiting on it."""
        async with self.lock:
            if self.protected and not await self._write_kept(
                    "protected", self.store.record_protected_positions, self._keep_newest):
                return
            if self.status and not await self._write_kept(
                    "status", self.store.record_device_status, self._keep_status):
                return
            if upto is None:
                upto = self.queued
            while self.rows and self.done < upto:
                n = min(len(self.rows), TRACK_ROWS_PER_WRITE, upto - self.done)
                rows = [self.rows.popleft() for _ in range(n)]
                try:
                    await asyncio.to_thread(self.store.record_fixes, rows)
                    self.done += n
                    self.counters["tracks_written"] += n
                    self.outages.ok("tracks")
                except Exception as exc:  # noqa: BLE001 - keep them and retry later
                    self.rows.extendleft(reversed(rows))
                    self.counters["store_errors"] += 1
                    self.outages.failed("tracks", exc)
                    return

    async def run(self) -> None:
        """Write what is queued every :data:`TRACK_FLUSH_S`."""
        while True:
            await asyncio.sleep(TRACK_FLUSH_S)
            await self.flush()

    async def purge(self) -> None:
        """Delete fixes past ``tracks.retention_days``, at start and every
        :data:`PURGE_PERIOD_S`."""
        keep_ms = int(self.cfg.retention_days * 86_400_000)
        while True:
            try:
                n = await asyncio.to_thread(self.store.purge_tracks, wall_ms() - keep_ms)
                if n:
                    log.info("track retention: deleted %d fixes older than %g days", n,
                             self.cfg.retention_days)
            except Exception as exc:  # noqa: BLE001
                log.error("track retention purge failed: %s", exc)
            await asyncio.sleep(PURGE_PERIOD_S)
