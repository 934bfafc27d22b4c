"""The shipped broker config, ACL and password tooling, against a real mosquitto."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import pytest
from ingest_mqtt_helpers import PahoClient, Refused

from ingest.mosquitto import Mosquitto, MosquittoError, render_config
from ingest.passwords import (
    CONSOLE_USER,
    ENGINE_USER,
    LOADGEN_USER,
    PasswordsError,
    device_password,
    devices_of_subjects,
    password_line,
)
from ingest.passwords import (
    main as passwords_main,
)

pytestmark = pytest.mark.mqtt

SECRET = b"test-site-secret-0123456789abcdef"
DEVICES = ["BR-0001", "BR-0002", "PH-0003"]
ENGINE_PW = "engine-pw-7f3a"
CONSOLE_PW = "console-pw-19c2"


@pytest.fixture
def secured(mosquitto_factory):
    passwords = {d: device_password(SECRET, d) for d in DEVICES}
    passwords[ENGINE_USER] = ENGINE_PW
    passwords[CONSOLE_USER] = CONSOLE_PW
    return mosquitto_factory(passwords=passwords)


@pytest.fixture
def clients():
    made: list[PahoClient] = []

    def connect(port, user=None, pw=None, **kw):
        c = PahoClient(port, user, pw, **kw)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


def _device(connect, broker, device_id):
    return connect(broker.port, device_id, device_password(SECRET, device_id))


def test_rendered_config_keeps_the_shipped_settings(tmp_path):
    text = render_config(port=12345, data_dir=tmp_path, auth=True,
                         password_file=tmp_path / "p", acl_file=tmp_path / "a")
    assert "listener 12345 127.0.0.1" in text
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any(line.startswith("listener 1883") or "/etc/" in line or "/var/" in line
                   for line in settings)
    for kept in ("persistence true", "max_queued_messages 2000000", "per_listener_settings false"):
        assert kept in text
    assert "allow_anonymous false" in text and f"acl_file {tmp_path / 'a'}" in text
    anon = render_config(port=1, data_dir=tmp_path, auth=False, password_file=None, acl_file=None)
    assert "allow_anonymous true" in anon and "acl_file" not in anon


def test_missing_binary_is_named(monkeypatch):
    monkeypatch.setattr("ingest.mosquitto.shutil.which", lambda name: None)
    monkeypatch.setattr("ingest.mosquitto.os.access", lambda p, m: False)
    with pytest.raises(MosquittoError, match="mosquitto binary not found.*/usr/sbin/mosquitto"):
        Mosquitto(auth=False)


def test_anonymous_and_wrong_passwords_are_refused(secured, clients):
    with pytest.raises(Refused):
        clients(secured.port)
    with pytest.raises(Refused):
        clients(secured.port, "BR-0001", "not-the-password")
    with pytest.raises(Refused):  # another device's password does not open this account
        clients(secured.port, "BR-0001", device_password(SECRET, "BR-0002"))
    with pytest.raises(Refused):  # nor does a password from another site's secret
        clients(secured.port, "BR-0001", device_password(b"another-site-secret-xx", "BR-0001"))
    _device(clients, secured, "BR-0001")  # the right one does


def test_device_publishes_only_under_its_own_id(secured, clients):
    engine = clients(secured.port, ENGINE_USER, ENGINE_PW)
    engine.subscribe("emfence/v1/+/+/fix")
    engine.subscribe("emfence/v1/+/+/status")
    dev = _device(clients, secured, "BR-0001")
    dev.publish("emfence/v1/330723/BR-0002/fix", b'{"spoofed":1}')  # as another device
    dev.publish("emfence/v1/330723/BR-0001/alarms", b'{"spoofed":2}')  # not a device topic
    dev.publish("emfence/v1/330723/alarms/outbound", b'{"spoofed":3}')  # a fake alarm
    dev.publish("emfence/v1/330723/BR-0001/status", b'{"sentinel":1}')  # its own: allowed
    dev.publish("emfence/v1/330723/BR-0001/fix", b'{"sentinel":2}')
    # Messages from one client arrive in order: once both sentinels are in, the spoofed
    # ones would have been too.
    got = [engine.get(), engine.get()] + engine.drain()
    assert [(t, p) for t, p, _ in got] == [
        ("emfence/v1/330723/BR-0001/status", b'{"sentinel":1}'),
        ("emfence/v1/330723/BR-0001/fix", b'{"sentinel":2}'),
    ]


def test_devices_read_nothing_console_reads_alarms_not_fixes(secured, clients):
    console = clients(secured.port, CONSOLE_USER, CONSOLE_PW)
    console.subscribe("emfence/v1/+/alarms/+")
    console.subscribe("emfence/v1/+/+/fix")  # must never deliver a location
    spy = _device(clients, secured, "BR-0002")
    for topic in ("emfence/v1/+/alarms/+", "emfence/v1/#", "#"):
        spy.subscribe(topic)
    engine = clients(secured.port, ENGINE_USER, ENGINE_PW)
    engine.subscribe("emfence/v1/+/+/fix")
    dev = _device(clients, secured, "BR-0001")
    dev.publish("emfence/v1/330723/BR-0001/fix", b'{"fix":1}')
    assert engine.get()[0] == "emfence/v1/330723/BR-0001/fix"  # the engine can read fixes
    engine.publish("emfence/v1/330723/alarms/outbound", b'{"alarm":1}')
    assert console.get()[:2] == ("emfence/v1/330723/alarms/outbound", b'{"alarm":1}')
    assert console.drain() == []  # the fix was not delivered to the console
    assert spy.drain() == []  # nor anything to another device


def test_engine_cannot_forge_fixes_and_console_cannot_raise_alarms(secured, clients):
    # Each account is one connection (the broker binds a session to its login), so each
    # forges on the connection that would also receive the forgery.
    watcher = clients(secured.port, ENGINE_USER, ENGINE_PW)
    watcher.subscribe("emfence/v1/+/+/fix")
    sink = clients(secured.port, CONSOLE_USER, CONSOLE_PW)
    sink.subscribe("emfence/v1/+/alarms/+")
    sink.publish("emfence/v1/330723/alarms/outbound", b'{"forged":1}')
    watcher.publish("emfence/v1/330723/BR-0001/fix", b'{"forged":2}')
    _device(clients, secured, "BR-0001").publish("emfence/v1/330723/BR-0001/fix", b"{}")
    assert watcher.get()[1] == b"{}"
    assert watcher.drain() == [] and sink.drain() == []


def test_persistent_session_keeps_queued_fixes_across_a_broker_restart(secured, clients):
    engine = clients(secured.port, ENGINE_USER, ENGINE_PW, client_id="engine-persist",
                     clean_session=False)
    engine.subscribe("emfence/v1/+/+/fix")
    engine.close()  # engine away: its session keeps collecting
    dev = _device(clients, secured, "BR-0001")
    for i in range(200):
        dev.publish("emfence/v1/330723/BR-0001/fix", f'{{"i":{i}}}')
    dev.close()
    secured.restart()  # clean broker restart: the queue is saved and reloaded
    engine = clients(secured.port, ENGINE_USER, ENGINE_PW, client_id="engine-persist",
                     clean_session=False)
    got = [engine.get()[1] for _ in range(200)]
    assert got == [f'{{"i":{i}}}'.encode() for i in range(200)]


def test_kill_and_restart(mosquitto):
    port = mosquitto.port
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.port == port and mosquitto.running
    c = PahoClient(port)
    c.close()


def test_password_line_is_what_mosquitto_passwd_verifies(tmp_path, mosquitto_factory, clients):
    # A file hashed by mosquitto_passwd itself and one of ours, side by side in one broker.
    plain = tmp_path / "plain"
    plain.write_text("BR-0001:theirs\n")
    subprocess.run(["mosquitto_passwd", "-U", str(plain)], check=True)
    ours = password_line("BR-0002", "ours", iterations=1000)
    assert ours.startswith("BR-0002:$7$1000$")
    pwfile = tmp_path / "both"
    pwfile.write_text(plain.read_text() + ours + "\n")
    broker = mosquitto_factory(password_file=pwfile)
    clients(broker.port, "BR-0001", "theirs")
    clients(broker.port, "BR-0002", "ours")
    with pytest.raises(Refused):
        clients(broker.port, "BR-0002", "theirs")


SUBJECTS = {
    "subjects": [
        {"subject_id": "S-1", "region": "330723", "level": "strict",
         "devices": [{"device_id": "BR-0001", "kind": "bracelet"}, {"device_id": "PH-0003"}]},
        {"subject_id": "S-2", "region": "330702", "level": "ordinary", "devices": ["BR-0002"]},
    ]
}


def test_mqtt_passwords_command_end_to_end(tmp_path, mosquitto_factory, clients, capsys):
    import orjson

    subjects = tmp_path / "subjects.json"
    subjects.write_bytes(orjson.dumps(SUBJECTS))
    secret = tmp_path / "site.secret"
    secret.write_bytes(SECRET + b"\n")
    (tmp_path / "engine.pw").write_text(ENGINE_PW + "\n")
    out = tmp_path / "emfence.passwd"
    creds = tmp_path / "creds.csv"
    acl = tmp_path / "emfence.acl"
    rc = passwords_main([str(subjects), "-o", str(out), "--secret-file", str(secret),
                         "--engine", f"engine-1={tmp_path / 'engine.pw'}",
                         "--engine", f"north={tmp_path / 'engine.pw'}",
                         "--reader", f"monitor={tmp_path / 'engine.pw'}",
                         "--credentials-csv", str(creds), "--acl-output", str(acl)])
    assert rc == 0
    assert os.stat(out).st_mode & 0o777 == 0o600 and os.stat(creds).st_mode & 0o777 == 0o600
    users = [line.split(":", 1)[0] for line in out.read_text().splitlines()]
    assert users == [ENGINE_USER, "emfence-north", "emfence-console-monitor", "BR-0001",
                     "PH-0003", "BR-0002"]
    assert "\nuser emfence-north\ntopic read emfence/v1/+/+/fix\n" in acl.read_text()
    assert "\nuser emfence-console-monitor\ntopic read emfence/v1/+/alarms/+\n" in acl.read_text()
    rows = list(csv.DictReader(io.StringIO(creds.read_text())))
    assert [(r["device_id"], r["region"], r["subject_id"]) for r in rows] == [
        ("BR-0001", "330723", "S-1"), ("PH-0003", "330723", "S-1"), ("BR-0002", "330702", "S-2")]
    assert all(r["password"] == device_password(SECRET, r["device_id"]) for r in rows)

    broker = mosquitto_factory(password_file=out, acl_file=acl)
    engine = clients(broker.port, ENGINE_USER, ENGINE_PW)
    engine.subscribe("emfence/v1/+/+/fix")
    north = clients(broker.port, "emfence-north", ENGINE_PW)  # the second worker's account
    north.subscribe("emfence/v1/330702/+/fix")
    dev = clients(broker.port, "BR-0002", rows[2]["password"])
    dev.publish("emfence/v1/330702/BR-0002/fix", b"{}")
    assert engine.get()[0] == "emfence/v1/330702/BR-0002/fix"
    assert north.get()[0] == "emfence/v1/330702/BR-0002/fix"
    monitor = clients(broker.port, "emfence-console-monitor", ENGINE_PW)
    monitor.subscribe("emfence/v1/+/alarms/+")
    engine.publish("emfence/v1/330702/alarms/outbound", b"{}")
    assert monitor.get()[:2] == ("emfence/v1/330702/alarms/outbound", b"{}")
    with pytest.raises(Refused):  # no console password was given: no console account
        clients(broker.port, CONSOLE_USER, CONSOLE_PW)
    with pytest.raises(Refused):  # and the test-only load generator has none either
        clients(broker.port, LOADGEN_USER, "anything")


def test_mqtt_passwords_errors_name_the_entry(tmp_path):
    with pytest.raises(PasswordsError, match=r"subject S-9: devices\[1\] id 'bad id'"):
        devices_of_subjects({"subjects": [{"subject_id": "S-9", "region": "330723",
                                           "devices": ["ok-1", "bad id"]}]})
    with pytest.raises(PasswordsError, match="device 'D1' belongs to subjects A and B"):
        devices_of_subjects([{"subject_id": "A", "region": "r", "devices": ["D1"]},
                             {"subject_id": "B", "region": "r", "devices": ["D1"]}])
    for reserved in (ENGINE_USER, "emfence-north", CONSOLE_USER):
        with pytest.raises(PasswordsError, match=f"device id '{reserved}': ids starting with "
                                                 "'emfence-' are reserved for service accounts"):
            devices_of_subjects([{"subject_id": "A", "region": "r", "devices": [reserved]}])
    short = tmp_path / "short"
    short.write_text("abc")
    subjects = tmp_path / "s.json"
    subjects.write_text("[]")
    proc = subprocess.run([sys.executable, "-m", "emfence", "mqtt-passwords", str(subjects),
                           "--secret-file", str(short)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and f"{short}: secret is 3 bytes" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "emfence", "mqtt-passwords", str(subjects),
                           "--secret-file", str(tmp_path / "nope")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "cannot read the secret file" in proc.stderr


def test_device_password_is_stable_and_distinct():
    a = device_password(SECRET, "BR-0001")
    assert a == device_password(SECRET, "BR-0001") and len(a) == 43
    assert a != device_password(SECRET, "BR-0002")
    # Pinned: provisioning tools in other languages must derive exactly this.
    import base64
    import hashlib
    import hmac

    ref = base64.urlsafe_b64encode(
        hmac.new(SECRET, b"emfence-mqtt-v1:BR-0001", hashlib.sha256).digest()).rstrip(b"=")
    assert a == ref.decode()
