"""``emfence replay``: run the rules over a JSON-lines file of fixes and statuses.

Each line is one fix or status object of the wire contract plus ``device_id`` and an
optional ``rx`` (receive time, epoch ms). The replay clock is a record's ``rx`` if
present, else its ``ts``; now is the largest clock value seen so far. Offline is
evaluated whenever the clock advances and once more at ``--until``. Alarm events are
written as JSON lines in the order they occur; a summary goes to stderr. Bad lines are
reported (line number and reason) and skipped. See ``docs/replay.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import islice, repeat
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from contract.records import K_FIX, K_STATUS, RecordBatch
from emfence.config import Config, ConfigError, load_config
from engine.registry import RegistryError, load_registry, parse_time_ms
from ingest.decode import (
    ID_RE,
    MAX_TS_MS,
    MIN_TS_MS,
    PayloadError,
    epoch_ms,
    load_json,
    parse_fix,
    parse_status,
)
from ingest.decode_batch import (
    column,
    int_column,
    is_absent,
    objects,
    parse_fixes,
    parse_statuses,
)

BATCH_RECORDS = 65536
BLOCK_LINES = 4096  # lines read, parsed and checked together
MAX_LISTED_REJECTS = 1000  # the summary lists this many rejected lines, then counts the rest


class ReplayStats:
    """What a replay saw; ``summary()`` is the text written to stderr."""

    def __init__(self) -> None:
        self.lines = 0
        self.blank = 0
        self.records = 0
        self.after_until = 0
        self.rejected: list[tuple[int, str]] = []
        self.rejected_total = 0
        self.reject_codes: Counter[str] = Counter()
        self.alarms: Counter[tuple[str, str]] = Counter()
        self.clock_ms: int | None = None
        self.until_ms: int | None = None
        self.counters: dict[str, int] = {}

    def reject(self, lineno: int, exc: PayloadError) -> None:
        self.rejected_total += 1
        self.reject_codes[exc.code] += 1
        if len(self.rejected) < MAX_LISTED_REJECTS:
            self.rejected.append((lineno, exc.reason))

    def summary(self) -> str:
        c = self.counters
        out = [(
            f"emfence replay: {self.lines} lines, {self.records} records "
            f"({c.get('fixes', 0)} fixes, {c.get('statuses', 0)} statuses), "
            f"{c.get('duplicates', 0)} duplicates, {c.get('late', 0)} late, "
            f"{self.rejected_total} rejected lines"
        )]
        if self.blank:
            out.append(f"blank lines skipped: {self.blank}")
        if self.after_until:
            out.append(f"records after --until, not replayed: {self.after_until}")
        out.append(f"clock: last record {self.clock_ms}, offline evaluated until {self.until_ms}")
        out.append(f"duplicates: {c.get('duplicate_fixes', 0)} fixes, "
                   f"{c.get('duplicate_statuses', 0)} statuses; late: "
                   f"{c.get('late_fixes', 0)} fixes, {c.get('late_statuses', 0)} statuses")
        types = sorted({t for t, _ in self.alarms})
        if types:
            out.append("alarms: " + ", ".join(
                f"{t} {self.alarms[(t, 'raised')]} raised / {self.alarms[(t, 'cleared')]} cleared"
                for t in types))
        else:
            out.append("alarms: none")
        if self.rejected_total:
            out.append("rejected by reason: " + ", ".join(
                f"{code} {n}" for code, n in sorted(self.reject_codes.items())))
            out.append("rejected lines:")
            out += [f"  line {n}: {reason}" for n, reason in self.rejected]
            if self.rejected_total > len(self.rejected):
                out.append(f"  ... and {self.rejected_total - len(self.rejected)} more")
        return "\n".join(out) + "\n"




def _diagnose(line: bytes, device_index, max_future_ms: int, where: str) -> PayloadError:
    """The reason a line was refused, checked in order: JSON, object, device_id, the wire
    contract's fields (ingest.decode), rx."""
    try:
        obj = load_json(line)
    except PayloadError as exc:
        return PayloadError(exc.reason, where)
    if not isinstance(obj, dict):
        return PayloadError("not_object: expected a JSON object", where)
    did = obj.get("device_id")
    if did is None:
        return PayloadError("missing_field: device_id", where)
    if not isinstance(did, str) or not ID_RE.fullmatch(did):
        return PayloadError(f"bad_value: device_id {did!r:.40} is not [A-Za-z0-9_-]{{1,64}}",
                            where)
    if device_index(did) < 0:
        return PayloadError(f"unknown_device: {did} is not in the subjects file", where)
    try:
        if "lat" in obj or "lon" in obj:
            ts = parse_fix(obj, where=where).ts_ms
        else:
            ts = parse_status(obj, where=where).ts_ms
        if obj.get("rx") is not None:
            rx = epoch_ms(obj["rx"], "rx", where)
            if ts - rx > max_future_ms:
                raise PayloadError(f"future_ts: ts={ts} is {ts - rx} ms ahead of rx "
                                   f"(limit {max_future_ms} ms)", where)
    except PayloadError as exc:
        return exc
    return PayloadError("bad_value: refused", where)  # not reached: the fast path agreed


class _Run:
    """The engine side of a replay: batches of accepted records through the engine, the
    receive clock, alarm events out as JSON lines (counted in ``stats``)."""

    def __init__(self, engine: Any, out: IO[bytes], stats: ReplayStats) -> None:
        self.engine = engine
        self.out = out
        self.stats = stats
        self.blocks: list[tuple[np.ndarray, ...]] = []  # record columns not yet run
        self.clock: int | None = None

    def add(self, cols: tuple[np.ndarray, ...]) -> None:
        """Records to run at the next flush: ``RecordBatch``'s columns, in its order."""
        self.blocks.append(cols)

    def flush(self) -> None:
        if self.blocks:
            cols = [np.concatenate(c) for c in zip(*self.blocks, strict=True)]
            self.blocks = []
            batch = RecordBatch.records(**dict(zip(RecordBatch._fields, cols, strict=True)))
            events, self.clock = self.engine.process(batch, clock_now_ms=self.clock)
            self.write(events)

    def write(self, events: list[dict]) -> None:
        if events:
            self.out.write(b"".join(orjson.dumps(ev) + b"\n" for ev in events))
            for ev in events:
                self.stats.alarms[(ev["type"], ev["event"])] += 1

    def finish(self, until_ms: int | None) -> None:
        """Run what is left, then the last offline sweep at ``until_ms`` (default: the
        clock)."""
        self.flush()
        stats = self.stats
        stats.clock_ms = self.clock
        end = until_ms if until_ms is not None else self.clock
        if end is not None:
            self.write(self.engine.sweep(end))
        stats.until_ms = end
        stats.counters = self.engine.counters


def _refused(line: bytes, lineno: int, stats: ReplayStats, device_index,
             max_future_ms: int) -> None:
    """Count a line the fast path refused: blank, or rejected with its reason."""
    if not line.strip():
        stats.blank += 1
    else:
        stats.reject(lineno, _diagnose(line, device_index, max_future_ms, f"line {lineno}"))


def replay(lines: Iterable[bytes], engine: Any, out: IO[bytes], *, config: Config,
           until_ms: int | None = None, stats: ReplayStats | None = None) -> ReplayStats:
    """Replay ``lines`` (bytes, one JSON object each) through ``engine``, writing alarm
    events as JSON lines to ``out``. Returns the statistics (also filled in ``stats``)."""
    stats = stats or ReplayStats()
    run = _Run(engine, out, stats)
    stats.lines = _feed(lines, run, config.ingest.max_future_ms, until_ms)
    stats.records = stats.lines - stats.blank - stats.rejected_total - stats.after_until
    run.finish(until_ms)
    return stats


def _feed(lines: Iterable[bytes], run: _Run, max_future_ms: int, until_ms: int | None) -> int:
    """Validate each line and add its record to ``run`` (a batch through the engine every
    ``BATCH_RECORDS`` records added here); refused lines and those after ``until_ms`` are
    counted in ``run.stats``. Returns the number of lines read.

    Lines are read and checked :data:`BLOCK_LINES` at a time, by columns
    (:func:`_decode_block`); a refused line is then diagnosed alone (:func:`_refused`),
    so its reason and line number are what a line-by-line reading gives."""
    stats = run.stats
    registry = run.engine.registry
    device_index = registry.device_index
    index_of = registry._device_index.get  # device_index() without the method call
    lines = iter(lines)
    pending = 0  # records added since the last flush
    lineno = 0  # lines before the block
    while chunk := list(islice(lines, BLOCK_LINES)):
        cols, refused = _decode_block(chunk, index_of, max_future_ms)
        for i in refused.tolist():
            _refused(chunk[i], lineno + i + 1, stats, device_index, max_future_ms)
        lineno += len(chunk)
        if until_ms is not None:
            later = cols[3] > until_ms  # rx_ms
            if later.any():  # the replay ends at --until: validated, counted, not run
                stats.after_until += int(later.sum())
                cols = tuple(c[~later] for c in cols)
        n = len(cols[0])
        if n and run.clock is None:
            run.clock = int(cols[3][0])
        done = 0
        while done < n:
            take = min(n - done, BATCH_RECORDS - pending)
            run.add(tuple(c[done:done + take] for c in cols) if take < n else cols)
            done += take
            pending += take
            if pending >= BATCH_RECORDS:
                run.flush()
                pending = 0
    return lineno


def _parse_lines(chunk: list[bytes]) -> list:
    """Each line's JSON value; None for a line that is not JSON (refused later, with the
    reason, by :func:`_diagnose`). JSON that orjson refuses (1e400) is read as the live
    intake reads it (:func:`ingest.decode.load_json`)."""
    loads = orjson.loads
    try:
        return list(map(loads, chunk))
    except orjson.JSONDecodeError:
        pass
    objs = []
    for line in chunk:
        try:
            obj = loads(line)
        except orjson.JSONDecodeError:
            try:
                obj = load_json(line)
            except PayloadError:
                obj = None
        objs.append(obj)
    return objs


def _device_indexes(ids: list, index_of) -> np.ndarray:
    """The registry's index of each ``device_id`` value, -1 unknown (or not a string)."""
    try:
        return np.fromiter(map(index_of, ids, repeat(-1)), np.int32, len(ids))
    except TypeError:  # an unhashable device_id (array, object)
        return np.fromiter((index_of(d, -1) if isinstance(d, str) else -1 for d in ids),
                           np.int32, len(ids))


def _decode_block(chunk: list[bytes], index_of, max_future_ms: int
                  ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The accepted lines of ``chunk`` as record columns (``contract.RecordBatch``'s field
    order and dtypes, in line order) and the indexes of the refused lines. A line is
    accepted when it is a JSON object with a registered ``device_id``, a valid fix (it
    has ``lat`` or ``lon``: :func:`ingest.decode_batch.parse_fixes`, which accepts what
    ``parse_fix`` accepts) or status (``parse_status``), and a valid ``rx``."""
    objs = _parse_lines(chunk)
    n = len(objs)
    dicts, ok = objects(objs)
    dev = _device_indexes(column(dicts, "device_id"), index_of)
    ok &= dev >= 0
    is_fix = None  # a fix has lat or lon, a status neither
    if not all(map(dict.__contains__, dicts, repeat("lat"))):
        is_fix = (np.fromiter(map(dict.__contains__, dicts, repeat("lat")), bool, n)
                  | np.fromiter(map(dict.__contains__, dicts, repeat("lon")), bool, n))
    cols = _kind_columns(dicts, is_fix, ok)
    ts = cols[1]
    rx_col = column(dicts, "rx")
    if rx_col.count(None) == n:
        rx = ts
    else:
        rx, good = int_column(rx_col, MIN_TS_MS, MAX_TS_MS)
        absent = is_absent(rx_col)
        ok &= absent | (good & (ts - rx <= max_future_ms))
        rx = np.where(absent, ts, rx)
    cols = (cols[0], dev, ts, rx, *cols[2:])
    if ok.all():
        return cols, np.empty(0, np.intp)
    return tuple(c[ok] for c in cols), np.flatnonzero(~ok)


def _kind_columns(dicts: list[dict], is_fix: np.ndarray | None, ok: np.ndarray
                  ) -> tuple[np.ndarray, ...]:
    """kind, ts_ms, lat, lon, acc_m, coord_sys, battery_pct, strap, power of every line
    (a fix's status columns absent, a status's fix columns NaN / 0); ``ok`` is cleared
    where the fix or status is refused."""
    n = len(dicts)
    if is_fix is None:  # every line a fix
        fx = parse_fixes(dicts)
        ok &= fx.ok
        nan = np.full(n, np.nan)
        minus_one = np.full(n, -1, np.int8)
        return (np.full(n, K_FIX, np.uint8), fx.ts_ms, fx.lat, fx.lon, fx.acc_m,
                fx.coord_sys, nan, minus_one, minus_one.copy())
    kind = np.where(is_fix, K_FIX, K_STATUS).astype(np.uint8)
    ts = np.zeros(n, np.int64)
    lat, lon, acc, battery = (np.full(n, np.nan) for _ in range(4))
    coord = np.zeros(n, np.uint8)
    strap, power = np.full(n, -1, np.int8), np.full(n, -1, np.int8)
    fix_at = np.flatnonzero(is_fix)
    if len(fix_at):
        fx = parse_fixes([dicts[i] for i in fix_at.tolist()])
        ok[fix_at] &= fx.ok
        ts[fix_at], lat[fix_at], lon[fix_at], acc[fix_at], coord[fix_at] = fx[1:]
    status_at = np.flatnonzero(~is_fix)
    if len(status_at):
        st = parse_statuses([dicts[i] for i in status_at.tolist()])
        ok[status_at] &= st.ok
        ts[status_at], battery[status_at], strap[status_at], power[status_at] = st[1:]
    return kind, ts, lat, lon, acc, coord, battery, strap, power


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emfence replay",
        description="Run the alarm rules over a JSON-lines file of fixes and statuses; "
                    "alarm events as JSON lines to --out (or stdout), a summary to stderr. "
                    "With --store URL --from T --to T instead of --zones and --subjects: "
                    "the register in that store as it was in that period (docs/replay.md).")
    p.add_argument("--zones", required=True, help="zones GeoJSON file")
    p.add_argument("--subjects", required=True, help="subjects JSON file")
    p.add_argument("--fixes", required=True,
                   help="JSON lines: fix or status objects with device_id and optional rx "
                        "('-' reads stdin)")
    p.add_argument("--until", help="end of the replay: epoch ms or ISO 8601 with offset; offline "
                                   "is evaluated once more here (default: the last clock value); "
                                   "records received later are not replayed")
    p.add_argument("--out", help="write alarm events here instead of stdout")
    p.add_argument("--config", help="TOML configuration file (docs/configuration.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    until_ms = None
    if args.until is not None:
        try:
            until_ms = parse_time_ms(int(args.until) if args.until.lstrip("-").isdigit()
                                     else args.until, "--until")
        except ValueError as exc:
            print(f"emfence replay: {exc}", file=sys.stderr)
            return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"emfence replay: {exc}", file=sys.stderr)
        return 1
    from geofence import ZoneError, compile_zones, load_zones

    try:
        zones = compile_zones(load_zones(args.zones))
    except (ZoneError, OSError) as exc:
        msg = str(exc)  # load_zones names the file itself; say it once
        where = "" if msg.startswith(str(args.zones)) else f"zones {args.zones}: "
        print(f"emfence replay: {where}{msg}", file=sys.stderr)
        return 1
    try:
        registry = load_registry(args.subjects, zones)
    except RegistryError as exc:
        print(f"emfence replay: {exc}", file=sys.stderr)
        return 1
    from engine.engine import Engine

    engine = Engine(zones, registry, config)
    return run_files(args, lambda fh, out: replay(fh, engine, out, config=config,
                                                  until_ms=until_ms))


def run_files(args: argparse.Namespace,
              work: Callable[[IO[bytes], IO[bytes]], ReplayStats],
              errors: tuple[type[Exception], ...] = ()) -> int:
    """The IO of both replays (this one and :mod:`emfence.replay_store`): open ``--fixes``
    (``-``: standard input) and ``--out`` (default standard output), run ``work(fixes,
    out)``, close what was opened and print its summary on stderr. A file that cannot be
    read or written, or one of ``errors``, is one line and exit 1, never a traceback."""
    try:
        fh = sys.stdin.buffer if args.fixes == "-" else open(Path(args.fixes), "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"emfence replay: cannot read {args.fixes}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    except OSError as exc:
        print(f"emfence replay: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        fh.close()
        return 1
    try:
        stats = work(fh, out)
    except errors as exc:
        print(f"emfence replay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"emfence replay: reading {args.fixes} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    sys.stderr.write(stats.summary())
    return 0
