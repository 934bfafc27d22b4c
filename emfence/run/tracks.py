"""Track rows: every accepted fix of a registered device, queued (bounded) and written
to the store in large transactions; and the retention purge."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque

import numpy as np

from contract import K_FIX, RecordBatch
from emfence.run.options import PURGE_PERIOD_S, TRACK_FLUSH_S, TRACK_ROWS_PER_WRITE, wall_ms
from engine.positions import Positions

log = logging.getLogger("emfence.run")


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
        the track store and its map are theirs."""
        lat, lon = positions
        sel = np.flatnonzero((records.kind == K_FIX) & (records.device_idx >= 0)
                             & (records.device_idx < registry.n_subject_devices)
                             & ~np.isnan(lat))
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
