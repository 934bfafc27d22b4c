"""The machinery of the end-to-end benchmarks (``benchmarks.e2e``, ``benchmarks.scale
--e2e``): one step at a rate against a consumer, the ramp to the highest rate sustained
with nothing lost, the broker's ceilings (the C subscriber, the bare aiomqtt subscriber),
the latency step scored with ``emfence score``, and the latency's stages from the
engine's store.

A *source* makes each step's simulation: ``source.simulation(rig, rate, args, scenario,
events_per_kind)`` returns what :class:`simulators.publisher.Publisher` publishes (a
:class:`simulators.scenario.Simulation`, or anything with its ``rate``, ``start_ms``,
``total_slots``, ``slot_ms``, ``messages`` and ``shift``); one that carries a ground
truth names the :class:`~simulators.scenario.Simulation` behind it as ``truth_sim``.
:class:`FleetSource` is a simulator fleet's.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import orjson

from benchmarks.e2e_consumers import BareProcess, CSubscriber

# Waiting for a consumer's backlog (before a ramp step, before counting what was lost):
# as long as it makes progress (at most SETTLE_S), or STALL_S without any.
SETTLE_S, STALL_S = 900.0, 30.0


def log(msg: str) -> None:
    print(f"[e2e] {msg}", file=sys.stderr, flush=True)


def stage_latency(store_url: str, since_ms: int) -> dict:
    """Where an alarm's latency went, from the engine's own store: per event recorded
    since ``since_ms``, ``created_at - at`` (fix -> stored: receive, batching, rules and
    the store's commit) and ``delivered_at - created_at`` (stored -> the broker's PUBACK
    of the published alarm: the outbox). p50/p99/max in ms; ``score`` gives the whole."""
    import numpy as np

    query = ("SELECT payload, created_at, delivered_at FROM events "
             "WHERE created_at >= {} AND event IN ('raised', 'cleared')")
    if store_url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store_url) as db:
            rows = db.execute(query.format("%s"), (since_ms,)).fetchall()
    else:
        import sqlite3

        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute(query.format("?"), (since_ms,)).fetchall()
    stored = [c - orjson.loads(p)["at"] for p, c, _ in rows]
    delivered = [d - c for _, c, d in rows if d is not None]

    def pct(values: list[int]) -> dict:
        if not values:
            return {"n": 0}
        a = np.asarray(values, dtype=np.float64)
        p50, p99 = np.percentile(a, [50, 99])
        return {"n": len(values), "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1),
                "max_ms": round(float(a.max()), 1)}

    return {"fix_to_stored": pct(stored), "stored_to_delivered": pct(delivered)}


# -- one step and the ramp -------------------------------------------------------------------

async def run_step(source, rig, consumer, rate: float, args, *, scenario="load",
                   step_s: float | None = None, alarms_out=None, truth=None,
                   events_per_kind=None) -> dict:
    """Publish at ``rate`` for ``step_s`` (default ``--step-s``) and see whether
    ``consumer`` kept up."""
    from simulators.publisher import Publisher

    sim = source.simulation(rig, rate, step_s or args.step_s, args, scenario, events_per_kind)
    pub = Publisher(sim, rig.host, rig.port, username="emfence-loadgen",
                    password=rig.passwords["emfence-loadgen"], pool_size=args.pool, progress=False)
    watcher = wstop = None
    if alarms_out:
        watcher, wstop = await _watch_alarms(rig, alarms_out)
    await pub.connect()
    before = await consumer.received()

    def write_truth(_sim) -> None:  # once the schedule is final (the start may move later)
        from simulators.cli import write_truth_header
        write_truth_header(truth, getattr(sim, "truth_sim", sim), {"mode": "pool"})

    try:
        stats = await pub.run(on_start=write_truth if truth else None)
    finally:
        await pub.close()
    if truth:
        from simulators.cli import append_truth_end
        append_truth_end(truth, stats)
    caught_up_s = await _catch_up_s(consumer, before + stats.acked, args.drain_s)
    got = await consumer.received() - before
    if watcher is not None:
        await asyncio.sleep(2.0)
        wstop.set()
        await watcher
    return _step_result(rate, sim, stats, got, caught_up_s, args)


class FleetSource:
    """Each step's :class:`~simulators.scenario.Simulation` of a simulator fleet."""

    def __init__(self, fleet):
        self.fleet = fleet

    def simulation(self, rig, rate: float, step_s: float, args, scenario: str,
                   events_per_kind):
        """The simulation of one step, starting 1.5 s from now."""
        from emfence.config import load_config
        from simulators.scenario import Simulation

        duration = step_s
        if scenario != "load":
            # An excursion lasts ~14 report intervals (out, 5 fixes beyond, back): the run
            # must hold it between warm-up and tail, however slowly each device reports.
            interval_s = self.fleet.n_devices / rate
            duration = max(args.latency_s, 14 * interval_s + 15)
        return Simulation(self.fleet, rate=rate, duration_s=duration,
                          start_ms=int(time.time() * 1000) + 1500,
                          config=load_config(rig.config_path), scenario=scenario,
                          seed=args.seed, events_per_kind=events_per_kind, spoof_allowed=False)


async def _watch_alarms(rig, alarms_out) -> tuple[asyncio.Task, asyncio.Event]:
    """Start recording the alarm topics to ``alarms_out``; returns the task and its stop."""
    from simulators.watch import watch_alarms

    wstop, ready = asyncio.Event(), asyncio.Event()
    # As the load generator's reader: the console account is the health counter's
    # connection, and one account holds one connection.
    watcher = asyncio.create_task(watch_alarms(rig.host, rig.port, stop=wstop,
                                               username="emfence-loadgen",
                                               password=rig.passwords["emfence-loadgen"],
                                               out=alarms_out, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    return watcher, wstop


async def settle(consumer, target: int) -> int:
    """Wait for ``consumer`` to have received ``target`` messages while it makes progress
    (:data:`STALL_S`, :data:`SETTLE_S`); how many it still owes then."""
    start = last_t = time.monotonic()
    last = await consumer.received()
    while last < target and time.monotonic() - start < SETTLE_S:
        await asyncio.sleep(0.2)
        now = await consumer.received()
        if now > last:
            last, last_t = now, time.monotonic()
        elif time.monotonic() - last_t > STALL_S:
            break
    return max(target - last, 0)


async def _catch_up_s(consumer, target: int, drain_s: float) -> float | None:
    """Seconds until ``consumer`` has received ``target`` messages (None: not within
    ``drain_s``)."""
    end = time.monotonic()
    while time.monotonic() - end < drain_s:
        if await consumer.received() >= target:
            return time.monotonic() - end
        await asyncio.sleep(0.05)
    return None


def _step_result(rate: float, sim, stats, got: int, caught_up_s: float | None, args) -> dict:
    """A step's figures, whether it was sustained and, if not, what limited it; logged."""
    secs = max((stats.ended_ms - stats.started_ms) / 1000.0, 1e-9)
    expected = getattr(sim, "expected_sent", sim.total_slots)  # a merged run: more
    sustained = (stats.failed == 0 and stats.acked == stats.sent == expected
                 and stats.lag_ms_max <= args.max_lag_ms
                 and caught_up_s is not None and caught_up_s <= args.keepup_s)
    step = {"rate": rate, "sent": stats.sent, "acked": stats.acked, "received": got,
            "publish_s": round(secs, 2), "lag_ms_max": round(stats.lag_ms_max, 1),
            "caught_up_s": None if caught_up_s is None else round(caught_up_s, 2),
            "sustained": sustained,
            "limited_by": None if sustained else (
                "simulator" if stats.lag_ms_max > args.max_lag_ms else
                "broker" if stats.acked < stats.sent else "consumer")}
    log(f"  {rate:>8.0f}/s: sent {stats.sent} acked {stats.acked} received {got} lag "
        f"{stats.lag_ms_max:.0f} ms caught up {step['caught_up_s']} s -> "
        f"{'ok' if sustained else 'NOT sustained (' + step['limited_by'] + ')'}")
    return step


async def ramp(source, rig, consumer, args, name: str, *,
               owed: int | None = None) -> tuple[float, list[dict]]:
    """Double from ``--start-rate`` until a step fails, then bisect ``--bisect`` times:
    (the highest rate sustained, every step). Before each step the consumer is given time
    (:func:`settle`) to take what was published before (``owed``: the count it must reach
    first, default what it has now) and what earlier steps left queued, so no step is
    credited with a backlog (``backlog`` in a step: what was still owed at its start)."""
    log(f"ramp: {name}")
    steps: list[dict] = []
    good, bad = 0.0, None
    base = await consumer.received() if owed is None else owed

    async def step_at(r: float) -> dict:
        backlog = await settle(consumer, base + sum(s["acked"] for s in steps))
        step = await run_step(source, rig, consumer, r, args)
        steps.append({**step, "backlog": backlog})
        return step

    rate = float(args.start_rate)
    while rate <= args.max_rate:
        if not (await step_at(rate))["sustained"]:
            bad = rate
            break
        good = rate
        rate *= 2
    if bad is not None:
        for _ in range(args.bisect):
            mid = (good + bad) / 2 if good else bad / 2
            if (await step_at(mid))["sustained"]:
                good = mid
            else:
                bad = mid
    return good, steps


async def ceilings(source, rig, args, out: Path, result: dict,
                   kinds: tuple[str, ...] = ("c_subscriber", "bare")) -> None:
    """Ramp the C subscriber (``mosquitto_sub``) and the bare aiomqtt subscriber (those of
    ``kinds``), logged in as :data:`simulators.live.BARE_USER` (its password file in
    ``out``); ``{kind}_fixes_per_s`` and ``{kind}_steps`` into ``result``."""
    from simulators.live import BARE_USER

    password_file = out / f"{BARE_USER}.password"
    for key, consumer, name in (
            ("c_subscriber", CSubscriber(rig.port, BARE_USER, password_file),
             "C subscriber (mosquitto_sub -q 1)"),
            ("bare", BareProcess(rig.port, BARE_USER, password_file),
             "bare aiomqtt subscriber")):
        if key not in kinds:
            continue
        await consumer.start()
        try:
            top, steps = await ramp(source, rig, consumer, args, name)
        finally:
            await consumer.stop()
        result[f"{key}_fixes_per_s"] = top
        result[f"{key}_steps"] = steps


def fresh_pg_database(server_url: str) -> str:
    """A new, empty database on the PostgreSQL server of ``server_url``: its URL."""
    import psycopg
    from psycopg import sql

    name = f"emfence_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    log(f"engine store: PostgreSQL database {name}")
    return f"{server_url.rpartition('/')[0]}/{name}"


async def latency_run(source, rig, counter, rate: float, args, out: Path,
                      steps: list[dict]) -> dict:
    """The excursions scenario at ``rate``, scored (its step appended to ``steps``); with
    ``args.hook`` (a :class:`~benchmarks.e2e_consumers.WebhookTimer`), the notifications'
    latency too."""
    from simulators.score import read_alarms, read_truth, score

    log(f"latency at {rate:.0f}/s (excursions scenario)")
    alarms_path, truth_path = out / "latency-alarms.jsonl", out / "latency-truth.jsonl"
    alarms_path.unlink(missing_ok=True)
    latency_from_ms = int(time.time() * 1000)
    step = await run_step(source, rig, counter, rate, args, scenario="excursions",
                          alarms_out=alarms_path, truth=truth_path,
                          events_per_kind=args.events)
    steps.append({**step, "latency_run": True})
    latency = score(read_truth(truth_path), read_alarms(str(alarms_path)))
    # Read now: the shapely engine starts on a fresh store.
    latency["stages"] = stage_latency(rig.store_url, latency_from_ms)
    if getattr(args, "hook", None) is not None:  # the same alarms' notifications, later
        await asyncio.sleep(2.0)
        latency["webhook"] = args.hook.latency(latency_from_ms, ("outbound", "exclusion"))
    return latency


async def lost_messages(counter, acked_before: int, sent_total: int) -> int:
    """Messages the broker acknowledged that the engine has not received once it stops
    making progress (:func:`settle`)."""
    return await settle(counter, acked_before + sent_total)
