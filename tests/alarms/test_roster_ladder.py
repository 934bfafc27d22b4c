"""The escalation ladder on real SQLite and PostgreSQL, with the roster's people told at
each level (time passed in): an unacknowledged alarm climbs to level 2, then 3, on
schedule; acknowledgement or a close stops it, and cancels what it made moot; a version-6
database keeps its escalations as level 2 and climbs on."""

from __future__ import annotations

import threading

import orjson
import pytest
from alarms_helpers import raised, table_count
from roster_helpers import REGION, local_ms, people_planner, person

from alarms import open_store, schema
from alarms.notify import delivery_id

MIN = 60_000
AFTER = 5 * MIN
T = local_ms(2026, 6, 1, 23, 30)  # a Monday night in Asia/Shanghai
SUP = {"actor": "sam", "role": "supervisor", "now_ms": 0}


@pytest.fixture
def lstore(store_url):
    s = open_store(store_url, notification_planner=people_planner)
    for doc in (person("DEF", "default_officer"),
                person("NIGHT", "duty", shifts=[{"start": "22:00", "end": "08:00"}]),
                person("DAY", "duty", shifts=[{"start": "08:00", "end": "22:00"}]),
                person("SQ", "squadron"), person("BR", "brigade")):
        s.roster.put_person(doc, **SUP)
    yield s
    s.close()


def told(store, alarm_id):
    return [(r["event"], r["level"], r["recipient"], r["state"])
            for r in store.alarm_notifications(alarm_id) if r["channel"] == "test"]


def climb(store, now_ms):
    return [(e["alarm_id"], e["level"]) for e in store.escalate_due(now_ms, AFTER,
                                                                     top_level=3)]


def test_an_unacknowledged_alarm_climbs_to_level_2_then_3_on_schedule(lstore):
    lstore.record_events([raised("A", at=T - 1000, region=REGION)], now_ms=T)
    assert told(lstore, "A") == [("raised", 1, "DEF", "pending"),
                                 ("raised", 1, "NIGHT", "pending")]
    assert climb(lstore, T + AFTER - 1) == []
    assert climb(lstore, T + AFTER) == [("A", 2)]
    assert lstore.get_alarm("A")["escalation_level"] == 2
    assert climb(lstore, T + 2 * AFTER - 1) == []  # the second period runs from level 2
    assert climb(lstore, T + 2 * AFTER) == [("A", 3)]
    assert climb(lstore, T + 99 * AFTER) == []  # the top of the ladder
    a = lstore.get_alarm("A")
    assert (a["escalation_level"], a["escalated_at"], a["workflow"]) == (3, T + AFTER, "new")
    assert told(lstore, "A")[2:] == [("escalated", 2, "SQ", "pending"),
                                     ("escalated", 3, "BR", "pending")]
    # the log: one escalated event per level, each published with its level
    with lstore._db.tx("t", write=False) as cur:
        rows = cur.execute("SELECT event, level, payload FROM events WHERE alarm_id = 'A' "
                           "ORDER BY seq").all()
    assert [(r["event"], r["level"], orjson.loads(bytes(r["payload"])).get("level"))
            for r in rows] == [("raised", 0, None), ("escalated", 2, 2), ("escalated", 3, 3)]
    # the webhook hears both escalations, with distinct delivery ids
    hooks = [r for r in lstore.alarm_notifications("A") if r["channel"] == "webhook"]
    assert [(r["event"], r["level"]) for r in hooks] == [("raised", 1), ("escalated", 2),
                                                         ("escalated", 3)]
    assert hooks[1]["delivery_id"] == delivery_id("A", "escalated", "webhook", "webhook")
    assert len({r["delivery_id"] for r in hooks}) == 3
    assert [x["what"] for x in lstore.actions("A")] == ["escalated", "escalated"]
    assert [a["detail"]["level"] for a in lstore.audit_log(target="A")] == [3, 2]


def test_the_duty_operator_is_the_one_on_shift_when_the_alarm_is_raised(lstore):
    morning = local_ms(2026, 6, 2, 8, 0)
    lstore.record_events([raised("B", at=morning, region=REGION)], now_ms=morning)
    assert [r for _, _, r, _ in told(lstore, "B")] == ["DEF", "DAY"]


def test_acknowledgement_stops_the_ladder(lstore):
    lstore.record_events([raised("A", at=T, region=REGION), raised("B", at=T, region=REGION)],
                         now_ms=T)
    assert climb(lstore, T + AFTER) == [("A", 2), ("B", 2)]
    lstore.acknowledge("A", "olga", None, now_ms=T + AFTER + 1)
    assert climb(lstore, T + 2 * AFTER) == [("B", 3)]
    assert climb(lstore, T + 10 * AFTER) == []
    assert lstore.get_alarm("A")["escalation_level"] == 2
    # acknowledged at level 2: what level 2 was told still goes out
    assert told(lstore, "A")[-1] == ("escalated", 2, "SQ", "pending")
    # acknowledged before any escalation: never climbs
    lstore.record_events([raised("C", at=T, region=REGION)], now_ms=T)
    lstore.acknowledge("C", "olga", None, now_ms=T + 1)
    assert climb(lstore, T + 10 * AFTER) == []
    assert [e for e, *_ in told(lstore, "C")] == ["raised", "raised"]


def _pending_above(store, alarm_id, level, now_ms):
    """A notification planned for a level the alarm has not reached (as a planner that
    schedules ahead, e.g. a storm summary held back, leaves one)."""
    with store._db.tx("t") as cur:
        cur.execute("INSERT INTO notifications (delivery_id, alarm_id, event, region, "
                    "channel, recipient, level, body, next_at, created_at) VALUES "
                    "(?, ?, 'escalated', ?, 'test', 'BR', ?, ?, ?, ?)",
                    (f"ahead-{alarm_id}", alarm_id, REGION, level, b"x", now_ms + AFTER,
                     now_ms))


@pytest.mark.parametrize("how", ["acknowledge", "close"])
def test_pending_notifications_above_the_level_reached_are_cancelled(lstore, how):
    lstore.record_events([raised("A", at=T, region=REGION)], now_ms=T)
    assert climb(lstore, T + AFTER) == [("A", 2)]
    _pending_above(lstore, "A", 3, T + AFTER)
    lstore.acknowledge("A", "olga", None, now_ms=T + AFTER + 1)
    if how == "close":
        lstore.close_alarm("A", "olga", "gps_drift", None, now_ms=T + AFTER + 2)
    rows = {(r["level"], r["recipient"]): r for r in lstore.alarm_notifications("A")}
    assert rows[(3, "BR")]["state"] == "cancelled"
    assert "acknowledged at level 2" in rows[(3, "BR")]["last_error"]
    assert rows[(2, "SQ")]["state"] == "pending" and rows[(1, "NIGHT")]["state"] == "pending"
    due = lstore.notifications_due(T + 10 * AFTER, 1000)
    assert {r["recipient"] for r in due} == {"DEF", "NIGHT", "SQ", "webhook"}  # not BR
    counts = lstore.notification_counts()
    assert counts["cancelled"] == 1 and counts["pending"] == len(due)


def test_a_version_6_database_keeps_its_escalations_as_level_2(store_url, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:6])
        m.setattr(schema, "SCHEMA_VERSION", 6)
        old = open_store(store_url)
    try:
        old.record_events([raised("OLD", at=T, region=REGION),
                           raised("NEW", at=T, region=REGION)], now_ms=T)
        # what version 6's escalate_due wrote, in that version's columns
        with old._db.tx("v6 escalation") as cur:
            cur.execute("UPDATE alarms SET escalated_at = ? WHERE alarm_id = 'OLD'",
                        (T + AFTER,))
            cur.execute("INSERT INTO events (alarm_id, event, region, type, topic, payload, "
                        "created_at) VALUES ('OLD', 'escalated', ?, 'outbound', 't', ?, ?)",
                        (REGION, b"{}", T + AFTER))
            last = cur.execute("SELECT MAX(seq) FROM events").scalar()
            # a seq is never reused: drop the newest row so the counter is above MAX(seq)
            cur.execute("DELETE FROM events WHERE seq = ?", (last,))
    finally:
        old.close()
    store = open_store(store_url, notification_planner=people_planner)
    try:
        assert store.schema_version() == schema.SCHEMA_VERSION
        assert store.get_alarm("OLD")["escalation_level"] == 2
        assert store.get_alarm("NEW")["escalation_level"] == 1
        assert table_count(store, "roster_people") == 0
        out = store.escalate_due(T + 2 * AFTER, AFTER, top_level=3)
        assert [(e["alarm_id"], e["level"]) for e in out] == [("NEW", 2), ("OLD", 3)]
        with store._db.tx("t", write=False) as cur:
            seqs = [r["seq"] for r in cur.execute("SELECT seq FROM events ORDER BY seq").all()]
        assert min(seqs[-2:]) > last  # new events come after every seq ever given
    finally:
        store.close()


def test_each_level_is_reached_exactly_once_with_two_workers_racing(store_url):
    n = 60
    setup = open_store(store_url)
    setup.record_events([raised(f"R-{j:02d}", at=T, region=REGION) for j in range(n)],
                        now_ms=T)
    workers = [open_store(store_url), open_store(store_url)]
    got: list[list[tuple[str, int]]] = [[], []]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(k):
        try:
            barrier.wait()
            for now in range(T, T + 3 * AFTER, 20_000):  # both step through one clock
                got[k] += climb(workers[k], now)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert set(got[0]).isdisjoint(got[1])
        assert sorted(got[0] + got[1]) == sorted(
            (f"R-{j:02d}", level) for j in range(n) for level in (2, 3))
        with setup._db.tx("t", write=False) as cur:
            rows = cur.execute("SELECT level, created_at, COUNT(*) AS k FROM events WHERE "
                               "event = 'escalated' GROUP BY level, created_at").all()
        # every alarm climbed at the first clock step each level was due
        assert sorted((r["level"], r["created_at"], r["k"]) for r in rows) == [
            (2, T + AFTER, n), (3, T + 2 * AFTER, n)]
    finally:
        for s in (*workers, setup):
            s.close()
