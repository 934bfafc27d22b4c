"""Issue #15 through `emfence run`: a real mosquitto, the engine, the duty roster in the
store and the SMS channel to a gateway on loopback. An outbound alarm reaches the duty
operator on shift by SMS in under a second (level 1); unacknowledged, it climbs to the
squadron leader (level 2) and then the brigade (level 3) on schedule, each exactly once;
the person off shift is never told."""

from __future__ import annotations

import time

import orjson
import pytest

from alarms.store import open_store
from ingest.passwords import LOADGEN_USER
from tests.alarms.notify_servers import SmsGateway
from tests.ingest.ingest_fleet import LOADGEN_PW, REGION_A, EngineProcess, Fleet, fix, now_ms
from tests.ingest.ingest_mqtt_helpers import PahoClient

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

ESCALATE_S = 3


def _config(gateway_url: str, token_file) -> str:
    return f"""
[ingest]
batch_max_ms = 10
health_interval_s = 1
[alarms]
escalate_after_s = {ESCALATE_S}
escalation_check_s = 0.2
[notify.sms]
url = "{gateway_url}"
token_file = "{token_file}"
body = '{{"mobile": "{{phone}}", "content": "{{text}}", "request_id": "{{delivery_id}}"}}'
success_json_path = "result.code"
success_value = "0"
retry_min_s = 0.2
retry_max_s = 1
[notify.sms.headers]
Authorization = "Bearer {{token}}"
"""


def _person(pid: str, role: str, phone: str, shifts: list) -> dict:
    return {"person_id": pid, "region": REGION_A, "name": f"name of {pid}", "role": role,
            "phone": phone, "shifts": shifts}


def _shift_hours_away(hours: int) -> dict:
    """A one-hour shift starting ``hours`` from now, Asia/Shanghai local time."""
    start = (time.gmtime().tm_hour + 8 + hours) % 24
    return {"start": f"{start:02d}:00", "end": f"{(start + 1) % 24:02d}:00"}


def _until(done, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not done():
        assert time.monotonic() - t0 < timeout_s, what
        time.sleep(0.02)
    return time.monotonic() - t0


def test_an_alarm_reaches_the_duty_operator_by_sms_and_climbs_the_ladder(
        tmp_path, mosquitto_factory):
    fleet = Fleet(tmp_path, devices_a=1, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    (tmp_path / "sms.token").write_text("tok-123\n")
    gw = SmsGateway(token="tok-123")
    engine = EngineProcess(tmp_path, fleet, broker,
                           config=_config(gw.url, tmp_path / "sms.token"))
    store = open_store(engine.store_url)
    all_week = [{"start": "00:00", "end": "00:00"}]  # every day, 24 hours
    for doc in (_person("duty-1", "duty", "13800000001", all_week),
                # a shift twelve hours from now: off shift, never told
                _person("duty-off", "duty", "13800000009", [_shift_hours_away(12)]),
                _person("sq-1", "squadron", "13800000002", []),
                _person("br-1", "brigade", "13800000003", [])):
        store.roster.put_person(doc, actor="sue", role="supervisor", now_ms=now_ms())
    store.close_store()
    pub = PahoClient(broker.port, LOADGEN_USER, LOADGEN_PW)
    try:
        engine.start().wait_log("connected to")
        (device,) = fleet.ids(REGION_A)
        t0 = now_ms()
        for k in range(2):  # two fixes abroad: outbound raised
            pub.client.publish(f"emfence/v1/{REGION_A}/{device}/fix",
                               orjson.dumps(fix(t0 + k * 1000, fleet.abroad)), qos=1)
        waited = _until(lambda: len(gw.sent) >= 1, 30, "no SMS for the raise")
        first = gw.sent[0]
        assert first["mobile"] == "13800000001"
        assert first["content"].startswith("【越界告警】"), first["content"]
        assert first["request_id"] == first["delivery"]
        print(f"raise -> SMS at the gateway: {waited:.2f} s after publishing")
        # level 2 after escalate_after_s, level 3 one period later
        _until(lambda: {s["mobile"] for s in gw.sent} >= {"13800000002"}, 30, "no level 2")
        t_level2 = time.monotonic()
        _until(lambda: {s["mobile"] for s in gw.sent} >= {"13800000003"}, 30, "no level 3")
        climbed_s = time.monotonic() - t_level2
        assert ESCALATE_S - 1 <= climbed_s <= ESCALATE_S + 5, climbed_s
        time.sleep(ESCALATE_S + 1.0)  # nothing more: the ladder ends at 3
        assert engine.stop() == 0
        by_phone = {}
        for s in gw.sent:
            by_phone.setdefault(s["mobile"], []).append(s["content"])
        assert sorted(by_phone) == ["13800000001", "13800000002", "13800000003"]
        assert all(len(v) == 1 for v in by_phone.values()), by_phone
        assert set(gw.delivered.values()) == {1} and gw.bad_auth == 0
        store = open_store(engine.store_url)
        try:
            levels = sorted((n["recipient"], n["level"], n["state"])
                            for a in store.list_alarms(None, limit=10)
                            for n in store.alarm_notifications(a["alarm_id"]))
            assert levels == [("br-1", 3, "sent"), ("duty-1", 1, "sent"),
                              ("sq-1", 2, "sent")], levels
        finally:
            store.close_store()
    finally:
        pub.close()
        engine.close()
        gw.close()
