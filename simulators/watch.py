"""Watching the alarm topics: what an operator's screen would receive, and when.

Each alarm event is kept as published by the engine plus ``rx_ms``, the wall-clock
epoch ms at which it arrived here; ``emfence score`` measures fix->alarm latency as
``rx_ms - at`` (``at`` is the deciding fix's own timestamp, which the simulator sets
from the wall clock when it publishes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import orjson

from contract.topics import alarm_topic
from ingest.mqtt import connect_error, fail_on_early_close

ALARM_TOPIC = alarm_topic("+", "+")


# What a refused alarm reader is told to do, in `emfence simulate`'s terms.
READER_FIXES = {
    "refused": "check --alarms-username and --alarms-password-file: an account that may "
               "read alarms (emfence-console, emfence-console-NAME, emfence-loadgen) and its "
               "password as in the broker's password file",
    "no_login": "the broker wants a login to read alarms: give --alarms-username "
                "emfence-console --alarms-password-file FILE",
    "protocol": "is the listener TLS? `emfence simulate` speaks plain MQTT: give --broker a "
                "plain listener",
}


async def watch_alarms(host: str, port: int, *, stop: asyncio.Event,
                       username: str | None = None, password: str | None = None,
                       out: str | Path | None = None,
                       on_event: Callable[[dict], None] | None = None,
                       ready: asyncio.Event | None = None,
                       client_id: str | None = None) -> list[dict]:
    """Subscribe (QoS 1) to every region's alarm topics until ``stop`` is set. Every event
    gets ``rx_ms`` and is appended to ``out`` (JSON lines, flushed per event) and passed
    to ``on_event``. ``ready`` is set once the subscription is acknowledged. Returns the
    events. A payload that is not a JSON object is kept as ``{"undecodable": ...}``.
    A refused login or an unreachable broker raises ``ingest.mqtt.BrokerConnectError``."""
    events: list[dict] = []
    client = aiomqtt.Client(host, port, username=username, password=password,
                            identifier=client_id)
    fail_on_early_close(client)
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise connect_error(exc, host=host, port=port, username=username, tls=False,
                            fixes=READER_FIXES) from None
    # A line per alarm event to a local file: small, rare writes next to network I/O.
    fh = open(out, "ab") if out is not None else None  # noqa: ASYNC230, SIM115 - closed below
    try:
        await client.subscribe(ALARM_TOPIC, qos=1)
        if ready is not None:
            ready.set()
        messages = client.messages.__aiter__()
        while not stop.is_set():
            get = asyncio.ensure_future(messages.__anext__())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({get, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            stopper.cancel()
            event = _received(get.result())
            events.append(event)
            if fh is not None:
                fh.write(orjson.dumps(event) + b"\n")
                fh.flush()
            if on_event is not None:
                on_event(event)
    finally:
        if fh is not None:
            fh.close()
        await client.__aexit__(None, None, None)
    return events


def _received(msg) -> dict:
    """An alarm message as kept: the event, ``rx_ms`` (epoch ms now) and ``topic``."""
    rx_ms = int(time.time() * 1000)
    try:
        event = orjson.loads(msg.payload)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        event = {"undecodable": bytes(msg.payload[:256]).decode(errors="replace")}
    event["rx_ms"] = rx_ms
    event["topic"] = str(msg.topic)
    return event
