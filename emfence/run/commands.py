"""Commands to devices (issue #16, the downlink; docs/wire-protocol.md, "Downlink"):
the part of ``emfence run`` that sends what operators queued and records the replies.

- send: every :data:`POLL_S` (and at once after a reply or a reconnect), the pending
  commands of the worker's regions (``alarms.commands``) are published at QoS 1 on
  ``emfence/v1/{region}/{device_id}/cmd`` and marked ``sent`` once the broker has
  PUBACKed them; one whose ``expires_at`` passed first is marked ``expired`` instead.
  A failed publish leaves it pending: it goes out on the next connection.
- replies: the receiver hands every message on ``emfence/v1/{region}/+/reply`` here
  (:meth:`Commands.on_reply`, a queue put: the fix path never waits for it); each is
  checked (``contract.commands.parse_reply``) and recorded when its topic names the
  device and region the command was sent to, else dead-lettered
  (``unknown_command``): a device can answer only its own commands. The reply is
  PUBACKed once stored (or set aside).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import orjson
from aiomqtt import MqttError

from alarms.db import StoreError
from contract.commands import CommandError, command_payload, parse_reply
from contract.topics import TOPIC_PREFIX, command_topic, device_topic
from emfence.run.options import wall_ms
from ingest.decode import PayloadError

log = logging.getLogger("emfence.run.commands")

POLL_S = 1.0  # how often the store is asked for pending commands
REPLY_QUEUE = 10_000  # replies waiting to be stored; more are left unacknowledged
PUBLISH_TIMEOUT_S = 10.0


def reply_filters(regions: list[str] | None) -> list[str]:
    """The worker's reply subscriptions: ``emfence/v1/{region}/+/reply`` per region."""
    return [device_topic(r, "+", "reply") for r in (regions or ["+"])]


def is_reply(topic: str) -> bool:
    return topic.endswith("/reply") and topic.startswith(TOPIC_PREFIX)


class Commands:
    """Sends the worker's regions' pending commands and records their devices' replies."""

    def __init__(self, store, receiver, regions: list[str] | None, counters: Counter):
        self.store = store
        self.receiver = receiver
        self.regions = regions
        self.counters = counters
        self.replies: asyncio.Queue = asyncio.Queue(maxsize=REPLY_QUEUE)
        self.wake = asyncio.Event()
        receiver.replies = self  # the receiver subscribes to reply_filters, hands them here

    def on_reply(self, topic: str, payload: bytes, ack: tuple[int, int] | None) -> None:
        """A message on a reply topic (from the receive loop: never blocks)."""
        try:
            self.replies.put_nowait((topic, payload, ack, wall_ms()))
        except asyncio.QueueFull:  # not acknowledged: the broker sends it again
            self.counters["command_replies_dropped"] += 1

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._replies(), name="command-replies")
            while True:
                await self.receiver.connected.wait()
                try:
                    await self.send_pending()
                except StoreError:
                    pass  # the store's outage, said once by Outages: try again later
                except MqttError as exc:  # the connection went: sent again once back
                    log.warning("sending commands paused: %s", exc)
                except Exception:  # a fault of ours: said in full, and tried again
                    log.exception("sending commands failed; retrying")
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), POLL_S)
                except TimeoutError:
                    pass

    async def send_pending(self) -> int:
        """Publish the pending commands now; returns how many were marked sent."""
        rows = await asyncio.to_thread(self.store.pending_commands, self.regions)
        sent = 0
        for row in rows:
            client = self.receiver.client
            now = wall_ms()
            if row["expires_at"] <= now:
                await asyncio.to_thread(self.store.mark_command, row["cmd_id"], "expired", now)
                self.counters["commands_expired"] += 1
                continue
            if client is None:
                return sent
            payload = command_payload(row["cmd_id"], row["cmd"], row["args"], ts_ms=now,
                                      expires_ts_ms=row["expires_at"])
            await client.publish(command_topic(row["region"], row["device_id"]),
                                 orjson.dumps(payload), qos=1, timeout=PUBLISH_TIMEOUT_S)
            # aiomqtt returns once the broker has PUBACKed a QoS 1 publish
            if await asyncio.to_thread(self.store.mark_command, row["cmd_id"], "sent",
                                       wall_ms()):
                sent += 1
                self.counters["commands_sent"] += 1
        return sent

    async def _replies(self) -> None:
        while True:
            topic, payload, ack, rx = await self.replies.get()
            try:
                outcome = await asyncio.to_thread(self._record, topic, payload, rx)
            except PayloadError as exc:
                self.receiver.deadletter(topic, payload, exc, rx)
                outcome = "rejected"
            except StoreError:  # the store's outage (said once): not acknowledged, resent
                continue
            except Exception:  # a fault of ours: not acknowledged, the broker resends
                log.exception("recording a command reply failed")
                continue
            self.counters[f"command_replies_{outcome}"] += 1
            self.receiver.ack_now(ack)

    def _record(self, topic: str, payload: bytes, rx_ms: int) -> str:
        """Store one reply (in a thread): "replied" or "duplicate"; PayloadError else."""
        parts = topic.split("/")
        if len(parts) != 5 or parts[4] != "reply":
            raise PayloadError(f"bad_topic: not a reply topic: {topic[:120]}")
        region, device_id = parts[2], parts[3]
        try:
            reply: dict[str, Any] = parse_reply(orjson.loads(payload))
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"bad_json: a reply is one JSON object ({exc})") from None
        except CommandError as exc:
            raise PayloadError(f"bad_value: {exc}", where=exc.field) from None
        outcome = self.store.record_reply(reply["cmd_id"], device_id, region, reply, rx_ms)
        if outcome == "unknown":
            raise PayloadError(f"unknown_command: no command {reply['cmd_id']} was sent to "
                               f"{device_id} in region {region}")
        return outcome
