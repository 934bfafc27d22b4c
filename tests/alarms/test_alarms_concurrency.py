"""Several store instances on one database, and a writer killed mid-stream.

Two engine workers share one PostgreSQL in a scaled deployment; these tests run two
stores (separate connections, separate threads or processes) against one database.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from alarms_helpers import cleared, raised, table_count

from alarms import open_store

MIN = 60_000
ROOT = Path(__file__).resolve().parents[2]


def test_escalation_happens_exactly_once_with_two_workers_racing(store_url):
    n = 300
    setup = open_store(store_url)
    # alarms recorded over 30 minutes, one every 6 s
    for i in range(0, n, 50):
        setup.record_events([raised(f"A-{j:03d}", at=j * 6_000) for j in range(i, i + 50)],
                            now_ms=i * 6_000)
    workers = [open_store(store_url), open_store(store_url)]
    got: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(k):
        try:
            barrier.wait()
            # both step through the same clock, so every step is a race
            for now in range(5 * MIN, 5 * MIN + n * 6_000 + 1, 3_000):
                got[k] += [e["alarm_id"] for e in workers[k].escalate_due(now, 5 * MIN)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert set(got[0]).isdisjoint(got[1])
        assert sorted(got[0] + got[1]) == [f"A-{j:03d}" for j in range(n)]
        escalated = [e for e in setup.events_since(0, limit=10_000) if e["event"] == "escalated"]
        assert len(escalated) == n and len({e["alarm_id"] for e in escalated}) == n
        assert table_count(setup, "alarm_actions") == n
        # every alarm escalated at the first clock step at which it was due: recorded_at
        # is a multiple of the 3 s step, so exactly recorded_at + 5 min
        for e in escalated:
            recorded = (int(e["alarm_id"][2:]) // 50) * 50 * 6_000
            assert e["data"]["at"] == recorded + 5 * MIN, e["alarm_id"]
    finally:
        for s in (*workers, setup):
            s.close()


def test_the_feed_never_skips_an_event_while_two_workers_write(store_url):
    """A reader tailing events_since(last_seq) must see every event that commits, even
    when two writers commit concurrently (seq order must equal commit order)."""
    writers = [open_store(store_url), open_store(store_url)]
    reader = open_store(store_url)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def write(k):
        try:
            for i in range(150):
                a = raised(f"W{k}-{i}", at=i)
                writers[k].record_events([a, cleared(a, at=i + 1)], now_ms=i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def read():
        last = 0
        while True:
            done = stop.is_set()
            batch = reader.events_since(last, limit=50)
            seen.extend(e["seq"] for e in batch)
            if batch:
                last = batch[-1]["seq"]
            elif done:
                return

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    tail = threading.Thread(target=read)
    tail.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    tail.join()
    try:
        assert not errors, errors
        everything = [e["seq"] for e in reader.events_since(0, limit=10_000)]
        assert len(everything) == 600
        assert seen == everything  # nothing skipped, nothing out of order
    finally:
        for s in (*writers, reader):
            s.close()


_WRITER = textwrap.dedent("""
    import sys
    from alarms import open_store
    store = open_store(sys.argv[1])
    i = 0
    while True:
        base = {"alarm_id": f"K-{i}", "type": "outbound", "subject_id": "S-1",
                "device_id": "BR-1", "zone_id": "Z", "region": "330723", "late": False}
        store.record_events([{"event": "raised", **base, "at": i, "lat": 29.0, "lon": 120.0},
                             {"event": "cleared", **base, "at": i + 1}], now_ms=i)
        store.record_fixes([("BR-1", "S-1", "330723", i, 29.0, 120.0, 5.0, "gps", i)] * 1)
        i += 1
""")


def test_a_writer_killed_mid_stream_leaves_only_whole_batches(store_url, tmp_path):
    """kill -9 a process recording [raised, cleared] pairs: after restart every alarm has
    both its events (a pair is one transaction), nothing is half-written, and the store
    keeps working."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script), store_url], env=env,
                            stderr=subprocess.PIPE)
    probe = open_store(store_url)
    try:
        deadline = time.monotonic() + 120
        while table_count(probe, "alarms") < 200:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        probe.close()

    store = open_store(store_url)  # recovery (SQLite: WAL replay) happens here
    try:
        if store.dialect == "sqlite":
            assert store._db.conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        alarms = store.list_alarms(limit=1_000_000)
        events = store.events_since(0, limit=1_000_000)
        assert len(alarms) >= 200
        assert {a["state"] for a in alarms} == {"cleared"}  # never a raise without its clear
        by_alarm: dict[str, list[str]] = {}
        for e in events:
            by_alarm.setdefault(e["alarm_id"], []).append(e["event"])
        assert set(by_alarm) == {a["alarm_id"] for a in alarms}
        assert all(v == ["raised", "cleared"] for v in by_alarm.values())
        ids = sorted(int(a["alarm_id"][2:]) for a in alarms)
        assert ids == list(range(len(ids)))  # committed in order, no hole
        # the store works after the crash: new events, and a replay of the last batch
        last = alarms[0]
        seqs = store.record_events([raised("AFTER", at=1)], now_ms=2)
        assert seqs[0] > events[-1]["seq"]
        replay = {k: last[k] for k in ("alarm_id", "type", "subject_id", "device_id",
                                       "zone_id", "region")}
        store.record_events([{"event": "raised", **replay, "at": last["raised_at"],
                              "late": False}], now_ms=3)
        assert len(store.events_since(0, limit=1_000_000)) == len(events) + 1
    finally:
        store.close()


def test_workers_starting_together_create_the_schema_once(store_url):
    """Several workers open a brand-new database at the same moment."""
    from alarms.schema import SCHEMA_VERSION

    barrier = threading.Barrier(4)
    opened: list = []
    errors: list[BaseException] = []

    def start():
        try:
            barrier.wait()
            opened.append(open_store(store_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert len(opened) == 4
        with opened[0]._db.tx("t", write=False) as cur:
            rows = cur.execute("SELECT version FROM schema_version ORDER BY version").all()
        assert [r["version"] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
        # and they all work on the one schema
        for k, s in enumerate(opened):
            s.record_events([raised(f"W-{k}", at=k)], now_ms=k)
        assert len(opened[0].list_alarms()) == 4
    finally:
        for s in opened:
            s.close()


def test_sqlite_track_writes_never_hold_up_alarm_writes(tmp_path):
    """SQLite has one writer per file: the location history lives in a file of its own,
    so an alarm is stored while a (long) track write holds that file's writer lock."""
    from alarms.store import tracks_path

    path = tmp_path / "alarms.db"
    store = open_store(f"sqlite:///{path}")
    assert tracks_path(path) == tmp_path / "alarms.tracks.db"
    holding, release = threading.Event(), threading.Event()

    def hold_tracks():
        with store._tracks_db.tx("a long track write") as cur:
            cur.execute("INSERT INTO tracks (device_id, subject_id, region, ts, lat, lon, acc, "
                        "src, received_at) VALUES ('BR-1', 'S-1', '330723', 1, 29.1, 120.2, "
                        "10.0, 'gps', 2)")
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_tracks)
    holder.start()
    try:
        assert holding.wait(30)
        # would wait for the holder (and fail after the busy timeout) if they shared a file
        store.record_events([raised("G-1", at=1_000)], now_ms=1_002)
        assert table_count(store, "events") == 1
        assert table_count(store, "tracks") == 0  # not committed yet
    finally:
        release.set()
        holder.join(30)
    assert table_count(store, "tracks") == 1
    # and each kind of row is in its own file
    with sqlite3.connect(path) as main, sqlite3.connect(tracks_path(path)) as tracks:
        assert main.execute("SELECT COUNT(*) FROM tracks").fetchone()[0] == 0
        assert tracks.execute("SELECT COUNT(*) FROM tracks").fetchone()[0] == 1
        assert tracks.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    store.close_store()
