"""Alarm store benchmark: the event log + outbox, the alarm lifecycle, track writes.

    python -m benchmarks.store --json
    python -m benchmarks.store --pg postgresql://postgres@127.0.0.1:5432/postgres --json

Times the store calls that sit on the live path, on SQLite (a file in a temporary folder)
and, when a PostgreSQL server is given (``--pg``, default ``$EMFENCE_TEST_PG``), on a fresh
database of its own created on that server and dropped afterwards:

- ``record_events_for_delivery``: the engine's events stored and queued for publishing,
  in batches of ``--batch`` raises (ms per batch, events/s) and of one event (ms per
  call: the latency a lone alarm pays);
- ``pending`` (500 rows, the publisher's read of a backlog) and ``mark_delivered``
  (batches of 500 seqs, the publisher's PUBACK marks): ms per call;
- ``record_events`` of ``cleared`` events for alarms already stored (ms per batch);
- ``acknowledge`` and ``close_alarm``: ms per operator action (one transaction each);
- ``escalate_due``: rounds each escalating the unacknowledged alarms of a tenth of the
  batches (ms per round);
- ``list_alarms`` (200 rows, filtered by regions and state) and ``stats`` (every region,
  every alarm): ms per call;
- ``record_fixes``: batches of ``--fix-batch`` track rows over ``--devices`` devices
  (ms per batch, rows/s);
- ``fence``: the cost of a worker group's epoch fence (alarms.leases): the three fenced
  writes (a batch of ``--batch`` events, one event, a mark of ``--batch`` seqs, a 64 KiB
  checkpoint) each timed without and with a holder's fence, call by call alternately in
  one run (ms per call, and with/without).

Each figure is the median over the calls of a run; the calls of one kind run back to back
on one thread. Absolute figures depend on the machine and its load: compare trees by
alternating runs on one machine (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

T0 = 1_763_600_000_000  # epoch ms of the first synthetic event
REGIONS = ("330723", "330702", "330781")


def _event(i: int, event: str = "raised") -> dict[str, Any]:
    """The engine's event dict for synthetic alarm ``i`` (evidence of a fix)."""
    return {"event": event, "alarm_id": f"B-{i:08d}", "type": "outbound",
            "subject_id": f"S-{i % 5000:05d}", "device_id": f"BR-{i % 5000:05d}",
            "zone_id": "county", "region": REGIONS[i % len(REGIONS)],
            "at": T0 + i * 1_000 + (500 if event == "cleared" else 0), "late": False,
            "lat": 29.15, "lon": 120.28, "distance_m": 412.5, "acc": 12.0}


def _timed(times_ms: list[float], fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, its duration appended to ``times_ms``."""
    t = time.perf_counter()
    out = fn(*args)
    times_ms.append((time.perf_counter() - t) * 1000)
    return out


def _median(times_ms: list[float]) -> float:
    return round(statistics.median(times_ms), 3)


def _outbox(store: Any, n_batches: int, batch: int, singles: int) -> dict[str, Any]:
    """record_events_for_delivery (batches and single events), pending, mark_delivered."""
    batch_ms: list[float] = []
    for b in range(n_batches):
        evs = [_event(b * batch + k) for k in range(batch)]
        _timed(batch_ms, store.record_events_for_delivery, evs, T0 + b)
    single_ms: list[float] = []
    base = n_batches * batch
    for k in range(singles):
        ev = [_event(base + k)]
        _timed(single_ms, store.record_events_for_delivery, ev, T0 + k)
    pending_ms: list[float] = []
    mark_ms: list[float] = []
    while True:
        rows = _timed(pending_ms, store.pending, 500)
        if not rows:
            break
        seqs = [r[0] for r in rows]
        _timed(mark_ms, store.mark_delivered, seqs, T0)
    total = n_batches * batch
    return {
        "record_events_for_delivery": {
            "batch": batch, "batches": n_batches, "median_ms_per_batch": _median(batch_ms),
            "events_per_s": round(total / (sum(batch_ms) / 1000))},
        "record_events_for_delivery_1": {"calls": singles,
                                         "median_ms_per_call": _median(single_ms)},
        "pending_500": {"calls": len(pending_ms), "median_ms_per_call": _median(pending_ms)},
        "mark_delivered_500": {"calls": len(mark_ms), "median_ms_per_call": _median(mark_ms)},
    }


def _lifecycle(store: Any, n_batches: int, batch: int, actions: int) -> dict[str, Any]:
    """Clears of stored alarms, operator actions, one escalation round, console reads."""
    clear_ms: list[float] = []
    for b in range(n_batches):
        evs = [_event(b * batch + k, "cleared") for k in range(batch)]
        _timed(clear_ms, store.record_events, evs, T0 + 10_000_000 + b)
    ack_ms: list[float] = []
    close_ms: list[float] = []
    now = T0 + 20_000_000
    for k in range(actions):
        aid = _event(k)["alarm_id"]
        _timed(ack_ms, store.acknowledge, aid, "olga", None, now)
        _timed(close_ms, store.close_alarm, aid, "olga", "gps_drift", None, now + 1)
    # escalation in rounds, each claiming the alarms of the next few batches (recorded at
    # T0 + batch number), then one round for the rest
    escalate_ms: list[float] = []
    escalated = 0
    step = max(1, n_batches // 10)
    for upto in [*range(step - 1, n_batches, step), 10**9]:
        escalated += len(_timed(escalate_ms, store.escalate_due,
                                T0 + upto + 300_000, 300_000))
    list_ms: list[float] = []
    stats_ms: list[float] = []
    for _ in range(20):
        _timed(list_ms, store.list_alarms, REGIONS[:2], None, ["cleared"])
        _timed(stats_ms, store.stats, list(REGIONS), T0, T0 + 10**12)
    return {
        "record_events_cleared": {"batch": batch, "median_ms_per_batch": _median(clear_ms)},
        "acknowledge": {"calls": actions, "median_ms_per_call": _median(ack_ms)},
        "close_alarm": {"calls": actions, "median_ms_per_call": _median(close_ms)},
        "escalate_due": {"rounds": len(escalate_ms), "escalated": escalated,
                         "median_ms_per_round": _median(escalate_ms)},
        "list_alarms_200": {"median_ms_per_call": _median(list_ms)},
        "stats": {"median_ms_per_call": _median(stats_ms)},
    }


def _tracks(store: Any, n_batches: int, fix_batch: int, devices: int) -> dict[str, Any]:
    """record_fixes: each batch one fix per device in turn, times moving forward."""
    ms: list[float] = []
    for b in range(n_batches):
        rows = []
        for k in range(fix_batch):
            i = b * fix_batch + k
            d = i % devices
            ts = T0 + (i // devices) * 10_000 + d
            rows.append((f"BR-{d:05d}", f"S-{d:05d}", REGIONS[d % len(REGIONS)], ts,
                         29.15 + d * 1e-5, 120.28, 12.0, "gps", ts + 150))
        _timed(ms, store.record_fixes, rows)
    return {"record_fixes": {"batch": fix_batch, "batches": n_batches,
                             "median_ms_per_batch": _median(ms),
                             "rows_per_s": round(n_batches * fix_batch / (sum(ms) / 1000))}}


def _fence_cost(store: Any, rounds: int, batch: int) -> dict[str, Any]:
    """The fenced writes without and with a holder's fence, alternately (module doc)."""
    from alarms.leases import Fence

    lease = store.take_lease("bench", "holder", 3_600_000)
    fence = Fence("bench", "holder", lease.epoch)
    state = os.urandom(64 * 1024)
    ms: dict[str, dict[bool, list[float]]] = {}
    base = 50_000_000
    for r in range(rounds):
        for fenced in ((False, True) if r % 2 else (True, False)):
            store.fence = fence if fenced else None
            i = base + (2 * r + fenced) * (batch + 1)
            calls = (("record_events_for_delivery", store.record_events_for_delivery,
                      [_event(i + k) for k in range(batch)], T0),
                     ("record_events_for_delivery_1", store.record_events_for_delivery,
                      [_event(i + batch)], T0))
            seqs: list[int] = []
            for name, fn, *call_args in calls:
                rows = _timed(ms.setdefault(name, {False: [], True: []})[fenced], fn,
                              *call_args)
                seqs += [row[0] for row in rows]
            _timed(ms.setdefault("mark_delivered", {False: [], True: []})[fenced],
                   store.mark_delivered, seqs, T0)
            _timed(ms.setdefault("save_checkpoint_64k", {False: [], True: []})[fenced],
                   store.save_checkpoint, "bench", state, b"", T0)
    store.fence = None
    out: dict[str, Any] = {}
    for name, by in ms.items():
        off, on = _median(by[False]), _median(by[True])
        out[name] = {"calls": rounds, "median_ms_unfenced": off, "median_ms_fenced": on,
                     "fenced_over_unfenced": round(on / off, 3) if off else None}
    return {"fence": out}


def run_url(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure on the (empty) store at ``url``."""
    from alarms.store import open_store

    store = open_store(url)
    try:
        out = _outbox(store, args.batches, args.batch, args.singles)
        out.update(_lifecycle(store, args.batches, args.batch, args.actions))
        out.update(_tracks(store, args.fix_batches, args.fix_batch, args.devices))
        out.update(_fence_cost(store, args.fence_rounds, args.batch))
    finally:
        store.close_store()
    return out


@contextmanager
def fresh_pg_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server at ``server_url``; dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"emfence_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"batch": args.batch, "batches": args.batches,
                           "fix_batch": args.fix_batch, "devices": args.devices,
                           "load_average": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as d:
        out["sqlite"] = run_url(f"sqlite:///{Path(d) / 'alarms.db'}", args)
    if args.pg:
        with fresh_pg_database(args.pg) as url:
            out["postgresql"] = run_url(url, args)
    out["load_average_after"] = list(os.getloadavg())
    return out


def _print_table(result: dict[str, Any]) -> None:
    for backend in ("sqlite", "postgresql"):
        if backend not in result:
            continue
        print(f"{backend}:")
        figures_by_name = dict(result[backend])
        figures_by_name.update({f"fence {k}": v
                                for k, v in figures_by_name.pop("fence").items()})
        for name, figures in figures_by_name.items():
            print(f"  {name:32s} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    print(f"load average {result['load_average']} -> {result['load_average_after']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.store",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=100, help="events per record_events batch")
    p.add_argument("--batches", type=int, default=100, help="record_events batches")
    p.add_argument("--singles", type=int, default=200, help="single-event record calls")
    p.add_argument("--actions", type=int, default=300, help="acknowledge + close pairs")
    p.add_argument("--fix-batch", type=int, default=2_000, help="track rows per batch")
    p.add_argument("--fix-batches", type=int, default=50, help="record_fixes batches")
    p.add_argument("--devices", type=int, default=5_000, help="devices the fixes come from")
    p.add_argument("--fence-rounds", type=int, default=200,
                   help="rounds of the fenced writes, each once without and once with a fence")
    p.add_argument("--pg", default=os.environ.get("EMFENCE_TEST_PG"),
                   help="PostgreSQL server URL; a fresh database is created on it and "
                        "dropped afterwards (default: $EMFENCE_TEST_PG; none: SQLite only)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    if min(args.batch, args.batches, args.singles, args.actions, args.fix_batch,
           args.fix_batches, args.devices, args.fence_rounds) < 1:
        p.error("every count must be at least 1")
    if args.actions > args.batch * args.batches:
        p.error("--actions must not exceed --batch x --batches (the alarms stored)")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
