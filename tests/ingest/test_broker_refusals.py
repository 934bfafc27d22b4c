"""A refused login, a TLS failure and an unreachable broker, as `emfence run` says them.

Against a real mosquitto started from the shipped config (``deploy/mosquitto``), with the
engine as a subprocess like a user runs it: at start a refused login or a TLS failure is
one line naming the account, the broker and the cause, with the fix, and exit code 4; a
refusal after a working session is retried, named (not "unreachable") in few lines, and
the engine recovers once the password is right again. The classification itself and the
rate limit of the retry lines are tested without a broker.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys

import aiomqtt
import orjson
import pytest
from aiomqtt.exceptions import MqttConnectError
from ingest_fleet import CONSOLE_PW, ENGINE_PW, REGION_A, ROOT, SECRET, now_ms, until
from ingest_mqtt_helpers import PahoClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from emfence.run.receive import ConnectRetries
from ingest.mqtt import (
    EXIT_LOGIN_REFUSED,
    BrokerConnectError,
    ConnectionClosedError,
    connect_error,
)
from ingest.passwords import CONSOLE_USER, device_password, engine_account, password_line

WORKER = "worker-1"
ACCOUNT = engine_account(WORKER)
RETRYING = """
[ingest]
batch_max_ms = 10
health_interval_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 0.5
"""


def run_engine(tmp_path, fleet, broker_url: str, *extra: str) -> subprocess.CompletedProcess:
    """`emfence run` as a user starts it; the time limit guards against a hang only."""
    return subprocess.run(
        [sys.executable, "-m", "emfence", "run", "--broker", broker_url,
         "--zones", str(fleet.zones_path), "--subjects", str(fleet.subjects_path),
         "--store", f"sqlite:///{tmp_path / 'alarms.db'}", "--name", WORKER, *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)


def password_file(tmp_path, text: str) -> str:
    path = tmp_path / "engine.pw"
    path.write_text(text + "\n")
    return str(path)


def the_line(stderr: str, where: str) -> str:
    """The one line of ``stderr`` that names the broker ``where``."""
    lines = [line for line in stderr.splitlines() if where in line]
    assert len(lines) == 1, stderr
    return lines[0]


# --- at start: fatal, exit 4, one line --------------------------------------------------


@pytest.mark.mqtt
@pytest.mark.parametrize(("case", "expected"), [
    ("wrong password", (f"refused the login of {ACCOUNT}: not authorized", "--password-file",
                        (f"emfence mqtt-passwords SUBJECTS --secret-file SECRET --engine "
                        f"{WORKER}=PASSWORD_FILE"))),
    ("no username", ("refused the login of anonymous (no --username): not authorized",
                     f"give --username {ACCOUNT} --password-file FILE")),
    ("mqtts to a plain listener", ((f"TLS with broker 127.0.0.1:{{port}} failed for {ACCOUNT}: "
                                   "TLS handshake failed"),
                                   "is the listener plain MQTT? then use --broker mqtt://")),
])
def test_a_refused_login_at_start_is_one_line_and_exit_4(tmp_path, fleet, broker, case,
                                                         expected):
    login = ["--username", ACCOUNT, "--password-file", password_file(tmp_path, ENGINE_PW)]
    url = broker.url
    if case == "wrong password":
        login[-1] = password_file(tmp_path, "not-the-password")
    elif case == "no username":
        login = []
    else:
        url = url.replace("mqtt://", "mqtts://")
    done = run_engine(tmp_path, fleet, url, *login)
    assert done.returncode == EXIT_LOGIN_REFUSED, done.stderr
    line = the_line(done.stderr, f"127.0.0.1:{broker.port}")
    for part in expected:
        assert part.format(port=broker.port) in line, line
    assert "CRITICAL" in line and "exiting 4" in line
    assert "Traceback" not in done.stderr and "unreachable" not in done.stderr


@pytest.mark.mqtt
@pytest.mark.parametrize(("case", "expected"), [
    ("plain MQTT to a TLS listener", (("closed the connection of emfence-worker-1 before "
                                      "answering its CONNECT"),
                                      "is the listener TLS? then use --broker mqtts://")),
    ("no CA for the broker's certificate", (("failed for emfence-worker-1: certificate verify "
                                            "failed"), "give --tls-ca the CA certificate")),
])
def test_a_tls_mismatch_at_start_is_one_line_and_exit_4(tmp_path, fleet, mosquitto_factory,
                                                        case, expected):
    from test_ingest_run_options import make_tls_files

    _, cert, key = make_tls_files(tmp_path)
    broker = mosquitto_factory(passwords=fleet.passwords(), tls=(cert, key))
    url = broker.url if "CA" in case else broker.url.replace("mqtts://", "mqtt://")
    done = run_engine(tmp_path, fleet, url, "--username", ACCOUNT, "--password-file",
                      password_file(tmp_path, ENGINE_PW))
    assert done.returncode == EXIT_LOGIN_REFUSED, done.stderr
    line = the_line(done.stderr, f"127.0.0.1:{broker.port}")
    for part in expected:
        assert part in line, line
    assert "Traceback" not in done.stderr and "unreachable" not in done.stderr


@pytest.mark.mqtt
def test_retire_session_says_a_refused_login_in_one_line(tmp_path, broker):
    done = subprocess.run(
        [sys.executable, "-m", "emfence", "retire-session", "--name", WORKER, "--broker",
         broker.url, "--username", ACCOUNT, "--password-file",
         password_file(tmp_path, "not-the-password")],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == EXIT_LOGIN_REFUSED
    assert done.stderr.strip() == (
        f"emfence retire-session: broker 127.0.0.1:{broker.port} refused the login of "
        f"{ACCOUNT}: not authorized (a wrong password, an unknown account, or no login where "
        "the broker wants one); log in as the worker's own account emfence-NAME with the "
        "--password-file it ran with")


# --- after a working session: retried, named, recovered ---------------------------------


def set_password(broker, user: str, password: str) -> None:
    """Replace ``user``'s line of the broker's password file (the broker reads it at its
    next start or SIGHUP)."""
    lines = [line for line in broker.password_file.read_text().splitlines()
             if not line.startswith(f"{user}:")]
    broker.password_file.write_text("\n".join([*lines, password_line(user, password)]) + "\n")


@pytest.mark.mqtt
@pytest.mark.slow
def test_a_refusal_after_a_working_session_is_retried_named_and_recovers(
        tmp_path, fleet, broker, engines):
    engine = engines(tmp_path, fleet, broker, name=WORKER, config=RETRYING)
    engine.wait_log("connected to")
    mark = len(engine.log())
    set_password(broker, ACCOUNT, "rotated-on-the-broker-only")
    broker.restart()  # the engine's session ends; its reconnects are refused
    console = PahoClient(broker.port, CONSOLE_USER, CONSOLE_PW)  # (a clean session)
    console.subscribe("emfence/v1/+/alarms/+")
    try:
        engine.wait_log(f"refused the login of {ACCOUNT}", after=mark)
        # While it is refused, a device's tamper status waits in the engine's session.
        a0 = fleet.ids(REGION_A)[0]
        dev = PahoClient(broker.port, a0, device_password(SECRET, a0))
        dev.publish(f"emfence/v1/{REGION_A}/{a0}/status",
                    orjson.dumps({"ts": now_ms(), "strap": "open"}))
        dev.close()
        # Many refused attempts (the broker's log counts them) ...
        refusals = until(lambda: broker.log_tail(400).count("disconnected, not authorised"),
                         lambda n: n >= 8)
        assert refusals >= 8
        assert engine.proc.poll() is None  # retried, not fatal: a session had worked
        # ... and few lines: the first names the refusal, the next only after a minute.
        text = engine.log()[mark:]
        named = [line for line in text.splitlines() if "refused the login of" in line]
        assert len(named) == 1, text
        assert f"broker 127.0.0.1:{broker.port} refused the login of {ACCOUNT}: not " \
               "authorized" in named[0]
        assert "reconnect attempt" in named[0] and "keeping the state of" in named[0]
        assert "exiting" not in text and "Traceback" not in text
        # The password is right again: the engine reconnects and catches up.
        set_password(broker, ACCOUNT, ENGINE_PW)
        broker.proc.send_signal(signal.SIGHUP)
        engine.wait_log("reconnected to the broker after", after=mark)
        topic, payload, _ = console.get(timeout=60)
        event = orjson.loads(payload)
        assert (event["type"], event["device_id"]) == ("tamper", a0), topic
        assert engine.stop() == 0
    finally:
        console.close()


@pytest.mark.mqtt
def test_an_unreachable_broker_is_retried_and_said_so(tmp_path, fleet, engines):
    from ingest.mosquitto import Mosquitto, free_port

    broker = Mosquitto(tmp_path / "late-broker", passwords=fleet.passwords(), port=free_port())
    try:
        engine = engines(tmp_path, fleet, broker, name=WORKER, config=RETRYING)
        engine.wait_log(f"broker 127.0.0.1:{broker.port} unreachable: connection refused")
        first = engine.log()
        assert engine.proc.poll() is None
        broker.start()
        engine.wait_log("connected to")
        text = engine.log()
        # one line for the whole wait, however many attempts (a line a minute at most)
        assert text.count("unreachable: connection refused") == 1, text
        assert "reconnect attempt 1 in" in first
        assert "refused the login" not in text and "Traceback" not in text
        assert engine.stop() == 0
    finally:
        broker.close()


# --- the classification and the rate limit, without a broker -----------------------------


def _from_aiomqtt(cause: BaseException) -> aiomqtt.MqttError:
    """An MqttError as aiomqtt raises it for a socket or TLS error: the original is its
    ``__context__`` (raised ``from None``)."""
    try:
        try:
            raise cause
        except OSError as exc:
            raise aiomqtt.MqttError(str(exc)) from None
    except aiomqtt.MqttError as err:
        return err


WHERE = {"host": "broker.example", "port": 8883}


@pytest.mark.parametrize(("exc", "username", "tls", "kind", "code", "cause"), [
    (MqttConnectError(5), "emfence-north", False, "refused", 135, "not authorized"),
    (MqttConnectError(4), "emfence-north", False, "refused", 134, "bad user name or password"),
    (MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=135)), None, False,
     "refused", 135, "not authorized"),
    (MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=138)), "x", False,
     "refused", 138, "banned"),
    (MqttConnectError(3), "x", False, "busy", 136, "server unavailable"),
    (MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=159)), "x", False,
     "busy", 159, "connection rate exceeded"),
    (_from_aiomqtt(ssl.SSLCertVerificationError(1, "verify failed")), "x", True, "tls", None,
     "certificate verify failed"),
    (_from_aiomqtt(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")), "x",
     True, "tls", None, "TLS handshake failed"),
    (_from_aiomqtt(ConnectionResetError(104, "Connection reset by peer")), "x", True, "tls",
     None, "TLS handshake failed: the broker closed the connection (connection reset by peer)"),
    (_from_aiomqtt(ConnectionResetError(104, "Connection reset by peer")), "x", False,
     "unreachable", None, "connection reset by peer"),
    (ConnectionClosedError("closed before CONNACK"), "x", False, "protocol", None, ""),
    (_from_aiomqtt(ConnectionRefusedError(111, "Connection refused")), "x", True,
     "unreachable", None, "connection refused"),
    (aiomqtt.MqttError("Operation timed out"), "x", False, "unreachable", None,
     "no answer (timed out)"),
])
def test_connect_errors_are_classified(exc, username, tls, kind, code, cause):
    err = connect_error(exc, username=username, tls=tls, **WHERE)
    assert isinstance(err, BrokerConnectError) and isinstance(err, ConnectionError)
    assert (err.kind, err.code) == (kind, code)
    assert cause in err.cause
    text = str(err)
    assert "\n" not in text and "broker.example:8883" in text
    assert (username or "anonymous (no --username)") in text or kind == "unreachable"
    assert err.fatal == (kind in ("refused", "tls", "protocol"))
    assert bool(err.fix) == err.fatal  # a mistake to fix says how


def test_a_missing_login_gets_its_own_fix_and_callers_theirs():
    refused = MqttConnectError(5)
    assert "give --username" in connect_error(refused, username=None, tls=False, **WHERE).fix
    mine = connect_error(refused, username="u", tls=False, fixes={"refused": "do X"}, **WHERE)
    assert str(mine).endswith("; do X")
    also = mine.with_also("(and 3 more of 4 connections)")
    assert "refused the login of u (and 3 more of 4 connections): not authorized" in str(also)


def test_retry_lines_are_one_per_cause_then_one_a_minute():
    class Clock:
        t = 0.0

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    retries = ConnectRetries(60.0, clock=clock)
    refused = connect_error(MqttConnectError(5), username="u", tls=False, **WHERE)
    away = connect_error(_from_aiomqtt(ConnectionRefusedError(111, "refused")), username="u",
                         tls=False, **WHERE)
    logged = []
    for second in range(150):  # one attempt a second
        clock.t = float(second)
        n = retries.failed(away if second < 10 else refused)
        if n is not None:
            logged.append((second, n))
    # first unreachable; then the refusal at once (counting the 9 attempts unlogged
    # before it); then a line a minute with the count
    assert logged == [(0, 1), (10, 10), (70, 60), (130, 60)]
    retries.reset()
    assert retries.failed(refused) == 1
