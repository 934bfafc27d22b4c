"""Drain markers: when the broker's backlog of device messages has reached the worker,
on any MQTT 3.1.1 broker (docs/operations.md, "Offline alarms after a start or an
outage").

After each connection the worker publishes one marker into the topic space of each of
its device subscriptions: ``emfence/v1/{region}/emfence-NAME/fix`` for the filter
``emfence/v1/{region}/+/fix``, and so on (region ``engine`` for a worker of every
region). The device level is the worker's own account, which the shipped ACLs let it
publish under as they let a device publish under its own id (mosquitto's ``pattern
write emfence/v1/+/%u/fix``; NATS: ``deploy/nats/nats_users.py``). A marker queues
behind whatever that subscription holds for the session, so its arrival means that
subscription's backlog has been delivered, whether the broker keeps one queue per
session in order (mosquitto) or one per subscription with no order between them (NATS
JetStream: a consumer per filter, each delivering in its own stream order). The backlog
is drained when every subscription's marker is back.

What a marker cannot see: a message the broker sent to the previous connection and
that never arrived (its node died): NATS sends it again only after ``ack_wait``.
"""

from __future__ import annotations

import secrets

from contract import device_topic
from ingest.passwords import engine_account

# Every marker's payload starts so: never a JSON fix or status, so a marker is never
# taken for a device's message, and a stale one (an earlier connection's) is known.
MARKER = b"emfence-drain "
ALL_REGIONS = "engine"  # the region level of the markers of a worker of every region


def marker_topic(topic_filter: str, account: str) -> str:
    """The marker topic of a device filter ``emfence/v1/{region}/+/{kind}``."""
    prefix, kind = topic_filter.rsplit("/", 2)[0], topic_filter.rsplit("/", 1)[1]
    region = prefix.rsplit("/", 1)[1]
    return device_topic(ALL_REGIONS if region == "+" else region, account, kind)


class DrainMarkers:
    """The markers of worker ``name`` for its ``regions`` (None: every region).

    ``topics``: marker topic -> the filter it drains; ``waiting``: the marker topics of
    this connection not back yet."""

    def __init__(self, name: str, regions: list[str] | None):
        from ingest.mqtt import subscriptions  # (aiomqtt is imported with the connection)

        account = engine_account(name)
        self.topics = {marker_topic(f, account): f for f in subscriptions(regions)}
        self.nonce = b""
        self.waiting: set[str] = set()

    def start(self, refused: list[str] = ()) -> list[tuple[str, bytes]]:
        """A new connection: the (topic, payload) of each marker to publish; none for
        the ``refused`` filters (no subscription: the marker would never come back, and a
        subscription granted later starts with no backlog)."""
        self.nonce = MARKER + secrets.token_hex(8).encode()
        self.waiting = {t for t, f in self.topics.items() if f not in refused}
        return [(t, self.nonce) for t in sorted(self.waiting)]

    def arrived(self, topic: str, payload: bytes) -> bool | None:
        """A message on a marker topic: None when it is not a marker (a device's message
        there: processed as any); else whether this connection's markers are all back now
        (False also for a stale marker or one already counted)."""
        if not payload.startswith(MARKER):
            return None
        if payload != self.nonce or topic not in self.waiting:
            return False
        self.waiting.discard(topic)
        return not self.waiting

    def missing(self) -> list[str]:
        """The filters whose markers of this connection are not back."""
        return sorted(self.topics[t] for t in self.waiting)
