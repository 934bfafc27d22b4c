"""The alarm's notifications in the console (issue #15, "Visible"): the detail lists who
was told over which channel, at which level, and whether it arrived; the supervisor's
statistics count what failed or is retrying. An operator of another region sees neither."""

from __future__ import annotations

from console_helpers import open_console, raised

from alarms.notify import webhook_planner
from alarms.store import open_store

pytest_plugins = ["console_helpers"]


def _planned_store(url: str):
    """A second store on the console's database, opened as `emfence run` opens it: with
    the webhook planner, so the events it records cause notifications."""
    return open_store(url, notification_planner=webhook_planner)


def test_the_alarm_detail_lists_its_notifications_and_their_state(sqlite_url):
    c = open_console(sqlite_url)
    engine_store = _planned_store(sqlite_url)
    try:
        with c.client:
            t = c.clock.now_ms
            engine_store.record_events([raised("n-1", "411303", at=t - 5000)], t - 5000)
            engine_store.record_events([raised("n-2", "411303", at=t - 4000)], t - 4000)
            due = {n["alarm_id"]: n for n in engine_store.notifications_due(t)}
            # n-1 delivered; n-2's receiver answered 503 once and it waits to be retried
            engine_store.mark_notification_sent([due["n-1"]["id"]], t - 3000)
            engine_store.mark_notification_retry(due["n-2"]["id"], t + 60_000, "HTTP 503")
            assert c.login("alice").status_code == 200
            one = c.get("/api/alarms/n-1").json()["notifications"]
            assert [(n["channel"], n["recipient"], n["level"], n["event"], n["state"])
                    for n in one] == [("webhook", "webhook", 1, "raised", "sent")]
            assert one[0]["sent_at"] == t - 3000
            assert "body" not in one[0]  # the payload is the receiver's, not the page's
            two = c.get("/api/alarms/n-2").json()["notifications"]
            assert [(n["state"], n["attempts"], n["last_error"]) for n in two] == [
                ("pending", 1, "HTTP 503")]
            # acknowledging answers the alarm with its notifications too
            acked = c.post("/api/alarms/n-2/acknowledge", {"note": ""}).json()
            assert [n["delivery_id"] for n in acked["notifications"]] == [
                n["delivery_id"] for n in two]
            # the supervisor's statistics count delivery by state
            assert c.login("sue").status_code == 200
            counts = c.get("/api/stats").json()["notifications"]
            assert counts == {"pending": 1, "sent": 1, "failed": 0, "cancelled": 0, "summarized": 0,
                              "retrying": 1}
            # an operator of another region sees neither the alarm nor its notifications
            assert c.login("olga").status_code == 200
            assert c.get("/api/alarms/n-1").status_code in (403, 404)
    finally:
        engine_store.close_store()
        c.store.close_store()


def test_an_alarm_without_notifications_answers_an_empty_list(console):
    t = console.clock.now_ms
    console.store.record_events([raised("quiet-1", "411303", at=t)], t)
    assert console.login("alice").status_code == 200
    assert console.get("/api/alarms/quiet-1").json()["notifications"] == []
