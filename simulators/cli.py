"""``emfence simulate``: publish like bracelet and phone firmware, or ``--generate`` a fleet.

    emfence simulate --generate 300 -o fleet/ [--seed 1] [--counties 411303,411302]
    emfence simulate --broker mqtt://127.0.0.1:1883 --zones fleet/zones.geojson \\
        --subjects fleet/subjects.json --rate 200 --duration 60 --scenario mixed \\
        --truth truth.jsonl --secret-file site.secret [--config C.toml] \\
        [--alarms-out alarms.jsonl --alarms-username emfence-loadgen --alarms-password-file F]

See docs/simulator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from emfence.config import ConfigError, load_config

# Above this many devices, per-device connections cost more than they show: use a pool.
MAX_DEVICE_CONNECTIONS = 2000


def parse_broker(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` (or ``host:port``) -> (host, port); default port 1883."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"--broker {url!r}: expected mqtt://HOST[:PORT]")
    return parts.hostname, parts.port or 1883


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emfence simulate",
                                description=__doc__.split("\n\n")[0].replace("``", "`"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("generate a test fleet")
    g.add_argument("--generate", type=int, metavar="N",
                   help="write zones + subjects for N subjects")
    g.add_argument("-o", "--out", metavar="DIR", help="folder for zones.geojson and subjects.json")
    g.add_argument("--counties",
                   help="comma-separated adcodes (default: 411303 and its neighbours)")
    g.add_argument("--start", type=int, metavar="MS",
                   help="epoch ms the leave windows are placed around (default: now)")
    r = p.add_argument_group("publish")
    r.add_argument("--broker", action="append", metavar="URL",
                   help="mqtt://HOST:PORT; give it several times for the nodes of a "
                        "clustered broker: the first that answers is used, the next on loss")
    r.add_argument("--zones", help="zones GeoJSON (as for `emfence run`)")
    r.add_argument("--subjects", help="subjects JSON (as for `emfence run`)")
    r.add_argument("--rate", type=float, default=100.0,
                   help="messages per second, whole fleet (default 100)")
    r.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    r.add_argument("--scenario", default="normal",
                   help="normal | excursions | mixed | load | rules (issue #14's rules)")
    r.add_argument("--truth", help="write the ground truth (JSON lines) here")
    r.add_argument("--config", help="the engine's config TOML (offline thresholds, buffer)")
    r.add_argument("--time-scale", type=float, default=1.0,
                   help="simulated day runs this many times faster than the wall clock")
    r.add_argument("--events-per-kind", type=int, help="injected events of each kind")
    r.add_argument("--secret-file",
                   help="site secret: one connection per device, logged in as itself")
    r.add_argument("--username", help="pool account (e.g. emfence-loadgen): pooled connection k "
                   "logs in as USERNAME-k (emfence-loadgen-1, ...), one account per connection")
    r.add_argument("--password", help="pool account password (prefer --password-file)")
    r.add_argument("--password-file", help="file whose first line is the pool account's password")
    r.add_argument("--pool", type=int, default=8, help="connections in pool mode (default 8)")
    r.add_argument("--alarms-out", help="also record the alarm topics here (JSON lines + rx_ms)")
    r.add_argument("--alarms-username", help="account that may read alarms (default: --username)")
    r.add_argument("--alarms-password-file", help="its password file")
    r.add_argument("--linger", type=float, default=5.0,
                   help="keep recording alarms this long after the last publish (s)")
    r.add_argument("--shard", metavar="I/K",
                   help="publish only for subjects I, I+K, I+2K, ... (0-based): K processes "
                        "with --shard 0/K .. K-1/K and --rate R/K share one fleet")
    r.add_argument("--replay-out", metavar="FILE",
                   help="no broker: write the run as `emfence replay` input (JSON lines with "
                        "device_id and rx) starting at --start (default now)")
    r.add_argument("--quiet", action="store_true", help="no progress line")
    r.add_argument("--answer-commands", action="store_true",
                   help="answer the engine's commands like firmware (pool mode: the account "
                        "--username itself subscribes to every region's cmd topics)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p


def _generate(args) -> int:
    from simulators.generate import GenerateError, generate_fleet

    if not args.out:
        print("emfence simulate: --generate needs -o DIR", file=sys.stderr)
        return 2
    counties = [c.strip() for c in args.counties.split(",") if c.strip()] if args.counties else None
    start = args.start if args.start is not None else int(time.time() * 1000)
    try:
        fleet = generate_fleet(args.generate, seed=args.seed, counties=counties, start_ms=start)
    except GenerateError as exc:
        print(f"emfence simulate: {exc}", file=sys.stderr)
        return 1
    zp, sp = fleet.write(args.out)
    n_dev = sum(len(s["devices"]) for s in fleet.subjects["subjects"])
    n_pairs = sum(1 for s in fleet.subjects["subjects"] if "contacts" in s) // 2
    print(f"wrote {zp} ({len(fleet.zones['features'])} zones) and {sp} "
          f"({len(fleet.subjects['subjects'])} subjects, {n_dev} devices, "
          f"{len(fleet.subjects['protected'])} protected persons with a victim device, "
          f"listed contact pairs: {n_pairs})", file=sys.stderr)
    return 0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    i, _, k = text.partition("/")
    if not (i.isdigit() and k.isdigit()) or not 0 <= int(i) < int(k):
        raise ValueError(f"--shard {text!r}: expected I/K with 0 <= I < K")
    return int(i), int(k)


def _replay_out(args) -> int:
    """Plan the run and write it as replay input, deterministic for --seed and --start."""
    missing = [f"--{k}" for k in ("zones", "subjects") if not getattr(args, k)]
    if missing or args.broker:
        print("emfence simulate: --replay-out needs --zones and --subjects, and no --broker",
              file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        start = args.start if args.start is not None else int(time.time() * 1000)
        sim = load_simulation(args.zones, args.subjects, rate=args.rate, duration_s=args.duration,
                              scenario=args.scenario, seed=args.seed, config=config,
                              time_scale=args.time_scale, events_per_kind=args.events_per_kind,
                              start_ms=start, shard=parse_shard(args.shard))
    except (ValueError, OSError) as exc:
        print(f"emfence simulate: {exc}", file=sys.stderr)
        return 1
    lines = sim.replay_lines()
    Path(args.replay_out).write_bytes(b"".join(line + b"\n" for line in lines))
    if args.truth:
        write_truth_header(args.truth, sim, {"mode": "replay"})
    for note in sim.skipped:
        print(f"emfence simulate: note: {note}", file=sys.stderr)
    print(f"wrote {len(lines)} lines to {args.replay_out} ({sim.total_slots} slots, "
          f"{len(sim.truth)} truth events)", file=sys.stderr)
    return 0


def load_simulation(zones_path, subjects_path, *, rate, duration_s, scenario, seed, config,
                    time_scale=1.0, events_per_kind=None, spoof_allowed=True, start_ms=None,
                    shard: tuple[int, int] | None = None):
    """Read the fleet files and plan a run starting at ``start_ms`` (default: in 2 s + the
    time planning takes is covered by ``Simulation.shift`` when publishing begins)."""
    from engine.registry import read_subjects_file
    from geofence import load_zones
    from simulators.movement import Fleet
    from simulators.scenario import Simulation

    zones = load_zones(str(zones_path))
    subjects, _ = read_subjects_file(subjects_path)  # a RegistryError is a ValueError
    if shard is not None:
        i, k = shard
        subjects = {**subjects, "subjects": subjects["subjects"][i::k]}
    fleet = Fleet.build(subjects, zones, protected=scenario == "rules")
    start = start_ms if start_ms is not None else int(time.time() * 1000) + 2000
    return Simulation(fleet, rate=rate, duration_s=duration_s, start_ms=start, config=config,
                      scenario=scenario, seed=seed, time_scale=time_scale,
                      events_per_kind=events_per_kind, spoof_allowed=spoof_allowed)


def write_truth_header(path, sim, extra: dict | None = None) -> None:
    head = {"what": "run", "start": sim.start_ms, "end": sim.end_ms, "scenario": sim.scenario,
            "seed": sim.seed, "devices": sim.n, "rate": sim.rate,
            "offline_after_s": {lvl: sim.config.rules.offline_after_s.for_level(lvl)
                                for lvl in ("strict", "ordinary", "lenient")},
            "skipped": sim.skipped, **(extra or {})}
    if sim.scenario == "rules":  # the thresholds its windows were placed with
        r = sim.config.rules
        head["rules"] = {"no_fix_after_s": {lvl: r.no_fix_after_s.for_level(lvl)
                                            for lvl in ("strict", "ordinary", "lenient")},
                         **{k: getattr(r, k) for k in (
                             "separation_m", "separation_window_s", "approach_m",
                             "proximity_m", "contact_m", "contact_min_s", "alarm_per")}}
    if sim.model.contacts_close:  # listed contacts normal movement may bring together
        head["contacts_close"] = [list(p) for p in sim.model.contacts_close]
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(head) + b"\n")
        fh.writelines(line + b"\n" for line in sim.truth_lines())


def append_truth_end(path, stats) -> None:
    end = {"what": "run_end", "end": stats.last_slot_ms, **stats.as_dict()}
    with open(path, "ab") as fh:
        fh.write(orjson.dumps(end) + b"\n")


async def run_publish(sim, host, port, *, credentials=None, username=None, password=None,
                      pool=8, truth=None, alarms_out=None, alarms_user=None,
                      alarms_password=None, linger_s=5.0, progress=True, stop=None,
                      on_sent=None, on_alarm=None, on_start=None, brokers=None):
    """Publish ``sim`` (and record alarms if asked); returns the :class:`PublishStats`.

    The ground truth is written once the schedule is final (``Publisher.run`` moves it
    later when set-up overran the planned start), so its windows are the times actually
    run; ``on_start(sim)`` is called then too. A refused login or an unreachable broker
    raises ``ingest.mqtt.BrokerConnectError`` before anything is published. ``brokers``:
    ``[(host, port), ...]`` of a clustered broker (pool mode moves to the next on loss).
    """
    from simulators.publisher import Publisher

    stop = stop or asyncio.Event()
    pub = Publisher(sim, host, port, credentials=credentials, username=username,
                    password=password, pool_size=pool, progress=progress, on_sent=on_sent,
                    brokers=brokers)
    watch_stop = asyncio.Event()
    watcher = None
    try:
        if alarms_out:
            watcher = await _start_watcher(host, port, watch_stop, alarms_user,
                                           alarms_password, alarms_out, on_alarm)
        await pub.connect()
    except BaseException:
        watch_stop.set()
        if watcher is not None:
            await asyncio.gather(watcher, return_exceptions=True)
        raise

    def started(sim) -> None:
        if truth:
            write_truth_header(truth, sim, {"mode": "per-device" if pub.per_device else "pool"})
        if on_start is not None:
            on_start(sim)

    try:
        stats = await pub.run(stop, on_start=started)
    finally:
        await pub.close()
    if truth:
        append_truth_end(truth, stats)
    if watcher is not None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=linger_s)
        except TimeoutError:
            pass
        watch_stop.set()
        await watcher
    return stats


async def _start_watcher(host, port, stop, username, password, out, on_alarm) -> asyncio.Task:
    """The alarm watcher as a task, once it is subscribed (its connection error raised)."""
    from simulators.watch import watch_alarms

    ready = asyncio.Event()
    watcher = asyncio.create_task(watch_alarms(host, port, stop=stop, username=username,
                                               password=password, out=out, ready=ready,
                                               on_event=on_alarm))
    waiting = asyncio.ensure_future(ready.wait())
    done, _ = await asyncio.wait({watcher, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if watcher in done:
        waiting.cancel()
        watcher.result()  # raises the connection error
    return watcher


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.generate is not None:
        return _generate(args)
    if args.replay_out:
        return _replay_out(args)
    missing = [f"--{k}" for k in ("broker", "zones", "subjects") if not getattr(args, k)]
    if missing:
        print(f"emfence simulate: {', '.join(missing)} required (or --generate N -o DIR)",
              file=sys.stderr)
        return 2
    try:
        brokers = [parse_broker(url) for url in args.broker]
        config = load_config(args.config)
    except (ValueError, ConfigError) as exc:
        print(f"emfence simulate: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) and not isinstance(exc, ConfigError) else 1
    try:
        logins = _logins(args)
        sim = load_simulation(args.zones, args.subjects, rate=args.rate,
                              duration_s=args.duration, scenario=args.scenario, seed=args.seed,
                              config=config, time_scale=args.time_scale,
                              events_per_kind=args.events_per_kind,
                              spoof_allowed=logins.per_device, shard=parse_shard(args.shard))
    except (ValueError, OSError) as exc:
        print(f"emfence simulate: {exc}", file=sys.stderr)
        return 1
    if logins.per_device and sim.n > MAX_DEVICE_CONNECTIONS:
        print(f"emfence simulate: {sim.n} devices is more than {MAX_DEVICE_CONNECTIONS} "
              "connections; use a pool account (--username emfence-loadgen) for load runs",
              file=sys.stderr)
        return 2
    for note in sim.skipped:
        print(f"emfence simulate: note: {note}", file=sys.stderr)
    if args.answer_commands and (logins.per_device or not args.username or (
            args.alarms_out and logins.alarms_user == args.username)):
        print("emfence simulate: --answer-commands needs a pool account (--username "
              "emfence-loadgen) that is not also the alarm reader (give --alarms-username "
              "emfence-console)", file=sys.stderr)
        return 2
    return _publish(args, sim, brokers, logins)


@dataclass
class _Logins:
    """Who the simulator logs in as: one account per device (from the site secret), or
    the pool account; and the alarm reader."""

    secret: bytes | None
    password: str | None
    alarms_user: str | None
    alarms_password: str | None
    per_device: bool


def _logins(args) -> _Logins:
    """The passwords the options name (raises ValueError / OSError naming the file)."""
    from ingest.passwords import read_password_file, read_secret

    password = args.password
    if args.password_file:
        password = read_password_file(args.password_file, "pool account")
    secret = read_secret(args.secret_file) if args.secret_file else None
    alarms_password = password
    if args.alarms_password_file:
        alarms_password = read_password_file(args.alarms_password_file, "alarm reader")
    return _Logins(secret, password, args.alarms_username or args.username, alarms_password,
                   per_device=secret is not None and not args.username)


def _publish(args, sim, brokers: list[tuple[str, int]], logins: _Logins) -> int:
    """Publish the planned run; exit 0, 1 (messages failed, broker unreachable) or
    ``EXIT_LOGIN_REFUSED`` (a login refused: one line naming it and the fix)."""
    from ingest.mqtt import EXIT_LOGIN_REFUSED, BrokerConnectError

    credentials = None
    if logins.per_device:
        from ingest.passwords import device_password

        ids, secret = sim.fleet.device_ids, logins.secret
        credentials = lambda d: (ids[d], device_password(secret, ids[d]))
    # A load generator leaves the cores to the engine: one numba thread is plenty for the
    # coordinate transforms of a publish tick.
    import numba
    numba.set_num_threads(1)
    # Connection failures are reported here, in one line; aiomqtt and paho would add a
    # warning per connection.
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        host, port = brokers[0]
        answering = None
        if args.answer_commands:  # simulators.responder: like firmware, on its own login
            from simulators.responder import run_responder
            answering = asyncio.create_task(run_responder(
                host, port, sim, username=args.username, password=logins.password, stop=stop))
        stats = await run_publish(sim, host, port, brokers=brokers, credentials=credentials,
                                  username=args.username, password=logins.password,
                                  pool=args.pool, truth=args.truth, alarms_out=args.alarms_out,
                                  alarms_user=logins.alarms_user,
                                  alarms_password=logins.alarms_password,
                                  linger_s=args.linger, progress=not args.quiet, stop=stop)
        if answering is not None:
            stop.set()
            await answering
        print(orjson.dumps(stats.as_dict()).decode(), file=sys.stderr)
        return 0 if stats.failed == 0 else 1

    try:
        return asyncio.run(go())
    except BrokerConnectError as exc:
        print(f"emfence simulate: {exc}", file=sys.stderr)
        return EXIT_LOGIN_REFUSED if exc.fatal else 1
    except (ConnectionError, OSError) as exc:
        print(f"emfence simulate: {exc}", file=sys.stderr)
        return 1
