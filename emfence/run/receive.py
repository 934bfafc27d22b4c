"""Receive: the broker connection of `emfence run`. MQTT messages -> decoded records in
the open micro-batch, rejections -> dead letters, redeliveries recognised; the outbox
publisher runs with each connection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import orjson

from contract import deadletter_topic, drain_topic, health_topic
from emfence.run.commands import is_reply, reply_filters
from emfence.run.drain import DrainMarkers
from emfence.run.intake import Intake
from emfence.run.options import (
    DRAIN_ACK_S,
    RETRY_LOG_EVERY_S,
    YIELD_EVERY,
    message_digest,
    wall_ms,
)
from ingest.decode import (
    PayloadError,
    deadletter_record,
    decode_fix_payload,
    decode_status_payload,
    parse_topic,
)
from ingest.passwords import engine_account, engine_client_id

log = logging.getLogger("emfence.run")


def login_fixes(name: str) -> dict[str, str]:
    """What to do when the broker refuses worker ``name`` (``ingest.mqtt.connect_error``'s
    ``fixes``), in the terms of `emfence run`'s options."""
    account = engine_account(name)
    return {
        "refused": f"check --username (this worker's own account {account}) and "
                   "--password-file against the broker's password file: `emfence "
                   f"mqtt-passwords SUBJECTS --secret-file SECRET --engine {name}=PASSWORD_FILE "
                   "-o PASSWD`, then reload mosquitto",
        "no_login": f"the broker wants a login: give --username {account} --password-file "
                    f"FILE (`emfence mqtt-passwords ... --engine {name}=FILE` makes the "
                    "account)",
        "tls": "is the listener plain MQTT? then use --broker mqtt://HOST:PORT; or check "
               "the port",
        "tls_verify": "give --tls-ca the CA certificate that signed the broker's "
                      "certificate, and name the broker as its certificate does",
        "protocol": "is the listener TLS? then use --broker mqtts://HOST:PORT (and "
                    "--tls-ca); or check that the port is the broker's MQTT listener",
    }


class ConnectRetries:
    """Failed connection attempts in few log lines: the first of a cause at once (and a
    change of cause), then one line per ``every_s`` saying how many failed meanwhile."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.key: tuple[str, str] | None = None
        self.logged_at = 0.0
        self.unlogged = 0

    def failed(self, failure) -> int | None:
        """Count an attempt that failed with ``failure`` (kind, cause); the number of
        attempts a line logged now stands for, or None when it waits."""
        now = self.clock()
        key = (failure.kind, failure.cause)
        self.unlogged += 1
        if key != self.key or now - self.logged_at >= self.every_s:
            n, self.unlogged = self.unlogged, 0
            self.key, self.logged_at = key, now
            return n
        return None


class Receiver:
    """Owns the connection (``client``, its generation ``gen``: packet ids are only valid
    within one; ``connected``), the drain markers and the dead-letter queue."""

    def __init__(self, *, broker, opts, icfg, registry: Callable, batches, acks, hold,
                 outbox, counters: Counter, rejects: Counter, alive: Callable,
                 stopping: Callable[[], bool], on_connected: Callable,
                 on_fatal: Callable[[int], None]):
        from ingest import brokers, mqtt

        self.mqtt = mqtt
        # One broker, or the --broker list: connect to the first that answers, move to
        # the next on loss (ingest.brokers.BrokerList).
        self.brokers = brokers.BrokerList(broker if isinstance(broker, list) else [broker])
        self.opts = opts
        self.icfg = icfg
        self.registry = registry  # () -> the current registry (a reload replaces it)
        self.batches = batches
        self.acks = acks
        self.hold = hold
        self.outbox = outbox
        self.counters = counters
        self.rejects = rejects
        self.alive = alive  # feeds the watchdog
        self.stopping = stopping
        self.announce = on_connected  # async (client): publish health "online"
        self.on_fatal = on_fatal  # (exit code): stop the engine, the broker refused it
        self.fixes = login_fixes(opts.name)
        self.client = None
        self.gen = 0
        self.connected = asyncio.Event()
        self.deadletters: asyncio.Queue = asyncio.Queue(maxsize=icfg.deadletter_queue_messages)
        # A subscription the broker refused on a reconnect (after a start where all were
        # granted): the worker runs on, "degraded" in health and readiness, until a later
        # connection has every subscription granted. None: all granted.
        self.degraded: str | None = None
        self.worked = False  # a connection of this process had all its SUBACKs
        self.refused_filters: list[str] = []  # refused on this connection, asked again
        self.drain_topic = drain_topic(opts.name)
        # ingest.subscribe = "all": every region's filters, this worker's regions kept here
        self.mine = frozenset(opts.regions) if opts.regions and icfg.subscribe == "all" \
            else None
        self.replies = None  # emfence.run.commands.Commands: the devices' command replies
        # the regions of this worker's subscriptions (None: the filters of every region)
        self.sub_regions = None if self.mine is not None else opts.regions
        self.markers = DrainMarkers(opts.name, self.sub_regions)  # emfence.run.drain
        self.disconnected_at_ms: int | None = None
        # () -> awaitable, awaited before each connection attempt: a worker group's lease
        # (emfence.run.lease) confirms it still holds the group's session. None: none.
        self.may_connect: Callable[[], Awaitable[None]] | None = None
        self._drain_sent_ms = 0
        self._drain_messages = 0
        self.intake = Intake(icfg, acks, batches, counters)  # the broker's limits, watched

    @property
    def broker(self):
        """The broker this worker connects (or is connected) to now."""
        return self.brokers.current

    async def run(self) -> None:
        """Connect, receive, reconnect with backoff, until stopping.

        With several ``--broker`` URLs a failed attempt or a lost session moves to the
        next broker at once; the backoff delay is waited only once every broker of the
        list has failed in a row (a whole round).

        A subscription the broker refuses (SUBACK 0x80) is fatal before any session of
        this process worked (``on_fatal(EXIT_SUBSCRIBE_REFUSED)``), and makes the worker
        "degraded" later.

        A refused login or a TLS failure before any session of this process worked is
        fatal (``on_fatal(EXIT_LOGIN_REFUSED)``: the account, password or URL is wrong
        and waiting will not fix it). Later, it is retried like an unreachable broker (a
        password file being rotated, a broker restarting with a new one), and each log
        line names it.
        """
        import aiomqtt

        backoff = self.mqtt.Backoff(self.icfg.reconnect_min_s, self.icfg.reconnect_max_s)
        will = aiomqtt.Will(health_topic(self.opts.name),
                            orjson.dumps({"status": "offline", "name": self.opts.name}),
                            qos=1, retain=True)
        client_id = engine_client_id(self.opts.name, self.broker.username)
        retries = ConnectRetries(RETRY_LOG_EVERY_S)
        while not self.stopping():
            if self.may_connect is not None:
                await self.may_connect()
            client = self.mqtt.make_client(self.broker, client_id=client_id, will=will)
            self.alive()  # a connection attempt: the reconnect loop is running
            failure = refusal = None
            session = False
            try:
                async with client:
                    session = True  # CONNACK accepted
                    await self._on_connected(client)
                    backoff.reset()
                    retries.reset()
                    self.brokers.worked()
                    await self._receive(client)
            except* self.mqtt.SubscriptionRefused as refused:
                refusal = refused.exceptions[0]
            except* aiomqtt.MqttError as lost:
                failure = self._on_disconnected(lost.exceptions[0], session)
            finally:
                self.client = None
                self.connected.clear()
            self.alive()
            if refusal is not None:
                self._refused(refusal)
                return
            if await self._after_attempt(failure, session, backoff, retries):
                return

    async def _after_attempt(self, failure, session: bool, backoff, retries) -> bool:
        """What an attempt that ended leads to: True to stop (stopping, or a fatal
        failure before any session worked); otherwise on to the next broker at once, or,
        after a whole round failed, the backoff delay first."""
        if self.stopping():
            return True
        if failure is not None and failure.fatal and self.counters["connects"] == 0:
            log.critical("%s; no session has worked yet: exiting %d", failure,
                         self.mqtt.EXIT_LOGIN_REFUSED)
            self.on_fatal(self.mqtt.EXIT_LOGIN_REFUSED)
            return True
        if not self.brokers.failed():
            # The next broker of the list at once: said after a lost session; the
            # attempts of a round that keeps failing are summed up by _log_retry.
            log.log(logging.INFO if session else logging.DEBUG,
                    "trying the next broker %s:%d", self.broker.host, self.broker.port)
            return False
        delay = backoff.next_delay_s()
        if failure is not None:
            self._log_retry(retries, failure, backoff.attempts, delay)
        await asyncio.sleep(delay)
        return False

    def _refused(self, exc) -> None:
        """A subscription refused at start (:class:`ingest.mqtt.SubscriptionRefused`, raised
        only before any session worked): one line, and the process ends."""
        log.critical("%s; no session has worked yet: exiting %d", exc,
                     self.mqtt.EXIT_SUBSCRIBE_REFUSED)
        self.on_fatal(self.mqtt.EXIT_SUBSCRIBE_REFUSED)

    def _log_retry(self, retries: ConnectRetries, failure, attempt: int, delay_s: float) -> None:
        """One line for a failed connection attempt, unless one for the same cause was
        logged less than :data:`RETRY_LOG_EVERY_S` ago."""
        n = retries.failed(failure)
        if n is None:
            return
        since = f", {n} failed attempts since the last line" if n > 1 else ""
        log.log(logging.ERROR if failure.fatal else logging.WARNING,
                "%s; reconnect attempt %d in %.1f s%s; keeping the state of %d devices (%d "
                "messages processed since the last checkpoint)", failure, attempt, delay_s,
                since, len(self.registry().device_ids), self.acks.since_checkpoint)

    async def _receive(self, client) -> None:
        # Alarm delivery lives and dies with the connection: a new one starts by resending
        # whatever the last one left undelivered. The task group ends both together and
        # waits for both: when the connection is gone the receive loop raises and the
        # outbox is cancelled; a cancellation of this task reaches both (never swallowed
        # on the way).
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.outbox.run(client), name="outbox")
            async for message in client.messages:
                await self.on_message(message)
                for n, more in enumerate(self.mqtt.queued_messages(client), 1):
                    await self.on_message(more)
                    if n % YIELD_EVERY == 0:
                        # Taking queued messages does not yield: let the processor, the
                        # sweeps and the signal handlers run.
                        await asyncio.sleep(0)

    async def _on_connected(self, client) -> None:
        self.gen += 1
        self.counters["connects"] += 1
        self.acks.reconnected(self.gen)
        self.intake.reconnected(self.gen)
        await self._subscribe(client)
        self.client = client
        self.connected.set()
        now = wall_ms()
        reconnect = self.counters["connects"] > 1
        if reconnect:
            self.counters["reconnects"] += 1
            away = now - (self.disconnected_at_ms or now)
            log.info("reconnected to the broker after %.1f s away (%s:%d); state kept; "
                     "offline sweeps resume once the backlog is drained, in %.0f s at the "
                     "earliest (devices need time to reconnect)",
                     away / 1000, self.broker.host, self.broker.port,
                     self.icfg.restart_grace_s)
        else:
            log.info("connected to %s:%d as %s (persistent session %s)",
                     self.broker.host, self.broker.port, self.broker.username or "anonymous",
                     engine_client_id(self.opts.name, self.broker.username))
        self.hold.connected(reconnect, now)  # CONNACK and SUBACKs: the broker answers
        # A marker per device subscription queues behind whatever the session holds for
        # it: all back means drained (emfence.run.drain). Not acknowledged in DRAIN_ACK_S:
        # the broker cannot store it, the session does not work there
        # (aiomqtt.MqttError: on to the next broker).
        self._drain_sent_ms = now
        self._drain_messages = self.counters["messages"]
        await asyncio.gather(*(client.publish(t, p, qos=1, timeout=DRAIN_ACK_S)  # together:
                               for t, p in self.markers.start(self.refused_filters)))  # one RTT
        self.hold.missing = self.markers.missing()
        self.hold.drained = not self.markers.waiting  # every device filter refused
        await self.announce(client)

    async def _subscribe(self, client) -> None:
        """Subscribe to the worker's filters and its drain topic, reading every SUBACK.

        A refused one before any session of this process worked raises (fatal at start);
        later the worker goes on with the granted ones and is "degraded" (health, /readyz,
        an error line) until a connection has them all granted again."""
        mqtt = self.mqtt
        refused = []
        filters = mqtt.subscriptions(self.sub_regions) + [self.drain_topic]
        if self.replies is not None:
            filters += reply_filters(self.sub_regions)
        for f in filters:
            try:
                await mqtt.subscribe_checked(client, f, self.broker)
            except mqtt.SubscriptionRefused as exc:
                self.counters["subscriptions_refused"] += 1
                if not self.worked:
                    raise
                refused.append(exc)
        self.worked = True
        self._refusals(refused, "on this reconnect")

    def _refusals(self, refused: list, when: str) -> None:
        """Record the subscriptions refused now (none: no longer degraded)."""
        self.refused_filters = [e.topic_filter for e in refused]
        if refused:
            degraded = "; ".join(str(e) for e in refused)
            if degraded != self.degraded:
                log.error("degraded: %s (%d of the worker's subscriptions refused %s; going "
                          "on with the others, asked again every ingest.health_interval_s)",
                          degraded, len(refused), when)
            self.degraded = degraded
        elif self.degraded is not None:
            log.warning("every subscription granted again: no longer degraded")
            self.degraded = None

    async def retry_refused(self) -> None:
        """Ask again for the subscriptions the broker refused on this connection (called
        every ``ingest.health_interval_s``): all granted ends "degraded"."""
        client = self.client
        if client is None or not self.refused_filters:
            return
        mqtt = self.mqtt
        refused = []
        for f in self.refused_filters:
            try:
                await mqtt.subscribe_checked(client, f, self.broker)
            except mqtt.SubscriptionRefused as exc:
                refused.append(exc)
        if client is self.client:  # still the same connection
            self._refusals(refused, "again")

    def _on_disconnected(self, exc: Exception, session: bool):
        """A lost session is logged here; a failed connection attempt is returned, said
        (:class:`ingest.mqtt.BrokerConnectError`: refused, TLS, unreachable)."""
        if session:
            self.disconnected_at_ms = wall_ms()
            self.counters["disconnects"] += 1
            log.warning("broker connection lost: %s (%s:%d); reconnecting with backoff, the "
                        "state kept", exc, self.broker.host, self.broker.port)
            return None
        failure = self.mqtt.connect_error(exc, host=self.broker.host, port=self.broker.port,
                                          username=self.broker.username, tls=self.broker.tls,
                                          fixes=self.fixes)
        self.counters["connect_failures"] += 1
        log.debug("connect failed: %r", exc)
        return failure

    async def on_message(self, message) -> None:
        """One message from the broker: into the open batch, a dead letter, or (ping,
        drain marker, retained copy, redelivery) acknowledged as the rule says."""
        self.alive()
        self.hold.heard()
        if self.stopping():
            return  # not acknowledged: the broker keeps it for the next start
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes):
            payload = bytes(payload) if isinstance(payload, (bytearray, memoryview)) else \
                str(payload).encode()
        # Only QoS 1 takes an acknowledgement (the engine subscribes with QoS 1, so the
        # broker hands it QoS 2 publishes as QoS 1). A QoS 0 message has no packet id, and
        # a PUBACK for one is a protocol error that makes the broker drop the engine.
        ack = (self.gen, message.mid) if message.qos else None
        if topic == self.drain_topic:  # the engine's ping
            self.ack_now(ack)
            return
        if topic in self.markers.topics and self._drain_marker(topic, payload, ack):
            return
        if message.retain:
            # A copy the broker kept of a device's retained publish, replayed at every
            # subscribe: the publish itself reached the engine when it was made, so the
            # copy is stale; it is acknowledged and counted, never processed again.
            self.counters["retained_ignored"] += 1
            self.ack_now(ack)
            return
        if self.mine is not None and topic.split("/", 3)[2] not in self.mine:
            self.counters["other_region"] += 1  # another worker's: its session has a copy
            self.ack_now(ack)
            return
        if self.replies is not None and is_reply(topic):
            self.replies.on_reply(topic, payload, ack)  # a queue put; acked once stored
            return
        self.counters["messages"] += 1
        if self.hold.awaiting_devices:  # the first device message after a reconnect
            self.hold.device_message(wall_ms())
        digest = message_digest(topic, payload)
        seen = self.acks.seen(digest)
        if seen is not None:
            self.counters["redelivered"] += 1
            if seen == "join":  # sent again before its checkpoint: ack with its batch
                self.batches.join(ack, None)
                self.intake.received(ack, None)
                self.intake.redelivered(digest)
            else:
                self.ack_now(ack)
            return
        self._accept(topic, payload)
        self.acks.received.add(digest)
        self.batches.join(ack, digest)
        self.intake.received(ack, digest)
        if self.batches.full:
            await self.batches.flush()

    def _drain_marker(self, topic: str, payload: bytes, ack) -> bool:
        """A message on a marker topic: True when it was a marker (acknowledged)."""
        drained = self.markers.arrived(topic, payload)
        if drained is None:
            return False
        self.ack_now(ack)
        self.hold.missing = self.markers.missing()
        if drained and not self.hold.drained:
            self.hold.drained = True
            log.info("backlog drained: %d messages in %.1f s since connecting",
                     self.counters["messages"] - self._drain_messages,
                     (wall_ms() - self._drain_sent_ms) / 1000)
        return True

    def _accept(self, topic: str, payload: bytes) -> None:
        """Decode a device's message into the open batch, or dead-letter it."""
        rx = wall_ms()
        batch = self.batches.batch
        try:
            region, device_id, kind = parse_topic(topic)
            registry = self.registry()
            idx = registry.device_index(device_id)
            if idx < 0:
                raise PayloadError(f"unknown_device: {device_id} is not registered")
            home = registry.device_region(idx)
            if home != region:
                raise PayloadError(f"wrong_region: {device_id} is registered in region {home}")
            if kind == "fix":
                rejects: list[PayloadError] = []
                fixes = decode_fix_payload(payload, rx_ms=rx, config=self.icfg, rejects=rejects)
                for r in rejects:
                    self.deadletter(topic, payload, r, rx)
                for fix in fixes:
                    batch.add_fix(device_id, fix, rx)
                self.counters["fixes_accepted"] += len(fixes)
            else:
                batch.add_status(device_id, decode_status_payload(
                    payload, rx_ms=rx, config=self.icfg), rx)
                self.counters["statuses_accepted"] += 1
        except PayloadError as exc:
            self.deadletter(topic, payload, exc, rx)

    def ack_now(self, ack: tuple[int, int] | None) -> None:
        """Acknowledge a message of this connection (``None``: a QoS 0 one, which takes
        no acknowledgement)."""
        if ack is None:
            return
        gen, mid = ack
        if gen == self.gen and self.client is not None:
            self.mqtt.ack(self.client, mid)

    def ack_all(self, acks: list[tuple[int, int] | None]) -> None:
        """:meth:`ack_now` of each, their PUBACKs written at once (mqtt.ack_all)."""
        if self.client is not None:
            self.mqtt.ack_all(self.client, [a[1] for a in acks if a and a[0] == self.gen])

    def deadletter(self, topic: str, payload: bytes, exc: PayloadError, rx_ms: int) -> None:
        """Count a rejection and queue its dead letter (bounded: counted when dropped)."""
        self.counters["deadletters"] += 1
        self.rejects[exc.code] += 1
        region, record = deadletter_record(topic, payload, exc, rx_ms=rx_ms,
                                           engine=self.opts.name)
        try:
            self.deadletters.put_nowait((deadletter_topic(region), record))
        except asyncio.QueueFull:
            self.counters["deadletters_dropped"] += 1
            if self.counters["deadletters_dropped"] % 1000 == 1:
                log.warning("dead-letter queue full (%d): dropped %d dead letters so far "
                            "(the rejections are still counted)",
                            self.icfg.deadletter_queue_messages,
                            self.counters["deadletters_dropped"])

    async def send_deadletters(self) -> None:
        """Publish queued dead letters (QoS 0: diagnostics) while connected."""
        while True:
            topic, payload = await self.deadletters.get()
            await self.connected.wait()
            client = self.client
            try:
                await client.publish(topic, payload, qos=0)
                self.counters["deadletters_published"] += 1
            except Exception:  # noqa: BLE001 - diagnostics only: count and move on
                self.counters["deadletters_dropped"] += 1
