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
from pathlib import Path
from typing import IO, Any

import orjson

from contract.records import COORD_SYS_CODES, POWER_CODES, STRAP_CODES, RecordBuilder
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

BATCH_RECORDS = 65536
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
    ``BATCH_RECORDS``); refused lines and those after ``until_ms`` are counted in
    ``run.stats``. Returns the number of lines read."""
    stats = run.stats
    registry = run.engine.registry
    device_index = registry.device_index
    index_of = registry._device_index.get  # device_index() without the method call
    loads = orjson.loads
    nan = float("nan")
    coord_codes = COORD_SYS_CODES
    strap_codes, power_codes = {None: -1, **STRAP_CODES}, {None: -1, **POWER_CODES}
    add_fix, add_status = run.records.add_fix, run.records.add_status
    pending = 0  # records added since the last flush
    lineno = 0
    for lineno, line in enumerate(lines, 1):
        try:
            try:
                obj = loads(line)
            except orjson.JSONDecodeError:
                # JSON that orjson refuses (1e400) is read as the live intake reads it;
                # a line that is not JSON raises PayloadError (a ValueError).
                obj = load_json(line)
            # The common case first, each check cheap; anything unusual falls through to
            # the full validation of _diagnose, which names the problem.
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
            stats.after_until += 1  # the replay ends at --until: validated, counted, not run
            continue
        if run.clock is None:
            run.clock = rx
        if is_fix:
            add_fix(d, ts, rx, lat, lon, acc, coord_codes[cs])
        else:
            add_status(d, ts, rx, nan if battery is None else battery, strap_codes[strap],
                       power_codes[power])
        pending += 1
        if pending >= BATCH_RECORDS:
            run.flush()
            pending = 0
    return lineno


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
