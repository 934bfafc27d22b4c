"""Storm limits of the people-facing channels: at most ``max_n`` messages to one
recipient over one channel in any ``window_ms``; the rest of a storm becomes one summary
message (docs/notifications.md, "Storms").

:func:`limit_recipient` is the rule, a pure function of one recipient's due rows and the
times of the messages sent to them within the window. While sending every due row keeps
within the limit, all are sent. Otherwise the last free slot is kept for a summary: the
oldest due rows fill the slots before it, the rest are folded into one summary message
(``summarized``, never lost: each row names its summary), which goes out in that slot,
or, when no slot is free, as soon as the oldest message leaves the window. A pending
summary takes the later overflow in too, so a recipient never gets two summaries for
one full window; while a summary is being sent, the overflow waits for the next check.
:class:`StormStore` applies the rule in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from alarms.db import Cursor, Database, Where, chunks, count, int_ms, placeholders
from alarms.notify import delivery_id
from alarms.notify_schema import SUMMARIZED

SUMMARY_EVENT = "summary"
# Due rows one storm check reads per channel (a storm bigger than this is folded in
# several checks, into the same pending summary).
_SCAN_ROWS = 5000

# (the folded rows' {region, type, to, lang, created_at}, oldest first) -> the summary's body
Summarize = Callable[[list[dict[str, Any]]], bytes]


@dataclass(frozen=True)
class StormLimit:
    window_ms: int
    max_n: int
    summarize: Summarize


@dataclass
class Decision:
    """What to do with one recipient's due rows now."""

    send: list[dict[str, Any]] = field(default_factory=list)
    fold: list[dict[str, Any]] = field(default_factory=list)
    # rows that wait for a free slot, and when one frees (epoch ms)
    defer: list[dict[str, Any]] = field(default_factory=list)
    # rows left as they are, for the next check (after a summary now being sent)
    wait: list[dict[str, Any]] = field(default_factory=list)
    free_at_ms: int = 0
    # when the summary of ``fold`` may go (now, or when a slot frees)
    summary_at_ms: int = 0


def limit_recipient(due: Sequence[dict[str, Any]], sent_ms: Sequence[int], max_n: int,
                    window_ms: int, now_ms: int) -> Decision:
    """The storm rule for one recipient and channel (see the module doc). ``due``: the
    pending due rows, oldest first (``event`` ``summary`` marks a summary);
    ``sent_ms``: when each message sent in ``(now_ms - window_ms, now_ms]`` went."""
    recent = sorted(t for t in sent_ms if now_ms - window_ms < t <= now_ms)
    slots = max_n - len(recent)
    # when the next slot frees: the oldest message in the window leaves it
    free_at = (recent[0] + window_ms) if recent else now_ms
    summaries = [r for r in due if r["event"] == SUMMARY_EVENT]
    others = [r for r in due if r["event"] != SUMMARY_EVENT]
    out = Decision(free_at_ms=free_at)
    if len(due) <= slots:
        out.send = list(due)
        return out
    take = max(slots, 0)
    if summaries and take > 0:
        # a summary goes first; the overflow waits for the next check, which folds it
        # into a new summary (never into one being sent)
        out.send = summaries[:take]
        out.defer = summaries[take:]
        out.wait = others
        return out
    # no slot free: a due summary waits for one, and takes the overflow in meanwhile
    out.defer = summaries
    individual = max(0, take - 1)  # one slot stays for the summary
    out.send = others[:individual]
    out.fold = others[individual:]
    out.summary_at_ms = now_ms if take - individual >= 1 else free_at
    return out

class StormStore:
    """The storm check of :class:`alarms.notify_store.NotificationStore`."""

    _db: Database

    def due_within_limits(self, channel: str, now_ms: int, limit: int,
                          regions: Iterable[str] | None, storm: StormLimit
                          ) -> tuple[list[dict[str, Any]], int]:
        """The due rows of ``channel`` to send now under the storm limit, and how many
        rows this check folded into summaries; in one transaction."""
        now_ms = int_ms(now_ms, "now_ms")
        where = Where("state = 'pending'", "next_at <= ?", "channel = ?",
                      params=[now_ms, channel]).regions(regions)
        if where.nothing:
            return [], 0
        send: list[dict[str, Any]] = []
        folded = 0
        with self._db.tx("notifications due (storm limit)") as cur:
            rows = cur.execute("SELECT id, delivery_id, alarm_id, event, region, channel, "
                               "recipient, level, body, attempts, created_at FROM "
                               f"notifications{where.sql} ORDER BY next_at, id LIMIT ?",
                               (*where.params, _SCAN_ROWS)).all()
            by_recipient: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                r["body"] = bytes(r["body"])
                by_recipient.setdefault(r["recipient"], []).append(r)
            for recipient, due in by_recipient.items():
                sent = cur.execute("SELECT sent_at FROM notifications WHERE channel = ? AND "
                                   "recipient = ? AND state = 'sent' AND sent_at > ?",
                                   (channel, recipient, now_ms - storm.window_ms)).all()
                d = limit_recipient(due, [int(s["sent_at"]) for s in sent], storm.max_n,
                                    storm.window_ms, now_ms)
                send += d.send
                if d.defer:
                    _set_next_at(cur, [r["id"] for r in d.defer], d.free_at_ms)
                if d.fold:
                    folded += len(d.fold)
                    summary = _fold(cur, channel, recipient, d.fold, d.summary_at_ms,
                                    storm.summarize, now_ms)
                    if summary is not None:
                        send.append(summary)
        send.sort(key=lambda r: r["id"])
        return send[:count(limit, "limit")], folded


def _set_next_at(cur: Cursor, ids: list[int], at_ms: int) -> None:
    for chunk in chunks(ids):
        cur.execute("UPDATE notifications SET next_at = ? WHERE id IN "
                    + placeholders(len(chunk)), (at_ms, *chunk))


def _fold(cur: Cursor, channel: str, recipient: str, rows: list[dict[str, Any]],
          at_ms: int, summarize: Summarize, now_ms: int) -> dict[str, Any] | None:
    """Fold ``rows`` into the recipient's pending summary (a new one when there is none);
    returns the summary row when it is new and due now (to send in this round)."""
    pending = cur.execute("SELECT id, delivery_id FROM notifications WHERE channel = ? AND "
                          "recipient = ? AND state = 'pending' AND event = ? LIMIT 1",
                          (channel, recipient, SUMMARY_EVENT)).one()
    sid = pending["delivery_id"] if pending else delivery_id(
        SUMMARY_EVENT, rows[0]["delivery_id"], channel, recipient)
    for chunk in chunks([r["id"] for r in rows]):
        cur.execute("UPDATE notifications SET state = ?, summary_id = ? WHERE state = "
                    "'pending' AND id IN " + placeholders(len(chunk)),
                    (SUMMARIZED, sid, *chunk))
    covered = cur.execute("SELECT region, body, created_at FROM notifications WHERE "
                          "summary_id = ? ORDER BY id", (sid,)).all()
    body = summarize([_summary_item(r) for r in covered])
    if pending is not None:
        cur.execute("UPDATE notifications SET body = ? WHERE id = ?", (body, pending["id"]))
        return None
    # filed under the first folded alarm, at that row's level: a level that alarm has
    # reached, so stopping its ladder (levels above the one reached) never stops a summary
    first = rows[0]
    level = int(first["level"])
    new_id = cur.execute(
        "INSERT INTO notifications (delivery_id, alarm_id, event, region, channel, "
        "recipient, level, body, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "RETURNING id", (sid, first["alarm_id"], SUMMARY_EVENT, first["region"], channel,
                         recipient, level, body, at_ms, now_ms)).scalar()
    if at_ms > now_ms:
        return None
    return {"id": int(new_id), "delivery_id": sid, "alarm_id": first["alarm_id"],
            "event": SUMMARY_EVENT, "region": first["region"], "channel": channel,
            "recipient": recipient, "level": level, "body": body, "attempts": 0,
            "created_at": now_ms}


def _summary_item(row: Mapping[str, Any]) -> dict[str, Any]:
    body = orjson.loads(bytes(row["body"]))
    return {"region": row["region"], "type": body.get("type", ""), "to": body["to"],
            "lang": body.get("lang", "zh"), "created_at": int(row["created_at"])}
