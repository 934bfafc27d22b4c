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

Several brokers (``brokers``: the nodes of a clustered broker, from repeated
``--broker``): a connection logs in to the first that answers; when it is lost, it moves
to the next (round robin), waiting a jittered, capped backoff (``ingest.mqtt.Backoff``,
:data:`RECONNECT_MIN_S` .. :data:`RECONNECT_MAX_S`) once a whole round has failed, and
sends again (DUP) every publish the lost connection had not seen acknowledged: QoS 1, at
least once. It gives up after :data:`RECONNECT_GIVE_UP_S` without a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Mapping

from contract.errors import EmfenceError
from ingest.brokers import BrokerList
from ingest.mqtt import Backoff, ConnectionClosedError, connack_error, connect_error

CONNECT, CONNACK, PUBLISH_QOS1, PUBACK, DISCONNECT = 0x10, 0x20, 0x32, 0x40, 0xE0
DUP = 0x08
# Reconnect backoff after a lost connection (s): full jitter, doubling up to the cap.
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.2, 5.0
# A connection that finds no broker for this long gives up (its publishes count failed), s.
RECONNECT_GIVE_UP_S = 60.0

log = logging.getLogger("emfence.simulate")


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


def publish_packet(topic: bytes, payload: bytes, packet_id: int, dup: bool = False) -> bytes:
    body_len = 2 + len(topic) + 2 + len(payload)
    return b"".join((bytes([PUBLISH_QOS1 | (DUP if dup else 0)]), _varint(body_len),
                     _str(topic), struct.pack("!H", packet_id), payload))


class WireConnection:
    """One MQTT connection that publishes QoS 1 with at most ``window`` unacknowledged."""

    def __init__(self, host: str, port: int, *, client_id: str, username: str | None = None,
                 password: str | None = None, window: int = 2000,
                 fixes: Mapping[str, str] | None = None,
                 brokers: list[tuple[str, int]] | None = None):
        if not 1 <= window <= 60_000:
            raise ValueError(f"window must be 1..60000, got {window}")
        # host/port first, then the others of ``brokers`` in their order
        self.brokers = BrokerList([(host, port)]
                                  + [b for b in (brokers or []) if b != (host, port)])
        self.reconnects = 0
        self._unacked: dict[int, tuple[bytes, bytes]] = {}  # packet id -> (topic, payload)
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
        """Connect to the first broker that answers and log in; a refusal, or no broker
        answering, raises ``ingest.mqtt.BrokerConnectError`` (the first broker's) naming
        the account, the cause and the fix."""
        first = None
        for _ in range(len(self.brokers)):
            self.host, self.port = self.brokers.current
            try:
                await self._connect_one(timeout_s)
                self.brokers.worked()
                return
            except Exception as exc:
                if getattr(exc, "fatal", False):
                    raise
                first = first or exc
                self.brokers.failed()
        raise first

    async def _connect_one(self, timeout_s: float) -> None:
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
                body = await r.readexactly(length)
                if first & 0xF0 == PUBACK:
                    self._acked(body)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.error = WireError(f"connection to {self.host}:{self.port} lost: {exc}")
            self._room.set()  # wake a waiting publisher so it sees the error

    def _acked(self, body: bytes) -> None:
        if len(body) >= 2 and self._unacked.pop(struct.unpack("!H", body[:2])[0], None):
            self.acked += 1
            if self.inflight < self.window:
                self._room.set()

    async def recover(self) -> None:
        """After a lost connection: connect to the next broker (backoff after a whole
        round), then send again every publish not acknowledged. Raises the loss when no
        broker answered for :data:`RECONNECT_GIVE_UP_S`."""
        lost = self.error
        if lost is None:
            return
        await self._close_socket()
        backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
        deadline = time.monotonic() + RECONNECT_GIVE_UP_S
        # the next broker first; the lost one's loss does not count in the round
        self.brokers.failed()
        self.brokers.worked()
        while True:
            self.host, self.port = self.brokers.current
            try:
                await self._connect_one(timeout_s=5.0)
                self.brokers.worked()
                break
            except Exception as exc:  # retried until the deadline
                if getattr(exc, "fatal", False) or time.monotonic() > deadline:
                    raise lost from exc
                if self.brokers.failed():  # a whole round failed: wait first
                    await asyncio.sleep(backoff.next_delay_s())
        self.error = None
        self.reconnects += 1
        log.warning("%s: %s; reconnected to %s:%d, sending again %d publishes not "
                    "acknowledged", self.client_id, lost, self.host, self.port,
                    len(self._unacked))
        for pid, (topic, payload) in list(self._unacked.items()):
            self._writer.write(publish_packet(topic, payload, pid, dup=True))
        await self._writer.drain()

    async def room(self) -> None:
        """Wait until the window has room (reconnects if the connection died; raises if
        no broker answers)."""
        while True:
            if self.error is not None:
                await self.recover()
            if self.inflight < self.window:
                return
            self._room.clear()
            await self._room.wait()

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 PUBLISH (call :meth:`room` first; flush with :meth:`drain`)."""
        self._pid = self._pid % 65535 + 1
        while self._pid in self._unacked:  # still in flight from 65 535 publishes ago
            self._pid = self._pid % 65535 + 1
        t = topic.encode()
        self._unacked[self._pid] = (t, payload)
        self.sent += 1
        if self.error is None:
            self._writer.write(publish_packet(t, payload, self._pid))
        # else: sent by recover() with the rest not acknowledged

    async def drain(self) -> None:
        if self.error is not None:
            await self.recover()
            return
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            self.error = self.error or WireError(
                f"connection to {self.host}:{self.port} lost: {exc}")
            await self.recover()

    async def wait_acked(self, timeout_s: float) -> bool:
        """Wait until every publish is acknowledged (reconnecting if the connection is
        lost meanwhile); False on timeout or when no broker answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.inflight > 0 and loop.time() < deadline:
            if self.error is not None:
                try:
                    await self.recover()
                except WireError:
                    return False
            await asyncio.sleep(0.01)
        return self.inflight == 0

    async def _close_socket(self) -> None:
        """Drop the lost connection (its reader task and socket)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # it is gone
                await self._task
            self._task = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

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
