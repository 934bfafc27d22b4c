"""Closing the store while other threads use it.

``close_store()`` must not close a connection under a statement running on another
thread (for SQLite that can crash the interpreter): it refuses new transactions, waits
for the running ones, and only then closes. Every call after the close is a clean
``StoreError``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from alarms_helpers import raised

from alarms import StoreError, open_store

ROOT = Path(__file__).resolve().parents[2]
# Rounds of open, read on four threads, close (a store that closed connections under
# running reads crashed the interpreter in such a run).
ROUNDS = 40


def _hold_a_transaction(store, holding: threading.Event, release: threading.Event,
                        out: dict) -> None:
    """Run a read transaction that stays open until ``release`` is set."""
    try:
        with store._db.tx("a long read", write=False) as cur:
            out["conn"] = store._db.conn()
            out["before"] = cur.execute("SELECT COUNT(*) FROM alarms").scalar()
            holding.set()
            release.wait(60)
            out["after"] = cur.execute("SELECT COUNT(*) FROM alarms").scalar()
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        out["error"] = exc


def _wait_until_closing(store) -> None:
    """Until a new call is refused (the close has begun)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            store.get_alarm("nothing")
        except StoreError as exc:
            assert "store is closed" in str(exc)
            return
        assert time.monotonic() < deadline, "the close never began"
        time.sleep(0.01)


def test_close_waits_for_a_running_transaction(store_url):
    store = open_store(store_url)
    store.record_events([raised("A-1", at=1_000)], now_ms=1_001)
    holding, release, out = threading.Event(), threading.Event(), {}
    reader = threading.Thread(target=_hold_a_transaction, args=(store, holding, release, out))
    reader.start()
    assert holding.wait(30)
    closer = threading.Thread(target=store.close_store)
    closer.start()
    try:
        _wait_until_closing(store)
        time.sleep(0.2)
        assert closer.is_alive(), "close_store returned while a transaction was running"
    finally:
        release.set()
        reader.join(30)
        closer.join(30)
    assert not closer.is_alive()
    assert "error" not in out, out.get("error")
    assert out["before"] == out["after"] == 1  # the running read finished on its connection
    with pytest.raises(StoreError, match="list alarms: store is closed"):
        store.list_alarms()
    with pytest.raises(StoreError, match="store is closed"):
        store.record_events([raised("A-2", at=2_000)], now_ms=2_001)


def test_close_gives_up_waiting_and_the_late_transaction_closes_its_connection(
        store_url, caplog):
    store = open_store(store_url)
    store._db.close_timeout_s = 0.2
    holding, release, out = threading.Event(), threading.Event(), {}
    reader = threading.Thread(target=_hold_a_transaction, args=(store, holding, release, out))
    reader.start()
    try:
        assert holding.wait(30)
        with caplog.at_level(logging.WARNING, logger="emfence.alarms.store"):
            t = time.monotonic()
            store.close_store()
            waited_s = time.monotonic() - t
        assert waited_s >= 0.15  # it did wait, for its timeout
        assert "1 thread(s) still inside a transaction" in caplog.text
    finally:
        release.set()
        reader.join(30)
    assert "error" not in out, out.get("error")
    assert out["after"] == 0  # its connection was left open for it
    conn = out["conn"]
    if store.dialect == "sqlite":  # ... and closed when its transaction ended
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    else:
        assert conn.closed
    with pytest.raises(StoreError, match="store is closed"):
        store.last_seq()


_CLOSE_UNDER_LOAD = textwrap.dedent("""
    import random, sys, threading, time
    from alarms import StoreError, open_store

    url, rounds = sys.argv[1], int(sys.argv[2])
    unexpected = []

    def read(store, started):
        started.release()
        try:
            while True:
                store.list_alarms(limit=50)
                store.get_alarm("A-3")
                store.events_since(0, limit=50)
                store.pending(50)
                store.track("BR-1", 0, 10**13)
        except StoreError as exc:
            if "store is closed" not in str(exc):
                unexpected.append(repr(exc))
        except BaseException as exc:
            unexpected.append(repr(exc))

    rng = random.Random(7)
    for r in range(rounds):
        store = open_store(url)
        if r == 0:
            base = {"type": "outbound", "subject_id": "S-1", "device_id": "BR-1",
                    "zone_id": "Z", "region": "330723", "late": False}
            store.record_events([{"event": "raised", "alarm_id": f"A-{i}", **base, "at": i}
                                 for i in range(50)], now_ms=100)
            store.record_fixes([("BR-1", "S-1", "330723", i, 29.0, 120.0, 5.0, "gps", i)
                                for i in range(200)])
        started = threading.Semaphore(0)
        threads = [threading.Thread(target=read, args=(store, started)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            started.acquire()
        time.sleep(rng.uniform(0, 0.01))
        store.close_store()
        for t in threads:
            t.join(60)
        try:
            store.list_alarms()
            unexpected.append("a read after close_store() succeeded")
        except StoreError as exc:
            if "store is closed" not in str(exc):
                unexpected.append(repr(exc))
    print("unexpected:", unexpected[:5], len(unexpected))
    sys.exit(1 if unexpected else 0)
""")


def test_closing_under_concurrent_reads_never_crashes(store_url, tmp_path):
    """Many rounds of four threads reading while the store is closed under them, in a
    process of its own so that a crash is a failed test and not a lost test run."""
    script = tmp_path / "close_under_load.py"
    script.write_text(_CLOSE_UNDER_LOAD)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script), store_url, str(ROUNDS)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert "unexpected: [] 0" in proc.stdout
