"""``emfence replay --store URL --from T --to T --fixes F``: the rules over a file of
fixes and statuses with the register as it was at the time. The ``emfence replay``
command enters here (:func:`main`) and goes on to :mod:`emfence.replay` without
``--store``.

The engine starts with ``store.register.snapshot(--from)``. At each moment of
``change_times(--from, --to)`` the register changed: the replay takes the snapshot of
that moment and swaps the engine's zones and registry (``Engine.reload``, which keeps the
rule state of devices whose entries did not change, as a live engine does) before the
first record whose clock (``rx``, else ``ts``; the replay clock never goes back) is at or
after it. ``--to`` is the end of the replay (``--until`` of a file replay): records
received later are not replayed, offline is evaluated once more there. Records before
``--from`` are replayed with the register of ``--from``.

Output as a file replay writes it (:mod:`emfence.replay`): alarm events as JSON lines to
``--out`` or stdout, the summary to stderr, one more stderr line per register swap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import IO

import orjson

from contract.errors import EmfenceError
from emfence.config import Config, ConfigError, load_config
from emfence.replay import ReplayStats, _feed, _Run, run_files
from engine.registry import parse_time_ms

# Lines handed to the engine side at a time (a bound on memory, not a batch size).
CHUNK_LINES = 65536


class ReplayStoreError(EmfenceError, ValueError):
    """Bad --from/--to, or a register that cannot be read or compiled (the message says
    which and where)."""


def parse_time_arg(text: str, what: str) -> int:
    """``--from`` / ``--to``: epoch milliseconds or ISO 8601 with a UTC offset."""
    try:
        return parse_time_ms(int(text) if text.lstrip("-").isdigit() else text, what)
    except ValueError as exc:
        raise ReplayStoreError(str(exc)) from exc


def record_clock(line: bytes) -> int | None:
    """The replay clock of one line (``rx``, else ``ts``, epoch ms), None when the line
    has neither (it is refused later, with its reason, by the replay itself)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    for key in ("rx", "ts"):
        value = obj.get(key)
        if type(value) is int:
            return value
    return None


def split_at_changes(lines: Iterable[bytes], change_ms: list[int]
                     ) -> Iterator[tuple[int | None, list[bytes]]]:
    """``(change, chunk)`` pairs in file order: ``change`` is the register change to apply
    before the chunk (None: none), each chunk at most :data:`CHUNK_LINES` lines. A change
    is applied before the first line whose running clock (the largest so far) reaches it;
    several changes passed at once are applied together (the last one's snapshot)."""
    changes = sorted(change_ms)
    k = 0  # the next change not applied yet
    clock: int | None = None
    chunk: list[bytes] = []
    pending: int | None = None  # the change to apply before `chunk`
    for line in lines:
        c = record_clock(line)
        if c is not None:
            clock = c if clock is None else max(clock, c)
        if clock is not None and k < len(changes) and clock >= changes[k]:
            while k < len(changes) and clock >= changes[k]:
                k += 1
            if chunk or pending is not None:
                yield pending, chunk
            chunk, pending = [], changes[k - 1]
        chunk.append(line)
        if len(chunk) >= CHUNK_LINES:
            yield pending, chunk
            chunk, pending = [], None
    if chunk or pending is not None:
        yield pending, chunk


def replay_register(lines: Iterable[bytes], register, out: IO[bytes], *, config: Config,
                    from_ms: int, to_ms: int, log: IO[str] | None = None) -> ReplayStats:
    """Replay ``lines`` with the register of each moment (see the module doc); alarm
    events to ``out``, one line per register swap to ``log``. Returns the statistics."""
    from emfence.run.model import compile_model
    from engine.engine import Engine

    def model_at(at_ms: int):
        zones_fc, subjects = register.snapshot(at_ms)
        try:
            return compile_model(zones_fc, subjects)
        except ValueError as exc:
            raise ReplayStoreError(f"the register as of {at_ms} does not compile: {exc}"
                                   ) from exc

    changes = [t for t in register.change_times(from_ms, to_ms) if from_ms < t <= to_ms]
    engine = Engine(*model_at(from_ms), config)
    stats = ReplayStats()
    run = _Run(engine, out, stats)
    max_future_ms = config.ingest.max_future_ms
    first = 0  # lines read before the chunk
    for change, chunk in split_at_changes(lines, changes):
        if change is not None:
            run.flush()  # records so far run with the register they arrived under
            zones, registry = model_at(change)
            kept = engine.reload(zones, registry)
            if log is not None:
                log.write(f"emfence replay: register as of {change}: "
                          f"{len(registry.device_ids)} devices, {len(zones.zone_ids)} zones; "
                          f"{kept}\n")
        listed = len(stats.rejected)
        n = _feed(chunk, run, max_future_ms, to_ms)
        # _feed numbers the chunk's lines from 1: make them the file's line numbers
        stats.rejected[listed:] = [(i + first, why) for i, why in stats.rejected[listed:]]
        first += n
    stats.lines = first
    stats.records = stats.lines - stats.blank - stats.rejected_total - stats.after_until
    run.finish(to_ms)
    return stats


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emfence replay",
        description="Run the alarm rules over a JSON-lines file of fixes and statuses with "
                    "the register in --store as it was between --from and --to.")
    p.add_argument("--store", required=True,
                   help="the store holding the register: sqlite:///path or postgresql://...")
    p.add_argument("--from", dest="from_", required=True, metavar="T",
                   help="start: epoch ms or ISO 8601 with offset; the register of this moment "
                        "is the first one used")
    p.add_argument("--to", required=True, metavar="T",
                   help="end: epoch ms or ISO 8601 with offset; offline is evaluated once more "
                        "here, records received later are not replayed")
    p.add_argument("--fixes", required=True,
                   help="JSON lines: fix or status objects with device_id and optional rx "
                        "('-' reads stdin)")
    p.add_argument("--out", help="write alarm events here instead of stdout")
    p.add_argument("--config", help="TOML configuration file (docs/configuration.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``emfence replay``: with ``--store``, the register's period (here); without, the
    file replay (:func:`emfence.replay.main`)."""
    argv = sys.argv[1:] if argv is None else argv
    if not any(a == "--store" or a.startswith("--store=") for a in argv):
        from emfence.replay import main as replay_files

        return replay_files(argv)
    args = _parser().parse_args(argv)
    try:
        from_ms = parse_time_arg(args.from_, "--from")
        to_ms = parse_time_arg(args.to, "--to")
        if to_ms < from_ms:
            raise ReplayStoreError(f"--to {args.to} is before --from {args.from_}")
        config = load_config(args.config)
    except (ReplayStoreError, ConfigError) as exc:
        print(f"emfence replay: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ReplayStoreError) else 1
    from alarms.store import StoreError, open_store

    try:
        store = open_store(args.store)
    except (StoreError, ValueError, OSError) as exc:
        print(f"emfence replay: --store: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(args, store, config, from_ms, to_ms)
    finally:
        store.close_store()


def _run(args: argparse.Namespace, store, config: Config, from_ms: int, to_ms: int) -> int:
    from alarms.store import StoreError

    return run_files(args, lambda fh, out: replay_register(
        fh, store.register, out, config=config, from_ms=from_ms, to_ms=to_ms, log=sys.stderr),
        errors=(ReplayStoreError, StoreError))
