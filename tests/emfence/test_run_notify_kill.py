"""`emfence run` with `[notify.webhook]`, a real mosquitto, a real HTTP receiver, on
SQLite and PostgreSQL:
killed with SIGKILL while deliveries are in flight, then restarted: every raised and
cleared alarm event reaches the receiver exactly once per delivery id, signed."""

from __future__ import annotations

import time

import orjson
import pytest

from alarms.store import open_store
from ingest.passwords import LOADGEN_USER
from tests.alarms.notify_receiver import Receiver
from tests.ingest.ingest_fleet import (
    FAST_RECONNECT,
    LOADGEN_PW,
    REGION_A,
    EngineProcess,
    Fleet,
    fix,
    now_ms,
)
from tests.ingest.ingest_mqtt_helpers import PahoClient

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

SECRET = b"webhook-kill-test-secret"
DEVICES = 12


def _config(url: str, secret_file) -> str:
    return FAST_RECONNECT + f"""[notify.webhook]
url = "{url}"
secret_file = "{secret_file}"
timeout_s = 20
retry_min_s = 0.2
retry_max_s = 1
"""


def _until(done, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _sent(store_url: str) -> int:
    store = open_store(store_url)
    try:
        return store.notification_counts()["sent"]
    finally:
        store.close_store()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                               marks=pytest.mark.postgres)])
def test_kill_9_mid_delivery_loses_and_doubles_nothing(tmp_path, mosquitto_factory, request,
                                                       backend):
    store_url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    fleet = Fleet(tmp_path, devices_a=DEVICES, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    (tmp_path / "webhook.secret").write_bytes(SECRET + b"\n")
    rx = Receiver(SECRET, fail_first=3, hold_after=8)
    engine = EngineProcess(tmp_path, fleet, broker, store=store_url,
                           config=_config(rx.url, tmp_path / "webhook.secret"))
    pub = PahoClient(broker.port, LOADGEN_USER, LOADGEN_PW)
    try:
        engine.start().wait_log("connected to")
        t0 = now_ms()
        # each device: two fixes abroad (outbound raised), one at home (cleared)
        for k, place in enumerate((fleet.abroad, fleet.abroad, fleet.home)):
            for d in fleet.ids(REGION_A):
                pub.client.publish(f"emfence/v1/{REGION_A}/{d}/fix",
                                   orjson.dumps(fix(t0 + k * 1000, place)), qos=1)
        want = 2 * DEVICES
        _until(lambda: rx.held > 0 and _sent(engine.store_url) >= 8, 600,
               "the first deliveries never went through")
        engine.kill9()  # with requests in flight, held by the receiver
        assert sum(rx.delivered.values()) == 8
        rx.release.set()
        mark = len(engine.log())
        engine.start().wait_log("connected to", after=mark)
        _until(lambda: len(rx.delivered) >= want, 120, f"delivered {len(rx.delivered)}")
        time.sleep(1.0)  # nothing more comes
        assert engine.stop() == 0
        assert rx.bad_signatures == 0
        assert len(rx.delivered) == want and set(rx.delivered.values()) == {1}
        got = {(b["alarm_id"], b["event"]) for b in rx.bodies.values()}
        store = open_store(engine.store_url)
        try:
            events = store.events_since(0, limit=10_000)
            assert got == {(e["alarm_id"], e["event"]) for e in events
                           if e["event"] in ("raised", "cleared")}
            assert {e["type"] for e in events} == {"outbound"}
            counts = store.notification_counts()
            assert counts["sent"] == want and counts["pending"] == 0
        finally:
            store.close_store()
    finally:
        pub.close()
        engine.close()
        rx.close()
