"""The notifications outbox of :class:`alarms.store.AlarmStore`: rows written beside the
alarm events that cause them (:meth:`NotificationStore._plan_notifications`, called in
the event's transaction), read by the delivery loop, marked sent or rescheduled."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from alarms.db import (
    ROWS_PER_INSERT,
    Cursor,
    Database,
    Where,
    chunks,
    count,
    int_ms,
    placeholders,
    values,
)
from alarms.notify import Planner
from alarms.notify_storm import StormStore

# Columns the console shows for an alarm's notifications.
_LIST_COLUMNS = ("delivery_id, event, channel, recipient, level, state, attempts, "
                 "created_at, sent_at, next_at, last_error, summary_id")


class NotificationStore(StormStore):
    """Notification rows of :class:`alarms.store.AlarmStore`."""

    _db: Database
    _planner: Planner | None = None

    def _plan_notifications(self, cur: Cursor, events: Sequence[Mapping[str, Any]],
                            now_ms: int) -> int:
        """Write the planner's notifications for ``events`` in the caller's transaction;
        a row whose delivery id is already stored (a replayed event) is skipped."""
        if self._planner is None or not events:
            return 0
        rows = [(n.delivery_id, n.alarm_id, n.event, n.region, n.channel, n.recipient,
                 n.level, n.body, now_ms, now_ms)
                for n in self._planner(cur, events, now_ms)]
        for chunk in chunks(rows, ROWS_PER_INSERT // 2):
            cur.execute("INSERT INTO notifications (delivery_id, alarm_id, event, region, "
                        "channel, recipient, level, body, next_at, created_at) VALUES "
                        + values(len(chunk), 10) + " ON CONFLICT (delivery_id) DO NOTHING",
                        [v for row in chunk for v in row])
        return len(rows)

    def notifications_due(self, now_ms: int, limit: int = 100,
                          regions: Iterable[str] | None = None,
                          channels: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Pending notifications whose next attempt is due, oldest first: ``{id,
        delivery_id, alarm_id, channel, recipient, level, body, attempts}``; ``regions``
        and ``channels`` (None: all) narrow them."""
        where = Where("state = 'pending'", "next_at <= ?",
                      params=[int_ms(now_ms, "now_ms")]).regions(regions)
        where.one_of("channel", None if channels is None else list(channels))
        if where.nothing:
            return []
        with self._db.tx("notifications due", write=False) as cur:
            rows = cur.execute("SELECT id, delivery_id, alarm_id, channel, recipient, level, "
                               f"body, attempts FROM notifications{where.sql} "
                               "ORDER BY next_at, id LIMIT ?",
                               (*where.params, count(limit, "limit"))).all()
        for r in rows:
            r["body"] = bytes(r["body"])
        return rows

    def next_notification_at(self, regions: Iterable[str] | None = None,
                             channels: Sequence[str] | None = None) -> int | None:
        """When the next pending notification is due (epoch ms), or None if none is."""
        where = Where("state = 'pending'").regions(regions)
        where.one_of("channel", None if channels is None else list(channels))
        if where.nothing:
            return None
        with self._db.tx("next notification", write=False) as cur:
            at = cur.execute(f"SELECT MIN(next_at) FROM notifications{where.sql}",
                             where.params).scalar()
        return None if at is None else int(at)

    def mark_notification_sent(self, ids: Sequence[int], now_ms: int) -> int:
        """Mark notifications delivered (the receiver said 2xx); returns how many."""
        now_ms = int_ms(now_ms, "now_ms")
        n = 0
        with self._db.tx("notifications sent") as cur:
            for chunk in chunks(sorted({int(i) for i in ids})):
                cur.execute("UPDATE notifications SET state = 'sent', sent_at = ?, "
                            "attempts = attempts + 1, last_error = NULL WHERE state = "
                            "'pending' AND id IN " + placeholders(len(chunk)),
                            (now_ms, *chunk))
                n += max(cur.rowcount, 0)
        return n

    def mark_notification_retry(self, nid: int, next_at_ms: int, error: str) -> None:
        """One attempt failed (``error`` says why): try again at ``next_at_ms``."""
        with self._db.tx("notification retry") as cur:
            cur.execute("UPDATE notifications SET attempts = attempts + 1, next_at = ?, "
                        "last_error = ? WHERE id = ? AND state = 'pending'",
                        (int_ms(next_at_ms, "next_at_ms"), error[:500], int(nid)))

    def alarm_notifications(self, alarm_id: str) -> list[dict[str, Any]]:
        """Every notification an alarm caused, oldest first (the console's alarm detail)."""
        with self._db.tx("alarm notifications", write=False) as cur:
            return cur.execute(f"SELECT {_LIST_COLUMNS} FROM notifications "
                               "WHERE alarm_id = ? ORDER BY id", (alarm_id,)).all()

    def notification_counts(self, regions: Iterable[str] | None = None) -> dict[str, int]:
        """How many notifications are in each state, and how many pending ones have
        failed at least once (``retrying``): the health message's counters."""
        where = Where().regions(regions)
        out = {"pending": 0, "sent": 0, "failed": 0, "cancelled": 0, "summarized": 0,
               "retrying": 0}
        if where.nothing:
            return out
        with self._db.tx("notification counts", write=False) as cur:
            for r in cur.execute("SELECT state, COUNT(*) AS n, SUM(CASE WHEN attempts > 0 "
                                 "THEN 1 ELSE 0 END) AS tried FROM notifications"
                                 f"{where.sql} GROUP BY state", where.params).all():
                out[r["state"]] = int(r["n"])
                if r["state"] == "pending":
                    out["retrying"] = int(r["tried"] or 0)
        return out
