"""A webhook receiver for emfence's notifications: the reference an integrator starts
from, and what ``make demo`` runs to show notifications arriving.

It checks ``X-Emfence-Signature`` over the exact bytes received with a constant-time
comparison (``hmac.compare_digest``), answers 401 to a bad signature and 400 to a body
that is not a JSON object, drops a ``X-Emfence-Delivery`` id it has already seen (a
notification may arrive twice: docs/notifications.md, Durability) and answers 204 to
everything it accepted, duplicates included, so the sender stops retrying them.

    python -m emfence.webhook_receiver --secret-file webhook.secret [--port 8099]

prints one line per notification. Standard library only; in production keep the seen
delivery ids in your own database, not in memory.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# The largest body accepted, bytes (an alarm event is well under 2 kB).
MAX_BODY_BYTES = 1 << 20


class WebhookReceiver:
    """An HTTP server on ``host:port`` (0: a free port) in a background thread, calling
    ``on_notification(event, delivery_id)`` once per new delivery id. ``counts``:
    ``received`` (new deliveries), ``duplicates``, ``bad_signature``, ``bad_body``."""

    def __init__(self, secret: bytes, *, host: str = "127.0.0.1", port: int = 0,
                 on_notification: Callable[[dict[str, Any], str], None] | None = None):
        if not secret:
            raise ValueError("the webhook secret is empty")
        self._secret = secret
        self._on = on_notification or (lambda event, delivery: None)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.counts = {"received": 0, "duplicates": 0, "bad_signature": 0, "bad_body": 0}
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def accept(self, body: bytes, signature: str, delivery: str) -> int:
        """The HTTP status for one request (the handler's logic, callable on its own)."""
        want = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, signature):
            return self._count("bad_signature", 401)
        try:
            event = json.loads(body)
        except ValueError:
            return self._count("bad_body", 400)
        if not isinstance(event, dict) or not delivery:
            return self._count("bad_body", 400)
        with self._lock:
            if delivery in self._seen:
                self.counts["duplicates"] += 1
                return 204
            self._seen.add(delivery)
            self.counts["received"] += 1
        self._on(event, delivery)
        return 204

    def _count(self, what: str, status: int) -> int:
        with self._lock:
            self.counts[what] += 1
        return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY_BYTES:
                    status = receiver._count("bad_body", 400)
                else:
                    status = receiver.accept(self.rfile.read(length),
                                             self.headers.get("X-Emfence-Signature", ""),
                                             self.headers.get("X-Emfence-Delivery", ""))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per notification is printed by the caller, not per request

        return Hook


def describe(event: dict[str, Any]) -> str:
    """One line for a notification: event, type, subject/device, level, alarm id."""
    return (f"{str(event.get('event', '?')).upper():<9} {event.get('type', '?'):<11} "
            f"{event.get('subject_id')}/{event.get('device_id')} level {event.get('level')} "
            f"alarm {event.get('alarm_id')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emfence.webhook_receiver",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--secret-file", required=True,
                   help="the file [notify.webhook] secret_file names (its content, stripped)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099)
    args = p.parse_args(argv)
    try:
        secret = Path(args.secret_file).read_bytes().strip()
        receiver = WebhookReceiver(secret, host=args.host, port=args.port,
                                   on_notification=lambda ev, d: print(describe(ev), flush=True))
    except (OSError, ValueError) as exc:
        print(f"webhook receiver: {exc}", file=sys.stderr)
        return 1
    receiver.start()
    print(f"webhook receiver: listening on {receiver.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        receiver.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
