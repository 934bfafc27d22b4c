"""The command line of `emfence run`: the parser, loading what the service needs
(:func:`build_service_args`: files, store, broker settings, the engine restored from its
checkpoint) and :func:`main`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from alarms.store import StoreError
from emfence.config import Config, ConfigError, load_config
from emfence.run.checkpoint_file import load_chain, read_covered
from emfence.run.model import ModelSource
from emfence.run.options import Options, redact, split_digests, wall_ms
from emfence.run.service import Service
from ingest.brokers import add_broker_arguments
from ingest.passwords import engine_account, service_role, worker_name_problem

log = logging.getLogger("emfence.run")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emfence run",
        description="The live engine: subscribe to device fixes and statuses over MQTT, run "
                    "the rules, store alarms and publish them. docs/operations.md explains "
                    "deployment; docs/wire-protocol.md the device contract.")
    p.add_argument("--zones", help="zones GeoJSON (with --subjects; give neither to take "
                   "zones and subjects from the register in --store)")
    p.add_argument("--subjects", help="subjects JSON (with --zones; give neither to take "
                   "zones and subjects from the register in --store, applying its changes "
                   "live)")
    p.add_argument("--store", required=True,
                   help="alarm store: sqlite:///path/alarms.db or postgresql://...")
    p.add_argument("--regions", help="comma-separated region codes this worker handles "
                   "(default: every region)")
    p.add_argument("--name", default="engine-1",
                   help="worker name: the health topic, the worker's broker account and "
                        "client id emfence-NAME (one persistent session per name; never run "
                        "two processes with one name) and the key of the engine state in the "
                        "store")
    add_broker_arguments(p, username_help="broker login: this worker's own account "
                         "emfence-NAME (the session's client id is the login)")
    p.add_argument("--checkpoint", help="keep the engine state in this file instead of the "
                   "store (default: the store, as the row of --name); restored at start, "
                   "written every ingest.checkpoint_interval_s and at shutdown")
    p.add_argument("--config", help="configuration TOML (docs/configuration.md)")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="also serve the command-centre console here (with /healthz, "
                        "/readyz and /metrics)")
    p.add_argument("--metrics-http", metavar="HOST:PORT",
                   help="serve only /healthz, /readyz and /metrics here (HOST:PORT or PORT "
                        "on 127.0.0.1): for a worker without a console")
    p.add_argument("--core", choices=["numba", "shapely"], default="numba",
                   help="rule core: numba (production) or shapely (a slow reference, for "
                        "benchmarks only; no checkpoints, no reload)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


async def _amain(service_args: dict) -> int:
    service = Service(**service_args)
    return await service.run()


def _check_account(name: str, username: str | None) -> None:
    """Refuse a login that cannot run a worker; warn about one that can, but shared."""
    if username is None:
        return  # an anonymous broker: the client id is emfence-NAME
    role = service_role(username)
    if role in ("console", "loadgen"):
        raise ValueError(f"--username {username}: the {role} account may not read fixes; "
                         f"log in as this worker's own account {engine_account(name)}")
    if username != engine_account(name):
        log.warning("--username %s with --name %s: the session's client id is the login %s "
                    "(a broker with use_username_as_clientid insists), so two workers sharing "
                    "it would take over each other's session; give each worker its own "
                    "account %s (emfence mqtt-passwords --engine %s=FILE)", username, name,
                    username, engine_account(name), name)


def build_service_args(args: argparse.Namespace, *, group_lease: bool = False) -> dict:
    """Load everything `emfence run` needs; raises ValueError subclasses naming the input.

    ``group_lease``: take the lease of the worker group ``--name`` before loading the
    engine's state, waiting for it as a standby if another worker holds it
    (:mod:`emfence.run.lease`; :class:`~emfence.run.lease.StandbyStopped` when a signal
    ends the wait)."""
    from alarms.roster import resolver_for
    from alarms.store import open_store
    from emfence.run.notify import notification_planner
    from ingest.brokers import brokers_from_args
    from ingest.mqtt import parse_regions

    config = load_config(args.config)
    brokers = brokers_from_args(args)  # one per --broker, in order
    broker = brokers[0]
    regions = parse_regions(args.regions)
    problem = worker_name_problem(args.name)
    if problem:
        raise ValueError(f"--name {problem}")
    _check_account(args.name, broker.username)
    if args.http and not args.http.rpartition(":")[2].isdigit():
        raise ValueError(f"--http {args.http!r}: expected HOST:PORT")
    if args.metrics_http:
        from emfence.run.ops_http import parse_listen

        parse_listen(args.metrics_http)
    from_register = _model_from_register(args)
    source = None if from_register else ModelSource.files(args.zones, args.subjects)
    zones, registry = source.load() if source else (None, None)
    # e-mail / SMS go to the people the duty roster names at each level of the ladder
    store = open_store(args.store, notification_planner=notification_planner(
        config, resolver_for(config.register.timezone)))
    lease = None
    try:
        if from_register:
            source, seq, taken_ms, (zones, registry) = _register_model(store, args.store)
        if regions is not None and registry.device_ids:
            missing = sorted(set(regions) - set(registry.regions))
            if missing:
                log.warning("--regions %s: no subject registered there", ",".join(missing))
        lease = _take_lease(args, config, store, zones, registry) if group_lease else None
        engine, restored, covered, opts = _restore_engine(args, config, zones, registry, store)
    except BaseException:
        if lease is not None:  # a standby need not wait for the expiry
            with contextlib.suppress(Exception):
                lease.release()
        store.close_store()
        raise
    opts.zones_path, opts.subjects_path = args.zones or "", args.subjects or ""
    opts.store_url, opts.source = args.store, source
    if from_register:
        opts.register_seq, opts.register_taken_ms = seq, taken_ms
    opts.regions, opts.http, opts.metrics_http = regions, args.http, args.metrics_http
    return {"broker": brokers, "options": opts, "config": config, "zones": zones,
            "registry": registry, "engine": engine, "store": store, "restored": restored,
            "covered": covered, "lease": lease}


def _take_lease(args: argparse.Namespace, config: Config, store, zones, registry):
    """The worker group's lease, held: at once, or after waiting for it as a standby
    (which compiles the rule kernels meanwhile, so a takeover starts warm)."""
    from emfence.run.lease import Lease, StandbyStopped

    lease = Lease(store, group=args.name, ttl_s=config.ha.lease_ttl_s)
    listen = [where for where in (args.http, args.metrics_http) if where]
    warm_up = None if args.core != "numba" else lambda: _warm_kernels(zones, registry, config)
    if not asyncio.run(lease.wait(listen, warm_up)):
        raise StandbyStopped
    return lease


def _warm_kernels(zones, registry, config: Config) -> None:
    """Compile the rule kernels (or load them from numba's cache) on a throwaway engine."""
    from contract import RecordBatch
    from engine import Engine

    engine = Engine(zones, registry, config)
    engine.process(RecordBatch.empty())
    engine.sweep(-(2**62))  # a moment long past: nothing is due


def _model_from_register(args: argparse.Namespace) -> bool:
    """True with neither --zones nor --subjects (the register in --store); both given:
    the files; only one: a usage error naming the missing one."""
    if args.zones is None and args.subjects is None:
        return True
    for given, missing in (("--zones", "subjects"), ("--subjects", "zones")):
        if getattr(args, missing) is None:
            raise ValueError(f"--{missing} is missing: {given} needs --{missing} too (or give "
                             "neither to take zones and subjects from the register in --store)")
    return False


def _register_model(store, url: str):
    """``(source, change sequence, taken at (wall clock, ms), (zones, registry))`` from
    the register in ``store``; the sequence and the time are read first, so a change made
    during the snapshot is applied later."""
    from emfence.run.register_watch import ModelLoadFailed

    source = ModelSource.register(store)
    taken_ms = wall_ms()
    seq = source.change_seq()
    try:
        model = source.load()
    except StoreError:
        raise
    except Exception as exc:  # a register the engine cannot compile: say so, once
        raise ModelLoadFailed(f"the register in {redact(url)} does not compile: {exc}") from exc
    return source, seq, taken_ms, model


def _restore_engine(args: argparse.Namespace, config: Config, zones, registry, store):
    """The engine, continuing the worker's last checkpoint if there is one, and where its
    state is kept from now on: ``(engine, restored, covered digests, Options)``.

    Without ``--checkpoint`` the state lives in the store, in the row of this worker's
    ``--name``. With ``--checkpoint FILE`` the file wins: it is restored if it exists, and
    the store's row (if any) is used only while the file does not exist yet, then deleted
    once the file holds a checkpoint.
    """
    from engine import Engine
    from engine.checkpoint_delta import chain_arrays

    opts = Options(zones_path="", subjects_path="", store_url="", name=args.name,
                   checkpoint=args.checkpoint)
    if args.core == "shapely":
        from engine.shapely_core import ShapelyEngine

        if args.checkpoint:
            raise ValueError("--core shapely keeps no checkpoints: drop --checkpoint")
        log.warning("--core shapely keeps no rule state: a crash or restart forgets open "
                    "episodes (benchmarks only)")
        opts.state_in = "none"
        return ShapelyEngine(zones, registry, config), False, set(), opts
    if args.checkpoint and Path(args.checkpoint).exists():
        opts.state_in = "file"
        opts.drop_store_checkpoint = store.load_checkpoint(args.name) is not None
        arrays, identity = load_chain(Path(args.checkpoint))  # the file and its deltas
        engine = Engine.restore_bytes(arrays, zones, registry, config, where=args.checkpoint)
        return engine, True, read_covered(Path(args.checkpoint), identity), opts
    opts.state_in = "file" if args.checkpoint else "store"
    row = store.load_checkpoint_chain(args.name)
    if row is None:
        return Engine(zones, registry, config), False, set(), opts
    state, deltas, digests, _written_at = row
    where = f"the store's checkpoint of worker {args.name!r}"
    engine = Engine.restore_bytes(chain_arrays(state, deltas, where) if deltas else state,
                                  zones, registry, config, where=where)
    opts.drop_store_checkpoint = bool(args.checkpoint)
    return engine, True, split_digests(digests), opts


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mqtt").setLevel(logging.WARNING)
    from emfence.run.lease import StandbyStopped

    try:
        service_args = build_service_args(args, group_lease=True)
    except StandbyStopped:
        log.info("stopped while waiting as a standby")
        return 0
    except (ValueError, ConfigError, OSError, StoreError) as exc:
        print(f"emfence run: {exc}", file=sys.stderr)
        return 1
    store, lease = service_args["store"], service_args["lease"]
    try:
        return asyncio.run(_amain(service_args))
    except Exception:  # an ExceptionGroup from the task group: a bug, not bad input
        log.critical("engine stopped on an unexpected error; restart it (messages not yet "
                     "acknowledged wait in the broker, undelivered alarms in the outbox)",
                     exc_info=True)
        return 1
    finally:
        with contextlib.suppress(Exception):
            if lease is not None and lease.release():  # a standby need not wait for expiry
                log.info("released the lease of worker group %s (epoch %d)", args.name,
                         lease.epoch)
        with contextlib.suppress(Exception):
            store.close_store()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
