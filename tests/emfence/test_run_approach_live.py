"""Issue 14, rules 4 and 7 live: `emfence run` as a subprocess, a real mosquitto, a real
county boundary (武义县, GCJ-02) and a 300 m exclusion circle. A subject's bracelet walks
up to the circle (the `approach` warning) and into it (the warning superseded by
`exclusion`); then its bracelet and phone go out of the county together: one `outbound`
alarm for the subject, kept across a restart of the engine, cleared when the last of
its devices is back, listing both."""

from __future__ import annotations

import orjson
import pytest

from alarms.store import open_store
from ingest.passwords import LOADGEN_USER
from tests.ingest.ingest_fleet import (
    LOADGEN_PW,
    REGION_A,
    EngineProcess,
    Fleet,
    fix,
    now_ms,
    until,
)
from tests.ingest.ingest_mqtt_helpers import PahoClient

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

CONFIG = """
[ingest]
batch_max_ms = 10
checkpoint_interval_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1
"""


def _two_device_subject(fleet: Fleet) -> tuple[str, str]:
    """Give the fleet's first subject of REGION_A a phone besides its bracelet."""
    subjects = orjson.loads(fleet.subjects_path.read_bytes())
    subject = next(s for s in subjects["subjects"] if s["region"] == REGION_A)
    bracelet = subject["devices"][0]["device_id"]
    phone = bracelet.replace("BR-", "PH-")
    subject["devices"].append({"device_id": phone, "kind": "phone"})
    fleet.subjects_path.write_bytes(orjson.dumps(subjects))
    fleet.devices[phone] = REGION_A
    return bracelet, phone


def _events(store_url: str) -> list[dict]:
    store = open_store(store_url)
    try:
        return [r["data"] for r in store.events_since(0, limit=10_000)]
    finally:
        store.close_store()


def _brief(events: list[dict]) -> list[tuple]:
    return [(e["event"], e["type"], e["device_id"], e["zone_id"], e.get("devices"))
            for e in events]


def test_approach_then_exclusion_and_one_outbound_for_two_devices(tmp_path, mosquitto_factory):
    fleet = Fleet(tmp_path, devices_a=1, devices_b=1)
    br, ph = _two_device_subject(fleet)
    broker = mosquitto_factory(passwords=fleet.passwords())
    engine = EngineProcess(tmp_path, fleet, broker, config=CONFIG)
    pub = PahoClient(broker.port, LOADGEN_USER, LOADGEN_PW)
    county = f"county-{REGION_A}"
    t = [now_ms()]

    def send(device: str, place) -> None:
        t[0] += 1000
        pub.client.publish(f"emfence/v1/{REGION_A}/{device}/fix",
                           orjson.dumps(fix(t[0], place)), qos=1).wait_for_publish()

    def wait_for(n: int) -> list[dict]:
        got = until(lambda: _events(engine.store_url), lambda ev: len(ev) >= n, 120)
        assert len(got) >= n, _brief(got)
        return got

    try:
        engine.start().wait_log("connected to")
        send(br, fleet.home)
        send(br, fleet.offset(fleet.victim, 0, 300 + 120))  # 120 m from the circle
        ev = wait_for(1)
        assert _brief(ev) == [("raised", "approach", br, "victim-home", [br])]
        assert ev[0]["distance_m"] == pytest.approx(120, abs=1.0)
        send(br, fleet.victim)  # inside: the warning superseded, then the alarm
        ev = wait_for(3)
        assert _brief(ev[1:]) == [("cleared", "approach", br, "victim-home", [br]),
                                  ("raised", "exclusion", br, "victim-home", [br])]
        assert ev[1]["alarm_id"] == ev[0]["alarm_id"] and ev[1]["at"] == ev[2]["at"]
        send(br, fleet.home)
        wait_for(4)
        # Bracelet and phone leave the county together: one outbound alarm.
        for device in (br, ph, br, ph):
            send(device, fleet.abroad)
        ev = wait_for(5)
        raised = ev[4]
        assert _brief([raised]) == [("raised", "outbound", br, county, [br])]
        # A restart with the subject's alarm open: it continues, not raised again.
        assert engine.stop() == 0
        mark = len(engine.log())
        engine.start().wait_log("connected to", after=mark)
        send(ph, fleet.abroad)
        send(br, fleet.home)  # one back: the alarm stays open
        send(ph, fleet.home)  # the last back: cleared, listing both
        ev = wait_for(6)
        assert _brief(ev[5:]) == [("cleared", "outbound", br, county, [br, ph])]
        assert ev[5]["alarm_id"] == raised["alarm_id"]
        assert len(_events(engine.store_url)) == 6  # nothing for the phone of its own
        assert engine.stop() == 0
    finally:
        pub.close()
        engine.close()
