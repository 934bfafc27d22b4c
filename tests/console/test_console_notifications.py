"""An alarm's detail lists its notifications: who was told, over which channel, at
which level, and the state (sent, retrying with the reason, summarized into a storm
summary), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from console_helpers import T0, raised

from alarms.notify import Recipient
from alarms.notify_people import people_planner
from alarms.notify_storm import StormLimit

pytest_plugins = ["console_helpers"]


def test_the_alarm_detail_lists_its_notifications(any_console):
    c = any_console
    li = Recipient("P-1", "李", email="li@example.gov.cn", phone="13800000001")
    c.store._planner = people_planner(lambda cur, ev, level: [li], ["email", "sms"])
    c.store.record_events([raised(a, at=T0 + i) for i, a in enumerate(("w1", "w2", "w3"))],
                          T0 + 5)
    rows = c.store.notifications_due(T0 + 10, channels=["email"])
    c.store.mark_notification_sent([r["id"] for r in rows if r["alarm_id"] == "w1"], T0 + 10)
    sms = c.store.notifications_due(T0 + 10, channels=["sms"])
    c.store.mark_notification_retry(next(r["id"] for r in sms if r["alarm_id"] == "w1"),
                                    T0 + 600_000, "HTTP 503")
    # a storm limit of 1 folds the SMS of w2 and w3 (both due) into a summary
    asyncio.run(asyncio.to_thread(c.store.due_within_limits, "sms", T0 + 70_000, 10, None,
                                  StormLimit(600_000, 1, lambda items: b'{"to": "x"}')))
    c.login("alice")
    body = c.get("/api/alarms/w1").json()
    got = [(n["channel"], n["recipient"], n["level"], n["event"], n["state"], n["attempts"],
            n["last_error"]) for n in body["notifications"]]
    assert got == [("email", "P-1", 1, "raised", "sent", 1, None),
                   ("sms", "P-1", 1, "raised", "pending", 1, "HTTP 503")]
    w2 = c.get("/api/alarms/w2").json()["notifications"]
    sms_w2 = next(n for n in w2 if n["channel"] == "sms")
    assert sms_w2["state"] == "summarized" and len(sms_w2["summary_id"]) == 32
    # the action answers carry the list too
    r = c.post("/api/alarms/w1/acknowledge", {"note": "on it"})
    assert r.status_code == 200, r.text
    told = r.json()["notifications"]
    assert [n["event"] for n in told][-2:] == ["acknowledged", "acknowledged"]
