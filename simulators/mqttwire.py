"""A minimal MQTT 3.1.1 publisher for load generation: CONNECT, PUBLISH QoS 1, PUBACK.

Why not paho/aiomqtt here: their per-message bookkeeping (message objects, locks,
properties, a future per publish) costs ~100 µs of Python per QoS 1 message, which caps
one publisher process near 10 000 messages/s, below what the engine under test can take.
Encoding a PUBLISH packet is a few bytes of header, so this connection writes packets
straight to the socket and counts the broker's PUBACKs on a reader task; a bounded window
of unacknowledged messages keeps it honest (the broker must acknowledge what it takes).
It speaks the real protocol to the real broker (logins and the ACL apply) and is used
only by the simulator's pool mode; the per-device mode keeps aiomqtt, as firmware-like
clients.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping

from contract.errors import EmfenceError
from ingest.mqtt import ConnectionClosedError, connack_error, connect_error

CONNECT, CONNACK, PUBLISH_QOS1, PUBACK, DISCONNECT = 0x10, 0x20, 0x32, 0x40, 0xE0


class WireError(EmfenceError, ConnectionError):
    """The broker dropped the connection or answered nonsense; ``reason`` says how. (A
    refused login or an unreachable broker is an ``ingest.mqtt.BrokerConnectError``.)"""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, username: str | None, password: str | None,
                   clean_session: bool = True, keepalive_s: int = 0) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _str(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _str(username.encode())
        if password is not None:
            flags |= 0x40
            payload += _str(password.encode())
    body = _str(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + payload
    return bytes([CONNECT]) + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    body_len = 2 + len(topic) + 2 + len(payload)
    return b"".join((bytes([PUBLISH_QOS1]), _varint(body_len), _str(topic),
                     struct.pack("!H", packet_id), payload))


class WireConnection:
    """One MQTT connection that publishes QoS 1 with at most ``window`` unacknowledged."""

    def __init__(self, host: str, port: int, *, client_id: str, username: str | None = None,
                 password: str | None = None, window: int = 2000,
                 fixes: Mapping[str, str] | None = None):
        if not 1 <= window <= 60_000:
            raise ValueError(f"window must be 1..60000, got {window}")
        self.host, self.port = host, port
        self.client_id, self.username, self.password = client_id, username, password
        self.fixes = fixes  # what a refusal's message tells the user to do
        self.window = window
        self.sent = 0
        self.acked = 0
        self._pid = 0
        self._room = asyncio.Event()
        self._room.set()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.error: WireError | None = None

    @property
    def inflight(self) -> int:
        return self.sent - self.acked

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and log in; a refusal or an unreachable broker raises
        ``ingest.mqtt.BrokerConnectError`` naming the account, the cause and the fix."""
        where = {"host": self.host, "port": self.port, "username": self.username}
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout_s)
            self._writer.write(connect_packet(self.client_id, self.username, self.password))
            head = await asyncio.wait_for(self._reader.readexactly(4), timeout_s)
        except asyncio.IncompleteReadError:
            closed = ConnectionClosedError("the broker closed the connection before "
                                           "answering CONNECT")
            raise connect_error(closed, tls=False, fixes=self.fixes, **where) from None
        except (OSError, TimeoutError) as exc:
            raise connect_error(exc, tls=False, fixes=self.fixes, **where) from None
        if head[0] != CONNACK or head[1] != 2:
            raise WireError(f"expected CONNACK, got {head!r}")
        if head[3] != 0:
            raise connack_error(head[3], fixes=self.fixes, **where)
        self._task = asyncio.create_task(self._read_acks(), name=f"pubacks-{self.client_id}")

    async def _read_acks(self) -> None:
        r = self._reader
        try:
            while True:
                first = (await r.readexactly(1))[0]
                length, mult = 0, 1
                while True:
                    b = (await r.readexactly(1))[0]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                await r.readexactly(length)
                if first & 0xF0 == PUBACK:
                    self.acked += 1
                    if self.inflight < self.window:
                        self._room.set()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.error = WireError(f"connection to {self.host}:{self.port} lost: {exc}")
            self._room.set()  # wake a waiting publisher so it sees the error

    async def room(self) -> None:
        """Wait until the window has room (raises if the connection died)."""
        while self.inflight >= self.window and self.error is None:
            self._room.clear()
            await self._room.wait()
        if self.error is not None:
            raise self.error

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 PUBLISH (call :meth:`room` first; flush with :meth:`drain`)."""
        self._pid = self._pid % 65535 + 1
        self._writer.write(publish_packet(topic.encode(), payload, self._pid))
        self.sent += 1

    async def drain(self) -> None:
        await self._writer.drain()

    async def wait_acked(self, timeout_s: float) -> bool:
        """Wait until every publish is acknowledged; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.inflight > 0 and self.error is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self.inflight == 0

    async def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.write(bytes([DISCONNECT, 0]))
                await self._writer.drain()
            except ConnectionError:
                pass
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
