"""The outbox publisher and the escalation loop against a real mosquitto with the project's
config and ACL (the engine account publishes, the console account subscribes)."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import orjson
import pytest
from alarms_helpers import REGION_A, REGION_B, raised

from alarms import open_store
from alarms.publisher import OutboxPublisher, run_escalation, wall_clock_ms
from emfence.config import AlarmsConfig

pytestmark = pytest.mark.mqtt

WAIT_S = 20.0  # how long something that must happen may take on a busy shared machine
PASSWORDS = {"emfence-engine": "engine-pw", "emfence-console": "console-pw"}


@pytest.fixture
def broker(mosquitto_factory):
    return mosquitto_factory(passwords=PASSWORDS)


async def wait_until_delivered(store) -> None:
    """The console may get a message before the publisher has the PUBACK: wait for both."""
    async def empty():
        while await asyncio.to_thread(store.pending, 1):
            await asyncio.sleep(0.02)
    await asyncio.wait_for(empty(), WAIT_S)


async def until(predicate) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), WAIT_S)


@contextlib.asynccontextmanager
async def running(publisher: OutboxPublisher, client: aiomqtt.Client):
    """``publisher.run(client)`` as a task for the block, cancelled at its end."""
    task = asyncio.create_task(publisher.run(client))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def engine_client(broker) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, username="emfence-engine",
                          password=PASSWORDS["emfence-engine"], timeout=5)


class Subscriber:
    """The console's view of the alarm topics: every message, in arrival order."""

    def __init__(self, broker):
        self.broker = broker
        self.received: list[tuple[str, bytes]] = []
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    async def _run(self):
        async with aiomqtt.Client("127.0.0.1", self.broker.port, username="emfence-console",
                                  password=PASSWORDS["emfence-console"]) as client:
            await client.subscribe("emfence/v1/+/alarms/+", qos=1)
            self._ready.set()
            async for m in client.messages:
                self.received.append((str(m.topic), bytes(m.payload)))

    async def start(self) -> Subscriber:
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), WAIT_S)
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task

    async def wait_for(self, n: int) -> list[tuple[str, bytes]]:
        async def enough():
            while len(self.received) < n:
                if self._task.done():
                    self._task.result()  # surface the subscriber's error
                await asyncio.sleep(0.02)
        await asyncio.wait_for(enough(), WAIT_S)
        return self.received


async def test_flush_publishes_in_order_and_marks_delivered_on_puback(store, broker):
    evs = [raised(f"A-{i}", at=1_000 + i, region=(REGION_A, REGION_B)[i % 2],
                  type=("outbound", "exclusion", "tamper")[i % 3]) for i in range(40)]
    seqs = store.record_events(evs, now_ms=2_000)
    expected = [(f"emfence/v1/{e['region']}/alarms/{e['type']}", orjson.dumps(e)) for e in evs]
    sub = await Subscriber(broker).start()
    publisher = OutboxPublisher(store, batch_size=15, window=4, clock_ms=lambda: 7_777)
    try:
        async with engine_client(broker) as client:
            assert await publisher.flush(client) == 40
        assert await sub.wait_for(40) == expected  # exact bytes, in seq order
    finally:
        await sub.stop()
    assert store.pending(100) == []
    assert {e["seq"]: e["delivered_at"] for e in store.events_since(0)} == \
        {s: 7_777 for s in seqs}
    assert publisher.counters["published"] == 40 and publisher.counters["failed"] == 0
    assert publisher.counters["rounds"] == 3  # 15 + 15 + 10


async def test_a_dead_broker_marks_nothing_and_a_new_connection_resends(store, broker):
    sub = await Subscriber(broker).start()
    publisher = OutboxPublisher(store, publish_timeout_s=2.0, config=AlarmsConfig(
        outbox_retry_s=0.2))
    first = [raised(f"A-{i}", at=i) for i in range(10)]
    second = [raised(f"B-{i}", at=100 + i) for i in range(10)]
    try:
        async with engine_client(broker) as client:
            store.record_events(first, now_ms=1)
            assert await publisher.flush(client) == 10
            await sub.wait_for(10)
            broker.kill()  # SIGKILL: a crash, not a clean shutdown
            await sub.stop()
            store.record_events(second, now_ms=2)
            with pytest.raises(aiomqtt.MqttError):
                await publisher.flush(client)
    except aiomqtt.MqttError:
        pass  # leaving the dead connection's context may fail too; that is not under test
    pending = store.pending(100)
    assert [orjson.loads(p[2])["alarm_id"] for p in pending] == [e["alarm_id"] for e in second]
    assert publisher.counters["failed"] >= 1

    broker.start()  # same port and data directory
    sub2 = await Subscriber(broker).start()
    try:
        # a run starts with a resend
        async with engine_client(broker) as client, running(publisher, client):
            got = await sub2.wait_for(10)
            await wait_until_delivered(store)
    finally:
        await sub2.stop()
    # no gap: every event of the second batch reached the console after the restart
    assert [orjson.loads(p)["alarm_id"] for _, p in got] == [e["alarm_id"] for e in second]
    assert store.pending(100) == []
    received_ids = {orjson.loads(p)["alarm_id"] for _, p in sub.received + got}
    assert received_ids == {e["alarm_id"] for e in first + second}


async def test_run_publishes_on_notify_and_retries_without_it(store, broker):
    sub = await Subscriber(broker).start()
    publisher = OutboxPublisher(store, config=AlarmsConfig(outbox_retry_s=0.3))
    try:
        async with engine_client(broker) as client, running(publisher, client):
            await asyncio.to_thread(store.record_events, [raised("N-1", at=1)], 2)
            publisher.notify()
            await sub.wait_for(1)
            # recorded by someone who does not notify (another process, the console):
            # the periodic retry picks it up
            await asyncio.to_thread(store.record_events, [raised("N-2", at=3)], 4)
            await sub.wait_for(2)
            await wait_until_delivered(store)
    finally:
        await sub.stop()
    assert [orjson.loads(p)["alarm_id"] for _, p in sub.received] == ["N-1", "N-2"]
    assert store.pending(10) == []


def test_record_events_for_delivery_returns_the_outbox_rows_it_added(store):
    evs = [raised(f"D-{i}", at=10 + i, type=("outbound", "tamper")[i % 2]) for i in range(3)]
    rows = store.record_events_for_delivery(evs, now_ms=20)
    assert rows == [(seq, f"emfence/v1/{REGION_A}/alarms/{e['type']}", orjson.dumps(e))
                    for seq, e in zip(store.record_events(evs, now_ms=21), evs)]
    assert rows == store.pending(10)
    # a replay adds nothing to the outbox, so it hands nothing over; a new event does
    more = raised("D-3", at=13)
    again = store.record_events_for_delivery([*evs, more], now_ms=22)
    assert [orjson.loads(p)["alarm_id"] for _, _, p in again] == ["D-3"]
    assert again[0][0] > rows[-1][0]


async def test_offered_rows_are_published_at_once_without_reading_the_store(store, broker):
    # retry far away and no notify: only offer() can make these go out
    publisher = OutboxPublisher(store, config=AlarmsConfig(outbox_retry_s=600), window=4)
    sub = await Subscriber(broker).start()
    sent: list[bytes] = []
    try:
        async with engine_client(broker) as client, running(publisher, client):
            await until(lambda: publisher.counters["reads"] == 1)  # the start's read
            for batch in range(3):
                evs = [raised(f"O-{batch}-{i}", at=batch * 100 + i) for i in range(10)]
                rows = await asyncio.to_thread(store.record_events_for_delivery, evs, 1)
                publisher.offer(rows)
                sent += [p for _, _, p in rows]
            await sub.wait_for(30)
            await wait_until_delivered(store)
    finally:
        await sub.stop()
    assert [p for _, p in sub.received] == sent  # exact bytes, in order, once each
    assert publisher.counters["published"] == 30
    assert publisher.counters["reads"] == 1  # only the start's, which found nothing
    assert publisher.counters["rounds"] == 0


async def test_a_row_offered_after_a_read_sent_it_is_not_sent_again(store, broker):
    evs = [raised(f"R-{i}", at=i) for i in range(5)]
    rows = store.record_events_for_delivery(evs, now_ms=1)
    publisher = OutboxPublisher(store, config=AlarmsConfig(outbox_retry_s=600))
    sub = await Subscriber(broker).start()
    try:
        # its first read sends them
        async with engine_client(broker) as client, running(publisher, client):
            await sub.wait_for(5)
            await wait_until_delivered(store)
            publisher.offer(rows)  # late hand-over of the same rows
            extra = [raised("R-5", at=5)]
            publisher.offer(await asyncio.to_thread(store.record_events_for_delivery,
                                                    extra, 2))
            await sub.wait_for(6)
            await wait_until_delivered(store)
    finally:
        await sub.stop()
    # R-5 came after the repeated hand-over on the same connection: nothing else in between
    assert [orjson.loads(p)["alarm_id"] for _, p in sub.received] == [f"R-{i}" for i in range(6)]
    assert publisher.counters["published"] == 6


async def test_a_worker_publishes_only_its_regions(store, broker):
    store.record_events([raised("A", at=1, region=REGION_A), raised("B", at=1, region=REGION_B)],
                        now_ms=2)
    sub = await Subscriber(broker).start()
    try:
        async with engine_client(broker) as client:
            assert await OutboxPublisher(store, regions=[REGION_B]).flush(client) == 1
        await sub.wait_for(1)
    finally:
        await sub.stop()
    assert [t for t, _ in sub.received] == [f"emfence/v1/{REGION_B}/alarms/outbound"]
    assert [orjson.loads(p[2])["alarm_id"] for p in store.pending(10)] == ["A"]


async def test_escalation_loop_publishes_escalated_once(store, broker):
    now = 10_000_000
    store.record_events([raised("OLD", at=now - 700_000)], now_ms=now - 600_000)
    store.record_events([raised("FRESH", at=now - 1_000)], now_ms=now - 1_000)
    store.mark_delivered([s for s, _, _ in store.pending(10)], now_ms=now)
    config = AlarmsConfig(escalate_after_s=300, outbox_retry_s=60)  # only notify can wake it
    publisher = OutboxPublisher(store, config=config, clock_ms=lambda: now)
    counters: dict = {}
    sub = await Subscriber(broker).start()
    try:
        async with engine_client(broker) as client:
            pub_task = asyncio.create_task(publisher.run(client))
            esc_task = asyncio.create_task(run_escalation(
                store, config=config, publisher=publisher, interval_s=0.05,
                clock_ms=lambda: now, counters=counters))
            try:
                got = await sub.wait_for(1)
                await wait_until_delivered(store)
                await asyncio.sleep(0.5)  # several more escalation rounds: still one event
            finally:
                for t in (pub_task, esc_task):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
    finally:
        await sub.stop()
    assert len(sub.received) == 1
    topic, payload = got[0]
    assert topic == f"emfence/v1/{REGION_A}/alarms/outbound"
    ev = orjson.loads(payload)
    assert (ev["event"], ev["alarm_id"], ev["at"], ev["raised_at"]) == (
        "escalated", "OLD", now, now - 700_000)
    assert counters == {"escalated": 1, "store_errors": 0}
    assert store.get_alarm("OLD")["escalated_at"] == now
    assert store.get_alarm("FRESH")["escalated_at"] is None


def test_publisher_options_are_checked(store):
    with pytest.raises(ValueError, match="batch_size and window"):
        OutboxPublisher(store, window=0)
    with pytest.raises(ValueError, match="publish_timeout_s"):
        OutboxPublisher(store, publish_timeout_s=0)


@pytest.mark.postgres
async def test_both_loops_ride_out_a_database_outage(pg_url, broker):
    """PostgreSQL refuses connections for a while (and drops the open ones): the loops
    count the errors, keep running, and deliver what is recorded once it is back."""
    import psycopg
    from psycopg import sql

    from alarms import open_store

    base, _, name = pg_url.rpartition("/")
    store = open_store(pg_url)
    publisher = OutboxPublisher(store, config=AlarmsConfig(outbox_retry_s=0.1))
    esc_counters: dict = {}

    def outage(on: bool):
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("false" if on else "true")))
            if on:
                admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))

    sub = await Subscriber(broker).start()
    try:
        async with engine_client(broker) as client:
            pub_task = asyncio.create_task(publisher.run(client))
            esc_task = asyncio.create_task(run_escalation(
                store, config=AlarmsConfig(escalate_after_s=3600), publisher=publisher,
                interval_s=0.05, counters=esc_counters))
            try:
                # the escalation loop runs on the wall clock: record on it too
                await asyncio.to_thread(store.record_events, [raised("BEFORE", at=1)],
                                        wall_clock_ms())
                publisher.notify()
                await sub.wait_for(1)
                await asyncio.to_thread(outage, True)
                try:
                    await until(lambda: publisher.counters["store_errors"] >= 2
                                and esc_counters["store_errors"] >= 2)
                finally:
                    await asyncio.to_thread(outage, False)
                assert not pub_task.done() and not esc_task.done()
                await asyncio.to_thread(store.record_events, [raised("AFTER", at=3)],
                                        wall_clock_ms())
                publisher.notify()
                await sub.wait_for(2)
                await wait_until_delivered(store)
            finally:
                for t in (pub_task, esc_task):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
    finally:
        await sub.stop()
        store.close()
    assert [orjson.loads(p)["alarm_id"] for _, p in sub.received] == ["BEFORE", "AFTER"]
    assert esc_counters["escalated"] == 0


async def test_a_cancellation_arriving_as_the_publisher_wakes_is_not_lost(tmp_path, broker):
    """The connection's owner cancels run() when the connection is gone and then waits for
    it. A cancellation that lands in the same loop steps as a wake-up (an alarm offered,
    a notify) must still end the task; on Python 3.11 ``asyncio.wait_for`` returned the
    wake-up instead and the task went on looping, so the owner waited for ever.

    Every interleaving is tried: the cancellation comes 0, 1, 2, ... loop steps after the
    wake-up."""
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    # A retry far in the future: a task that swallowed its cancellation would not stop
    # on its own.
    publisher = OutboxPublisher(store, config=AlarmsConfig(outbox_retry_s=3600))
    tasks = []
    try:
        async with engine_client(broker) as client:
            for steps in range(8):
                reads = publisher.counters["reads"]
                task = asyncio.create_task(publisher.run(client))
                tasks.append(task)
                await until(lambda r=reads: publisher.counters["reads"] > r)
                for _ in range(5):  # let it settle into waiting for a wake-up
                    await asyncio.sleep(0)
                publisher.notify()
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                # (a guard against hanging the suite, not a speed requirement)
                done, _ = await asyncio.wait({task}, timeout=WAIT_S)
                assert task in done, (f"run() lost a cancellation that came {steps} loop "
                                      f"steps after a wake-up")
                assert task.cancelled()
    finally:
        for t in tasks:  # a task that lost one cancellation may still take another
            t.cancel()
        await asyncio.wait(tasks, timeout=WAIT_S)
        # A cancelled task's store read may still be running in its worker thread
        # (cancelling the task does not stop the thread): closing the store under it
        # crashed the interpreter once. Wait for those threads first.
        await asyncio.get_running_loop().shutdown_default_executor()
        store.close()
