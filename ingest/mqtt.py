"""The MQTT transport of `emfence run`: broker URL and credentials, the aiomqtt client of
the engine's persistent session, topics, acknowledgement and reconnect backoff.

Thin on purpose: it knows MQTT, not rules. ``emfence.run`` owns the pipeline.

Acknowledgement: the engine's client turns off paho's automatic PUBACK
(``manual_ack``) and acknowledges a fix only once its effect is durable (alarm events in
the store, rule state in a checkpoint). Until then the broker keeps the message in the
engine's session and sends it again after a crash, so ``kill -9`` loses no fix. The
unacknowledged window is also the backpressure: a broker stops sending once
``max_inflight_messages`` are outstanding. Only QoS 1 messages are acknowledged: the
engine subscribes with QoS 1 (a QoS 2 publish reaches it as QoS 1), and a QoS 0 message
is processed like any other but never acknowledged (it has no packet id; the device that
chose QoS 0 has no redelivery guarantee).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import ssl
import struct
from collections.abc import Mapping

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from contract import device_topic
from contract.errors import EmfenceError
from ingest.brokers import BrokerConfigError, BrokerSettings
from ingest.decode import ID_RE

log = logging.getLogger("emfence.mqtt")

# Exit code of a command whose broker login was refused, or whose TLS handshake failed,
# before any session worked: a mistake to fix (account, password file, URL, CA), which
# restarting will not cure. 1 stays "a bad file or option", 3 "stalled".
EXIT_LOGIN_REFUSED = 4


# ----- why a connection failed ---------------------------------------------------------

# CONNACK reason codes (MQTT 5 numbering; paho reports a 3.1.1 return code 1-5 as its
# MQTT 5 equivalent, aiomqtt passes either) -> (kind, cause). "refused": the login or the
# client is refused, a mistake to fix; "busy": the broker turns clients away for now.
_V311_TO_V5 = {1: 132, 2: 133, 3: 136, 4: 134, 5: 135}
_CONNACK = {
    132: ("refused", "unsupported protocol version (the broker must speak MQTT 3.1.1)"),
    133: ("refused", "client identifier not valid"),
    134: ("refused", "bad user name or password"),
    135: ("refused", ("not authorized (a wrong password, an unknown account, or no login "
                      "where the broker wants one)")),
    138: ("refused", "banned"),
    140: ("refused", "bad authentication method"),
    136: ("busy", "server unavailable"),
    137: ("busy", "server busy"),
    151: ("busy", "quota exceeded"),
    156: ("busy", "use another server"),
    157: ("busy", "server moved"),
    159: ("busy", "connection rate exceeded"),
}
# What to do, per kind of failure; a caller passes its own where it knows better (the
# options it was given).
DEFAULT_FIXES = {
    "refused": "check the account and its password file against the broker's password "
               "file (`emfence mqtt-passwords`, then reload mosquitto)",
    "no_login": "the broker wants a login: give --username and --password-file",
    "tls": "is the listener plain MQTT? then use mqtt://HOST:PORT; or check the port",
    "tls_verify": "give --tls-ca the CA certificate that signed the broker's certificate, "
                  "and name the broker as its certificate does",
    "protocol": "is the listener TLS? then use mqtts://HOST:PORT (and --tls-ca); or check "
                "that the port is the broker's MQTT listener",
}
# Kinds that end a command at start: retrying cannot cure them.
FATAL_KINDS = frozenset({"refused", "tls", "protocol"})


class BrokerConnectError(EmfenceError, ConnectionError):
    """A connection to the broker failed before its session began; ``str()`` is one line
    naming the broker, the account, the cause and (for a mistake to fix) the fix.

    ``kind``: ``refused`` (the broker refused the login), ``tls`` (the TLS handshake or
    the certificate check failed), ``protocol`` (the broker closed the connection without
    answering CONNECT: a TLS listener spoken to in plain MQTT), ``busy`` (the broker turns
    clients away for now) or ``unreachable`` (no connection: refused, timed out, no such
    host). ``fatal`` for the first three: a mistake retrying cannot cure. ``code`` is the
    CONNACK reason code (MQTT 5 numbering) where there is one.
    """

    def __init__(self, kind: str, cause: str, *, host: str, port: int, account: str,
                 fix: str = "", code: int | None = None, also: str = ""):
        self.kind, self.cause, self.fix, self.code = kind, cause, fix, code
        self.host, self.port, self.account, self.also = host, port, account, also
        super().__init__(self._line())

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL_KINDS

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _line(self) -> str:
        who = self.account + (f" {self.also}" if self.also else "")
        head = {
            "refused": f"broker {self.where} refused the login of {who}: {self.cause}",
            "tls": f"TLS with broker {self.where} failed for {who}: {self.cause}",
            "protocol": f"broker {self.where} closed the connection of {who} before "
                        "answering its CONNECT",
            "busy": f"broker {self.where} turned {who} away for now: {self.cause}",
        }.get(self.kind, f"broker {self.where} unreachable: {self.cause}")
        return f"{head}; {self.fix}" if self.fix else head

    def with_also(self, also: str) -> BrokerConnectError:
        """The same failure, saying how many others failed alike (``also``)."""
        return BrokerConnectError(self.kind, self.cause, host=self.host, port=self.port,
                                  account=self.account, fix=self.fix, code=self.code,
                                  also=also)


class ConnectionClosedError(EmfenceError, aiomqtt.MqttError):
    """The broker closed the connection before it answered CONNECT (raised by clients made
    with :func:`fail_on_early_close`; aiomqtt alone would wait for its timeout)."""


def account_name(username: str | bytes | None) -> str:
    """How a login is named in messages: the account, or ``anonymous (no --username)``."""
    if isinstance(username, bytes):
        username = username.decode(errors="replace")
    return username if username else "anonymous (no --username)"


def connect_error(exc: BaseException, *, host: str, port: int, username: str | None,
                  tls: bool, fixes: Mapping[str, str] | None = None) -> BrokerConnectError:
    """Say why connecting (CONNECT and CONNACK, TLS included) failed: ``exc`` is what
    aiomqtt raised (or an ``OSError`` / ``TimeoutError`` of a client of our own).

    ``fixes`` overrides :data:`DEFAULT_FIXES` per key (``refused``, ``no_login``, ``tls``,
    ``tls_verify``, ``protocol``). Never raises.
    """
    fix = {**DEFAULT_FIXES, **(fixes or {})}
    where = {"host": host, "port": port, "account": account_name(username)}
    rc = getattr(exc, "rc", None)
    if isinstance(exc, MqttConnectError) and rc is not None:
        return connack_error(rc if isinstance(rc, int) else int(rc.value), host=host,
                             port=port, username=username, fixes=fixes)
    if isinstance(exc, ConnectionClosedError):
        return BrokerConnectError("protocol", str(exc), fix=fix["protocol"], **where)
    # aiomqtt turns paho's socket and TLS errors into MqttError(str(err)) "from None": the
    # original is still its __context__.
    cause = exc if isinstance(exc, OSError) else (exc.__context__ or exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = (getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
                  or str(cause))
        return BrokerConnectError("tls", f"certificate verify failed: {reason}",
                                  fix=fix["tls_verify"], **where)
    if isinstance(cause, ssl.SSLError):
        reason = getattr(cause, "reason", None) or cause
        return BrokerConnectError("tls", f"TLS handshake failed: {reason}", fix=fix["tls"],
                                  **where)
    if tls and isinstance(cause, (ConnectionResetError, ConnectionAbortedError,
                                  BrokenPipeError, EOFError)):
        # The TCP connection was made; a broker that drops it during the handshake does
        # not speak TLS there.
        return BrokerConnectError("tls", "TLS handshake failed: the broker closed the "
                                  f"connection ({_os_reason(cause)})", fix=fix["tls"], **where)
    return BrokerConnectError("unreachable", _unreachable_cause(cause), **where)


def connack_error(code: int, *, host: str, port: int, username: str | None,
                  fixes: Mapping[str, str] | None = None) -> BrokerConnectError:
    """The failure a CONNACK reason code ``code`` says (an MQTT 3.1.1 return code 1-5 or
    an MQTT 5 reason code)."""
    fix = {**DEFAULT_FIXES, **(fixes or {})}
    where = {"host": host, "port": port, "account": account_name(username)}
    code = _V311_TO_V5.get(code, code)
    kind, cause = _CONNACK.get(code, ("refused", f"CONNACK reason code {code}"))
    if kind == "busy":
        return BrokerConnectError(kind, cause, code=code, **where)
    key = "no_login" if username is None and code in (134, 135) else "refused"
    return BrokerConnectError(kind, cause, fix=fix[key], code=code, **where)


def _os_reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).lower()


def _unreachable_cause(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there: is the broker running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({_os_reason(exc)})"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "no answer (timed out)"
    return _os_reason(exc)


def fail_on_early_close(client: aiomqtt.Client) -> None:
    """Make ``client``'s connect fail at once with :class:`ConnectionClosedError` when the
    broker closes the connection before its CONNACK (aiomqtt ignores a disconnect before
    CONNACK and waits out its timeout: 30 s of silence for a TLS listener spoken to in
    plain MQTT)."""
    inner = client._client.on_disconnect

    def fail(pending: asyncio.Future) -> None:
        if not pending.done():
            pending.set_exception(ConnectionClosedError(
                "the broker closed the connection before answering CONNECT"))
            pending.exception()  # retrieved: the connect may have given up already

    def on_disconnect(paho_client, userdata, flags, reason_code, properties=None):
        inner(paho_client, userdata, flags, reason_code, properties)
        pending = client._connected  # the connect this disconnect interrupts, if any
        if not pending.done():
            # paho may call this from the thread that runs connect(); the future belongs
            # to the event loop.
            client._loop.call_soon_threadsafe(fail, pending)

    client._client.on_disconnect = on_disconnect


def drop_late_subacks(client: aiomqtt.Client) -> None:
    """A SUBACK for a subscribe that was given up (cancelled: the worker stopping while
    it subscribed) is dropped quietly: aiomqtt logs it with a traceback ("Unexpected
    message ID"), which is no error of anyone's (seen in CI: ``--http`` on a taken port
    stops the worker during its subscribes)."""
    inner = client._client.on_subscribe

    def on_subscribe(paho_client, userdata, mid, reason_codes, properties=None):
        if mid not in client._pending_subscribes:
            log.debug("SUBACK %d for a subscribe given up", mid)
            return
        inner(paho_client, userdata, mid, reason_codes, properties)

    client._client.on_subscribe = on_subscribe


def subscriptions(regions: list[str] | None) -> list[str]:
    """The engine's topic filters: fixes and statuses of each region (``None``: all)."""
    regions = regions or ["+"]
    return [device_topic(r, "+", kind) for r in regions for kind in ("fix", "status")]


def parse_regions(text: str | None) -> list[str] | None:
    """``"330723,330702"`` -> list; ``None``/``""``/``"+"`` -> ``None`` (every region)."""
    if text is None or text.strip() in ("", "+"):
        return None
    regions = [r.strip() for r in text.split(",") if r.strip()]
    for r in regions:
        if not ID_RE.fullmatch(r):
            raise BrokerConfigError(f"--regions: {r!r} is not [A-Za-z0-9_-]{{1,64}}")
    return sorted(set(regions))


def make_client(settings: BrokerSettings, *, client_id: str, will: aiomqtt.Will | None,
                manual_ack: bool = True) -> aiomqtt.Client:
    """The engine's client: fixed ``client_id`` and ``clean_session=False`` (a persistent
    session: subscriptions and queued QoS 1 messages survive engine restarts), MQTT 3.1.1,
    with PUBACK left to :func:`ack` when ``manual_ack``."""
    client = aiomqtt.Client(
        settings.host, settings.port, username=settings.username, password=settings.password,
        identifier=client_id, clean_session=False, will=will,
        protocol=aiomqtt.ProtocolVersion.V311, keepalive=settings.keepalive_s,
        tls_context=settings.ssl_context(), timeout=30.0)
    # The outbox publishes a few hundred QoS 1 events concurrently; aiomqtt would log a
    # warning for each call beyond 10 outstanding.
    client.pending_calls_threshold = 10_000
    if manual_ack:
        # aiomqtt has no option for this yet; the paho client underneath does, and must
        # be told before it connects.
        client._client.manual_ack_set(True)
    _read_in_bursts(client._client)
    _lean_receive(client._client)
    _keep_cancellations(client)
    fail_on_early_close(client)
    drop_late_subacks(client)
    return client


def _keep_cancellations(client: aiomqtt.Client) -> None:
    """Make the client wait for CONNACK, SUBACK, PUBACK and the disconnect with
    ``asyncio.timeout`` instead of ``asyncio.wait_for``.

    On Python 3.11 ``wait_for`` returns the result when a cancellation arrives as the
    awaited thing completes, and the cancellation is lost: a task stopped at that moment
    (the connection's tasks when it drops, every task at shutdown) would carry on.
    Same contract as aiomqtt's own: ``math.inf`` waits for ever, ``None`` means the
    client's timeout, and running out raises ``aiomqtt.MqttError``.
    """

    async def wait(fut, timeout: float | None):
        if timeout is None:
            timeout = client.timeout
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    client._wait_for = wait


class _NoTopicCallbacks:
    """Stands in for paho's per-topic callback matcher (``message_callback_add``), which
    neither aiomqtt nor emfence registers callbacks with."""

    def iter_match(self, topic: str):
        return ()


def _lean_receive(paho_client) -> None:
    """Skip two per-message costs of paho's receive path that buy the engine nothing
    (measured with a sampling profiler at 16 000 messages/s: ~8 % and ~3 % of the
    engine's samples):

    - matching every topic against per-topic callbacks, of which there are none;
    - a debug log line formatted for every packet (aiomqtt hands paho its logger; the
      engine logs connection events itself).
    """
    paho_client._on_message_filtered = _NoTopicCallbacks()
    paho_client.disable_logger()


# Packets read per "socket readable" event at most.
READ_BURST = 256
# Bytes asked of the socket at once by the buffered reader.
READ_CHUNK = 65536


def _read_in_bursts(paho_client) -> None:
    """Make paho read up to :data:`READ_BURST` packets per readable event, from a buffer.

    aiomqtt calls paho's ``loop_read()`` once per readable event, and paho then reads a
    single packet when it has nothing in flight itself (a subscriber's normal state), so
    every received message cost one trip round the event loop. This reads on until the
    socket has nothing more (paho's own ``MQTT_ERR_AGAIN``) or the burst is used up,
    with paho's own packet reader and error handling.

    paho reads a packet with a system call for its first byte, one for each byte of its
    length and one for the rest (three or four a fix). Its ``_sock_recv`` is given a
    buffer here: it asks the socket for up to :data:`READ_CHUNK` bytes at once, with
    paho's own ``_sock_recv`` (and so its TLS handling), only when the buffer is empty,
    and hands paho the bytes it asks for from the buffer. So paho's ``MQTT_ERR_AGAIN``
    still means that the socket has nothing more; a burst that ends with bytes left in
    the buffer, which no readable event would announce, reads on at the event loop's
    next turn. A new socket (a reconnect) starts with an empty buffer.
    """
    import paho.mqtt.client as paho

    raw_recv = paho_client._sock_recv
    buf = {"sock": None, "data": b"", "pos": 0}

    def sock_recv(bufsize: int) -> bytes:
        data, pos = buf["data"], buf["pos"]
        if pos >= len(data) or buf["sock"] is not paho_client._sock:
            data = raw_recv(READ_CHUNK)  # raises BlockingIOError when there is nothing
            buf["sock"], buf["data"], pos = paho_client._sock, data, 0
        out = data[pos:pos + bufsize]
        buf["pos"] = pos + len(out)
        return out

    def loop_read(max_packets: int = 1) -> paho.MQTTErrorCode:
        for _ in range(max(max_packets, READ_BURST)):
            if paho_client._sock is None:
                return paho.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = paho_client._packet_read()
            if rc > 0:
                return paho_client._loop_rc_handle(rc)
            if rc == paho.MQTTErrorCode.MQTT_ERR_AGAIN:
                return paho.MQTTErrorCode.MQTT_ERR_SUCCESS
        if buffered():  # the burst is used up: the rest at the loop's next turn
            asyncio.get_running_loop().call_soon(loop_read)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def buffered() -> bool:
        return buf["pos"] < len(buf["data"]) and buf["sock"] is paho_client._sock

    paho_client._sock_recv = sock_recv
    paho_client.loop_read = loop_read


def queued_messages(client: aiomqtt.Client) -> list:
    """Messages aiomqtt has already received and queued, taken without waiting.

    ``async for message in client.messages`` costs a task and an ``asyncio.wait`` per
    message; after it yields one, the receive loop takes whatever else is queued here.
    """
    queue = client._queue
    out = []
    while True:
        try:
            out.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            return out


# The QoS of the engine's subscriptions. The broker delivers a message with the lower of
# its publish QoS and this, so the engine receives QoS 0 and QoS 1 messages only. Not 2:
# with manual_ack, paho (2.x) still answers a QoS 2 PUBLISH with PUBREC on receipt and
# only holds back the final PUBCOMP, and after PUBREC the broker keeps just the packet
# id, not the message: a crash before the effect is durable would lose the fix.
SUBSCRIBE_QOS = 1
# MQTT 3.1.1 PUBACK: its type (4), remaining length 2, then the packet id (2 bytes); as
# the first two of the four bytes of a big-endian int (ack_all).
PUBACK = 0x40
PUBACK_HEAD = (PUBACK << 24) | (2 << 16)


def ack_all(client: aiomqtt.Client, mids: list[int]) -> None:
    """:func:`ack` of each of ``mids``, in this order, written at once: paho queues a
    PUBACK as a packet of its own and writes each with a system call of its own (4 bytes;
    an acknowledgement window is 20 000 of them), so they go to paho as one queued packet
    of all of them, written like any other (in order with the rest of its queue, partial
    writes resumed)."""
    if mids:
        client._client._packet_queue(PUBACK, struct.pack(f"!{len(mids)}I", *[
            PUBACK_HEAD | mid for mid in mids]), 0, 0)


def ack(client: aiomqtt.Client, mid: int) -> None:
    """Send the PUBACK of a QoS 1 message received with ``manual_ack``.

    Never for a QoS 0 message: it has no packet id (paho reports 0), and a PUBACK for
    packet id 0 is a protocol error after which the broker closes the connection.
    """
    client._client.ack(mid, 1)


class Backoff:
    """Reconnect delays: full jitter, doubling from ``min_s`` up to ``max_s``."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None):
        if min_s <= 0 or max_s < min_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {min_s}, {max_s}")
        self.min_s, self.max_s = min_s, max_s
        self._ceiling = min_s
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay_s(self) -> float:
        """A delay drawn uniformly from [min_s / 2, ceiling]; the ceiling then doubles."""
        delay = self._rng.uniform(self.min_s / 2, self._ceiling)
        self._ceiling = min(self.max_s, self._ceiling * 2)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self._ceiling = self.min_s
        self.attempts = 0


# ----- SUBACK ------------------------------------------------------------------------

# Exit code of `emfence run` when the broker refuses a subscription at start (an ACL, or
# a broker limit such as NATS's max_ack_pending): a mistake to fix, not to restart on.
EXIT_SUBSCRIBE_REFUSED = 5
# The SUBACK return code of a refused subscription (MQTT 3.1.1: 0x80; MQTT 5 reason
# codes >= 0x80 are refusals too).
SUBACK_FAILURE = 0x80


class SubscriptionRefused(EmfenceError, RuntimeError):
    """The broker answered a SUBSCRIBE with a failure code: ``topic_filter`` on broker
    ``where`` (``host:port``) with ``code``. ``str()`` is one line naming both."""

    def __init__(self, topic_filter: str, where: str, code: int, account: str):
        self.topic_filter, self.where, self.code = topic_filter, where, code
        super().__init__(
            f"broker {where} refused the subscription to {topic_filter} for {account} "
            f"(SUBACK 0x{code:02x}): its ACL does not let this account read it, or a limit "
            "of the broker (NATS: max_ack_pending summed over the session's subscriptions) "
            "is reached; fix the broker's ACL or limits, or --regions")


def suback_codes(granted) -> list[int]:
    """The SUBACK codes aiomqtt returns (paho ``ReasonCode``s, or plain granted QoS
    numbers) as ints."""
    return [int(getattr(g, "value", g)) for g in granted]


async def subscribe_checked(client: aiomqtt.Client, topic_filter: str, settings: BrokerSettings,
                            qos: int = SUBSCRIBE_QOS) -> int:
    """Subscribe to ``topic_filter`` and read its SUBACK: the granted QoS, or
    :class:`SubscriptionRefused` when the broker refused it (0x80)."""
    codes = suback_codes(await client.subscribe(topic_filter, qos=qos))
    code = codes[0] if codes else SUBACK_FAILURE
    if code >= SUBACK_FAILURE:
        raise SubscriptionRefused(topic_filter, f"{settings.host}:{settings.port}", code,
                                  account_name(settings.username))
    return code
