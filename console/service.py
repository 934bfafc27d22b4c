"""The console on its own: ``emfence console`` (also ``python -m console``).

With several engine workers sharing one PostgreSQL store (one per group of regions),
the command room's console is best a process of its own next to them rather than
inside one worker::

    emfence console --store postgresql://emfence@db/emfence --http 0.0.0.0:8443 \\
        --zones zones.geojson --subjects subjects.json

``--zones`` and ``--subjects`` are optional (without them the map shows devices and
tracks but no zone outlines); SIGHUP re-reads them. SIGINT/SIGTERM stop it cleanly.
Put it behind a TLS-terminating proxy. On a loopback address the session cookie has no
``Secure`` flag (as with ``emfence run --http``: a browser on the same machine speaks
plain HTTP to it); ``--insecure-cookies`` drops it elsewhere too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

log = logging.getLogger("emfence.console")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emfence console",
                                description="Serve the command-centre console on its own.")
    p.add_argument("--store", required=True, help="alarm store: sqlite:///path or postgresql://...")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where to listen (default %(default)s)")
    p.add_argument("--zones", help="zones GeoJSON, for drawing (with --subjects)")
    p.add_argument("--subjects", help="subjects JSON, to place zones in regions (with --zones)")
    p.add_argument("--config", help="configuration TOML (docs/configuration.md)")
    p.add_argument("--insecure-cookies", action="store_true",
                   help="session cookie without the Secure flag on a non-loopback address too "
                        "(plain HTTP; never on a network)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def secure_cookies(host: str, insecure: bool) -> bool:
    """Whether the session cookie carries ``Secure``: not on a loopback address (a browser
    on this machine speaks plain HTTP to it; the same rule as ``emfence run --http``), nor
    with ``--insecure-cookies``."""
    return not insecure and host not in LOOPBACK_HOSTS


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http {text!r} must be HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_model(zones_path: str | None, subjects_path: str | None) -> tuple[Any, Any]:
    """Compiled zones and the registry from files, or (None, None) without them."""
    if zones_path is None:
        return None, None
    from engine import load_registry
    from geofence import compile_zones, load_zones

    zones = compile_zones(load_zones(zones_path))
    registry = load_registry(subjects_path, zones) if subjects_path else None
    return zones, registry


async def _run(args: argparse.Namespace) -> int:
    from alarms.store import open_store
    from console.app import create_app, serve
    from emfence.config import load_config

    host, port = _host_port(args.http)
    config = load_config(args.config)
    zones, registry = load_model(args.zones, args.subjects)
    store = open_store(args.store)
    try:
        app = create_app(store=store, config=config, zones=zones, registry=registry,
                         secure_cookies=secure_cookies(host, args.insecure_cookies))
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(
            serve(app, host, port, ready=lambda p: log.info("console listening on %s:%d",
                                                            host, p)),
            name="console-http")

        def reload() -> None:
            try:
                app.state.console.set_model(*load_model(args.zones, args.subjects))
                log.info("zones and subjects reloaded")
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the console
                log.error("reload failed, keeping the current zones and subjects: %s", exc)

        loop.add_signal_handler(signal.SIGHUP, reload)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        store.close_store()
    log.info("console stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the console; exit 0 when stopped by a signal, 1 for a problem to fix, 2 usage."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.subjects and not args.zones:
        print("emfence console: --subjects needs --zones", file=sys.stderr)
        return 2
    from alarms.store import StoreError

    try:
        return asyncio.run(_run(args))
    except (ValueError, OSError, StoreError) as exc:
        # bad --http, zone/subject/config files (ValueError subclasses name the file),
        # an unreachable store, or an address already in use; one line, though a driver's
        # message (PostgreSQL's "Is the server running...") has several
        print(f"emfence console: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
