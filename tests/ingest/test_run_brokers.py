"""Several brokers, refused subscriptions, the operations endpoints and SIGTERM at any
moment, with `emfence run` as a subprocess against real mosquitto brokers started from
the shipped config.

mosquitto's ``acl_file`` grants every SUBSCRIBE (2.0.11 here: it filters at delivery, and
answers even ``foo/#`` with "granted QoS 1"); its dynamic-security plugin (shipped with
mosquitto) checks subscriptions and answers a denied one with 0x80, as NATS does for a
filter over its ``max_ack_pending``. The refusal tests use that plugin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request

import pytest
from ingest_fleet import (
    ENGINE_PW,
    FAST_RECONNECT,
    REGION_A,
    REGION_B,
    ROOT,
    EngineProcess,
    fix,
    now_ms,
    until,
)
from ingest_mqtt_helpers import PahoClient
from nats_cluster import NatsMqtt

from emfence.run.options import SHUTDOWN_BOUND_S
from ingest.mosquitto import CONF_TEMPLATE, free_port
from ingest.mqtt import EXIT_SUBSCRIBE_REFUSED
from ingest.passwords import device_password, engine_account

pytestmark = [pytest.mark.mqtt]

WORKER = "worker-1"
ACCOUNT = engine_account(WORKER)
DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
ADMIN, ADMIN_PW = "emfence-test-admin", "admin-test-pw"  # may change the broker's roles
# From the kill of the broker in use to the engine connected to the next one, s: the loss
# is seen at once (the socket closes), the next broker is tried without waiting.
FAILOVER_BOUND_S = 5.0


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET ``path``; (0, why) while nothing listens on ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:  # not listening yet
        return 0, str(e)


def metric(port: int, name: str) -> float:
    """The value of metric ``name`` (one sample) in /metrics, or -1 when absent."""
    for line in get(port, "/metrics")[1].splitlines():
        if line.startswith((name + "{", name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


# --- a mosquitto that checks subscriptions (dynamic-security plugin) -------------------


def dynsec_password(password: str) -> dict:
    """A dynamic-security client password: PBKDF2-SHA512, 101 iterations (the plugin's
    own format)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return {"password": base64.b64encode(digest).decode(),
            "salt": base64.b64encode(salt).decode(), "iterations": 101}


def write_dynsec(path, fleet, *, engine_regions: list[str]) -> None:
    """The engine may subscribe to the fixes, statuses and replies of ``engine_regions`` and to its
    own topics; devices publish their own. Nothing else may be subscribed to."""
    engine_acls = [{"acltype": "subscribePattern", "topic": f"emfence/v1/{r}/+/{kind}",
                    "allow": True} for r in engine_regions for kind in ("fix", "status", "reply")]
    engine_acls.append({"acltype": "subscribePattern", "topic": "emfence/v1/engine/#",
                        "allow": True})
    clients = [{"username": ACCOUNT, "roles": [{"rolename": "engine"}],
                **dynsec_password(ENGINE_PW)}]
    clients += [{"username": d, **dynsec_password(p)} for d, p in fleet.passwords().items()
                if d in fleet.devices]
    clients.append({"username": ADMIN, "roles": [{"rolename": "admin"}],
                    **dynsec_password(ADMIN_PW)})
    path.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
        "clients": clients, "groups": [],
        "roles": [{"rolename": "engine", "acls": engine_acls},
                  {"rolename": "admin", "acls": [
                      {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#",
                       "allow": True}]}]}))


def grant_live(broker, region: str) -> None:
    """Let the engine subscribe to ``region``'s topics, on the running broker (the
    plugin's control topic; no restart, no disconnect)."""
    commands = [{"command": "addRoleACL", "rolename": "engine", "acltype": "subscribePattern",
                 "topic": f"emfence/v1/{region}/+/{kind}", "priority": 0, "allow": True}
                for kind in ("fix", "status", "reply")]
    admin = PahoClient(broker.port, ADMIN, ADMIN_PW, client_id=ADMIN)
    try:
        admin.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": commands}))
    finally:
        admin.close()


def dynsec_broker(mosquitto_factory, tmp_path, fleet, *, engine_regions: list[str]):
    if not os.path.exists(DYNSEC):
        pytest.fail(f"{DYNSEC} missing: install Debian's mosquitto package")
    config = tmp_path / "dynsec.json"
    write_dynsec(config, fleet, engine_regions=engine_regions)
    template = tmp_path / "mosquitto-dynsec.conf"
    template.write_text(CONF_TEMPLATE.read_text() + f"\nplugin {DYNSEC}\n"
                        f"plugin_opt_config_file {config}\n")
    broker = mosquitto_factory(auth=False, conf_template=template)
    broker.dynsec = config
    return broker


def engine(tmp_path, fleet, broker, *extra, config=FAST_RECONNECT) -> EngineProcess:
    return EngineProcess(tmp_path, fleet, broker, config=config,
                         extra=["--regions", f"{REGION_A},{REGION_B}", *extra])


def test_a_refused_subscription_at_start_is_one_line_and_exit_5(tmp_path, fleet,
                                                                 mosquitto_factory):
    broker = dynsec_broker(mosquitto_factory, tmp_path, fleet, engine_regions=[REGION_A])
    e = engine(tmp_path, fleet, broker).start()
    try:
        assert e.proc.wait(120) == EXIT_SUBSCRIBE_REFUSED, e.log()[-3000:]
    finally:
        e.close()
    text = e.log()
    lines = [line for line in text.splitlines() if "refused the subscription" in line]
    assert len(lines) == 1, text[-3000:]
    line = lines[0]
    assert f"broker 127.0.0.1:{broker.port} refused the subscription to " \
           f"emfence/v1/{REGION_B}/+/fix for {ACCOUNT} (SUBACK 0x80)" in line, line
    assert "CRITICAL" in line and f"exiting {EXIT_SUBSCRIBE_REFUSED}" in line
    assert "Traceback" not in text


@pytest.fixture
def nats_factory(tmp_path):
    made = []

    def start(regions):
        n = NatsMqtt(tmp_path, regions)
        made.append(n)
        return n.start()

    yield start
    for n in made:
        n.stop()


def test_nats_refusing_a_subscription_at_start_is_exit_5(tmp_path, fleet, nats_factory):
    nats_mqtt = nats_factory([REGION_A])
    e = engine(tmp_path, fleet, nats_mqtt).start()
    try:
        assert e.proc.wait(120) == EXIT_SUBSCRIBE_REFUSED, e.log()[-3000:]
    finally:
        e.close()
    assert f"broker 127.0.0.1:{nats_mqtt.port} refused the subscription to " \
           f"emfence/v1/{REGION_B}/+/fix for {ACCOUNT} (SUBACK 0x80)" in e.log()
    assert "Traceback" not in e.log()


def test_nats_degraded_worker_asks_again_until_granted(tmp_path, fleet, nats_factory):
    """Refused on a reconnect (NATS restarted with region B denied): degraded; granted
    again by a live reload (no disconnect): the worker's own retry ends it."""
    nats = nats_factory([REGION_A, REGION_B])
    port = free_port()
    e = engine(tmp_path, fleet, nats, "--metrics-http", str(port)).start()
    try:
        e.wait_log("backlog drained")
        nats.allow([REGION_A])
        mark = len(e.log())
        nats.restart()
        e.wait_log("degraded: ", after=mark, timeout_s=60)
        assert until(lambda: get(port, "/readyz")[0], lambda s: s == 503, 30) == 503
        reconnects = metric(port, "emfence_run_reconnects_total")
        nats.allow([REGION_A, REGION_B])
        mark = len(e.log())
        nats.reload()
        e.wait_log("every subscription granted again", after=mark, timeout_s=30)
        assert until(lambda: get(port, "/readyz")[0], lambda s: s == 200, 30) == 200
        assert metric(port, "emfence_run_reconnects_total") == reconnects  # no reconnect
    finally:
        e.close()


def test_a_subscription_refused_on_a_reconnect_is_degraded(tmp_path, fleet,
                                                            mosquitto_factory):
    broker = dynsec_broker(mosquitto_factory, tmp_path, fleet,
                           engine_regions=[REGION_A, REGION_B])
    port = free_port()
    e = engine(tmp_path, fleet, broker, "--metrics-http", str(port)).start()
    try:
        e.wait_log("backlog drained")
        assert until(lambda: get(port, "/readyz")[0], lambda s: s == 200, 30) == 200
        # The broker comes back with region B's subscriptions denied to the engine.
        broker.stop()
        write_dynsec(broker.dynsec, fleet, engine_regions=[REGION_A])
        mark = len(e.log())
        broker.start()
        e.wait_log("degraded: ", after=mark, timeout_s=60)
        status, body = until(lambda: get(port, "/readyz"), lambda r: "degraded" in r[1], 30)
        assert status == 503, body
        reasons = json.loads(body)["reasons"]
        assert any(f"emfence/v1/{REGION_B}/+/fix" in r for r in reasons), reasons
        assert get(port, "/healthz")[0] == 200  # degraded, not dead: it goes on
        assert metric(port, "emfence_run_degraded") == 1
        # ... and it still processes region A.
        did = fleet.ids(REGION_A)[0]
        dev = PahoClient(broker.port, did, device_password_of(fleet, did), client_id=did)
        try:
            before = metric(port, "emfence_engine_fixes_total")
            dev.publish(f"emfence/v1/{REGION_A}/{did}/fix",
                        json.dumps(fix(now_ms(), fleet.home)))
            assert until(lambda: metric(port, "emfence_engine_fixes_total"),
                         lambda n: n > before, 30) > before
        finally:
            dev.close()
        # The broker grants region B again (the plugin disconnects the clients of a role it
        # changes): the worker comes back with every subscription, and is ready.
        mark = len(e.log())
        grant_live(broker, REGION_B)
        e.wait_log("every subscription granted again", after=mark, timeout_s=30)
        assert until(lambda: get(port, "/readyz")[0], lambda s: s == 200, 30) == 200
        assert metric(port, "emfence_run_degraded") == 0
    finally:
        e.close()


def device_password_of(fleet, did: str) -> str:
    from ingest_fleet import SECRET

    return device_password(SECRET, did)


# --- two brokers: the next on loss ----------------------------------------------------


def test_moves_to_the_next_broker_on_loss_and_goes_on(tmp_path, fleet, mosquitto_factory):
    first = mosquitto_factory(passwords=fleet.passwords())
    second = mosquitto_factory(passwords=fleet.passwords())
    second.add_accounts({ACCOUNT: ENGINE_PW})
    port = free_port()
    e = engine(tmp_path, fleet, first, "--broker", second.url, "--metrics-http",
               str(port)).start()
    try:
        e.wait_log(f"connected to 127.0.0.1:{first.port}")
        e.wait_log("backlog drained")
        assert until(lambda: get(port, "/readyz")[0], lambda s: s == 200, 30) == 200
        assert get(port, "/healthz")[0] == 200
        assert metric(port, "emfence_run_connects_total") == 1
        mark = len(e.log())
        killed = time.monotonic()
        first.kill()
        e.wait_log(f"(127.0.0.1:{second.port}); state kept", after=mark, timeout_s=30)
        took = time.monotonic() - killed
        assert took <= FAILOVER_BOUND_S, f"{took:.1f} s to move to the second broker"
        # It processes what devices send to the second broker.
        did = fleet.ids(REGION_A)[0]
        dev = PahoClient(second.port, did, device_password_of(fleet, did), client_id=did)
        try:
            before = metric(port, "emfence_engine_fixes_total")
            for i in range(5):
                dev.publish(f"emfence/v1/{REGION_A}/{did}/fix",
                            json.dumps(fix(now_ms() + i, fleet.home)))
            assert until(lambda: metric(port, "emfence_engine_fixes_total"),
                         lambda n: n >= before + 5, 30) >= before + 5
        finally:
            dev.close()
        assert until(lambda: get(port, "/readyz")[0], lambda s: s == 200, 30) == 200
        assert metric(port, "emfence_run_reconnects_total") == 1
    finally:
        e.close()


def test_readyz_names_why_while_no_broker_answers(tmp_path, fleet, mosquitto_factory):
    """On the console's --http port: the same three endpoints, outside its login."""
    broker = mosquitto_factory(passwords=fleet.passwords())
    port = free_port()
    e = engine(tmp_path, fleet, broker, "--http", f"127.0.0.1:{port}").start()
    try:
        e.wait_log("backlog drained")
        e.wait_log("console listening")
        assert until(lambda: get(port, "/readyz")[0], lambda s: s == 200, 30) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            text = r.read().decode()
        typed = re.compile(r"^# TYPE emfence_run_connects(_total)? counter$", re.MULTILINE)
        assert typed.search(text), text
        assert 'emfence_run_connects_total{worker="worker-1"} 1.0' in text
        assert get(port, "/")[0] == 200  # the console itself is still there
        broker.kill()
        status, body = until(lambda: get(port, "/readyz"), lambda r: r[0] == 503, 30)
        assert status == 503 and "not connected to a broker" in json.loads(body)["reasons"]
        assert get(port, "/healthz")[0] == 200  # alive: it is reconnecting
        assert metric(port, "emfence_run_connected") == 0
    finally:
        e.close()


# --- SIGTERM at any moment -------------------------------------------------------------


def test_sigterm_at_any_moment_ends_the_process_in_time(tmp_path, fleet, broker):
    """Right after the connect line (0, 25 ms, 250 ms later), and with the broker hung
    (SIGSTOP: nothing it is sent is answered): exit 0 within SHUTDOWN_BOUND_S."""
    e = engine(tmp_path, fleet, broker)

    def stop_within_bound() -> None:
        sent = time.monotonic()
        e.signal(signal.SIGTERM)
        code = e.proc.wait(SHUTDOWN_BOUND_S + 30)
        took = time.monotonic() - sent
        assert code == 0, e.log()[-3000:]
        assert took <= SHUTDOWN_BOUND_S, f"{took:.1f} s to stop after SIGTERM"

    try:
        for delay_s in (0.0, 0.025, 0.25):
            mark = len(e.log()) if e.proc else 0
            e.start().wait_log("connected to 127.0.0.1", after=mark)
            time.sleep(delay_s)
            stop_within_bound()
        mark = len(e.log())
        e.start().wait_log("backlog drained", after=mark)
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(0.1)
            stop_within_bound()
        finally:
            broker.proc.send_signal(signal.SIGCONT)
    finally:
        e.close()


def test_a_comma_list_in_broker_says_how_to_give_several(tmp_path, fleet):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "emfence", "run", "--broker",
         "mqtt://127.0.0.1:1,mqtt://127.0.0.1:2", "--zones", str(fleet.zones_path),
         "--subjects", str(fleet.subjects_path), "--store",
         f"sqlite:///{tmp_path / 'a.db'}"], capture_output=True, text=True, cwd=ROOT,
        timeout=120, check=False)
    assert done.returncode == 1
    assert "one URL per --broker; for several brokers give --broker once for each" \
        in done.stderr
    assert "Traceback" not in done.stderr


def test_the_broker_list_goes_round_and_says_when_a_round_failed():
    from ingest.brokers import BrokerList, BrokerSettings, broker_urls

    a, b, c = (BrokerSettings("127.0.0.1", p) for p in (1, 2, 3))
    brokers = BrokerList([a, b, c])
    assert brokers.current is a
    assert brokers.failed() is False and brokers.current is b
    brokers.worked()  # b answered: a new round starts from here
    assert [brokers.failed(), brokers.failed(), brokers.failed()] == [False, False, True]
    assert brokers.current is b
    one = BrokerList([a])
    assert one.failed() is True and one.current is a  # one broker: backoff every time
    assert broker_urls(None) == ["mqtt://127.0.0.1:1883"]
    assert broker_urls(["mqtt://h:1", "mqtt://h:2"]) == ["mqtt://h:1", "mqtt://h:2"]


def test_simulate_moves_to_the_next_broker_and_loses_no_publish(tmp_path, fleet,
                                                                  mosquitto_factory):
    """`emfence simulate` with two --broker: the first is killed mid-run, the pooled
    connections go on with the second; every publish is acknowledged (failed 0, exit 0)."""
    import subprocess
    import sys

    from ingest_fleet import LOADGEN_PW

    pool = {f"emfence-loadgen-{k}": LOADGEN_PW for k in (1, 2)}
    first = mosquitto_factory(passwords=fleet.passwords() | pool)
    second = mosquitto_factory(passwords=fleet.passwords() | pool)
    (tmp_path / "loadgen.pw").write_text(LOADGEN_PW + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "emfence", "simulate", "--broker", first.url, "--broker",
         second.url, "--zones", str(fleet.zones_path), "--subjects", str(fleet.subjects_path),
         "--username", "emfence-loadgen", "--password-file", str(tmp_path / "loadgen.pw"),
         "--pool", "2", "--rate", "200", "--duration", "4", "--scenario", "load", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # Kill the first broker once publishing is under way (it has connections).
        until(lambda: "emfence-loadgen-2" in first.log_tail(200), bool, 60)
        time.sleep(1.5)
        first.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["failed"] == 0 and stats["acked"] == stats["sent"] > 0, stats
    assert f"reconnected to 127.0.0.1:{second.port}" in err, err
