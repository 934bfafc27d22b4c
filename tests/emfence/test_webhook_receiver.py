"""The example webhook receiver (emfence.webhook_receiver) over real HTTP: it accepts a
correctly signed notification once, answers 204 to a duplicate without passing it on,
and refuses a bad signature (401) and a body that is no JSON object (400)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import orjson

from alarms.notify import signature
from emfence.webhook_receiver import WebhookReceiver

SECRET = b"s3cret-for-the-test"


def _post(url: str, body: bytes, *, secret: bytes = SECRET, delivery: str = "d-1"):
    return httpx.post(url, content=body, timeout=5, headers={
        "Content-Type": "application/json", "X-Emfence-Delivery": delivery,
        "X-Emfence-Signature": signature(body, secret)})


def test_signed_once_duplicate_dropped_bad_signature_and_body_refused():
    got = []
    hook = WebhookReceiver(SECRET, on_notification=lambda ev, d: got.append((d, ev))).start()
    try:
        body = orjson.dumps({"event": "raised", "alarm_id": "a1", "type": "outbound",
                             "subject_id": "S-1", "device_id": "B-1", "at": 1, "level": 1})
        assert _post(hook.url, body).status_code == 204
        assert _post(hook.url, body).status_code == 204  # the duplicate: acknowledged...
        assert [d for d, _ in got] == ["d-1"]  # ...but passed on once
        assert got[0][1]["alarm_id"] == "a1"
        assert _post(hook.url, body, secret=b"wrong", delivery="d-2").status_code == 401
        tampered = body.replace(b"S-1", b"S-2")
        r = httpx.post(hook.url, content=tampered, timeout=5, headers={
            "X-Emfence-Delivery": "d-3", "X-Emfence-Signature": signature(body, SECRET)})
        assert r.status_code == 401
        assert _post(hook.url, b"[1, 2]", delivery="d-4").status_code == 400
        assert _post(hook.url, b"not json", delivery="d-5").status_code == 400
        assert hook.counts == {"received": 1, "duplicates": 1, "bad_signature": 2,
                               "bad_body": 2}
    finally:
        hook.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_command_prints_each_notification(tmp_path):
    secret_file = tmp_path / "hook.secret"
    secret_file.write_bytes(b"  " + SECRET + b"\n")  # stripped, as the engine reads it
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "emfence.webhook_receiver", "--secret-file",
                             str(secret_file), "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == (
            f"webhook receiver: listening on http://127.0.0.1:{port}/hook")
        body = orjson.dumps({"event": "cleared", "alarm_id": "a9", "type": "exclusion",
                             "subject_id": "S-9", "device_id": "P-9", "at": 5, "level": 1})
        assert _post(f"http://127.0.0.1:{port}/hook", body, delivery="x").status_code == 204
        line = proc.stdout.readline()
        assert line.split() == ["CLEARED", "exclusion", "S-9/P-9", "level", "1", "alarm", "a9"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_command_names_a_missing_secret_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "emfence.webhook_receiver", "--secret-file",
                           str(tmp_path / "nope"), "--port", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("webhook receiver: ") and "nope" in proc.stderr
    assert "Traceback" not in proc.stderr
