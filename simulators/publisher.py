"""Publishing a :class:`simulators.scenario.Simulation` like firmware: MQTT, QoS 1.

Two connection modes:

- **per device** (realism): every device has its own connection, client id = device id,
  logged in as itself (password derived from the site secret exactly like
  ``emfence mqtt-passwords``), so the broker's ACL applies to each one.
- **pool** (load): a few connections share all devices, logged in with the test-only
  load-generator accounts or anonymously on a broker that allows it. Given the account
  ``emfence-loadgen``, connection ``k`` logs in as ``emfence-loadgen-k`` (k = 1 ...
  pool size; client id the same): the shipped broker config binds a session to its
  login, so two connections of one account would keep kicking each other off.

Rate control is by the clock: slot ``m`` is published once the wall clock passes its due
time (see :mod:`simulators.scenario`); the loop wakes every ``tick_ms``, publishes
everything due, and never sends early. If the broker (or this process) cannot keep up,
slots are sent late and ``lag_ms`` in the progress line grows: that run is not keeping
the rate, whatever it was asked. Every publish is QoS 1 and counts as *acknowledged*
when its PUBACK arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt

from ingest.mqtt import BrokerConnectError, connect_error, fail_on_early_close
from ingest.passwords import loadgen_pool_account
from simulators.scenario import Outgoing, Simulation

# What a refused login tells the user to do, in `emfence simulate`'s terms (the keys of
# ingest.mqtt.DEFAULT_FIXES). The simulator speaks plain MQTT only.
_PLAIN_ONLY = {
    "protocol": "is the listener TLS? `emfence simulate` speaks plain MQTT: give --broker "
                "a plain listener (the shipped config has one on 127.0.0.1:1883)",
    "tls": "`emfence simulate` speaks plain MQTT: give --broker a plain listener",
}
NO_LOGIN = ("the broker wants logins: give --secret-file (one connection per device, "
            "logged in as itself) or --username emfence-loadgen --password-file FILE (a "
            "pool of load-generator accounts)")
PER_DEVICE_FIXES = {
    **_PLAIN_ONLY, "no_login": NO_LOGIN,
    "refused": "device passwords are derived from --secret-file: is it the site secret the "
               "broker's password file was made with (`emfence mqtt-passwords SUBJECTS "
               "--secret-file SECRET -o PASSWD`, then reload mosquitto), and is every device "
               "of --subjects in it?",
}
POOL_FIXES = {
    **_PLAIN_ONLY, "no_login": NO_LOGIN,
    "refused": "check --username and --password-file (or --password) against the broker's "
               "password file: pooled connection k logs in as USERNAME-k, made by `emfence "
               "mqtt-passwords ... --loadgen-password-file FILE --loadgen-pool N`, test "
               "brokers only",
}


@dataclass
class PublishStats:
    """Counters of one run; ``lag_ms_max`` is how late the latest slot went out at worst."""

    sent: int = 0
    acked: int = 0
    failed: int = 0
    by_kind: Counter = field(default_factory=Counter)
    started_ms: int = 0
    ended_ms: int = 0
    lag_ms_max: float = 0.0
    last_slot_ms: int = 0
    errors: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        secs = max((self.ended_ms - self.started_ms) / 1000.0, 1e-9)
        return {"sent": self.sent, "acked": self.acked, "failed": self.failed,
                "by_kind": dict(self.by_kind), "duration_s": round(secs, 3),
                "acked_per_s": round(self.acked / secs, 1), "lag_ms_max": round(self.lag_ms_max, 1),
                "errors": dict(self.errors)}


class Publisher:
    """Connections plus the clocked publish loop.

    ``credentials(device_idx) -> (username, password)`` selects per-device mode; without
    it, ``pool_size`` connections log in as ``username-1`` ... ``username-N`` with
    ``password`` (or anonymously).
    """

    def __init__(self, sim: Simulation, host: str, port: int, *,
                 credentials: Callable[[int], tuple[str, str]] | None = None,
                 username: str | None = None, password: str | None = None, pool_size: int = 4,
                 max_inflight: int = 100, tick_ms: float = 10.0, progress: bool = True,
                 connect_concurrency: int = 64, client_prefix: str = "emfence-sim",
                 on_sent: Callable[[Outgoing], None] | None = None, wire: bool | None = None,
                 brokers: list[tuple[str, int]] | None = None):
        if credentials is not None and (username or password):
            raise ValueError("per-device credentials and a pool account exclude each other")
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.sim = sim
        self.host, self.port = host, port
        # Pool mode: the nodes of a clustered broker (simulators.mqttwire reconnects to
        # the next on loss and sends the unacknowledged publishes again).
        self.brokers = brokers or [(host, port)]
        self.credentials = credentials
        self.username, self.password = username, password
        self.pool_size = pool_size
        self.tick_ms = tick_ms
        self.progress = progress
        self.connect_concurrency = connect_concurrency
        self.client_prefix = client_prefix
        self.on_sent = on_sent
        # Pool mode writes MQTT packets itself (simulators.mqttwire): a load generator
        # must not be slower than what it loads. Per-device mode stays on aiomqtt.
        self.wire = (credentials is None) if wire is None else wire
        if self.wire and credentials is not None:
            raise ValueError("the wire publisher is for pool mode only")
        self._wire: list = []
        # QoS 1 messages awaiting their PUBACK, per connection. paho queues anything beyond
        # its own in-flight window, and both paho (per PUBACK) and aiomqtt (per publish)
        # walk their pending messages, so a window of ~100 keeps the cost per message flat;
        # the window is set on the client and the publish loop waits when it is full.
        # More throughput comes from more connections (``pool_size``), not wider windows.
        self.max_inflight = max_inflight
        self._windows: list[asyncio.Semaphore] = []
        self.stats = PublishStats()
        self._clients: list[aiomqtt.Client] = []
        self._open: list[aiomqtt.Client] = []  # those connected, to be closed
        self._pending: set[asyncio.Task] = set()
        # Per-device mode: each connection's login, to log in again elsewhere on loss.
        self._logins: list[tuple[str, str | None, str | None]] = []
        self._reconnecting: dict[int, asyncio.Lock] = {}
        self.reconnects = 0

    @property
    def per_device(self) -> bool:
        return self.credentials is not None

    def _pool_login(self, k: int) -> tuple[str, str | None]:
        """(client id, username) of pooled connection ``k`` (0-based)."""
        if self.username is None:
            import os
            return f"{self.client_prefix}-{os.getpid()}-{k}", None
        account = loadgen_pool_account(self.username, k + 1)
        return account, account

    def _make_clients(self) -> list[aiomqtt.Client]:
        if self.per_device:
            logins = [(device_id, *self.credentials(d))
                      for d, device_id in enumerate(self.sim.fleet.device_ids)]
        else:
            logins = [(cid, user, self.password)
                      for cid, user in map(self._pool_login, range(self.pool_size))]
        self._logins = logins
        out = [self._client(self.host, self.port, login) for login in logins]
        self._windows = [asyncio.Semaphore(self.max_inflight) for _ in out]
        return out

    def _client(self, host: str, port: int, login) -> aiomqtt.Client:
        client_id, user, password = login
        c = aiomqtt.Client(host, port, identifier=client_id, username=user,
                           password=password, clean_session=True, timeout=30,
                           max_inflight_messages=self.max_inflight)
        c.pending_calls_threshold = self.max_inflight + 1  # a full window is expected
        fail_on_early_close(c)
        return c

    async def _reconnect(self, k: int, lost: aiomqtt.Client) -> bool:
        """Connection ``k`` (``lost``) is gone: log in again, to the next broker of the
        list first (``simulators.mqttwire``'s backoff and give-up time). False when no
        broker took it. Concurrent publishes of ``k`` wait for one reconnect."""
        from ingest.mqtt import Backoff
        from simulators.mqttwire import RECONNECT_GIVE_UP_S, RECONNECT_MAX_S, RECONNECT_MIN_S

        lock = self._reconnecting.setdefault(k, asyncio.Lock())
        async with lock:
            if self._clients[k] is not lost:
                return True  # another publish of this connection reconnected it
            with contextlib.suppress(Exception):
                self._open.remove(lost)
            with contextlib.suppress(Exception):
                await lost.__aexit__(None, None, None)
            here = (lost._hostname, lost._port)
            order = self.brokers[self.brokers.index(here) + 1:] if here in self.brokers \
                else []
            order += [b for b in self.brokers if b not in order]
            backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
            deadline = time.monotonic() + RECONNECT_GIVE_UP_S
            while time.monotonic() < deadline:
                for host, port in order:
                    c = self._client(host, port, self._logins[k])
                    try:
                        await c.__aenter__()
                    except aiomqtt.MqttError:
                        continue
                    self._clients[k] = c
                    self._open.append(c)
                    self.reconnects += 1
                    return True
                await asyncio.sleep(backoff.next_delay_s())
            return False

    @property
    def fixes(self) -> dict[str, str]:
        return PER_DEVICE_FIXES if self.per_device else POOL_FIXES

    async def connect(self) -> None:
        """Open every connection (bounded concurrency). A failure closes the others and
        raises one :class:`ingest.mqtt.BrokerConnectError` naming the account, the cause,
        the fix and how many connections failed alike."""
        try:
            if self.wire:
                await self._connect_wire()
            else:
                await self._connect_clients()
        except BaseException:
            await self.close()
            raise

    async def _connect_wire(self) -> None:
        from simulators.mqttwire import WireConnection

        self._wire = [WireConnection(self.host, self.port, username=user,
                                     password=self.password, client_id=cid, fixes=self.fixes,
                                     window=max(self.max_inflight, 2000),
                                     brokers=self.brokers)
                      for cid, user in map(self._pool_login, range(self.pool_size))]
        for c in self._wire:
            await c.connect()

    async def _connect_clients(self) -> None:
        self._clients = self._make_clients()
        gate = asyncio.Semaphore(self.connect_concurrency)

        async def one(c: aiomqtt.Client) -> None:
            async with gate:
                try:
                    await c.__aenter__()
                except aiomqtt.MqttError as exc:
                    user = c._client._username
                    raise connect_error(exc, host=self.host, port=self.port, tls=False,
                                        username=user.decode() if user else None,
                                        fixes=self.fixes) from None
                self._open.append(c)

        results = await asyncio.gather(*(one(c) for c in self._clients), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        first = errors[0]
        if isinstance(first, BrokerConnectError) and len(errors) > 1:
            first = first.with_also(f"(and {len(errors) - 1} more of {len(results)} "
                                    "connections)")
        raise first

    async def close(self) -> None:
        for c in self._wire:
            await c.close()
        self._wire = []
        # Only the connections that are open: aiomqtt warns about each of the others.
        await asyncio.gather(*(c.__aexit__(None, None, None) for c in self._open),
                             return_exceptions=True)
        self._open = []
        self._clients = []

    def _connection_for(self, msg: Outgoing) -> int:
        return msg.device if self.per_device else msg.device % len(self._clients)

    async def _publish(self, k: int, msg: Outgoing) -> None:
        try:
            while True:
                client = self._clients[k]
                try:
                    await _publish_or_lost(client, msg)
                    break
                except aiomqtt.MqttError:
                    if not await self._reconnect(k, client):
                        raise
            self.stats.acked += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            self.stats.failed += 1
            self.stats.errors[type(exc).__name__] += 1
        finally:
            self._windows[k].release()

    async def _send_wire(self, msgs: list[Outgoing]) -> None:
        st = self.stats
        conns = self._wire
        n = len(conns)
        for msg in msgs:
            c = conns[msg.device % n]
            if c.inflight >= c.window:
                await c.drain()
                await c.room()
            c.publish(msg.topic, msg.payload)
            st.sent += 1
            st.by_kind[msg.kind] += 1
            if self.on_sent is not None:
                self.on_sent(msg)
        for c in conns:
            await c.drain()
        st.acked = sum(c.acked for c in conns)

    def _progress_line(self, now_ms: float, final: bool = False) -> None:
        if not self.progress:
            return
        st = self.stats
        secs = max((now_ms - st.started_ms) / 1000.0, 1e-9)
        line = (f"[simulate] {secs:6.1f} s  rate {st.sent / secs:9.0f}/s  sent {st.sent}  "
                f"acked {st.acked}  failed {st.failed}  lag {st.lag_ms_max:.0f} ms")
        if sys.stderr.isatty():
            print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    async def run(self, stop: asyncio.Event | None = None, drain_timeout_s: float = 30.0, *,
                  on_start: Callable[[Simulation], None] | None = None) -> PublishStats:
        """Publish every slot at its due time (or until ``stop`` is set), then wait for the
        outstanding PUBACKs (at most ``drain_timeout_s``).

        ``on_start(sim)`` is called once the schedule is final (moved later when set-up
        overran the planned start), before the first message: the place to write the ground
        truth and to take the run's start time.
        """
        sim = self.sim
        stop = stop or asyncio.Event()
        await self._wait_for_start(on_start)
        m_next = 0
        period_ms = 1000 if sys.stderr.isatty() else 5000
        next_progress = time.time() * 1000.0 + period_ms
        while m_next < sim.total_slots and not stop.is_set():
            now = time.time() * 1000.0
            due = min(sim.total_slots, int((now - sim.start_ms) * sim.rate / 1000.0) + 1)
            if due > m_next:
                await self._send_slots(m_next, due, now)
                m_next = due
            if now >= next_progress:
                self._progress_line(now)
                next_progress = now + period_ms
            next_due = float(sim.slot_ms(m_next)) if m_next < sim.total_slots else now
            wait_ms = max(next_due - time.time() * 1000.0, 0.0)
            try:
                await asyncio.wait_for(stop.wait(),
                                       timeout=min(max(wait_ms, 0.5), self.tick_ms) / 1000.0)
            except TimeoutError:
                pass
        await self._drain(drain_timeout_s)
        self.stats.ended_ms = int(time.time() * 1000)
        self._progress_line(self.stats.ended_ms, final=True)
        return self.stats

    async def _wait_for_start(self, on_start: Callable[[Simulation], None] | None) -> None:
        """Move the schedule later if set-up overran its start, tell ``on_start``, and
        wait for the first slot."""
        sim = self.sim
        now = time.time() * 1000.0
        if now > sim.start_ms:
            sim.shift(int(now - sim.start_ms) + 1)  # preparation overran the planned start
        if on_start is not None:
            on_start(sim)
        now = time.time() * 1000.0
        if now < sim.start_ms:
            await asyncio.sleep((sim.start_ms - now) / 1000.0)
        self.stats.started_ms = sim.start_ms

    async def _send_slots(self, first: int, end: int, now_ms: float) -> None:
        """Publish slots ``first`` .. ``end - 1`` (due now)."""
        st, sim = self.stats, self.sim
        st.lag_ms_max = max(st.lag_ms_max, now_ms - float(sim.slot_ms(first)))
        msgs = sim.messages(first, end)
        if self.wire:
            await self._send_wire(msgs)
            msgs = []
        for msg in msgs:
            k = self._connection_for(msg)
            await self._windows[k].acquire()
            task = asyncio.create_task(self._publish(k, msg))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            st.sent += 1
            st.by_kind[msg.kind] += 1
            if self.on_sent is not None:
                self.on_sent(msg)
        st.last_slot_ms = int(sim.slot_ms(end - 1))

    async def _drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the PUBACKs still outstanding."""
        st = self.stats
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        if self._wire:
            await asyncio.gather(*(c.wait_acked(timeout_s) for c in self._wire))
            st.acked = sum(c.acked for c in self._wire)
            st.failed = st.sent - st.acked
            for c in self._wire:
                if c.error is not None:
                    st.errors[c.error.reason] += 1


async def _publish_or_lost(client: aiomqtt.Client, msg: Outgoing) -> None:
    """Publish ``msg`` QoS 1 and wait for its PUBACK, or raise ``aiomqtt.MqttError`` as
    soon as the connection is lost (aiomqtt would wait out its timeout: the PUBACK of a
    lost connection never comes)."""
    lost = client._disconnected  # the future of this connection's end
    if lost.done():
        raise aiomqtt.MqttError("the connection is lost")
    publish = asyncio.ensure_future(client.publish(msg.topic, msg.payload, qos=1))
    await asyncio.wait({publish, lost}, return_when=asyncio.FIRST_COMPLETED)
    if publish.done():
        publish.result()
        return
    publish.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await publish
    raise aiomqtt.MqttError("the connection is lost")
