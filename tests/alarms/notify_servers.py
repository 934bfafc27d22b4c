"""Real receivers for the people channels' tests, on free loopback ports: an SMTP server
(aiosmtpd) that requires STARTTLS and a login, with a self-signed certificate made by
openssl, and an SMS gateway (an HTTP server) that fails its first ``fail_first`` requests.
Both count deliveries by the delivery id the message carries."""

from __future__ import annotations

import collections
import email
import email.policy
import json
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USER, PASSWORD = "emfence", "pa55-word"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(dir_: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl (cert, key)."""
    cert, key = dir_ / "smtp-cert.pem", dir_ / "smtp-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class SmtpServer:
    """STARTTLS required before AUTH, AUTH required before MAIL; answers 451 to the
    first ``fail_first`` messages; ``messages`` by Message-ID."""

    def __init__(self, dir_: Path, *, fail_first: int = 0, tls: bool = True):
        self.cert, key = self_signed(dir_)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.fail_first = fail_first
        self.attempts = 0
        self.logins: list[str] = []
        self.messages: dict[str, email.message.EmailMessage] = {}
        self.delivered: collections.Counter[str] = collections.Counter()
        self.port = free_port()
        # tls=False: a relay that offers no STARTTLS (and so takes no login)
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                     tls_context=context if tls else None,
                                     require_starttls=tls, auth_required=tls,
                                     authenticator=self.authenticate)
        self.controller.start()

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USER
              and auth_data.password.decode() == PASSWORD and session.ssl is not None)
        if ok:
            self.logins.append(USER)
        return AuthResult(success=ok)

    async def handle_DATA(self, server, session, envelope):
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return "451 4.3.0 try again later"
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages[msg["Message-ID"]] = msg
        self.delivered[msg["Message-ID"]] += 1
        return "250 OK"

    def close(self) -> None:
        self.controller.stop()


class SmsGateway:
    """An HTTP SMS gateway: 500 to the first ``fail_first`` requests, then
    ``{"result": {"code": "0"}}``; records each request's phone, text and request id
    (the ``X-Emfence-Delivery`` header), the body read as JSON or a form."""

    def __init__(self, *, fail_first: int = 0, token: str = "", hold_after: int | None = None):
        self.fail_first = fail_first
        # After ``hold_after`` deliveries a request hangs until ``release`` is set and is
        # then refused uncounted (a gateway that never took it): deliveries in flight.
        self.hold_after = hold_after
        self.held = 0
        self.release = threading.Event()
        self.token = token
        self.requests = 0
        self.bad_auth = 0
        self.sent: list[dict] = []
        self.delivered: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        gw = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = gw.handle(self.path, raw, self.headers)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/sms/send"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, path: str, raw: bytes, headers) -> tuple[int, dict]:
        with self.lock:
            holding = (self.hold_after is not None and not self.release.is_set()
                       and sum(self.delivered.values()) >= self.hold_after)
            self.held += holding
        if holding:
            self.release.wait(30)
            return 503, {"result": {"code": "busy"}}
        with self.lock:
            self.requests += 1
            if self.requests <= self.fail_first:
                return 500, {"result": {"code": "busy"}}
            if self.token and headers.get("Authorization") != f"Bearer {self.token}":
                self.bad_auth += 1
                return 401, {"result": {"code": "auth"}}
            if headers.get("Content-Type", "").startswith("application/json"):
                body = json.loads(raw)
            else:
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            body["query"] = parse_qs(urlsplit(path).query)
            delivery = headers["X-Emfence-Delivery"]
            self.delivered[delivery] += 1
            self.sent.append({**body, "delivery": delivery})
            return 200, {"result": {"code": "0"}}

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
