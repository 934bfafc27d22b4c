"""ingest.mqtt.ack_all against a real mosquitto: many PUBACKs written as one queued
packet are each taken by the broker (not sent again to the persistent session after a
reconnect), and a message left out is sent again."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as paho_mqtt
import pytest

from ingest import mqtt
from ingest.brokers import BrokerSettings

pytestmark = pytest.mark.mqtt

N = 5000  # 20 000 bytes of PUBACKs: more than one write may take




def _session(port: int):
    """The engine's client of one persistent session (the same each time)."""
    return mqtt.make_client(BrokerSettings("127.0.0.1", port), client_id="ack-all", will=None)


async def test_every_message_acknowledged_at_once_is_taken_and_one_left_out_is_sent_again(
        mosquitto):
    port = mosquitto.port
    client = _session(port)
    async with client:  # the persistent session and its subscription
        await client.subscribe("acks/#", qos=1)
    pub = paho_mqtt.Client(paho_mqtt.CallbackAPIVersion.VERSION2, "ack-all-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(f"acks/{i % 7}", str(i).encode(), qos=1) for i in range(N)]
    for info in infos:
        info.wait_for_publish(20)
    pub.loop_stop()
    pub.disconnect()

    client = _session(port)
    got = []
    async with client:
        async with asyncio.timeout(20):
            async for message in client.messages:
                got.append(message)
                got += mqtt.queued_messages(client)
                if len(got) >= N:
                    break
        assert sorted(int(m.payload) for m in got) == list(range(N))
        left = got[1234]
        mqtt.ack_all(client, [m.mid for m in got if m is not left])
        await asyncio.sleep(1.0)  # the writer sends them, the broker takes them
    # The same session again: only the message left out comes back.
    client = _session(port)
    async with client:
        async with asyncio.timeout(10):
            again = [(await anext(client.messages)).payload]
        await asyncio.sleep(1.0)
        again += [m.payload for m in mqtt.queued_messages(client)]
    assert again == [left.payload]
