"""Abuse and fault tests of the engine's MQTT transport (real mosquitto from the shipped
config and ACL, `emfence run` as a real subprocess, devices with their own passwords).

- A device publishing with QoS 0 (once, or a flood mixed with QoS 1 and QoS 2 traffic)
  must not get the engine disconnected: a QoS 0 message takes no acknowledgement.
- Repeated connection losses under traffic: the engine reconnects and processes every
  time, loses no fix and raises no false offline alarm.
- A broker that stays connected but falls silent: the watchdog says "stalled" and the
  engine exits non-zero instead of sitting there.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import signal
import socket
import threading
import time

import orjson
import pytest
from ingest_fleet import CONSOLE_PW, REGION_A, SECRET, EngineProcess, Fleet, fix, now_ms
from ingest_mqtt_helpers import PahoClient

from ingest.passwords import CONSOLE_USER, device_password

pytestmark = pytest.mark.mqtt

QUICK = """
[ingest]
batch_max_ms = 10
health_interval_s = 1
checkpoint_interval_s = 1
restart_grace_s = 2
reconnect_min_s = 0.2
reconnect_max_s = 1
"""
GUARD_S = 120.0  # against hanging the suite; never a speed requirement



def device_client(broker, device_id: str) -> PahoClient:
    return PahoClient(broker.port, device_id, device_password(SECRET, device_id))


class HealthReader:
    """The console's view of the engine's health topic: every document, in order."""

    def __init__(self, broker):
        self.client = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)
        self.client.subscribe("emfence/v1/engine/+/health")
        self.seen: list[dict] = []

    def until(self, done, what: str, timeout_s: float = GUARD_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                h = orjson.loads(self.client.get(timeout=1.0)[1])
            except queue.Empty:
                continue
            self.seen.append(h)
            if done(h):
                return h
        raise AssertionError(f"engine health never showed {what}; last: "
                             f"{self.seen[-1] if self.seen else None}")

    def fixes(self, n: int) -> dict:
        # (the retained document may be the last will or a previous process's)
        return self.until(lambda h: h.get("engine", {}).get("fixes", 0) >= n,
                          f"{n} fixes processed")

    def close(self) -> None:
        self.client.close()


def test_qos0_and_qos2_publishes_never_disconnect_the_engine(tmp_path, mosquitto_factory):
    """A QoS 0 flood from one device, QoS 1 from others, QoS 2 from one more: the engine
    stays connected, processes every fix, and acknowledges every QoS 1 and QoS 2 message
    (a restarted engine is sent nothing again)."""
    fleet = Fleet(tmp_path, devices_a=6, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    qos0, qos2, *qos1 = fleet.ids(REGION_A)
    engine = EngineProcess(tmp_path, fleet, broker, config=QUICK)
    health = HealthReader(broker)
    clients = {d: device_client(broker, d) for d in [qos0, qos2, *qos1]}
    try:
        engine.start().wait_log("connected to")
        t0 = now_ms() - 120_000
        infos = []
        n = 0
        # A single QoS 0 fix first: with a PUBACK for it (packet id 0) the broker drops
        # the engine at its first acknowledgement.
        clients[qos0].client.publish(f"emfence/v1/{REGION_A}/{qos0}/fix",
                                     orjson.dumps(fix(t0, fleet.home)), qos=0)
        n += 1
        engine.wait_log("backlog drained")
        for k in range(1, 601):
            time.sleep(0.005)  # spread over a few checkpoints, so acknowledgements interleave
            ts = t0 + k * 100
            for _ in range(3):  # the flood: three QoS 0 fixes for each QoS 1 round
                clients[qos0].client.publish(f"emfence/v1/{REGION_A}/{qos0}/fix",
                                             orjson.dumps(fix(ts, fleet.home)), qos=0)
                ts += 1
                n += 1
            if k % 10 == 0:
                for d in qos1:
                    infos.append(clients[d].client.publish(
                        f"emfence/v1/{REGION_A}/{d}/fix", orjson.dumps(fix(ts, fleet.home)),
                        qos=1))
                    n += 1
            if k % 30 == 0:
                infos.append(clients[qos2].client.publish(
                    f"emfence/v1/{REGION_A}/{qos2}/fix", orjson.dumps(fix(ts, fleet.home)),
                    qos=2))
                n += 1
        for info in infos:
            info.wait_for_publish(GUARD_S)
        h = health.fixes(n)
        assert h["engine"]["fixes"] == n and h["engine"]["duplicate_fixes"] == 0
        assert engine.stop() == 0, engine.log()[-3000:]
        log = engine.log()
        assert "broker connection lost" not in log, log[-3000:]
        assert "reconnected" not in log
        final = health.until(lambda h: h["status"] == "offline" and "counters" in h,
                             "a clean stop")
        assert final["counters"].get("disconnects", 0) == 0
        assert final["engine"]["fixes"] == n

        # Nothing was left unacknowledged: the broker sends the next start nothing.
        mark = len(engine.log())
        engine.start().wait_log("backlog drained: 0 messages", after=mark)
        assert engine.stop() == 0
    finally:
        for c in clients.values():
            c.close()
        health.close()
        engine.close()


async def test_the_engine_client_never_loses_a_cancellation():
    """The engine's client waits for CONNACK, SUBACK and PUBACK without
    ``asyncio.wait_for``, which on Python 3.11 drops a cancellation that arrives as the
    awaited packet does: the cancellation comes 0, 1, 2, ... loop steps after it."""
    import aiomqtt

    from ingest.brokers import BrokerSettings
    from ingest.mqtt import make_client

    client = make_client(BrokerSettings("127.0.0.1", 1), client_id="engine-x", will=None)
    assert "_wait_for" in vars(aiomqtt.Client)  # what is replaced is aiomqtt's own
    for steps in range(6):
        arrived = asyncio.Event()
        task = asyncio.create_task(client._wait_for(arrived.wait(), timeout=3600))
        for _ in range(3):
            await asyncio.sleep(0)
        arrived.set()
        for _ in range(steps):
            await asyncio.sleep(0)
        if not task.cancel():
            continue  # it had already returned: nothing to lose
        await asyncio.wait({task}, timeout=GUARD_S)
        assert task.cancelled(), f"a cancellation {steps} loop steps after the packet was lost"
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        await client._wait_for(asyncio.Event().wait(), timeout=0.01)


async def test_a_suback_for_a_subscribe_given_up_is_dropped_quietly(caplog):
    """A worker stopping while it subscribes gives up the subscribe; the broker's SUBACK
    then comes for a packet id nobody waits for, which aiomqtt logged with a traceback
    (CI: ``--http`` on a taken port, "no traceback for a user's mistake"). Dropped at
    debug level now; a SUBACK somebody waits for is answered as before."""
    import logging

    from ingest.brokers import BrokerSettings
    from ingest.mqtt import make_client

    client = make_client(BrokerSettings("127.0.0.1", 1), client_id="engine-x", will=None)
    assert "_pending_subscribes" in vars(client)  # what is looked at is aiomqtt's own
    with caplog.at_level(logging.DEBUG):
        client._client.on_subscribe(client._client, None, 7, [1], None)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "SUBACK 7 for a subscribe given up" in caplog.text
    waiting = asyncio.get_running_loop().create_future()
    client._pending_subscribes[8] = waiting
    client._client.on_subscribe(client._client, None, 8, [1], None)
    assert waiting.result() == [1]


class Cutter:
    """A TCP relay between the engine and the broker that can cut every connection
    through it at once: a real connection loss (the engine's socket sees EOF, the broker
    sees its client go), while the broker itself, and the session it keeps for the
    engine, stay up. :meth:`silence` holds back everything from the broker to the engine
    (a half-dead path: the engine can still send, the connection looks open)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._silent = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                outer = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                inner.close()
                continue
            with self._lock:
                self._pairs.append((inner, outer))
            for a, b, hold in ((inner, outer, False), (outer, inner, True)):
                threading.Thread(target=self._pump, args=(a, b, hold), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, hold: bool) -> None:
        try:
            while data := src.recv(65536):
                while hold and self._silent.is_set():
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def silence(self) -> None:
        self._silent.set()

    def speak(self) -> None:
        self._silent.clear()

    def cut(self) -> int:
        """Close every connection through the relay; return how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        return len(pairs)

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.mark.slow
def test_many_connection_losses_under_traffic_lose_nothing(tmp_path, mosquitto_factory):
    """The engine's connection is cut over and over while 30 devices report every 200 ms
    and alarms are raised and published. Every time it must reconnect and go on
    processing; in the end no fix is lost or doubled, the alarms are exactly those a
    reference engine derives from the same messages, none is a false offline alarm, and
    the outbox is empty (the known truth of test_ingest_faults)."""
    from test_ingest_faults import CONFIG, Publisher, check_outcome, scenario

    fleet = Fleet(tmp_path, devices_a=30, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    relay = Cutter(broker.port)
    devices = fleet.ids(REGION_A)
    steps = 90
    messages = scenario(fleet, devices, steps=steps, t0=now_ms() - 60_000)
    config = CONFIG.replace("[ingest]\n", "[ingest]\nwatchdog_s = 10\n")
    engine = EngineProcess(tmp_path, fleet, broker, config=config, url=relay.url)
    health = HealthReader(broker)
    rng = random.Random(10)
    try:
        engine.start().wait_log("connected to")
        pub = Publisher(broker.port, messages, per_step=len(messages) // steps)
        pub.start()
        cuts = 0
        while pub.is_alive():
            time.sleep(rng.uniform(0.2, 1.0))
            seen = health.seen[-1].get("engine", {}).get("fixes", 0) if health.seen else 0
            mark = len(engine.log())
            assert relay.cut() == 1, "the engine had no connection through the relay"
            cuts += 1
            # Reconnected, and processing again, before the next cut.
            engine.wait_log("reconnected to the broker", timeout_s=GUARD_S, after=mark)
            assert engine.log().count("reconnected to the broker") == cuts
            health.until(lambda h, seen=seen, cuts=cuts:
                         h.get("engine", {}).get("fixes", 0) > seen
                         and h["counters"].get("reconnects", 0) == cuts,
                         f"processing after cut {cuts}")
        assert cuts >= 10
        pub.wait_acked()
        n_fixes = sum(1 for t, _ in messages if t.endswith("/fix"))
        health.fixes(n_fixes)
        check_outcome(fleet, engine, broker, messages, devices)
        assert "watchdog" not in engine.log()
    finally:
        health.close()
        relay.close()
        engine.close()


def test_a_silent_broker_stops_the_engine_with_a_stalled_health(tmp_path, mosquitto_factory):
    """SIGSTOP the broker: the engine's connection stays open and nothing comes back,
    not even its own ping. The watchdog must say so in the log and in the health
    ("stalled"), and the engine must exit 3 instead of sitting there."""
    fleet = Fleet(tmp_path, devices_a=2, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    engine = EngineProcess(tmp_path, fleet, broker,
                           config=QUICK.replace("[ingest]\n", "[ingest]\nwatchdog_s = 3\n"))
    health = HealthReader(broker)
    try:
        engine.start().wait_log("backlog drained")
        # Quiet for longer than the watchdog's limit: no device sends anything, and the
        # engine's own ping keeps it alive.
        time.sleep(5)
        h = health.until(lambda h: h.get("watchdog") is not None, "the watchdog")
        assert h["status"] == "online" and h["watchdog"]["limit_s"] == 3
        assert engine.proc.poll() is None, engine.log()[-3000:]
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            rc = engine.proc.wait(GUARD_S)
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        log = engine.log()
        assert rc == 3, log[-3000:]
        line = next(x for x in log.splitlines() if "watchdog: nothing received" in x)
        assert "CRITICAL" in line and "stalled" in line and "ingest.watchdog_s = 3" in line
        assert float(line.split("broker for ")[1].split(" s")[0]) > 3
    finally:
        health.close()
        engine.close()


def test_a_half_dead_connection_stops_the_engine_saying_stalled(tmp_path, mosquitto_factory):
    """The path from the broker to the engine goes silent while the engine can still
    send (the connection looks open to both). The engine publishes health "stalled",
    which the broker passes on before the last will, and exits 3."""
    fleet = Fleet(tmp_path, devices_a=2, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    relay = Cutter(broker.port)
    engine = EngineProcess(tmp_path, fleet, broker,
                           config=QUICK.replace("[ingest]\n", "[ingest]\nwatchdog_s = 3\n"),
                           url=relay.url)
    health = HealthReader(broker)
    try:
        engine.start().wait_log("backlog drained")
        health.until(lambda h: h["status"] == "online" and "watchdog" in h, "online")
        relay.silence()
        rc = engine.proc.wait(GUARD_S)
        log = engine.log()
        assert rc == 3, log[-3000:]
        assert "the engine is stalled; exiting 3" in log
        h = health.until(lambda h: h["status"] == "stalled", "status stalled")
        assert h["watchdog"]["idle_s"] > 3 and h["watchdog"]["limit_s"] == 3
        # then the broker's last will: the engine is gone
        health.until(lambda h: h["status"] == "offline", "the last will")
    finally:
        health.close()
        relay.close()
        engine.close()


@pytest.mark.slow
def test_a_silent_connection_raises_no_offline_alarm(tmp_path, mosquitto_factory):
    """Devices report every 300 ms while the path from the broker to the engine is
    silent for longer than their offline threshold (the connection looks open; the
    watchdog's limit is longer). The engine must not take that silence for the devices'
    : no offline alarm, and every fix is processed once the path is back."""
    fleet = Fleet(tmp_path, devices_a=4, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    relay = Cutter(broker.port)
    config = QUICK.replace("health_interval_s = 1", "health_interval_s = 0.5").replace(
        "[ingest]\n", "[ingest]\nwatchdog_s = 60\nsweep_interval_ms = 100\n") + \
        "[rules]\noffline_after_s = 2\n"
    engine = EngineProcess(tmp_path, fleet, broker, config=config,
                           url=relay.url)
    devices = fleet.ids(REGION_A)
    clients = {d: device_client(broker, d) for d in devices}
    health = HealthReader(broker)
    try:
        engine.start().wait_log("offline sweeps start")
        t0 = now_ms()
        n = 0
        for k in range(40):  # 12 s
            if k == 5:
                relay.silence()  # for 6 s: three times the offline threshold
            if k == 25:
                relay.speak()
            for d in devices:
                clients[d].publish(f"emfence/v1/{REGION_A}/{d}/fix",
                                   orjson.dumps(fix(t0 + k * 300, fleet.home)))
                n += 1
            time.sleep(0.3)
        h = health.fixes(n)
        assert h["counters"].get("events", 0) == 0, "alarms raised (false offline alarms)"
        assert "offline sweeps held: nothing received" in engine.log()
        assert engine.stop() == 0
    finally:
        for c in clients.values():
            c.close()
        health.close()
        relay.close()
        engine.close()


def test_the_watchdog_limit_is_checked_against_the_ping_and_the_reconnect_delay():
    from emfence.config import ConfigError, config_from_dict

    assert config_from_dict({}).ingest.watchdog_s == 60
    assert config_from_dict({"ingest": {"watchdog_s": 0}}).ingest.watchdog_s == 0  # off
    for ingest in ({"watchdog_s": 15}, {"watchdog_s": 30, "health_interval_s": 20},
                   {"watchdog_s": 40, "reconnect_max_s": 40}):
        with pytest.raises(ConfigError, match=r"\[ingest.watchdog_s\] must be 0 \(off\) or"):
            config_from_dict({"ingest": ingest}, source="engine.toml")


def test_the_watchdog_judges_silence_while_running_and_a_deadline_while_stopping():
    from ingest.watchdog import Watchdog

    now = [100.0]
    for stopping in (False, True):
        verdicts: list = []
        fired = threading.Event()
        def stall(idle_s, when, verdicts=verdicts, fired=fired):
            verdicts.append((idle_s, when))
            fired.set()

        dog = Watchdog(2.0, stall, clock=lambda: now[0])
        dog.start()
        try:
            if stopping:
                dog.finish_within(5.0)
                now[0] += 4.0  # silent beyond the limit, but the shutdown has 5 s
                dog.alive()  # (signs of life do not extend a shutdown)
                assert not fired.wait(0.6)
                now[0] += 1.5
            else:
                now[0] += 1.5
                dog.alive()
                now[0] += 1.5  # 3 s since the start, 1.5 s since the last sign of life
                assert not fired.wait(0.6)
                now[0] += 1.0
            assert fired.wait(GUARD_S)
        finally:
            dog.stop()
        # (the idle time reported is since the last sign of life)
        assert verdicts == [(1.5 if stopping else 2.5, "stopping" if stopping else "running")]
