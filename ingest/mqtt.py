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
import math
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiomqtt

from contract import device_topic
from contract.errors import EmfenceError
from ingest.decode import ID_RE

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerConfigError(EmfenceError, ValueError):
    """A broker URL, credential or TLS option is wrong; the message names the option."""


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect: ``host``/``port``, TLS files, login."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive_s: int = 30

    @classmethod
    def from_options(cls, url: str, *, username: str | None = None,
                     password_file: str | None = None, tls_ca: str | None = None,
                     tls_cert: str | None = None, tls_key: str | None = None) -> BrokerSettings:
        """Build from ``mqtt://host:port`` / ``mqtts://host:port`` and the CLI options.

        A password is read from ``password_file`` (first line), never taken on the
        command line where ``ps`` would show it. TLS is on for ``mqtts://`` or when
        ``tls_ca`` is given; a client certificate needs both ``tls_cert`` and ``tls_key``.
        """
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise BrokerConfigError(f"--broker {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise BrokerConfigError(f"--broker {url!r}: no host")
        if parts.path not in ("", "/") or parts.query:
            raise BrokerConfigError(f"--broker {url!r}: only mqtt[s]://host[:port] is accepted")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise BrokerConfigError(f"--broker {url!r}: {exc}") from None
        if parts.password is not None:
            raise BrokerConfigError("--broker: put the password in --password-file, not the URL")
        user = username or (unquote(parts.username) if parts.username else None)
        password = None
        if password_file:
            try:
                text = Path(password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise BrokerConfigError(
                    f"--password-file {password_file}: {exc.strerror}") from None
            password = text.splitlines()[0].strip() if text.strip() else ""
            if not password:
                raise BrokerConfigError(f"--password-file {password_file}: empty")
            if user is None:
                raise BrokerConfigError("--password-file needs --username")
        if bool(tls_cert) != bool(tls_key):
            raise BrokerConfigError("--tls-cert and --tls-key go together")
        for opt, path in (("--tls-ca", tls_ca), ("--tls-cert", tls_cert), ("--tls-key", tls_key)):
            if path and not Path(path).is_file():
                raise BrokerConfigError(f"{opt} {path}: no such file")
        tls = parts.scheme == "mqtts" or bool(tls_ca) or bool(tls_cert)
        return cls(parts.hostname, port, tls, user, password, tls_ca, tls_cert, tls_key)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def __repr__(self) -> str:  # never print the password
        return (f"BrokerSettings(host={self.host!r}, port={self.port}, tls={self.tls}, "
                f"username={self.username!r})")


def add_broker_arguments(parser, *, username_help: str) -> None:
    """The broker options of every command that connects as a service account:
    ``--broker``, ``--username``, ``--password-file`` and the TLS files, read back by
    :func:`broker_from_args`."""
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                        help="mqtt://host:port or mqtts://host:port (default %(default)s)")
    parser.add_argument("--username", help=username_help)
    parser.add_argument("--password-file",
                        help="file whose first line is the broker password")
    parser.add_argument("--tls-ca",
                        help="CA certificate file to verify the broker (turns on TLS)")
    parser.add_argument("--tls-cert", help="client certificate file (with --tls-key)")
    parser.add_argument("--tls-key", help="client private key file")


def broker_from_args(args) -> BrokerSettings:
    """:class:`BrokerSettings` from the options of :func:`add_broker_arguments`
    (raises :class:`BrokerConfigError` naming the option)."""
    return BrokerSettings.from_options(args.broker, username=args.username,
                                       password_file=args.password_file, tls_ca=args.tls_ca,
                                       tls_cert=args.tls_cert, tls_key=args.tls_key)


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


def _read_in_bursts(paho_client) -> None:
    """Make paho read up to :data:`READ_BURST` packets per readable event.

    aiomqtt calls paho's ``loop_read()`` once per readable event, and paho then reads a
    single packet when it has nothing in flight itself (a subscriber's normal state), so
    every received message cost one trip round the event loop. This reads on until the
    socket has nothing more (paho's own ``MQTT_ERR_AGAIN``) or the burst is used up,
    with paho's own packet reader and error handling.
    """
    import paho.mqtt.client as paho

    def loop_read(max_packets: int = 1) -> paho.MQTTErrorCode:
        for _ in range(max(max_packets, READ_BURST)):
            if paho_client._sock is None:
                return paho.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = paho_client._packet_read()
            if rc > 0:
                return paho_client._loop_rc_handle(rc)
            if rc == paho.MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

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
