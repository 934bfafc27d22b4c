"""The publisher against a real mosquitto with the project's config and ACL: every
message arrives (QoS 1, acknowledged), spoofed ones are refused by the broker."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections import Counter

import aiomqtt
import orjson
import pytest
from sim_helpers import fast_config, fleet

from ingest.mosquitto import Mosquitto
from ingest.passwords import device_password
from simulators.cli import run_publish
from simulators.scenario import Simulation
from simulators.score import read_truth

pytestmark = pytest.mark.mqtt

SECRET = b"simulator-test-secret-0123456789"


async def _collect(port, stop: asyncio.Event, ready: asyncio.Event, out: list):
    async with aiomqtt.Client("127.0.0.1", port, username="emfence-engine", password="engine-pw",
                              identifier=f"sim-test-engine-{os.getpid()}") as c:
        await c.subscribe("emfence/v1/+/+/fix", qos=1)
        await c.subscribe("emfence/v1/+/+/status", qos=1)
        ready.set()
        async for msg in c.messages:
            out.append((str(msg.topic), bytes(msg.payload)))
            if stop.is_set() and msg.payload == b"END":
                return


async def _run(broker, sim, *, per_device: bool, truth=None):
    received: list = []
    sent: list = []
    stop, ready = asyncio.Event(), asyncio.Event()
    collector = asyncio.create_task(_collect(broker.port, stop, ready, received))
    await asyncio.wait_for(ready.wait(), 10)
    ids = sim.fleet.device_ids
    kw = ({"credentials": lambda d: (ids[d], device_password(SECRET, ids[d]))} if per_device
          else {"username": "emfence-loadgen", "password": "loadgen-pw"})
    stats = await run_publish(sim, "127.0.0.1", broker.port, truth=truth, progress=False,
                              on_sent=sent.append, **kw)
    # A marker behind everything: once it arrives, every earlier message has (one connection
    # to the broker per publisher; the broker keeps each publisher's order).
    stop.set()
    async with aiomqtt.Client("127.0.0.1", broker.port, username="emfence-loadgen",
                              password="loadgen-pw") as c:
        await c.publish("emfence/v1/0/end/status", b"END", qos=1)
    await asyncio.wait_for(collector, 30)
    return stats, sent, [r for r in received if r[1] != b"END"]


@pytest.fixture
def small():
    _, _, fl = fleet(30, 6, ("411303",))
    return fl


@pytest.fixture
def broker(tmp_path, small):
    passwords = {d: device_password(SECRET, d) for d in small.device_ids}
    passwords |= {"emfence-engine": "engine-pw", "emfence-loadgen": "loadgen-pw"}
    # one account per pooled connection (the broker binds a session to its login)
    passwords |= {f"emfence-loadgen-{k}": "loadgen-pw" for k in range(1, 9)}
    with Mosquitto(tmp_path / "broker", passwords=passwords) as b:
        yield b


async def test_per_device_connections_deliver_everything_and_spoofs_are_refused(broker, small,
                                                                                tmp_path):
    import time

    sim = Simulation(small, rate=50.0, duration_s=22.0, start_ms=int(time.time() * 1000) + 1500,
                     config=fast_config(), scenario="mixed", seed=6, time_scale=30.0,
                     events_per_kind=1)
    kinds = {e.what for e in sim.truth}
    assert {"spoof", "malformed", "duplicate", "store_forward"} <= kinds, sim.skipped
    stats, sent, received = await _run(broker, sim, per_device=True, truth=tmp_path / "truth.jsonl")
    assert stats.failed == 0 and stats.acked == stats.sent == len(sent)
    assert stats.by_kind["fix"] > 0 and stats.sent >= sim.total_slots * 0.9
    spoofed = [(m.topic, m.payload) for m in sent if m.kind == "spoof"]
    legit = [(m.topic, m.payload) for m in sent if m.kind != "spoof"]
    assert spoofed
    # Everything a device sent under its own id arrived, exactly as sent; nothing spoofed did.
    assert Counter(received) == Counter(legit)
    assert not set(spoofed) & set(received)
    truth = read_truth(tmp_path / "truth.jsonl")
    assert truth.meta["run_end"]["acked"] == stats.acked
    assert truth.meta["mode"] == "per-device"
    assert len(truth.events) == len(sim.truth)


async def test_pool_mode_with_the_loadgen_account(broker, small):
    import time

    sim = Simulation(small, rate=400.0, duration_s=3.0, start_ms=int(time.time() * 1000) + 1000,
                     config=fast_config(), scenario="load", seed=1, spoof_allowed=False)
    assert sim.total_slots == 1200 and not sim.truth
    stats, sent, received = await _run(broker, sim, per_device=False)
    assert stats.failed == 0 and stats.acked == stats.sent == sim.total_slots
    assert Counter(received) == Counter((m.topic, m.payload) for m in sent)
    assert all(m.kind == "fix" for m in sent)  # load: fixes only, no heartbeats


async def test_wire_connection_names_a_refused_login(broker):
    from ingest.mqtt import BrokerConnectError
    from simulators.mqttwire import WireConnection

    c = WireConnection("127.0.0.1", broker.port, client_id="sim-wire-bad",
                       username="emfence-loadgen", password="wrong")
    with pytest.raises(BrokerConnectError, match=f"broker 127.0.0.1:{broker.port} refused the "
                       "login of emfence-loadgen: (bad user name or password|not authorized)"
                       ) as refused:
        await c.connect()
    assert refused.value.fatal and refused.value.code in (134, 135)
    await c.close()


async def test_a_refused_fleet_is_one_error_and_no_warning_per_connection(broker, small,
                                                                         caplog):
    """Every device refused (a wrong site secret): one error naming the first device, how
    many others failed alike and the fix; no warning for each connection closed."""
    import time

    from ingest.mqtt import BrokerConnectError
    from simulators.publisher import Publisher

    sim = Simulation(small, rate=10.0, duration_s=1.0, start_ms=int(time.time() * 1000),
                     config=fast_config(), scenario="normal", seed=1)
    ids = small.device_ids
    pub = Publisher(sim, "127.0.0.1", broker.port,
                    credentials=lambda d: (ids[d], device_password(b"not-the-secret", ids[d])))
    with pytest.raises(BrokerConnectError) as refused:
        await pub.connect()
    text = str(refused.value)
    assert f"refused the login of {ids[0]} (and {len(ids) - 1} more of {len(ids)} " \
           "connections): not authorized" in text
    assert "--secret-file" in text and "\n" not in text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_wire_connection_counts_pubacks(broker):
    from simulators.mqttwire import WireConnection

    received: list = []
    stop, ready = asyncio.Event(), asyncio.Event()
    collector = asyncio.create_task(_collect(broker.port, stop, ready, received))
    await asyncio.wait_for(ready.wait(), 10)
    c = WireConnection("127.0.0.1", broker.port, client_id="sim-wire-ok",
                       username="emfence-loadgen", password="loadgen-pw", window=50)
    await c.connect()
    payloads = [orjson.dumps({"ts": 1763800000000 + i, "lat": 33.0, "lon": 112.5})
                for i in range(500)]
    for p in payloads:  # 10x the window: the loop must wait for PUBACKs
        await c.room()
        c.publish("emfence/v1/411303/B-0001/fix", p)
        await c.drain()
    assert await c.wait_acked(10)
    assert c.acked == c.sent == 500
    stop.set()
    c.publish("emfence/v1/0/end/status", b"END")
    await c.drain()
    await asyncio.wait_for(collector, 30)
    await c.close()
    assert [r[1] for r in received if r[1] != b"END"] == payloads  # all, in order


def test_cli_run_stops_cleanly_on_sigint(broker, tmp_path):
    """`emfence simulate` as a process, per-device logins from a secret file: SIGINT stops
    the schedule, every message sent is acknowledged, and the truth file is closed."""
    import signal
    import subprocess
    import sys
    import time

    gen, _, _ = fleet(30, 6, ("411303",))
    zp, sp = gen.write(tmp_path / "fleet")
    (tmp_path / "secret").write_bytes(SECRET)
    truth = tmp_path / "truth.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "emfence", "simulate", "--broker", broker.url, "--zones", str(zp),
         "--subjects", str(sp), "--rate", "30", "--duration", "600", "--scenario", "normal",
         "--secret-file", str(tmp_path / "secret"), "--truth", str(truth)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not truth.exists() and time.monotonic() < deadline:  # written once connected
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    end = orjson.loads(truth.read_bytes().splitlines()[-1])
    assert end["what"] == "run_end"
    assert end["sent"] > 0 and end["acked"] == end["sent"] and end["failed"] == 0
    assert end["sent"] < 30 * 600  # stopped long before the planned end
    assert b"[simulate]" in err  # the progress line


@pytest.mark.parametrize(("case", "expected"), [
    ("wrong secret", ("refused the login of B-", "more of", "not authorized",
                      "device passwords are derived from --secret-file")),
    ("no login", ("refused the login of anonymous (no --username): not authorized",
                  "give --secret-file", "--username emfence-loadgen --password-file FILE")),
    ("wrong pool password", ("refused the login of emfence-loadgen-1: not authorized",
                             "check --username and --password-file")),
    ("wrong alarm reader password", ("refused the login of emfence-loadgen: not authorized",
                                     "check --alarms-username and --alarms-password-file")),
])
def test_simulate_says_a_refused_login_in_one_line_and_exits_4(broker, tmp_path, case,
                                                               expected):
    """`emfence simulate` as a user runs it: one line naming the account, the broker, the
    cause and the fix; exit 4; no traceback, no warning per connection."""
    gen, _, _ = fleet(30, 6, ("411303",))
    zp, sp = gen.write(tmp_path / "fleet")
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "bad-secret").write_bytes(b"not-the-site-secret-0123456789ab")
    (tmp_path / "wrong.pw").write_text("wrong\n")
    (tmp_path / "loadgen.pw").write_text("loadgen-pw\n")
    login = {
        "wrong secret": ["--secret-file", str(tmp_path / "bad-secret")],
        "no login": [],
        "wrong pool password": ["--username", "emfence-loadgen", "--password-file",
                                str(tmp_path / "wrong.pw")],
        "wrong alarm reader password": [
            "--username", "emfence-loadgen", "--password-file", str(tmp_path / "loadgen.pw"),
            "--alarms-out", str(tmp_path / "alarms.jsonl"),
            "--alarms-password-file", str(tmp_path / "wrong.pw")],
    }[case]
    done = subprocess.run(
        [sys.executable, "-m", "emfence", "simulate", "--broker", broker.url, "--zones", str(zp),
         "--subjects", str(sp), "--rate", "30", "--duration", "5", *login],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 4, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"emfence simulate: broker 127.0.0.1:{broker.port} refused the "
                           "login of "), line
    for part in expected:
        assert part in line, line


def test_simulate_names_an_unreachable_broker(tmp_path):
    from ingest.mosquitto import free_port

    gen, _, _ = fleet(30, 6, ("411303",))
    zp, sp = gen.write(tmp_path / "fleet")
    (tmp_path / "secret").write_bytes(SECRET)
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "emfence", "simulate", "--broker", f"mqtt://127.0.0.1:{port}",
         "--zones", str(zp), "--subjects", str(sp), "--secret-file", str(tmp_path / "secret")],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"emfence simulate: broker 127.0.0.1:{port} unreachable: "
                                   "connection refused (nothing listens there: is the broker "
                                   "running?)")
