"""People's messages and who gets them: the templates (zh default, en), the people
planner over a fixed resolver (on real SQLite and PostgreSQL), and the storm rule held
against its invariants with hypothesis."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alarms import open_store
from alarms.notify import Recipient, delivery_id
from alarms.notify_people import MessageSettings, alarm_link, combine, people_planner
from alarms.notify_storm import SUMMARY_EVENT, StormLimit, limit_recipient
from alarms.notify_templates import LABELS, render, summary
from contract import ALARM_TYPES
from tests.alarms.alarms_helpers import cleared, raised

# 2025-11-24 18:14:00 UTC = 11-25 02:14 in Shanghai
T0 = 1_764_008_040_000
TZ = "Asia/Shanghai"
ZHANG = Recipient("P-1", "李警官", email="li@example.gov.cn", phone="13800000001")
WANG = Recipient("P-2", "Wang", email="wang@example.gov.cn", lang="en")
NOBODY = Recipient("P-3", "无联系方式")
PHONE_ONLY = Recipient("P-4", "赵", phone="13800000004", lang="")


def test_every_alarm_type_has_a_label_in_both_languages():
    assert set(LABELS) == set(ALARM_TYPES)
    for zh, en in LABELS.values():
        assert zh and en and zh != en
    assert len({zh for zh, _ in LABELS.values()}) == len(LABELS)


def test_the_raised_message_in_chinese_and_english():
    ev = raised("A-1", at=T0, distance_m=1234.0)
    zh = render(ev, 1, "zh", who="张三", zone="卧龙区", timezone=TZ, link=None)
    assert zh.text == "【越界告警】张三 离开卧龙区 1.2 公里，02:14 UTC+08:00，请核查"
    assert zh.subject == "【越界告警】"
    en = render(ev, 1, "en", who="张三", zone="卧龙区", timezone=TZ,
                link="https://c.example/#alarm=A-1")
    assert en.text == ("[Out of area alarm] 张三 left 卧龙区 1.2 km, 02:14 UTC+08:00, "
                       "please check https://c.example/#alarm=A-1")
    near = render(raised("A-2", at=T0, distance_m=412.5), 1, "zh", who="S-9", zone="Z",
                  timezone="UTC", link=None)
    assert near.text == "【越界告警】S-9 离开Z 412 米，18:14 UTC+00:00，请核查"


def test_escalated_cleared_and_taken_over_variants():
    ev = raised("A-1", at=T0, type="offline", lat=None, lon=None, distance_m=None, acc=None)
    esc = {**ev, "event": "escalated", "at": T0 + 600_000, "raised_at": T0, "level": 3}
    assert render(esc, 3, "zh", who="张三", zone=None, timezone=TZ, link=None).text == \
        "【离线告警·3级】张三，02:14 UTC+08:00 起无人确认，请处置"
    assert render(esc, 3, "en", who="张三", zone=None, timezone=TZ, link=None).text == \
        "[Offline alarm, level 3] 张三, unacknowledged since 02:14 UTC+08:00, please act"
    clr = cleared(ev, at=T0 + 60_000)
    assert render(clr, 1, "zh", who="张三", zone=None, timezone=TZ, link=None).text == \
        "【离线告警解除】张三，02:15 UTC+08:00"
    ack = {**ev, "event": "acknowledged", "at": T0 + 120_000, "by": "op.wang"}
    assert render(ack, 2, "en", who="张三", zone=None, timezone=TZ, link=None).text == \
        "[Offline alarm taken over] 张三, taken over by op.wang, 02:16 UTC+08:00"
    warn = raised("A-3", at=T0, type="approach", distance_m=150.0)
    assert render(warn, 1, "zh", who="张三", zone="学校", timezone=TZ, link=None).subject == \
        "【接近禁区预警】"
    with pytest.raises(ValueError, match="closed"):
        render({**ev, "event": "closed"}, 1, "zh", who="x", zone=None, timezone=TZ, link=None)


def test_summary_counts_per_region_and_type():
    rows = [{"region": "411303", "type": "offline"}] * 296 + [
        {"region": "411303", "type": "outbound"}]
    msg = summary(rows, "zh", region_names={"411303": "卧龙区"}, timezone=TZ,
                  first_ms=T0, last_ms=T0 + 60_000, link=None)
    assert msg.text == ("【告警汇总】卧龙区 296 条离线告警，卧龙区 1 条越界告警，"
                        "11-25 02:14 UTC+08:00 至 02:15 UTC+08:00，请登录平台查看")
    en = summary(rows[:2], "en", region_names={}, timezone=TZ, first_ms=T0, last_ms=T0,
                 link="https://c/")
    assert en.text.startswith("[Alarm summary] 411303: 2 Offline alarms; ")
    assert en.text.endswith(" https://c/")


def _fixed(*people: Recipient, seen: list | None = None):
    """A resolver of a fixed list (the roster's stand-in), recording its calls."""
    def resolve(cur, ev, level):
        if seen is not None:
            seen.append((ev["event"], level))
        return list(people)
    return resolve


def _register_name(store, subject_id: str, name: str) -> None:
    with store._db.tx("test subject") as cur:
        cur.execute("INSERT INTO reg_subjects (subject_id, created_at) VALUES (?, ?)",
                    (subject_id, T0))
        cur.execute("INSERT INTO reg_subject_versions (subject_id, name, region, level, "
                    "state, valid_from_ms) VALUES (?, ?, ?, ?, ?, ?)",
                    (subject_id, name, "330723", "strict", "active", T0))


@pytest.fixture
def people_store(store_url):
    seen: list = []
    planner = people_planner(_fixed(ZHANG, WANG, NOBODY, PHONE_ONLY, seen=seen),
                             ["email", "sms"],
                             MessageSettings(timezone=TZ, public_url="https://c.example/"))
    s = open_store(store_url, notification_planner=planner)
    s.seen = seen
    yield s
    s.close()


def _bodies(store, alarm_id):
    with store._db.tx("test", write=False) as cur:
        rows = cur.execute("SELECT delivery_id, event, channel, recipient, level, body FROM "
                           "notifications WHERE alarm_id = ? ORDER BY id", (alarm_id,)).all()
    return [{**r, "body": orjson.loads(bytes(r["body"]))} for r in rows]


def test_one_message_per_recipient_and_address(people_store):
    _register_name(people_store, "S-1", "张三")
    people_store.record_events([raised("A-1", at=T0, distance_m=1234.0)], T0)
    rows = _bodies(people_store, "A-1")
    assert [(r["channel"], r["recipient"]) for r in rows] == [
        ("email", "P-1"), ("sms", "P-1"), ("email", "P-2"), ("sms", "P-4")]
    assert people_store.seen == [("raised", 1)]
    sms = rows[1]
    assert sms["body"]["to"] == "13800000001" and sms["level"] == 1
    # the register's name, the zone id (no register zone), the link; no coordinates
    assert sms["body"]["text"] == ("【越界告警】张三 离开Z-county 1.2 公里，02:14 UTC+08:00，"
                                   "请核查 https://c.example/#alarm=A-1")
    assert "29.15" not in sms["body"]["text"]
    assert rows[2]["body"]["lang"] == "en" and rows[2]["body"]["text"].startswith("[Out")
    assert rows[3]["body"]["lang"] == "zh"  # no language: the configured default
    assert sms["delivery_id"] == delivery_id("A-1", "raised@1", "sms", "P-1")
    # the same event again (a replay): no second row
    people_store.record_events([raised("A-1", at=T0, distance_m=1234.0)], T0 + 5)
    assert len(_bodies(people_store, "A-1")) == 4


def test_no_register_name_gives_the_subject_id(people_store):
    people_store.record_events([raised("A-1", at=T0, subject_id="S-77")], T0)
    assert _bodies(people_store, "A-1")[0]["body"]["text"].startswith("【越界告警】S-77 ")


def test_escalation_cleared_and_taken_over_go_to_those_told(people_store):
    a = raised("A-1", at=T0)
    people_store.record_events([a, cleared(a, at=T0 + 1000)], T0)  # one transaction
    people_store.record_events([raised("A-2", at=T0)], T0)
    assert people_store.escalate_due(T0 + 400_000, 300_000) != []
    people_store.acknowledge("A-2", "op.wang", None, T0 + 500_000)
    a1 = _bodies(people_store, "A-1")
    assert [r["event"] for r in a1 if r["recipient"] == "P-1"] == [
        "raised", "raised", "cleared", "cleared", "escalated", "escalated"]
    assert next(r["body"]["text"] for r in a1 if r["event"] == "cleared") == \
        "【越界告警解除】S-1，02:14 UTC+08:00 https://c.example/#alarm=A-1"
    a2 = _bodies(people_store, "A-2")
    ack = [r for r in a2 if r["event"] == "acknowledged"]
    assert [(r["channel"], r["recipient"], r["level"]) for r in ack] == [
        ("email", "P-1", 2), ("sms", "P-1", 2), ("email", "P-2", 2), ("sms", "P-4", 2)]
    assert "已由 op.wang 接管" in ack[0]["body"]["text"]
    assert "taken over by op.wang" in ack[2]["body"]["text"]
    assert ("escalated", 2) in people_store.seen


def test_closing_messages_can_be_off(store_url):
    planner = people_planner(_fixed(ZHANG), ["sms"],
                             MessageSettings(closing_messages=False))
    s = open_store(store_url, notification_planner=planner)
    try:
        a = raised("A-1", at=T0)
        s.record_events([a], T0)
        s.record_events([cleared(a, at=T0 + 1)], T0 + 1)
        assert [r["event"] for r in _bodies(s, "A-1")] == ["raised"]
    finally:
        s.close()


def test_planner_arguments_and_link():
    with pytest.raises(ValueError, match="people channels"):
        people_planner(_fixed(ZHANG), ["pager"])
    with pytest.raises(ValueError, match="people channels"):
        people_planner(_fixed(ZHANG), [])
    assert combine(None, None) is None
    assert alarm_link("", "A") is None
    assert alarm_link("https://x/console/", "A/1 b") == "https://x/console/#alarm=A%2F1%20b"


def _due(n_summaries: int, n_others: int) -> list[dict]:
    return ([{"id": i, "event": SUMMARY_EVENT} for i in range(n_summaries)]
            + [{"id": 100 + i, "event": "raised"} for i in range(n_others)])


@given(st.integers(0, 2), st.integers(0, 40), st.lists(st.integers(0, 2000), max_size=12),
       st.integers(1, 8))
def test_storm_rule_never_exceeds_the_limit_and_loses_nothing(n_sum, n_other, ages, max_n):
    now, window = 10_000, 1000
    sent = [now - a for a in ages]
    d = limit_recipient(_due(n_sum, n_other), sent, max_n, window, now)
    ids = sorted(r["id"] for r in d.send + d.fold + d.defer + d.wait)
    assert ids == sorted(r["id"] for r in _due(n_sum, n_other))  # every row accounted for
    in_window = sum(1 for t in sent if now - window < t <= now)
    summary_now = 1 if d.fold and d.summary_at_ms == now else 0
    assert len(d.send) + summary_now <= max(0, max_n - in_window)
    if d.wait:  # rows left due only while something goes now (the loop makes progress)
        assert d.send
    if n_sum + n_other <= max_n - in_window:
        assert not d.fold and not d.defer  # within the limit: everything goes as it is
    if d.fold:
        assert all(r["event"] != SUMMARY_EVENT for r in d.fold)  # a summary is never folded
        assert not any(r["event"] == SUMMARY_EVENT for r in d.send)  # nor fed while sent
        assert d.summary_at_ms >= now
        if d.summary_at_ms > now:
            assert d.summary_at_ms == min(sent_t for sent_t in sent
                                          if now - window < sent_t <= now) + window


def test_a_version_6_database_gets_the_summarized_state(store_url, monkeypatch):
    from alarms import schema
    from alarms.notify import webhook_planner

    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:6])
        m.setattr(schema, "SCHEMA_VERSION", 6)
        old = open_store(store_url, notification_planner=webhook_planner)
    try:
        old.record_events([raised("OLD-1", at=T0)], T0)
        with pytest.raises(Exception, match="summary_id|summarized|CHECK|check"), \
                old._db.tx("t") as cur:
            cur.execute("UPDATE notifications SET state = 'summarized'")
    finally:
        old.close()
    store = open_store(store_url, notification_planner=webhook_planner)
    try:
        assert store.schema_version() == schema.SCHEMA_VERSION >= 7
        [row] = store.alarm_notifications("OLD-1")  # the row is kept as it was
        assert row["state"] == "pending" and row["summary_id"] is None
        with store._db.tx("t") as cur:
            cur.execute("UPDATE notifications SET state = 'summarized', summary_id = 'x'")
        assert store.notification_counts()["summarized"] == 1
        with pytest.raises(Exception, match="CHECK|check"), store._db.tx("t") as cur:
            cur.execute("UPDATE notifications SET state = 'lost'")
    finally:
        store.close()


def test_a_second_wave_waits_for_a_free_slot_in_one_summary(store_url):
    planner = people_planner(_fixed(PHONE_ONLY), ["sms"])
    s = open_store(store_url, notification_planner=planner)
    window = 1_000_000
    limit = StormLimit(window, 3, lambda items: orjson.dumps(
        {"to": items[0]["to"], "n": len(items)}))

    def round_at(now):
        rows, folded = s.due_within_limits("sms", now, 100, None, limit)
        s.mark_notification_sent([r["id"] for r in rows], now)
        return [(r["event"], orjson.loads(r["body"]).get("n")) for r in rows], folded

    try:
        s.record_events([raised(f"A-{i}", at=T0 + i) for i in range(10)], T0)
        assert round_at(T0) == ([("raised", None)] * 2 + [("summary", 8)], 8)
        s.record_events([raised(f"B-{i}", at=T0 + i) for i in range(5)], T0 + 10)
        assert round_at(T0 + 10) == ([], 5)  # no slot: folded, the summary waits
        s.record_events([raised("C-0", at=T0)], T0 + 20)
        assert round_at(T0 + 20) == ([], 1)  # into the same waiting summary
        assert round_at(T0 + window - 1) == ([], 0)
        assert round_at(T0 + window + 1) == ([("summary", 6)], 0)
        counts = s.notification_counts()
        assert counts == {**counts, "sent": 4, "summarized": 14, "pending": 0}
    finally:
        s.close()


_EVENTS = st.sampled_from(["raised", "escalated", "cleared", "acknowledged"])


@given(st.sampled_from(ALARM_TYPES), _EVENTS, st.sampled_from(["zh", "en"]),
       st.one_of(st.none(), st.floats(0, 50_000)), st.integers(0, 4_102_444_800_000),
       st.integers(1, 3))
def test_every_type_and_event_renders_the_least_data(alarm_type, event, lang, dist, at, level):
    ev = raised("A-1", at=at, type=alarm_type, lat=31.123456, lon=121.654321,
                distance_m=dist, acc=9.0)
    ev = {**ev, "event": event, "raised_at": at, "by": "op.li"}
    msg = render(ev, level, lang, who="张三", zone="卧龙区", timezone=TZ, link=None)
    zh, en = LABELS[alarm_type]
    assert (zh if lang == "zh" else en) in msg.subject and msg.text.startswith(msg.subject)
    # the zone's offset at that instant: +08:00, but +09:00 in China's summer time of
    # 1986-1991, which the generated instants reach
    offset = datetime.fromtimestamp(at / 1000, ZoneInfo(TZ)).strftime("%z")
    assert "张三" in msg.text and f"UTC{offset[:3]}:{offset[3:]}" in msg.text
    assert "31.12" not in msg.text and "121.65" not in msg.text  # never the position
    assert "S-1" not in msg.text and "BR-1" not in msg.text  # a name, not the ids
    if event == "acknowledged":
        assert "op.li" in msg.text
    if event == "escalated":
        assert str(level) in msg.subject
