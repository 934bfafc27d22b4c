"""The engine client's buffered reads (ingest.mqtt._read_in_bursts) against a real
mosquitto, plain and TLS: paho asks the socket for a whole chunk instead of a system call
per packet field, every message still arrives in order, and a burst that ends with
messages left in the buffer (no readable event will announce them) goes on by itself."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest
from test_ingest_run_options import make_tls_files

from ingest import mqtt
from ingest.brokers import BrokerSettings

pytestmark = pytest.mark.mqtt

N = 300


def _client(broker, ca: str | None) -> tuple[aiomqtt.Client, list[int]]:
    """A client set up as make_client sets up the engine's, whose paho socket reads are
    counted (the reads the buffer makes of the socket)."""
    settings = BrokerSettings("127.0.0.1", broker.port, tls=ca is not None, tls_ca=ca)
    client = aiomqtt.Client("127.0.0.1", broker.port, identifier="buffered-reads",
                            protocol=aiomqtt.ProtocolVersion.V311,
                            tls_context=settings.ssl_context(), timeout=10.0)
    paho = client._client
    reads = [0]
    raw = paho._sock_recv

    def counted(bufsize: int) -> bytes:
        reads[0] += 1
        return raw(bufsize)

    paho._sock_recv = counted
    mqtt._read_in_bursts(paho)
    mqtt._lean_receive(paho)
    return client, reads


async def _receive_all(client, publisher, topic: str) -> list[bytes]:
    async with client:
        await client.subscribe("burst/#", qos=1)
        for i in range(N):  # published at once: many packets to a chunk
            publisher.publish(topic, str(i).encode(), qos=1)
        got = []
        async with asyncio.timeout(15):
            async for message in client.messages:
                got.append(message.payload)
                if len(got) == N:
                    return got
    return got


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_every_message_arrives_in_order_with_few_socket_reads(
        tmp_path, mosquitto_factory, monkeypatch, tls):
    import paho.mqtt.client as paho_mqtt

    ca = None
    if tls:
        ca, cert, key = make_tls_files(tmp_path)
        broker = mosquitto_factory(auth=False, tls=(cert, key))
    else:
        broker = mosquitto_factory(auth=False)
    # Small bursts: after each, messages are left in the buffer with nothing on the
    # socket to wake the reader; without the reader going on by itself they would wait
    # for the next keepalive (the test's timeout is shorter).
    monkeypatch.setattr(mqtt, "READ_BURST", 3)
    client, reads = _client(broker, ca)
    publisher = paho_mqtt.Client(paho_mqtt.CallbackAPIVersion.VERSION2, "publisher")
    if ca is not None:
        publisher.tls_set(ca_certs=ca)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        t = time.monotonic()
        got = await _receive_all(client, publisher, "burst/1")
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    assert got == [str(i).encode() for i in range(N)]
    assert time.monotonic() - t < 10
    # paho's own reader made three or more reads a message (type, length, rest); a TLS
    # socket gives one record a read, and mosquitto sends each message in its own
    assert reads[0] < (2 * N if tls else N / 3), reads[0]
