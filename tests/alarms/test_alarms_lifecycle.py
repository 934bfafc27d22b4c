"""The operator lifecycle (acknowledge, close, notes), escalation, queries and statistics."""

from __future__ import annotations

import statistics
import threading
from datetime import UTC, datetime

import orjson
import pytest
from alarms_helpers import REGION_A, REGION_B, cleared, raised, table_count

from alarms import DISPOSITIONS, AlarmActionError, StoreError, open_store

MIN = 60_000


def _events_of(store, alarm_id):
    return [e for e in store.events_since(0) if e["alarm_id"] == alarm_id]


# --- acknowledge and close -----------------------------------------------------------------


def test_acknowledge_then_close_records_actions_events_and_audit(store):
    store.record_events([raised("A-1", at=1_000)], now_ms=2_000)
    a = store.acknowledge("A-1", "olga", "calling the subject", now_ms=3_000, ip="10.0.0.7")
    assert a["workflow"] == "acknowledged" and a["acknowledged_by"] == "olga"
    assert a["acknowledged_at"] == 3_000 and a["state"] == "active"  # condition untouched
    c = store.close_alarm("A-1", "olga", "gps_drift", "multipath near the tower", now_ms=4_000)
    assert c["workflow"] == "closed" and c["closed_by"] == "olga" and c["closed_at"] == 4_000
    assert c["disposition"] == "gps_drift" and c["note"] == "multipath near the tower"
    assert store.get_alarm("A-1") == c

    acts = store.actions("A-1")
    assert [(x["who"], x["what"], x["at"], x["note"], x["disposition"]) for x in acts] == [
        ("olga", "acknowledge", 3_000, "calling the subject", None),
        ("olga", "close", 4_000, "multipath near the tower", "gps_drift"),
    ]
    evs = _events_of(store, "A-1")
    assert [e["event"] for e in evs] == ["raised", "acknowledged", "closed"]
    assert evs[1]["data"] == {"event": "acknowledged", "alarm_id": "A-1", "type": "outbound",
                              "subject_id": "S-1", "device_id": "BR-1", "zone_id": "Z-county",
                              "region": REGION_A, "at": 3_000, "late": False, "by": "olga"}
    assert evs[2]["data"]["disposition"] == "gps_drift" and evs[2]["data"]["by"] == "olga"
    assert "note" not in evs[2]["data"]  # free text stays in the store, not on the bus
    # the new events are in the outbox like any other
    assert [p[0] for p in store.pending(10)] == [e["seq"] for e in evs]

    audit = store.audit_log(target="A-1")
    assert [(r["who"], r["action"], r["at"], r["ip"]) for r in audit] == [
        ("olga", "alarm.close", 4_000, None),
        ("olga", "alarm.acknowledge", 3_000, "10.0.0.7"),
    ]
    assert audit[0]["detail"] == {"disposition": "gps_drift", "note": "multipath near the tower",
                                  "region": REGION_A}


def test_close_alarm_closes_an_alarm_and_close_closes_the_store(store_url):
    s = open_store(store_url)
    s.record_events([raised("A-1", at=1)], now_ms=2)
    s.acknowledge("A-1", "olga", None, now_ms=3)
    assert s.close_alarm("A-1", "olga", "device_fault", None, now_ms=4)["workflow"] == "closed"
    s.close()  # the store's connections, as close_store()
    with pytest.raises(StoreError, match="closed"):
        s.get_alarm("A-1")


@pytest.mark.parametrize("steps, action, reason", [
    ([], "ack:GHOST", "no such alarm"),
    ([], "close:GHOST", "no such alarm"),
    ([], "close", "must be acknowledged before it is closed"),
    (["ack"], "ack", "already acknowledged by olga"),
    (["ack", "close"], "ack", "already closed by olga"),
    (["ack", "close"], "close", "already closed by olga"),
])
def test_lifecycle_rules(store, steps, action, reason):
    store.record_events([raised("A-1", at=1)], now_ms=2)
    for step in steps:
        if step == "ack":
            store.acknowledge("A-1", "olga", None, now_ms=3)
        else:
            store.close_alarm("A-1", "olga", "confirmed_violation", "ran", now_ms=4)
    before = (store.get_alarm("A-1"), table_count(store, "events"),
              table_count(store, "alarm_actions"), table_count(store, "audit"))
    verb, _, target = action.partition(":")
    target = target or "A-1"
    with pytest.raises(AlarmActionError) as info:
        if verb == "ack":
            store.acknowledge(target, "ivan", None, now_ms=5)
        else:
            store.close_alarm(target, "ivan", "other", "x", now_ms=5)
    assert info.value.alarm_id == target and reason in info.value.reason
    after = (store.get_alarm("A-1"), table_count(store, "events"),
             table_count(store, "alarm_actions"), table_count(store, "audit"))
    assert after == before  # a refused action writes nothing


@pytest.mark.parametrize("disposition, note, reason", [
    ("mistake", "x", "disposition must be one of"),
    ("", "x", "disposition must be one of"),
    ("other", None, "needs a note"),
    ("other", "   ", "needs a note"),
])
def test_bad_dispositions(store, disposition, note, reason):
    store.record_events([raised("A-1", at=1)], now_ms=2)
    store.acknowledge("A-1", "olga", None, now_ms=3)
    with pytest.raises(AlarmActionError, match=reason):
        store.close_alarm("A-1", "olga", disposition, note, now_ms=4)
    assert store.get_alarm("A-1")["workflow"] == "acknowledged"


def test_every_disposition_closes(store):
    for i, d in enumerate(DISPOSITIONS):
        store.record_events([raised(f"A-{i}", at=i)], now_ms=10)
        store.acknowledge(f"A-{i}", "olga", None, now_ms=11)
        assert store.close_alarm(f"A-{i}", "olga", d, "why", now_ms=12)["disposition"] == d


def test_an_unnamed_user_cannot_act(store):
    store.record_events([raised("A-1", at=1)], now_ms=2)
    for who in ("", "  ", None):
        with pytest.raises(AlarmActionError, match="must be named"):
            store.acknowledge("A-1", who, None, now_ms=3)


def test_notes_in_any_state_are_actions_and_audited(store):
    store.record_events([raised("A-1", at=1)], now_ms=2)
    store.add_note("A-1", "olga", "subject says the bus took a detour", now_ms=3)
    store.acknowledge("A-1", "olga", None, now_ms=4)
    store.add_note("A-1", "ivan", "confirmed with the driver", now_ms=5)
    assert [(a["who"], a["what"]) for a in store.actions("A-1")] == [
        ("olga", "note"), ("olga", "acknowledge"), ("ivan", "note")]
    assert [r["action"] for r in store.audit_log(target="A-1")] == [
        "alarm.note", "alarm.acknowledge", "alarm.note"]
    with pytest.raises(AlarmActionError, match="must not be empty"):
        store.add_note("A-1", "olga", " ", now_ms=6)
    with pytest.raises(AlarmActionError, match="no such alarm"):
        store.add_note("GHOST", "olga", "hello", now_ms=6)


def test_two_operators_racing_to_acknowledge_exactly_one_wins(store_url):
    setup = open_store(store_url)
    setup.record_events([raised(f"A-{i}", at=i) for i in range(20)], now_ms=100)
    stores = [open_store(store_url), open_store(store_url)]
    wins: list[list[str]] = [[], []]
    losses: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def operator(k):
        barrier.wait()
        for i in range(20):
            try:
                stores[k].acknowledge(f"A-{i}", f"op{k}", None, now_ms=200 + i)
                wins[k].append(f"A-{i}")
            except AlarmActionError as exc:
                assert "already acknowledged" in exc.reason
                losses[k].append(f"A-{i}")

    threads = [threading.Thread(target=operator, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(wins[0] + wins[1], key=lambda s: int(s[2:])) == [f"A-{i}" for i in range(20)]
        assert set(wins[0]).isdisjoint(wins[1]) and len(losses[0]) + len(losses[1]) == 20
        for i in range(20):
            a = setup.get_alarm(f"A-{i}")
            assert a["acknowledged_by"] == ("op0" if a["alarm_id"] in wins[0] else "op1")
            assert [x["what"] for x in setup.actions(f"A-{i}")] == ["acknowledge"]
        assert table_count(setup, "events") == 40
    finally:
        for s in (*stores, setup):
            s.close()


# --- escalation ---------------------------------------------------------------------------


def test_escalation_counts_from_when_the_store_recorded_the_raise(store):
    # A-late was raised by a fix 2 hours old (store-and-forward) but only now reached us.
    store.record_events([raised("A-on-time", at=10 * MIN)], now_ms=10 * MIN)
    store.record_events([raised("A-late", at=-110 * MIN, late=True)], now_ms=12 * MIN)
    after = 5 * MIN
    assert store.escalate_due(now_ms=15 * MIN - 1, after_ms=after) == []
    out = store.escalate_due(now_ms=15 * MIN, after_ms=after)
    assert [e["alarm_id"] for e in out] == ["A-on-time"]
    assert out[0] == {"event": "escalated", "alarm_id": "A-on-time", "type": "outbound",
                      "subject_id": "S-1", "device_id": "BR-1", "zone_id": "Z-county",
                      "region": REGION_A, "at": 15 * MIN, "late": False,
                      "raised_at": 10 * MIN, "after_ms": after, "level": 2}
    # exactly once: asking again escalates nothing new
    assert store.escalate_due(now_ms=16 * MIN, after_ms=after) == []
    first = out
    out = store.escalate_due(now_ms=17 * MIN, after_ms=after)
    assert [e["alarm_id"] for e in out] == ["A-late"]
    assert store.escalate_due(now_ms=99 * MIN, after_ms=after) == []

    a = store.get_alarm("A-on-time")
    assert a["escalated_at"] == 15 * MIN and a["escalated"] and a["workflow"] == "new"
    evs = _events_of(store, "A-on-time")
    assert [e["event"] for e in evs] == ["raised", "escalated"]
    # what escalate_due returns is exactly what the outbox publishes
    [pub] = [p for p in store.pending(10) if p[0] == evs[1]["seq"]]
    assert orjson.loads(pub[2]) == first[0] and evs[1]["data"] == first[0]
    assert [(x["who"], x["what"]) for x in store.actions("A-on-time")] == [("system", "escalated")]
    assert store.audit_log(target="A-late")[0]["action"] == "alarm.escalate"
    # an escalated alarm is still handled normally
    store.acknowledge("A-on-time", "olga", None, now_ms=100 * MIN)


def test_acknowledged_alarms_do_not_escalate_but_cleared_ones_do(store):
    a, b, c = raised("ACK", at=0), raised("CLEARED", at=0), raised("CLOSED", at=0)
    store.record_events([a, b, c, cleared(b, at=MIN)], now_ms=0)
    store.acknowledge("ACK", "olga", None, now_ms=MIN)
    store.acknowledge("CLOSED", "olga", None, now_ms=MIN)
    store.close_alarm("CLOSED", "olga", "device_fault", None, now_ms=2 * MIN)
    out = store.escalate_due(now_ms=10 * MIN, after_ms=5 * MIN)
    assert [e["alarm_id"] for e in out] == ["CLEARED"]  # an operator must still see it
    # ...and acknowledging late, after escalation, is still fine
    store.acknowledge("CLEARED", "olga", None, now_ms=11 * MIN)


def test_escalation_by_region(store):
    store.record_events([raised("A", at=0, region=REGION_A), raised("B", at=0, region=REGION_B)],
                        now_ms=0)
    assert [e["alarm_id"] for e in store.escalate_due(10 * MIN, 5 * MIN, regions=[REGION_B])] \
        == ["B"]
    assert store.escalate_due(10 * MIN, 5 * MIN, regions=[]) == []
    assert [e["alarm_id"] for e in store.escalate_due(10 * MIN, 5 * MIN)] == ["A"]


# --- queries -------------------------------------------------------------------------------


@pytest.fixture
def populated(store):
    """Six alarms across two regions, types and every lifecycle state."""
    evs = [
        raised("A1", at=1_000, region=REGION_A, type="outbound"),
        raised("A2", at=2_000, region=REGION_A, type="exclusion", zone_id="Z-victim"),
        raised("A3", at=3_000, region=REGION_B, type="offline", zone_id=None, device_id="BR-2",
               subject_id="S-2"),
        raised("A4", at=4_000, region=REGION_B, type="tamper", zone_id=None),
        raised("A5", at=4_000, region=REGION_A, type="low_battery", zone_id=None),
        raised("A6", at=6_000, region=REGION_A, type="outbound"),
    ]
    store.record_events(evs, now_ms=7_000)
    store.record_events([cleared(evs[0], at=8_000), cleared(evs[2], at=8_000)], now_ms=8_100)
    store.acknowledge("A1", "olga", None, now_ms=9_000)
    store.acknowledge("A2", "olga", None, now_ms=9_000)
    store.close_alarm("A2", "olga", "confirmed_violation", "visited", now_ms=9_500)
    store.escalate_due(now_ms=7_000 + 5 * MIN, after_ms=5 * MIN)  # A3..A6 (new) escalate
    return store


def _ids(rows):
    return [r["alarm_id"] for r in rows]


def test_list_alarms_newest_first_and_filters(populated):
    s = populated
    assert _ids(s.list_alarms()) == ["A6", "A5", "A4", "A3", "A2", "A1"]
    assert _ids(s.list_alarms(regions=[REGION_B])) == ["A4", "A3"]
    assert _ids(s.list_alarms(regions=[])) == []
    assert _ids(s.list_alarms(types=["outbound", "tamper"])) == ["A6", "A4", "A1"]
    assert _ids(s.list_alarms(states=["cleared"])) == ["A3", "A1"]
    assert _ids(s.list_alarms(states=["new"])) == ["A6", "A5", "A4", "A3"]
    assert _ids(s.list_alarms(states=["active", "new"])) == ["A6", "A5", "A4"]
    assert _ids(s.list_alarms(states=["acknowledged", "closed"])) == ["A2", "A1"]
    assert _ids(s.list_alarms(escalated=True)) == ["A6", "A5", "A4", "A3"]
    assert _ids(s.list_alarms(escalated=False)) == ["A2", "A1"]
    assert _ids(s.list_alarms(subject_id="S-2")) == ["A3"]
    assert _ids(s.list_alarms(since_ms=2_000, until_ms=4_000)) == ["A3", "A2"]
    with pytest.raises(StoreError, match="unknown state 'open'"):
        s.list_alarms(states=["open"])


def test_list_alarms_pages_without_gaps_or_repeats(populated):
    s = populated
    seen, before = [], None
    while True:
        page = s.list_alarms(limit=2, before=before)
        if not page:
            break
        seen += _ids(page)
        before = (page[-1]["raised_at"], page[-1]["alarm_id"])
        # an alarm arriving while paging must not shift the pages
        s.record_events([raised(f"NEW-{len(seen)}", at=99_000 + len(seen))], now_ms=99_999)
    assert seen == ["A6", "A5", "A4", "A3", "A2", "A1"]  # A4/A5 share raised_at: tie by id
    assert _ids(s.list_alarms(limit=2, offset=2, until_ms=10_000)) == ["A4", "A3"]


def test_stats_match_a_hand_computation(store):
    """Three days of alarms in two regions; every number recomputed here independently."""
    day = 86_400_000
    d0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    plan = [  # (id, region, type, raised offset, ack after, close after, disposition)
        ("X1", REGION_A, "outbound", 0 * day + 1_000, 30_000, 90_000, "confirmed_violation"),
        ("X2", REGION_A, "outbound", 0 * day + 5_000, 60_000, 600_000, "gps_drift"),
        ("X3", REGION_A, "offline", 1 * day + 7_000, 120_000, 150_000, "device_fault"),
        ("X4", REGION_B, "exclusion", 1 * day + 9_000, 10_000, None, None),
        ("X5", REGION_B, "exclusion", 2 * day + 1_000, None, None, None),
        ("X6", REGION_A, "tamper", 2 * day + 2_000, 45_000, 50_000, "approved_leave_not_recorded"),
        ("X7", REGION_B, "outbound", 2 * day + 3_000, 20_000, 25_000, "other"),
        ("OUT", REGION_A, "outbound", 3 * day + 1, 1, 2, "gps_drift"),  # outside the range
    ]
    for aid, region, typ, off, ack, close, disp in plan:
        at = d0 + off
        store.record_events([raised(aid, at=at, region=region, type=typ)], now_ms=at + 500)
        if ack is not None:
            store.acknowledge(aid, "olga", None, now_ms=at + 500 + ack)
        if close is not None:
            store.close_alarm(aid, "olga", disp, "note", now_ms=at + 500 + close)

    st = store.stats(from_ms=d0, to_ms=d0 + 3 * day)
    rows = [p for p in plan if p[0] != "OUT"]
    assert st["total"] == 7
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert st["by_day"] == {days[0]: 2, days[1]: 2, days[2]: 3}
    assert st["by_region"] == {REGION_B: 3, REGION_A: 4}
    assert st["by_type"] == {"exclusion": 2, "offline": 1, "outbound": 3, "tamper": 1}
    assert {(c["region"], c["type"], c["day"]): c["count"] for c in st["counts"]} == {
        (REGION_A, "outbound", days[0]): 2, (REGION_A, "offline", days[1]): 1,
        (REGION_B, "exclusion", days[1]): 1, (REGION_B, "exclusion", days[2]): 1,
        (REGION_A, "tamper", days[2]): 1, (REGION_B, "outbound", days[2]): 1}
    acks = [r[4] for r in rows if r[4] is not None]
    closes = [r[5] for r in rows if r[5] is not None]
    assert st["acknowledged"] == 6 and st["closed"] == 5
    assert st["median_ack_ms"] == statistics.median(acks) == 37_500
    assert st["median_close_ms"] == statistics.median(closes) == 90_000
    assert st["dispositions"] == {"confirmed_violation": 1, "approved_leave_not_recorded": 1,
                                  "gps_drift": 1, "device_fault": 1, "other": 1,
                                  "supervision_ended": 0}
    assert st["disposition_share"]["gps_drift"] == pytest.approx(0.2)
    assert st["false_alarm_share"] == pytest.approx(3 / 5)

    only_b = store.stats(regions=[REGION_B], from_ms=d0, to_ms=d0 + 3 * day)
    assert only_b["total"] == 3 and only_b["closed"] == 1
    assert only_b["median_ack_ms"] == statistics.median([10_000, 20_000])
    assert only_b["false_alarm_share"] == 0.0
    # every alarm is within seconds after UTC midnight: at UTC+8 it is the same date
    local = store.stats(from_ms=d0, to_ms=d0 + 3 * day, day_offset_ms=8 * 3_600_000)
    assert local["by_day"] == st["by_day"]
    empty = store.stats(regions=["999999"])
    assert empty["total"] == 0 and empty["median_ack_ms"] is None
    assert empty["false_alarm_share"] is None


def test_stats_day_boundary_follows_the_local_offset(store):
    d0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    # 17:00 UTC on 1 March is 01:00 on 2 March in China (UTC+8)
    store.record_events([raised("N", at=d0 + 17 * 3_600_000)], now_ms=d0 + 17 * 3_600_000)
    assert store.stats()["by_day"] == {"2026-03-01": 1}
    assert store.stats(day_offset_ms=8 * 3_600_000)["by_day"] == {"2026-03-02": 1}
