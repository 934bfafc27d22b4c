"""The event log, which is also the outbox: the engine's events stored with their alarms,
the lifecycle's events appended, and both read back by the publisher and live consumers.

Ordering: ``seq`` grows with commit order, so a consumer that reads
``events_since(last_seen_seq)`` never skips an event. Every transaction that appends
events first calls :meth:`alarms.db.Database.lock_event_log` (SQLite: a no-op, its single
writer already orders them; PostgreSQL: an advisory lock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from alarms.db import (
    ROWS_PER_INSERT,
    Cursor,
    Database,
    StoreError,
    Where,
    as_list,
    chunks,
    count,
    int_ms,
    placeholders,
    values,
)
from alarms.schema import ENGINE_EVENTS, REGION_CODE
from contract.alarms import ALARM_TYPES, DEVICE_KINDS
from contract.topics import alarm_topic

# The keys the engine's event dict carries before its evidence (docs/internals.md).
EVENT_KEYS = ("event", "alarm_id", "type", "subject_id", "device_id", "zone_id", "region",
              "at", "late")
# An outbox row: (seq, topic, payload).
OutboxRow = tuple[int, str, bytes]


def check_event(ev: Any, i: int) -> None:
    """Validate one engine event dict; StoreError names its index and the key."""
    where = f"events[{i}]"
    if not isinstance(ev, Mapping):
        raise StoreError(f"must be a dict, got {type(ev).__name__}", where=where)
    for key in EVENT_KEYS:
        if key not in ev:
            raise StoreError(f"missing key {key!r}", where=where)
    if ev["event"] not in ENGINE_EVENTS:
        raise StoreError(f"event must be one of {ENGINE_EVENTS}, got {ev['event']!r}",
                         where=where)
    if ev["type"] not in ALARM_TYPES:
        raise StoreError(f"type must be one of {ALARM_TYPES}, got {ev['type']!r}", where=where)
    for key in ("alarm_id", "subject_id", "device_id"):
        if not isinstance(ev[key], str) or not ev[key]:
            raise StoreError(f"{key} must be a non-empty string, got {ev[key]!r}", where=where)
    if ev["zone_id"] is not None and not isinstance(ev["zone_id"], str):
        raise StoreError(f"zone_id must be a string or null, got {ev['zone_id']!r}", where=where)
    if not isinstance(ev["region"], str) or not REGION_CODE.match(ev["region"]):
        raise StoreError(f"region must match {REGION_CODE.pattern}, got {ev['region']!r}",
                         where=where)
    at = ev["at"]
    if isinstance(at, bool) or not isinstance(at, int):
        raise StoreError(f"at must be integer epoch milliseconds, got {at!r}", where=where)
    if not isinstance(ev["late"], bool):
        raise StoreError(f"late must be a boolean, got {ev['late']!r}", where=where)
    kind = ev.get("device_kind")
    if kind is not None and kind not in DEVICE_KINDS:
        raise StoreError(f"device_kind must be one of {DEVICE_KINDS}, got {kind!r}", where=where)
    if not isinstance(ev.get("suspended", False), bool):
        raise StoreError(f"suspended must be a boolean, got {ev['suspended']!r}", where=where)


# Keys an event may carry that the alarm row keeps in columns of their own (schema v4).
_COLUMN_KEYS = ("device_kind", "suspended")


def _evidence(ev: Mapping[str, Any]) -> dict[str, Any]:
    """Everything after the standard keys: lat, lon, distance_m, acc, battery, ..."""
    return {k: v for k, v in ev.items() if k not in EVENT_KEYS and k not in _COLUMN_KEYS}


def append_event(cur: Cursor, alarm_id: str, event: str, region: str, alarm_type: str,
                 payload: bytes, now_ms: int, level: int = 0) -> int:
    """Append one event to the log/outbox; return its seq (the existing one if present).
    ``level``: an ``escalated`` event's level on the ladder (0, the column's default, for
    other events, whose statement names no level so that it runs on every schema version).

    The caller's transaction must hold the event-log lock."""
    columns, params = "", [alarm_id, event, region, alarm_type,
                           alarm_topic(region, alarm_type), payload, now_ms]
    if level:
        columns, params = ", level", [*params, level]
    # no conflict target: the log's key is (alarm_id, event) before schema version 7,
    # (alarm_id, event, level) from it
    seq = cur.execute(
        f"INSERT INTO events (alarm_id, event, region, type, topic, payload, created_at"
        f"{columns}) VALUES {placeholders(len(params))} ON CONFLICT DO NOTHING RETURNING seq",
        params).scalar()
    if seq is None:
        seq = cur.execute("SELECT seq FROM events WHERE alarm_id = ? AND event = ?"
                          + (" AND level = ?" if level else ""),
                          params[:2] + params[7:]).scalar()
    return int(seq)


def _batch_rows(events: Sequence[Mapping[str, Any]], now_ms: int
                ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows a batch of checked events writes: alarms raised, alarms cleared, log rows."""
    raises: list[tuple[Any, ...]] = []
    clears: list[tuple[Any, ...]] = []
    log_rows: list[tuple[Any, ...]] = []
    for ev in events:
        evidence = orjson.dumps(_evidence(ev)).decode()
        if ev["event"] == "raised":
            raises.append((ev["alarm_id"], ev["type"], ev["subject_id"], ev["device_id"],
                           ev["zone_id"], ev["region"], ev["at"], now_ms, int(ev["late"]),
                           evidence, ev.get("device_kind"), int(ev.get("suspended", False))))
        else:
            clears.append((ev["at"], evidence, ev["alarm_id"]))
        log_rows.append((ev["alarm_id"], ev["event"], ev["region"], ev["type"],
                         alarm_topic(ev["region"], ev["type"]), orjson.dumps(ev), now_ms))
    return raises, clears, log_rows


def _append_log(cur: Cursor, log_rows: list[tuple[Any, ...]]
                ) -> tuple[list[int], list[OutboxRow]]:
    """Append log rows (duplicates skipped): each row's seq, and the outbox rows added."""
    seq_of: dict[tuple[str, str], int] = {}
    for chunk in chunks(log_rows, ROWS_PER_INSERT):
        # Rows get their seq in VALUES order, so the log keeps the batch's order.
        inserted = cur.execute(
            "INSERT INTO events (alarm_id, event, region, type, topic, payload, "
            "created_at) VALUES " + values(len(chunk), 7)
            + " ON CONFLICT DO NOTHING RETURNING seq, alarm_id, event",
            [v for row in chunk for v in row]).all()
        for r in inserted:
            seq_of[(r["alarm_id"], r["event"])] = int(r["seq"])
    # what this call added to the outbox (before the duplicates' seqs join seq_of)
    added = {seq_of[(r[0], r[1])]: (r[4], r[5]) for r in log_rows if (r[0], r[1]) in seq_of}
    missing = sorted({(r[0], r[1]) for r in log_rows} - set(seq_of))
    for chunk in chunks(sorted({a for a, _ in missing})):
        # duplicates (a replay after a restart): report the seq already stored
        for r in cur.execute("SELECT seq, alarm_id, event FROM events WHERE alarm_id IN "
                             + placeholders(len(chunk)), chunk).all():
            seq_of.setdefault((r["alarm_id"], r["event"]), int(r["seq"]))
    return ([seq_of[(r[0], r[1])] for r in log_rows],
            [(seq, *added[seq]) for seq in sorted(added)])


class EventLog:
    """The event log and outbox of :class:`alarms.store.AlarmStore`."""

    _db: Database
    # alarms.notify_store.NotificationStore: the notifications events cause, written in
    # the transaction that records them
    _plan_notifications: Callable[[Cursor, Sequence[Mapping[str, Any]], int], int]
    # alarms.leases.LeaseStore: the holder's epoch fence (a no-op without one)
    _fenced: Callable[[Cursor, str], None]

    def record_events(self, events: Sequence[Mapping[str, Any]], now_ms: int) -> list[int]:
        """Store the engine's alarm events and queue them for publishing, in one transaction.

        ``events`` are the engine's dicts (docs/internals.md); each is published verbatim
        (``orjson.dumps(event)``) on ``emfence/v1/{region}/alarms/{type}``. A ``raised``
        creates the alarm (state active, workflow new); a ``cleared`` marks it cleared.
        Recording the same event again (same ``alarm_id`` and ``event``, e.g. replayed
        after a restart) changes nothing. ``now_ms`` is when the store learned of them
        (``recorded_at``, the start of the operator's escalation window).

        Returns the event-log ``seq`` of each event, in order (the existing seq for a
        duplicate). A malformed event raises :class:`StoreError` naming its index before
        anything is written; a database failure rolls the whole batch back.
        """
        return self._record_events(events, now_ms)[0]

    def record_events_for_delivery(self, events: Sequence[Mapping[str, Any]], now_ms: int
                                   ) -> list[tuple[int, str, bytes]]:
        """:meth:`record_events`, returning the outbox rows it added, ``(seq, topic,
        payload)`` in seq order, for a publisher to send at once
        (:meth:`alarms.publisher.OutboxPublisher.offer`) instead of reading them back.
        Events already in the log (a replay) are not returned: they were queued before."""
        return self._record_events(events, now_ms)[1]

    def _record_events(self, events: Sequence[Mapping[str, Any]], now_ms: int
                       ) -> tuple[list[int], list[OutboxRow]]:
        now_ms = int_ms(now_ms, "now_ms")
        for i, ev in enumerate(events):
            check_event(ev, i)
        if not events:
            return [], []
        raises, clears, log_rows = _batch_rows(events, now_ms)
        # Set-based, a few statements per batch whatever its size: this sits on the
        # fix-to-alarm path, and PostgreSQL pays a network round trip per statement.
        with self._db.tx("record events") as cur:
            self._fenced(cur, "record events")
            self._db.lock_event_log(cur)
            for chunk in chunks(raises, ROWS_PER_INSERT):
                cur.execute("INSERT INTO alarms (alarm_id, type, subject_id, device_id, zone_id, "
                            "region, raised_at, recorded_at, late, evidence, device_kind, "
                            "suspended) VALUES " + values(len(chunk), 12)
                            + " ON CONFLICT (alarm_id) DO NOTHING",
                            [v for row in chunk for v in row])
            # Only the first `cleared` counts. A cleared whose raise this store never saw
            # (e.g. an engine checkpoint older than the database) is still logged and
            # published below, but there is no alarm row to update.
            cur.executemany("UPDATE alarms SET state = 'cleared', cleared_at = ?, "
                            "cleared_evidence = ? WHERE alarm_id = ? AND state = 'active'",
                            clears)
            out = _append_log(cur, log_rows)
            # the notifications these events cause, in the same transaction
            self._plan_notifications(cur, events, now_ms)
            return out

    def pending(self, limit: int = 100, regions: Iterable[str] | None = None
                ) -> list[tuple[int, str, bytes]]:
        """Undelivered events, oldest first: ``(seq, topic, payload)``.

        ``regions`` limits them to those regions (a worker publishes its own regions' events).
        """
        where = Where("delivered_at IS NULL").regions(regions)
        if where.nothing:
            return []
        with self._db.tx("pending", write=False) as cur:
            rows = cur.execute(f"SELECT seq, topic, payload FROM events{where.sql} "
                               "ORDER BY seq LIMIT ?", (*where.params, count(limit, "limit"))
                               ).all()
        return [(int(r["seq"]), r["topic"], bytes(r["payload"])) for r in rows]

    def mark_delivered(self, seqs: Iterable[int], now_ms: int) -> int:
        """Mark events as acknowledged by the broker; returns how many were newly marked."""
        now_ms = int_ms(now_ms, "now_ms")
        seqs = sorted({int(s) for s in seqs})
        if not seqs:
            return 0
        n = 0
        with self._db.tx("mark delivered") as cur:
            self._fenced(cur, "mark delivered")
            for chunk in chunks(seqs):
                cur.execute("UPDATE events SET delivered_at = ? WHERE delivered_at IS NULL "
                            "AND seq IN " + placeholders(len(chunk)), (now_ms, *chunk))
                n += max(cur.rowcount, 0)
        return n

    def last_seq(self) -> int:
        """The newest event-log seq (0 when empty): where a new live feed starts."""
        with self._db.tx("last seq", write=False) as cur:
            return int(cur.execute("SELECT MAX(seq) FROM events").scalar() or 0)

    def events_since(self, seq: int, regions: Iterable[str] | None = None,
                     limit: int = 500) -> list[dict[str, Any]]:
        """Events after ``seq``, oldest first, for live consumers (the console's feed).

        Each is ``{seq, alarm_id, event, region, type, topic, created_at, delivered_at,
        data}`` where ``data`` is the published event, decoded. ``regions=None`` is every
        region. A consumer passes the last seq it saw and never misses a committed event.
        """
        regions = as_list(regions, "regions")
        where = Where("seq > ?", params=[int(seq)]).regions(regions)
        if where.nothing:
            return []
        with self._db.tx("events since", write=False) as cur:
            rows = cur.execute(
                "SELECT seq, alarm_id, event, region, type, topic, created_at, delivered_at, "
                f"payload FROM events{where.sql} ORDER BY seq LIMIT ?",
                (*where.params, count(limit, "limit"))).all()
        for r in rows:
            r["data"] = orjson.loads(bytes(r.pop("payload")))
        return rows

    def alarm_events(self, alarm_id: str) -> list[dict[str, Any]]:
        """The event-log rows of one alarm, oldest first: ``{seq, event, created_at,
        delivered_at, payload}`` with ``payload`` the bytes published, exactly as stored
        (the engine's ``raised``/``cleared`` and the lifecycle's events)."""
        with self._db.tx("alarm events", write=False) as cur:
            rows = cur.execute("SELECT seq, event, created_at, delivered_at, payload "
                               "FROM events WHERE alarm_id = ? ORDER BY seq",
                               (alarm_id,)).all()
        for r in rows:
            r["payload"] = bytes(r["payload"])
        return rows
