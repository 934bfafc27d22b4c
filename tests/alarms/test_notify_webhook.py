"""The webhook channel against a real HTTP receiver (tests/alarms/notify_receiver.py), on
real SQLite and PostgreSQL: notifications are written with their events, delivered once
per delivery id, retried while the receiver fails or is down, and signed."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from alarms import StoreError, open_store
from alarms.notify import delivery_id, webhook_planner
from alarms.notify_outbox import WebhookOutbox, backoff_s
from emfence.config import WebhookConfig
from tests.alarms.alarms_helpers import cleared, raised, table_count
from tests.alarms.notify_receiver import Receiver

SECRET = b"s3cret-key"
T0 = 1_764_000_000_000


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "webhook.secret"
    p.write_bytes(b"  " + SECRET + b"\n")  # surrounding whitespace is stripped
    return str(p)


@pytest.fixture
def nstore(store_url):
    s = open_store(store_url, notification_planner=webhook_planner)
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(url: str, secret_file: str) -> WebhookConfig:
    return WebhookConfig(url=url, secret_file=secret_file, timeout_s=2.0,
                         retry_min_s=0.05, retry_max_s=0.2)


async def run_until(outbox: WebhookOutbox, done, timeout_s: float = 15.0,
                    settle_s: float = 0.5) -> None:
    """Run the loop until ``done()``, then ``settle_s`` longer (nothing more may come)."""
    task = asyncio.create_task(outbox.run())
    try:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(done):
            assert time.monotonic() < deadline, "not delivered in time"
            await asyncio.sleep(0.02)
        await asyncio.sleep(settle_s)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_rows_are_written_with_their_events_once(nstore):
    a = raised("A-1", at=T0)
    nstore.record_events([a, cleared(a, at=T0 + 5000)], T0 + 10)
    assert table_count(nstore, "notifications") == 2
    # the same events again (a replay after a restart): no second row
    nstore.record_events([a, cleared(a, at=T0 + 5000)], T0 + 20)
    assert table_count(nstore, "notifications") == 2
    b = raised("A-2", at=T0)
    nstore.record_events([b], T0)
    assert nstore.escalate_due(T0 + 400_000, 300_000) != []
    rows = nstore.alarm_notifications("A-2")
    assert [(r["event"], r["level"], r["state"]) for r in rows] == [
        ("raised", 1, "pending"), ("escalated", 2, "pending")]
    assert rows[0]["delivery_id"] == delivery_id("A-2", "raised", "webhook", "webhook")


def test_no_planner_no_rows(store):
    store.record_events([raised("A-1", at=T0)], T0)
    assert table_count(store, "notifications") == 0


def test_failing_receiver_gets_each_once(nstore, secret_file):
    rx = Receiver(SECRET, fail_first=3)
    try:
        events = [raised(f"A-{i}", at=T0 + i) for i in range(5)]
        nstore.record_events(events, T0)
        nstore.record_events([cleared(events[0], at=T0 + 99)], T0 + 100)
        outbox = WebhookOutbox(nstore, config(rx.url, secret_file))
        asyncio.run(run_until(outbox, lambda: nstore.notification_counts()["sent"] == 6))
        assert rx.bad_signatures == 0
        assert set(rx.delivered.values()) == {1}
        assert rx.requests == 6 + 3
        body = rx.bodies[delivery_id("A-0", "cleared", "webhook", "webhook")]
        assert {k: body[k] for k in ("event", "alarm_id", "type", "subject_id", "device_id",
                                     "at", "recipient", "level")} == {
            "event": "cleared", "alarm_id": "A-0", "type": "outbound", "subject_id": "S-1",
            "device_id": "BR-1", "at": T0 + 99, "recipient": "webhook", "level": 1}
        counts = nstore.notification_counts()
        assert counts["sent"] == 6 and counts["pending"] == 0
        assert outbox.counters["failed_attempts"] == 3
    finally:
        rx.close()


def test_receiver_down_then_up(nstore, secret_file):
    port = free_port()
    nstore.record_events([raised(f"A-{i}", at=T0 + i) for i in range(3)], T0)
    outbox = WebhookOutbox(nstore, config(f"http://127.0.0.1:{port}/hook", secret_file))
    holder: dict[str, Receiver] = {}

    async def scenario() -> None:
        task = asyncio.create_task(outbox.run())
        try:
            while outbox.counters["failed_attempts"] < 6:  # refused, retried
                await asyncio.sleep(0.02)
            assert nstore.notification_counts()["retrying"] == 3
            holder["rx"] = Receiver(SECRET, port=port)
            deadline = time.monotonic() + 15
            while (await asyncio.to_thread(nstore.notification_counts))["sent"] < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
        rx = holder["rx"]
        assert set(rx.delivered.values()) == {1} and len(rx.delivered) == 3
        assert rx.bad_signatures == 0
        assert nstore.notification_counts()["sent"] == 3
    finally:
        if "rx" in holder:
            holder["rx"].close()


def test_wrong_secret_is_not_delivered(nstore, secret_file, tmp_path):
    rx = Receiver(b"another key")
    try:
        nstore.record_events([raised("A-1", at=T0)], T0)
        outbox = WebhookOutbox(nstore, config(rx.url, secret_file))
        asyncio.run(run_until(outbox, lambda: rx.bad_signatures >= 2))
        assert rx.delivered == {}
        assert nstore.notification_counts()["pending"] == 1
    finally:
        rx.close()


def test_backoff_is_capped_and_jittered():
    for attempts in range(30):
        bound = min(300.0, 1.0 * 2 ** attempts)
        assert backoff_s(attempts, 1.0, 300.0, rand=lambda: 0.0) == bound / 2
        assert backoff_s(attempts, 1.0, 300.0, rand=lambda: 1.0) == bound


def test_a_raise_reaches_the_receiver_in_under_a_second(nstore, secret_file):
    """Recorded by another writer (no notify()): the loop finds it by itself."""
    rx = Receiver(SECRET)
    arrived: dict[str, float] = {}

    async def scenario() -> float:
        outbox = WebhookOutbox(nstore, config(rx.url, secret_file))
        task = asyncio.create_task(outbox.run())
        try:
            await asyncio.sleep(0.5)  # idle, sleeping between reads
            start = time.monotonic()
            await asyncio.to_thread(nstore.record_events, [raised("A-1", at=T0)], T0)
            while not rx.delivered:
                await asyncio.sleep(0.005)
            arrived["at"] = time.monotonic()
            return arrived["at"] - start
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        assert asyncio.run(asyncio.wait_for(scenario(), 10)) < 1.0
    finally:
        rx.close()


def test_a_version_5_database_gets_the_notifications_table(store_url, monkeypatch):
    from alarms import schema

    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:5])
        m.setattr(schema, "SCHEMA_VERSION", 5)
        old = open_store(store_url)
    try:
        old.record_events([raised("OLD-1", at=T0)], T0)
        with pytest.raises(StoreError, match="notifications"), \
                old._db.tx("t", write=False) as cur:
            cur.execute("SELECT COUNT(*) FROM notifications")
    finally:
        old.close()
    store = open_store(store_url, notification_planner=webhook_planner)
    try:
        assert store.schema_version() == schema.SCHEMA_VERSION  # 6 and later
        assert table_count(store, "notifications") == 0  # the past is not notified
        store.record_events([cleared(raised("OLD-1", at=T0), at=T0 + 5)], T0 + 10)
        assert [r["event"] for r in store.alarm_notifications("OLD-1")] == ["cleared"]
    finally:
        store.close()
