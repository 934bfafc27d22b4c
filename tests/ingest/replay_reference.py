"""The line-by-line replay reader as it was before the block reader (commit d69822a's
``emfence.replay._feed``): the naive twin that tests hold ``emfence.replay.replay`` to.
Each line is parsed, checked with ``parse_fix`` / ``parse_status`` and appended to a
``contract.RecordBuilder``; a batch goes through the engine every ``batch_records``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

import orjson

from contract.records import COORD_SYS_CODES, POWER_CODES, STRAP_CODES, RecordBuilder
from emfence.config import Config
from emfence.replay import ReplayStats, _refused
from ingest.decode import MAX_TS_MS, MIN_TS_MS, load_json, parse_fix, parse_status


class ReferenceRun:
    def __init__(self, engine: Any, out: IO[bytes], stats: ReplayStats) -> None:
        self.engine, self.out, self.stats = engine, out, stats
        self.records = RecordBuilder()
        self.clock: int | None = None

    def flush(self) -> None:
        if len(self.records):
            events, self.clock = self.engine.process(self.records.take(),
                                                     clock_now_ms=self.clock)
            self.write(events)

    def write(self, events: list[dict]) -> None:
        if events:
            self.out.write(b"".join(orjson.dumps(ev) + b"\n" for ev in events))
            for ev in events:
                self.stats.alarms[(ev["type"], ev["event"])] += 1

    def finish(self, until_ms: int | None) -> None:
        self.flush()
        stats = self.stats
        stats.clock_ms = self.clock
        end = until_ms if until_ms is not None else self.clock
        if end is not None:
            self.write(self.engine.sweep(end))
        stats.until_ms = end
        stats.counters = self.engine.counters


def reference_replay(lines: Iterable[bytes], engine: Any, out: IO[bytes], *, config: Config,
                     until_ms: int | None = None, batch_records: int = 65536) -> ReplayStats:
    stats = ReplayStats()
    run = ReferenceRun(engine, out, stats)
    stats.lines = _feed(lines, run, config.ingest.max_future_ms, until_ms, batch_records)
    stats.records = stats.lines - stats.blank - stats.rejected_total - stats.after_until
    run.finish(until_ms)
    return stats


def _feed(lines, run, max_future_ms, until_ms, batch_records) -> int:
    stats = run.stats
    registry = run.engine.registry
    device_index = registry.device_index
    index_of = registry._device_index.get
    nan = float("nan")
    strap_codes, power_codes = {None: -1, **STRAP_CODES}, {None: -1, **POWER_CODES}
    add_fix, add_status = run.records.add_fix, run.records.add_status
    pending = 0
    lineno = 0
    for lineno, line in enumerate(lines, 1):
        try:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = load_json(line)
            if type(obj) is not dict:
                raise TypeError
            d = index_of(obj["device_id"], -1)
            if d < 0:
                raise KeyError
            if "lat" in obj or "lon" in obj:
                ts, lat, lon, acc, _, cs, _ = parse_fix(obj)
                is_fix = True
            else:
                ts, battery, strap, _, power = parse_status(obj)
                is_fix = False
            rx = obj.get("rx")
            if rx is None:
                rx = ts
            elif (type(rx) is not int or rx < MIN_TS_MS or rx > MAX_TS_MS
                  or ts - rx > max_future_ms):
                raise ValueError
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            _refused(line, lineno, stats, device_index, max_future_ms)
            continue
        if until_ms is not None and rx > until_ms:
            stats.after_until += 1
            continue
        if run.clock is None:
            run.clock = rx
        if is_fix:
            add_fix(d, ts, rx, lat, lon, acc, COORD_SYS_CODES[cs])
        else:
            add_status(d, ts, rx, nan if battery is None else battery, strap_codes[strap],
                       power_codes[power])
        pending += 1
        if pending >= batch_records:
            run.flush()
            pending = 0
    return lineno
