"""A real webhook receiver for the notification tests: an HTTP server on a free loopback
port that answers 500 to its first ``fail_first`` requests, verifies each signature with
``hmac.compare_digest`` and counts deliveries by their ``X-Emfence-Delivery`` id."""

from __future__ import annotations

import collections
import hashlib
import hmac
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


class Receiver:
    def __init__(self, secret: bytes, *, fail_first: int = 0, port: int = 0,
                 hold_after: int | None = None):
        self.secret = secret
        self.fail_first = fail_first
        # After ``hold_after`` deliveries, a request hangs until ``release`` is set and is
        # then refused uncounted (a receiver that never took it): deliveries in flight.
        self.hold_after = hold_after
        self.held = 0
        self.release = threading.Event()
        self.requests = 0
        self.bad_signatures = 0
        self.delivered: collections.Counter[str] = collections.Counter()
        self.bodies: dict[str, dict] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.handle(body, self.headers)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, body: bytes, headers) -> int:
        with self.lock:
            holding = self.hold_after is not None and sum(self.delivered.values()) >= \
                self.hold_after and not self.release.is_set()
            if holding:
                self.held += 1
        if holding:
            self.release.wait(30)
            return 503
        with self.lock:
            self.requests += 1
            if self.requests <= self.fail_first:
                return 500
            want = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            got = headers.get("X-Emfence-Signature", "")
            if (not hmac.compare_digest(want.encode(), got.encode())
                    or headers.get("Content-Type") != "application/json"):
                self.bad_signatures += 1
                return 401
            delivery = headers["X-Emfence-Delivery"]
            self.delivered[delivery] += 1
            self.bodies[delivery] = orjson.loads(body)
            return 204

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
