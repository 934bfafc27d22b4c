"""Durability faults of `emfence run` (real mosquitto with the shipped config, the engine
as a real subprocess, real SQLite and PostgreSQL):

- kill -9 of an engine started with only ``--store`` (no ``--checkpoint``): the open
  episode continues after the restart (its rule state lives in the store);
- a full disk under the checkpoint and the SQLite store: an outage, not a crash;
- the engine's PostgreSQL connections terminated during traffic.

Each checks against a known truth that no alarm is lost or doubled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
import uuid
from pathlib import Path

import orjson
import pytest
from ingest_fleet import (
    CONSOLE_PW,
    MONITOR_USER,
    REGION_A,
    SECRET,
    EngineProcess,
    Fleet,
    fix,
    now_ms,
)
from ingest_mqtt_helpers import PahoClient

from alarms.store import open_store
from ingest.passwords import device_password

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

FAST = """
[ingest]
batch_max_ms = 10
health_interval_s = 0.5
checkpoint_interval_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1
[alarms]
outbox_retry_s = 1
"""



def store_url(kind: str, tmp_path: Path, request) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'alarms.db'}"
    return request.getfixturevalue("pg_url")


class Health:
    """The engine's retained health messages, read through a second account with the
    console's rights (``wait_processed`` reads through the console account itself, and
    one account holds one connection)."""

    def __init__(self, broker):
        self.reader = PahoClient(broker.port, MONITOR_USER, CONSOLE_PW)
        self.reader.subscribe("emfence/v1/engine/+/health")

    def wait(self, cond, what: str, timeout_s: float = 180.0) -> dict:
        # A guard against a hang, not a speed requirement.
        deadline = time.monotonic() + timeout_s
        h: dict = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                h = orjson.loads(self.reader.get(timeout=1.0)[1])
                if h.get("status") == "online" and cond(h):
                    return h
        raise AssertionError(f"health never showed {what}; last: {h}")

    def close(self) -> None:
        self.reader.close()


def events_of(url: str) -> list[dict]:
    store = open_store(url)
    try:
        events, seq = [], 0
        while batch := store.events_since(seq, limit=1000):
            events += batch
            seq = batch[-1]["seq"]
        return events
    finally:
        store.close_store()


def wait_events(url: str, cond, what: str, timeout_s: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = events_of(url)
        if cond(events):
            return events
        time.sleep(0.2)
    raise AssertionError(f"the store never held {what}: {events_of(url)}")


# --- 1. kill -9 with only --store ----------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_kill_9_with_only_store_continues_the_open_episode(tmp_path, mosquitto_factory,
                                                           request, kind):
    """The issue's scenario: outbound raised, kill -9, restart, a fix back inside the
    county clears the alarm with the same alarm_id; nothing doubled."""
    fleet = Fleet(tmp_path, devices_a=2, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    url = store_url(kind, tmp_path, request)
    engine = EngineProcess(tmp_path, fleet, broker, store=url, checkpoint=False, config=FAST)
    device = fleet.ids(REGION_A)[0]
    topic = f"emfence/v1/{REGION_A}/{device}/fix"
    dev = PahoClient(broker.port, device, device_password(SECRET, device))
    health = Health(broker)
    try:
        engine.start().wait_log("connected to")
        t0 = now_ms() - 10_000
        sent = 0
        for k, p in enumerate([fleet.home, fleet.abroad, fleet.abroad, fleet.abroad]):
            dev.publish(topic, orjson.dumps(fix(t0 + 1000 * k, p, seq=k)))
            sent += 1
        events = wait_events(url, lambda ev: any(e["type"] == "outbound" for e in ev),
                             "the outbound raise")
        raised = [e for e in events if e["type"] == "outbound"]
        assert [e["event"] for e in raised] == ["raised"]
        alarm_id = raised[0]["alarm_id"]
        # Everything received is processed, and the rule state is durable somewhere (a
        # crash may only lose what that state does not hold; the broker sends the rest).
        health.wait(lambda h: h["counters"].get("messages", 0) >= sent
                    and h["unacknowledged"] == 0 and h["counters"].get("checkpoints", 0) >= 1,
                    "every message processed and a checkpoint written")
        engine.kill9()

        mark = len(engine.log())
        engine.start().wait_log("connected to", after=mark, timeout_s=120)
        assert "state restored from checkpoint" in engine.log()[mark:]
        dev.publish(topic, orjson.dumps(fix(t0 + 10_000, fleet.home, seq=10)))
        events = wait_events(url, lambda ev: any(e["event"] == "cleared" for e in ev),
                             "the outbound cleared")
        outbound = [(e["alarm_id"], e["event"]) for e in events if e["type"] == "outbound"]
        assert outbound == [(alarm_id, "raised"), (alarm_id, "cleared")]
        assert engine.stop() == 0, engine.log()[-3000:]
        store = open_store(url)
        try:
            alarms = store.list_alarms()
            assert [(a["alarm_id"], a["type"], a["state"]) for a in alarms] == [
                (alarm_id, "outbound", "cleared")]
            assert store.pending(10) == []
            # the engine's state is the store's row of this worker, not a file
            assert store.load_checkpoint("worker-1") is not None
        finally:
            store.close_store()
        assert not list(tmp_path.glob("*.ckpt*"))
    finally:
        dev.close()
        health.close()
        engine.close()


# --- 2. a full disk under the checkpoint and the SQLite store --------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted for the test (tests run as root here), unmounted after.

    Where it cannot be mounted the test is skipped, except in CI (CI=true), where that
    is a failure: the full-disk behaviour must be tested for real somewhere.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(disk)],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        reason = f"cannot mount a tmpfs at {disk}: {r.stderr.strip() or r.returncode}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem is full (ENOSPC), to the last block; returns it."""
    filler = disk / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 512):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("full", ["store", "checkpoint"])
def test_full_disk_is_an_outage_not_a_crash(tmp_path, mosquitto_factory, small_disk, full):
    """A disk that fills up mid-stream under the SQLite store (both files; the engine's
    state in it) or under the ``--checkpoint`` file (the store elsewhere): the engine
    keeps running, holds acknowledgements and says so in its health and log; once space
    returns every fix is processed and stored once, every alarm is exactly the
    reference's, and nothing is left unacknowledged."""
    from test_ingest_faults import CONFIG, Publisher, check_outcome, scenario, wait_processed

    fleet = Fleet(tmp_path, devices_a=30, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    devices = fleet.ids(REGION_A)
    messages = scenario(fleet, devices, steps=60, t0=now_ms() - 60_000)
    if full == "store":
        store, extra = f"sqlite:///{small_disk / 'alarms.db'}", []
        failing = {"alarm store"}  # alarm events, track rows and the state: one outage
    else:
        store = f"sqlite:///{tmp_path / 'alarms.db'}"
        extra = ["--checkpoint", str(small_disk / "engine.ckpt")]
        failing = {"checkpoint file"}
    engine = EngineProcess(tmp_path, fleet, broker, store=store, checkpoint=False,
                           config=CONFIG, extra=extra)
    health = Health(broker)
    try:
        engine.start().wait_log("connected to")
        pub = Publisher(broker.port, messages, per_step=len(messages) // 60)
        pub.start()
        health.wait(lambda h: h["counters"].get("checkpoints", 0) >= 2, "checkpoints written")
        filler = fill(small_disk)
        during = health.wait(lambda h: h["outages"], "an outage")
        assert {o["what"] for o in during["outages"]} <= failing
        assert all(o["since"] and o["reason"] for o in during["outages"])
        assert all(set(o["held_back"]) == {"alarm_events", "track_rows", "unacknowledged"}
                   for o in during["outages"])
        # held, not crashed: it goes on saying so while the disk stays full
        held = health.wait(lambda h: h["outages"] and h["at"] >= during["at"] + 2000,
                           "the outage going on")
        assert engine.proc.poll() is None
        filler.unlink()
        after = health.wait(lambda h: not h["outages"], "the outage over")
        assert after["counters"]["checkpoints"] > held["counters"]["checkpoints"]
        log_text = engine.log()
        assert "an outage" in log_text and "works again after an outage of" in log_text
        assert "Traceback" not in log_text
        pub.wait_acked()
        wait_processed(engine, broker, sum(1 for t, _ in messages if t.endswith("/fix")))
        check_outcome(fleet, engine, broker, messages, devices)
        # Nothing was left unacknowledged in the engine's session.
        mark = len(engine.log())
        engine.start().wait_log("backlog drained", after=mark, timeout_s=120)
        assert "backlog drained: 0 messages" in engine.log()[mark:]
        assert engine.stop() == 0
    finally:
        health.close()
        engine.close()


# --- 3. the engine's PostgreSQL connections dropped during traffic ---------------------


def test_dropped_postgresql_connections_lose_and_double_nothing(tmp_path, mosquitto_factory,
                                                                pg_url):
    """Every backend of the engine's database is terminated (pg_terminate_backend) again
    and again while fixes stream in: alarm events, track rows and the checkpoint in the
    store are written anyway, none of them twice, and nothing is left unacknowledged."""
    import threading

    import psycopg
    from test_ingest_faults import CONFIG, Publisher, check_outcome, scenario, wait_processed

    fleet = Fleet(tmp_path, devices_a=30, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    devices = fleet.ids(REGION_A)
    messages = scenario(fleet, devices, steps=60, t0=now_ms() - 60_000)
    engine = EngineProcess(tmp_path, fleet, broker, store=pg_url, checkpoint=False,
                           config=CONFIG)
    db = pg_url.rpartition("/")[2]
    stop = threading.Event()
    terminated: list[int] = []

    def terminator() -> None:
        with psycopg.connect(pg_url.rpartition("/")[0] + "/postgres", autocommit=True) as admin:
            while not stop.wait(0.7):
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (db,)).fetchall()
                terminated.append(sum(1 for r in rows if r[0]))

    health = Health(broker)
    killer = threading.Thread(target=terminator, daemon=True)
    try:
        engine.start().wait_log("connected to")
        pub = Publisher(broker.port, messages, per_step=len(messages) // 60)
        pub.start()
        killer.start()
        pub.wait_acked()
        wait_processed(engine, broker, sum(1 for t, _ in messages if t.endswith("/fix")))
        stop.set()
        killer.join(30)
        assert sum(terminated) >= 10, terminated  # the faults really happened
        assert "store connection was lost" in engine.log() or "outage" in engine.log()
        check_outcome(fleet, engine, broker, messages, devices)
        mark = len(engine.log())
        engine.start().wait_log("backlog drained", after=mark, timeout_s=120)
        assert "backlog drained: 0 messages" in engine.log()[mark:]
        assert "state restored from checkpoint" in engine.log()[mark:]
        assert engine.stop() == 0
    finally:
        stop.set()
        health.close()
        engine.close()


# --- where the state is kept at start ----------------------------------------------


def _engine_with_open_outbound(fleet: Fleet):
    import numpy as np

    from engine import Engine, load_registry
    from geofence import compile_zones, load_zones

    zones = compile_zones(load_zones(fleet.zones_path))
    engine = Engine(zones, load_registry(fleet.subjects_path, zones))
    d = engine.registry.device_index(fleet.ids(REGION_A)[0])
    t = now_ms()
    lon, lat = fleet.abroad
    raised = engine.process_fixes(np.array([d, d], np.int32), [t, t + 1000], [lat, lat],
                                  [lon, lon], [10.0, 10.0], [0, 0], [t, t + 1000])
    assert [e["type"] for e in raised] == ["outbound"]
    return engine, raised[0]["alarm_id"]


def _service_args(fleet: Fleet, url: str, *extra: str) -> dict:
    from emfence.run.cli import build_parser, build_service_args

    args = build_parser().parse_args(["--zones", str(fleet.zones_path), "--subjects",
                                      str(fleet.subjects_path), "--store", url, *extra])
    return build_service_args(args)


def test_start_restores_the_store_row_and_a_checkpoint_file_wins(tmp_path):
    from engine import Engine
    from engine.state import checkpoint_bytes

    fleet = Fleet(tmp_path, devices_a=2, devices_b=1)
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    engine, alarm_id = _engine_with_open_outbound(fleet)
    store = open_store(url)
    store.save_checkpoint("engine-1", checkpoint_bytes(engine.snapshot()), b"x" * 16, 1)
    store.close_store()

    # only --store: the worker's row, its digests with it
    got = _service_args(fleet, url)
    got["store"].close_store()
    assert got["restored"] and got["covered"] == {b"x" * 16}
    assert got["options"].state_in == "store"
    assert [a["alarm_id"] for a in got["engine"].open_alarms()] == [alarm_id]
    # another worker name has no row: empty state
    got = _service_args(fleet, url, "--name", "engine-2")
    got["store"].close_store()
    assert not got["restored"] and got["engine"].open_alarms() == []

    # --checkpoint FILE not there yet: the row carries the state over into the file
    ckpt = tmp_path / "w.ckpt"
    got = _service_args(fleet, url, "--checkpoint", str(ckpt))
    got["store"].close_store()
    assert got["restored"] and got["options"].state_in == "file"
    assert got["options"].drop_store_checkpoint
    assert [a["alarm_id"] for a in got["engine"].open_alarms()] == [alarm_id]

    # the file exists: it wins over the row
    Engine(engine.zones, engine.registry).checkpoint(ckpt)
    got = _service_args(fleet, url, "--checkpoint", str(ckpt))
    got["store"].close_store()
    assert got["restored"] and got["engine"].open_alarms() == []
    assert got["options"].drop_store_checkpoint


def test_a_broken_store_checkpoint_is_a_one_line_error(tmp_path):
    import sys

    fleet = Fleet(tmp_path, devices_a=2, devices_b=1)
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    store = open_store(url)
    store.save_checkpoint("engine-1", b"PK\x03\x04 torn", b"", 1)
    store.close_store()
    r = subprocess.run([sys.executable, "-m", "emfence", "run", "--broker", "mqtt://127.0.0.1:9",
                        "--zones", str(fleet.zones_path), "--subjects", str(fleet.subjects_path),
                        "--store", url], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("emfence run: the store's checkpoint of worker 'engine-1': "
                               "cannot read checkpoint"), lines


def test_batches_reach_the_processor_in_the_order_they_were_taken(tmp_path):
    """While the work queue is full (a stalled acknowledgement path holds the processor),
    a flush whose put is woken must not be overtaken by a flush that runs before it
    resumes (the receiver, still taking messages): a device's fixes would be processed
    out of order."""
    import asyncio

    from emfence.run.batches import Batch
    from emfence.run.service import Service

    fleet = Fleet(tmp_path, devices_a=2, devices_b=1)
    args = _service_args(fleet, f"sqlite:///{tmp_path / 'alarms.db'}")

    def batch(tag: str) -> Batch:
        b = Batch()
        b.device.append(tag)
        b.messages = 1
        return b

    async def scenario() -> list[str]:
        svc = Service(**args)
        while not svc.work.full():
            svc.work.put_nowait(("checkpoint", None))
        svc.batch = batch("first")
        first = asyncio.create_task(svc._flush())  # takes "first", waits for a slot
        await asyncio.sleep(0)
        svc.batch = batch("second")
        while not svc.work.empty():  # the processor takes everything...
            svc.work.get_nowait()
        await svc._flush()  # ...and the receiver flushes before "first" resumes
        await first
        order = []
        while not svc.work.empty():
            _kind, b = svc.work.get_nowait()
            order.append(b.device[0])
        return order

    try:
        assert asyncio.run(scenario()) == ["first", "second"]
    finally:
        args["store"].close_store()
