"""End-to-end benchmark: simulator -> mosquitto (QoS 1) -> `emfence run` -> alarms.

    python -m benchmarks.e2e            # progress and a readable summary on stderr
    python -m benchmarks.e2e --json     # ... and one JSON object on the last line of stdout

Everything runs on this machine, loopback only, in ``--out`` (default bench-out/e2e):

1. a private mosquitto with the project's config and ACL (``ingest.mosquitto``) and a
   generated fleet (``--subjects``, default 2 000, in Wolong District and neighbours);
2. **ceilings**: ``mosquitto_sub -q 1`` (the broker's own C client, counting messages;
   ``--no-c-subscriber`` skips it), then a subprocess that is only an aiomqtt subscriber
   to every fix and status topic (QoS 1) that decodes each payload with orjson; the
   simulator ramps its rate (``load`` scenario: plain fixes, pooled connections) and the
   highest rate each keeps up with, with nothing lost, is ``c_subscriber_fixes_per_s``
   and ``bare_fixes_per_s``;
3. **engine**: ``python -m emfence run`` (SQLite store, or with ``--store-pg URL`` a fresh
   database on that PostgreSQL server; checkpoint; the engine account)
   in place of the bare subscriber, the same ramp: ``max_fixes_per_s``;
4. **latency**: at 80 % of ``max_fixes_per_s``, the ``excursions`` scenario (boundary
   excursions and exclusion entries among the load) with the alarm topics recorded as
   the console account; ``emfence score`` gives ``p50_ms``/``p99_ms`` fix->alarm (the
   deciding fix's timestamp, set when it is published, to the alarm's arrival) and
   missed/false alarms; ``latency_stages`` splits the time with the engine store's own
   timestamps: fix -> stored and stored -> delivered (PUBACK of the published alarm);
   ``webhook`` is fix -> notification: the engine's config has ``[notify.webhook]``
   pointing at a receiver in this process (signature checked), and ``p50_ms``/``p99_ms``
   run from the deciding fix's timestamp to the signed POST's arrival (``--no-webhook``
   leaves notifications off).

A step at rate R publishes for ``--step-s`` seconds and is *sustained* when the simulator
published every message on time (worst lag under ``--max-lag-ms``), the broker
acknowledged all of them, and the consumer had received all of them within
``--keepup-s`` after the step ended. The ramp doubles from ``--start-rate`` until a step
fails, then bisects twice. ``lost`` = messages the broker acknowledged minus messages the
engine received (its own counter, read from its health message) at the end.

The simulator runs in this process and needs a core of its own; on a machine with two
cores the engine, the broker and the simulator share them, so figures are a floor.
``ratio`` = max_fixes_per_s / bare_fixes_per_s, ``ratio_vs_c_subscriber`` = max_fixes_per_s
/ c_subscriber_fixes_per_s. A shapely-evaluated engine is measured
too when ``emfence run`` offers ``--core shapely``. The steps, the ramp, the ceilings and
the latency run are :mod:`benchmarks.e2e_steps` (``benchmarks.scale --e2e`` uses them too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import orjson

from benchmarks.e2e_consumers import EngineCounter, WebhookTimer, bare_subscriber
from benchmarks.e2e_steps import (
    FleetSource,
    ceilings,
    fresh_pg_database,
    latency_run,
    log,
    lost_messages,
    ramp,
)

BENCH_CONFIG = """\
# benchmarks/e2e.py: health every half second (the benchmark reads the engine's message
# counter from it); otherwise the shipped defaults.
[ingest]
health_interval_s = 0.5
restart_grace_s = 5
"""
# With the webhook on (the default): every alarm event is also POSTed, signed, to the
# benchmark's own receiver, as a deployment with a case-system integration runs.
WEBHOOK_CONFIG = """
[notify.webhook]
url = "{url}"
secret_file = "{secret_file}"
"""


def engine_has_shapely_core() -> bool:
    out = subprocess.run([sys.executable, "-m", "emfence", "run", "--help"], capture_output=True,
                         text=True, timeout=60, check=False)
    return "--core" in out.stdout


async def bench(args) -> dict:
    from emfence.config import load_config  # noqa: F401 (fail early if the package is broken)
    from simulators.cli import load_simulation  # noqa: F401
    from simulators.live import prepare_run_dir, start_rig
    from simulators.movement import Fleet

    t_start = time.monotonic()
    out = Path(args.out)
    log(f"preparing {args.subjects} subjects in {out}/")
    config_toml, hook = BENCH_CONFIG, None
    if args.webhook:
        import secrets

        out.mkdir(parents=True, exist_ok=True)
        hook_secret = out / "webhook.secret"
        hook_secret.write_text(secrets.token_hex(32), encoding="utf-8")
        hook = WebhookTimer(hook_secret.read_bytes())
        config_toml += WEBHOOK_CONFIG.format(url=hook.receiver.url, secret_file=hook_secret)
    args.hook = hook
    zones, subjects, config_path, secret, passwords = prepare_run_dir(
        out, subjects_n=args.subjects, seed=args.seed, counties=None, config_toml=config_toml)
    from geofence import load_zones

    fleet = Fleet.build(orjson.loads(Path(subjects).read_bytes()), load_zones(str(zones)))
    source = FleetSource(fleet)
    rig = await asyncio.to_thread(start_rig, out, zones, subjects, config_path, secret, passwords,
                                  start_engine=False)
    result: dict = {"subjects": fleet.n_subjects, "devices": fleet.n_devices,
                    "step_s": args.step_s, "pool_connections": args.pool}
    try:
        if args.latency_rate is None:
            await ceilings(source, rig, args, out, result,
                           ("c_subscriber", "bare") if args.c_subscriber else ("bare",))
        for core, core_args in _cores(args, result):
            await _bench_engine(source, rig, args, out, core, core_args, result)
    finally:
        await asyncio.to_thread(rig.close)
        if hook is not None:
            hook.close()
    _summarise(result)
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return result


def _cores(args, result: dict) -> list[tuple[str, list[str]]]:
    """The engine cores to measure, with their `emfence run` options."""
    cores = [("numba", [])]
    if args.shapely and args.latency_rate is None:
        if engine_has_shapely_core():
            cores.append(("shapely", ["--core", "shapely"]))
        else:
            result["shapely_note"] = ("emfence run has no --core option: shapely engine not "
                                      "measured")
    return cores


async def _bench_engine(source, rig, args, out: Path, core: str, core_args: list[str],
                        result: dict) -> None:
    """Ramp `emfence run` with ``core`` (and, for numba, the latency run); into ``result``."""
    from simulators.live import start_engine_process

    log(f"starting emfence run ({core} core)")
    # The shapely core keeps no checkpoints; the numba engine runs as deployed, with
    # one (its acknowledgements wait for it), so the comparison favours shapely.
    store_url = None
    if args.store_pg:
        store_url = await asyncio.to_thread(fresh_pg_database, args.store_pg)
        result["store"] = "postgresql"
    await asyncio.to_thread(start_engine_process, rig, core_args=core_args,
                            checkpoint=core == "numba", store_url=store_url)
    counter = EngineCounter(rig)
    await counter.start()
    try:
        acked_before = await counter.received()
        if args.latency_rate is None:
            engine_max, steps = await ramp(source, rig, counter, args, f"emfence run ({core})")
        else:  # only the latency run, at the given rate
            engine_max, steps = args.latency_rate / 0.8, []
        latency = None
        if core == "numba" and engine_max > 0:
            latency = await latency_run(source, rig, counter, 0.8 * engine_max, args, out, steps)
        lost = await lost_messages(counter, acked_before, sum(s["acked"] for s in steps))
    finally:
        await counter.stop()
        code = await asyncio.to_thread(rig.stop_engine)
    if core != "numba":
        result.update({f"{core}_max_fixes_per_s": engine_max, f"{core}_lost": lost,
                       f"{core}_steps": steps})
        return
    result.update({"lost": lost, "engine_steps": steps, "engine_exit": code})
    if args.latency_rate is None:
        result["max_fixes_per_s"] = engine_max
    if latency is not None:
        result.update({"p50_ms": latency["latency"]["p50_ms"],
                       "p95_ms": latency["latency"]["p95_ms"],
                       "p99_ms": latency["latency"]["p99_ms"],
                       "latency_rate": round(0.8 * engine_max, 1),
                       "latency_caught_up_s": steps[-1]["caught_up_s"],
                       "latency_alarms": latency["latency"]["n"],
                       "latency_stages": latency["stages"],
                       "webhook": latency.get("webhook"),
                       "latency_missed": latency["missed"],
                       "latency_false": latency["false"]})


def _summarise(result: dict) -> None:
    """The ratios, what limited the bare subscriber, and the machine, into ``result``."""
    bare_max = result.get("bare_fixes_per_s") or 0
    result["ratio"] = round(result.get("max_fixes_per_s", 0) / bare_max, 3) if bare_max else None
    c_max = result.get("c_subscriber_fixes_per_s") or 0
    result["ratio_vs_c_subscriber"] = (round(result.get("max_fixes_per_s", 0) / c_max, 3)
                                       if c_max else None)
    if result.get("shapely_max_fixes_per_s"):
        result["numba_over_shapely"] = round(
            result["max_fixes_per_s"] / result["shapely_max_fixes_per_s"], 2)
    limits = {s.get("limited_by") for s in result.get("bare_steps", []) if not s["sustained"]}
    result["bare_limited_by"] = sorted(x for x in limits if x)
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                         "python": platform.python_version(), "platform": platform.platform()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on the last line of stdout")
    p.add_argument("--out", default="bench-out/e2e", help="run folder (default bench-out/e2e)")
    p.add_argument("--subjects", type=int, default=2000)
    p.add_argument("--step-s", type=float, default=10.0, help="seconds per ramp step (default 10)")
    p.add_argument("--latency-s", type=float, default=25.0,
                   help="length of the latency run (default 25)")
    p.add_argument("--start-rate", type=float, default=500.0)
    p.add_argument("--max-rate", type=float, default=128_000.0)
    p.add_argument("--bisect", type=int, default=2, help="bisection steps after the first failure")
    p.add_argument("--max-lag-ms", type=float, default=500.0)
    # 1 s after a 10 s step: the consumer took at least ~0.9 of the rate (2 s admitted one
    # that took only 1/1.2, and the latency run at 80 % then sat at ~96 % of what the
    # engine really sustains). Finer is not measurable: the engine reports its count in
    # its health message every 0.5 s.
    p.add_argument("--keepup-s", type=float, default=1.0)
    p.add_argument("--drain-s", type=float, default=20.0, help="wait this long for stragglers")
    p.add_argument("--pool", type=int, default=8,
                   help="simulator connections (default 8; at most 32, one broker account each)")
    p.add_argument("--events", type=int, default=10, help="excursions + exclusion entries per kind "
                   "in the latency run")
    p.add_argument("--no-shapely", dest="shapely", action="store_false")
    p.add_argument("--no-c-subscriber", dest="c_subscriber", action="store_false",
                   help="skip the mosquitto_sub ceiling")
    p.add_argument("--store-pg", metavar="URL",
                   help="the engine's store: a fresh database (kept, its name logged) on this "
                   "PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--no-webhook", dest="webhook", action="store_false",
                   help="run the engine without [notify.webhook] (no fix->webhook latency)")
    p.add_argument("--latency-rate", type=float, metavar="FIXES_PER_S",
                   help="skip both ramps: only the latency run, at this rate (for profiling the "
                   "fix->alarm path; the JSON then has no max_fixes_per_s or ratio)")
    p.add_argument("--seed", type=int, default=20261122)
    p.add_argument("--bare-subscriber", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--bare-username", help=argparse.SUPPRESS)
    p.add_argument("--bare-password-file", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.bare_subscriber:
        pw = Path(args.bare_password_file).read_text().splitlines()[0].strip()
        try:
            asyncio.run(bare_subscriber(args.bare_subscriber, args.bare_username, pw))
        except KeyboardInterrupt:
            pass
        return 0
    from simulators.live import POOL_ACCOUNTS
    if not 1 <= args.pool <= POOL_ACCOUNTS:
        p.error(f"--pool must be 1 ... {POOL_ACCOUNTS} (the broker has one account per "
                "connection)")
    # The simulator shares this process with nothing else; one numba thread leaves the
    # other cores to the broker and the engine.
    import numba
    numba.set_num_threads(1)
    result = asyncio.run(bench(args))
    summary = {k: result.get(k) for k in ("max_fixes_per_s", "p50_ms", "p99_ms", "lost",
                                          "bare_fixes_per_s", "ratio", "c_subscriber_fixes_per_s",
                                          "ratio_vs_c_subscriber", "latency_missed",
                                          "latency_false", "webhook", "elapsed_s")}
    log("result: " + orjson.dumps(summary).decode())
    if args.json:
        print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
