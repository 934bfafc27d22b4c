"""The SMS channel's outbox killed with SIGKILL while deliveries are in flight, then
restarted, on SQLite and PostgreSQL: every planned message reaches the gateway exactly
once per delivery id (the people channels share the webhook's outbox guarantees)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from alarms import open_store
from alarms.notify import Recipient
from alarms.notify_people import people_planner
from tests.alarms.alarms_helpers import raised
from tests.alarms.notify_servers import SmsGateway

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_764_008_040_000
PEOPLE = [Recipient(f"P-{i}", f"值班员{i}", phone=f"1380000000{i}") for i in range(3)]


def _driver(store_url: str, url: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.alarms.notify_driver", store_url,
                             url], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "delivering"
    return proc


def _until(done, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_kill_9_mid_delivery_loses_and_doubles_nothing(store_url):
    planner = people_planner(lambda cur, ev, level: PEOPLE, ["sms"])
    store = open_store(store_url, notification_planner=planner)
    gw = SmsGateway(fail_first=2, hold_after=6)
    procs = []
    try:
        store.record_events([raised(f"A-{i}", at=T0 + i) for i in range(5)], T0)
        want = 5 * len(PEOPLE)
        procs.append(_driver(store_url, gw.url))
        _until(lambda: gw.held > 0 and store.notification_counts()["sent"] >= 6, 60,
               "the first deliveries never went through")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        assert sum(gw.delivered.values()) == 6
        gw.release.set()
        procs.append(_driver(store_url, gw.url))
        _until(lambda: store.notification_counts()["sent"] == want, 60,
               f"sent {store.notification_counts()}")
        time.sleep(1.0)  # nothing more comes
        assert len(gw.delivered) == want and set(gw.delivered.values()) == {1}
        assert sorted(s["mobile"] for s in gw.sent) == sorted(
            p.phone for p in PEOPLE for _ in range(5))
        counts = store.notification_counts()
        assert counts["pending"] == 0 and counts["summarized"] == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        store.close()
        gw.close()
