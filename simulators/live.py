"""The whole line on one machine: a private mosquitto, ``emfence run``, the simulator.

Used by ``make demo`` (:mod:`emfence.demo`), ``benchmarks/e2e.py`` and the end-to-end
test. Everything lives in one run folder: the generated fleet, the site secret and the
service passwords (mode 0600), the broker's data, the SQLite alarm store, the engine's
log and checkpoint, the ground truth and the alarms as the console account saw them.

The broker runs the project's own config and ACL (``ingest.mosquitto``): devices log in
as themselves with HMAC-derived passwords (``ingest.passwords``), the engine as its own
worker account ``emfence-sim-engine``, the alarm watcher as ``emfence-console``, pooled
load connections as ``emfence-loadgen-1`` ... (the broker binds a session to its login,
so every connection has an account of its own).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import orjson

from contract.topics import health_topic

ENGINE_NAME = "sim-engine"
ENGINE_USER = f"emfence-{ENGINE_NAME}"  # the worker's own account (ingest.passwords.engine_account)
# The benchmark's bare subscriber reads fixes like an engine, in a session of its own.
BARE_USER = "emfence-bench-bare"
# Pooled load-generator connections the broker has accounts for (emfence-loadgen-1 ... -N).
POOL_ACCOUNTS = 32


def _private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


@dataclass
class Rig:
    """A running broker + engine in ``run_dir``; see :func:`start_rig`."""

    run_dir: Path
    zones: Path
    subjects: Path
    config_path: Path
    secret: bytes
    broker: object
    engine: subprocess.Popen | None = None
    store_url: str = ""
    passwords: dict[str, str] = field(default_factory=dict)
    engine_log: Path | None = None
    # Wall clock (epoch ms) when the current engine process was launched: its health
    # messages carry a later started_at, an earlier engine's retained ones do not.
    engine_launched_ms: int = 0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.broker.port

    def credentials(self, device_ids: list[str]):
        from ingest.passwords import device_password

        return lambda d: (device_ids[d], device_password(self.secret, device_ids[d]))

    def engine_alive(self) -> bool:
        return self.engine is not None and self.engine.poll() is None

    def stop_engine(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (finish the batch, checkpoint, flush the outbox), then wait."""
        if self.engine is None:
            return None
        if self.engine.poll() is None:
            self.engine.send_signal(signal.SIGTERM)
            try:
                self.engine.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.engine.kill()
                self.engine.wait()
        return self.engine.returncode

    def engine_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.engine_log.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    def close(self) -> None:
        try:
            self.stop_engine()
        finally:
            self.broker.close()


def prepare_run_dir(run_dir: str | Path, *, subjects_n: int, seed: int, counties: list[str] | None,
                    config_toml: str) -> tuple[Path, Path, Path, bytes, dict[str, str]]:
    """Generate the fleet, the secret, the service passwords and the config in ``run_dir``."""
    from simulators.generate import generate_fleet

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    fleet = generate_fleet(subjects_n, seed=seed, counties=counties,
                           start_ms=int(time.time() * 1000))
    zones, subjects = fleet.write(run)
    secret = secrets.token_urlsafe(32).encode()
    _private(run / "site.secret", secret.decode() + "\n")
    passwords = {u: secrets.token_urlsafe(18)
                 for u in (ENGINE_USER, BARE_USER, "emfence-console", "emfence-loadgen")}
    for user, pw in passwords.items():
        _private(run / f"{user}.password", pw + "\n")
    # the pool's connections share the load generator's password
    passwords |= {f"emfence-loadgen-{k}": passwords["emfence-loadgen"]
                  for k in range(1, POOL_ACCOUNTS + 1)}
    config_path = run / "config.toml"
    config_path.write_text(config_toml, encoding="utf-8")
    return zones, subjects, config_path, secret, passwords


def start_rig(run_dir: str | Path, zones: Path, subjects: Path, config_path: Path, secret: bytes,
              passwords: dict[str, str], *, core_args: list[str] | None = None,
              start_engine: bool = True, ready_timeout_s: float = 240.0) -> Rig:
    """Start mosquitto (the project's config, every device's derived password) and
    ``python -m emfence run`` with a SQLite store; wait until the engine says it is online."""
    from ingest.mosquitto import Mosquitto
    from ingest.passwords import device_password, devices_of_subjects

    run = Path(run_dir)
    devices = devices_of_subjects(orjson.loads(Path(subjects).read_bytes()), str(subjects))
    users = {d: device_password(secret, d) for d, _, _ in devices} | passwords
    broker_dir = run / "broker"
    if broker_dir.exists():
        import shutil
        shutil.rmtree(broker_dir)
    broker = Mosquitto(broker_dir, passwords=users).start()
    rig = Rig(run, Path(zones), Path(subjects), Path(config_path), secret, broker,
              passwords=passwords)
    if start_engine:
        try:
            start_engine_process(rig, core_args=core_args, ready_timeout_s=ready_timeout_s)
        except BaseException:
            rig.close()
            raise
    return rig


def start_engine_process(rig: Rig, *, core_args: list[str] | None = None,
                         ready_timeout_s: float = 240.0, fresh_store: bool = True,
                         checkpoint: bool = True, store_url: str | None = None) -> None:
    """Start ``python -m emfence run`` for ``rig`` (a fresh SQLite store unless
    ``fresh_store=False``, or the store ``store_url``; with a checkpoint file unless
    ``checkpoint=False``) and wait until its health message says online."""
    run = rig.run_dir
    db = run / "alarms.db"
    if fresh_store:
        from alarms.store import tracks_path

        for f in (db, tracks_path(db)):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{f}{suffix}").unlink(missing_ok=True)
        (run / "engine.checkpoint").unlink(missing_ok=True)
    rig.store_url = store_url or f"sqlite:///{db.resolve()}"
    rig.engine_log = run / "engine.log"
    cmd = [sys.executable, "-m", "emfence", "run", "--broker", rig.broker.url,
           "--zones", str(rig.zones), "--subjects", str(rig.subjects), "--store", rig.store_url,
           "--name", ENGINE_NAME, "--username", ENGINE_USER,
           "--password-file", str(run / f"{ENGINE_USER}.password"),
           "--config", str(rig.config_path),
           *(["--checkpoint", str(run / "engine.checkpoint")] if checkpoint else []),
           *(core_args or [])]
    rig.engine_launched_ms = int(time.time() * 1000)
    with open(rig.engine_log, "ab") as log:
        rig.engine = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    asyncio.run(wait_engine_online(rig, ready_timeout_s))


async def engine_health(rig: Rig, timeout_s: float = 5.0) -> dict | None:
    """The engine's retained health document (read as the console account)."""
    from ingest.mqtt import connect_error, fail_on_early_close

    topic = health_topic(ENGINE_NAME)
    c = aiomqtt.Client(rig.host, rig.port, username="emfence-console",
                       password=rig.passwords["emfence-console"])
    fail_on_early_close(c)
    try:
        await c.__aenter__()
    except aiomqtt.MqttError as exc:  # a BrokerConnectError (an OSError) says why
        raise connect_error(exc, host=rig.host, port=rig.port, username="emfence-console",
                            tls=False) from None
    try:
        await c.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout_s):
            async for msg in c.messages:
                return orjson.loads(msg.payload)
    except TimeoutError:
        return None
    finally:
        await c.__aexit__(None, None, None)
    return None


async def wait_engine_online(rig: Rig, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not rig.engine_alive():
            raise RuntimeError(f"emfence run exited with {rig.engine.returncode}:\n"
                               f"{rig.engine_log_tail()}")
        health = await engine_health(rig, timeout_s=1.0)
        if (health and health.get("status") == "online"
                and health.get("started_at", 0) >= rig.engine_launched_ms):
            return health
        await asyncio.sleep(0.3)
    raise RuntimeError(f"emfence run was not online within {timeout_s} s:\n{rig.engine_log_tail()}")
