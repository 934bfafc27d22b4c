"""The relation rules live (issue #14, docs/rules.md "Relations"): `emfence run
--subjects` behind a real mosquitto with the shipped ACL, the devices publishing on their
own topics; a restart in the middle of an episode clears it with the same alarm id."""

from __future__ import annotations

import time

import orjson
import pytest

from alarms.store import open_store
from ingest.passwords import LOADGEN_USER, device_password
from tests.ingest.ingest_fleet import (
    LOADGEN_PW,
    REGION_A,
    SECRET,
    EngineProcess,
    Fleet,
    fix,
    now_ms,
    until,
)
from tests.ingest.ingest_mqtt_helpers import PahoClient

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _events(store_url: str, type_name: str) -> list[dict]:
    store = open_store(store_url)
    try:
        return [e["data"] for e in store.events_since(0, limit=10_000)
                if e["type"] == type_name]
    finally:
        store.close_store()


def _until(fetch, n: int, timeout_s: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = fetch()
        if len(got) >= n:
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def _pair_fleet(tmp_path) -> Fleet:
    """The test fleet with one subject carrying a bracelet and a phone."""
    fleet = Fleet(tmp_path, devices_a=0, devices_b=0)
    fleet.subjects_path.write_bytes(orjson.dumps({"subjects": [
        {"subject_id": "S-1", "region": REGION_A, "level": "strict",
         "devices": [{"device_id": "BR-1"}, {"device_id": "PH-1", "kind": "phone"}],
         "inclusion": [f"county-{REGION_A}"]}]}))
    fleet.devices.update({"BR-1": REGION_A, "PH-1": REGION_A})
    return fleet


def test_separation_live_through_mosquitto_across_a_restart(tmp_path, mosquitto_factory):
    fleet = _pair_fleet(tmp_path)
    broker = mosquitto_factory(passwords=fleet.passwords())
    engine = EngineProcess(tmp_path, fleet, broker)
    phone = PahoClient(broker.port, "PH-1", device_password(SECRET, "PH-1"))
    pub = PahoClient(broker.port, LOADGEN_USER, LOADGEN_PW)
    far = fleet.offset(fleet.home, 2000, 0)
    t0 = now_ms()

    def send(client, device, ts, where):
        client.client.publish(f"emfence/v1/{REGION_A}/{device}/fix",
                              orjson.dumps(fix(ts, where)), qos=1).wait_for_publish()

    try:
        engine.start().wait_log("connected to")
        send(pub, "BR-1", t0, fleet.home)
        send(phone, "PH-1", t0 + 1000, far)  # the phone on its own account: 2 km away
        time.sleep(0.5)
        send(pub, "BR-1", t0 + 2000, fleet.home)  # the second far pair: raised
        [raised] = _until(lambda: _events(engine.store_url, "separation"), 1)
        assert (raised["event"], raised["device_id"], raised["at"]) == ("raised", "BR-1",
                                                                         t0 + 2000)
        assert raised["peer_device_id"] == "PH-1"
        assert raised["distance_m"] == pytest.approx(2000.0, abs=0.5)
        assert (raised["peer_lon"], raised["peer_lat"]) == pytest.approx(far, abs=1e-9)
        assert engine.stop() == 0  # checkpoint written, episode open

        mark = len(engine.log())
        engine.start().wait_log("connected to", after=mark)
        send(phone, "PH-1", t0 + 3000, fleet.offset(fleet.home, 100, 0))  # together again
        events = _until(lambda: _events(engine.store_url, "separation"), 2)
        assert [(e["event"], e["alarm_id"], e["at"]) for e in events] == [
            ("raised", raised["alarm_id"], t0 + 2000),
            ("cleared", raised["alarm_id"], t0 + 3000)]
        time.sleep(0.5)
        assert len(_events(engine.store_url, "separation")) == 2  # nothing more
        assert engine.stop() == 0
    finally:
        phone.close()
        pub.close()
        engine.close()


def test_proximity_live_the_victim_device_on_its_own_account(tmp_path, mosquitto_factory):
    fleet = _pair_fleet(tmp_path)
    doc = orjson.loads(fleet.subjects_path.read_bytes())
    doc["protected"] = [{"person_id": "V-1", "region": REGION_A,
                         "devices": [{"device_id": "VI-1", "kind": "victim"}],
                         "protected_from": ["S-1"]}]
    fleet.subjects_path.write_bytes(orjson.dumps(doc))
    fleet.devices["VI-1"] = REGION_A
    broker = mosquitto_factory(passwords=fleet.passwords())
    engine = EngineProcess(tmp_path, fleet, broker)
    victim = PahoClient(broker.port, "VI-1", device_password(SECRET, "VI-1"))
    pub = PahoClient(broker.port, LOADGEN_USER, LOADGEN_PW)
    t0 = now_ms()

    def send(client, device, ts, where):
        client.client.publish(f"emfence/v1/{REGION_A}/{device}/fix",
                              orjson.dumps(fix(ts, where)), qos=1).wait_for_publish()

    try:
        engine.start().wait_log("connected to")
        send(victim, "VI-1", t0, fleet.home)
        time.sleep(0.5)
        send(pub, "BR-1", t0 + 1000, fleet.offset(fleet.home, 600, 0))
        [raised] = _until(lambda: _events(engine.store_url, "proximity"), 1)
        assert (raised["event"], raised["device_id"], raised["person_id"]) == (
            "raised", "BR-1", "V-1")
        assert raised["distance_m"] == pytest.approx(600.0, abs=0.5)
        assert not {"peer_lat", "peer_lon"} & set(raised)  # never the victim's position
        # the victim's newest fix is kept for supervisors alone, never as a track row
        with open_store(engine.store_url) as store:
            kept = until(lambda: store.protected_positions("V-1"), bool, 30)
            assert [(p["device_id"], p["ts"]) for p in kept] == [("VI-1", t0)]
            assert store.track("VI-1") == []
        send(pub, "BR-1", t0 + 2000, fleet.offset(fleet.home, 3000, 0))
        events = _until(lambda: _events(engine.store_url, "proximity"), 2)
        assert [(e["event"], e["alarm_id"]) for e in events] == [
            ("raised", raised["alarm_id"]), ("cleared", raised["alarm_id"])]
        assert engine.stop() == 0
    finally:
        victim.close()
        pub.close()
        engine.close()


def test_contact_live_two_co_defendants_meeting(tmp_path, mosquitto_factory):
    fleet = _pair_fleet(tmp_path)
    doc = orjson.loads(fleet.subjects_path.read_bytes())
    doc["subjects"].append({"subject_id": "S-0", "region": REGION_A, "level": "strict",
                            "devices": [{"device_id": "BR-0"}],
                            "inclusion": [f"county-{REGION_A}"], "contacts": ["S-1"]})
    fleet.subjects_path.write_bytes(orjson.dumps(doc))
    fleet.devices["BR-0"] = REGION_A
    broker = mosquitto_factory(passwords=fleet.passwords())
    engine = EngineProcess(tmp_path, fleet, broker,
                           config="[rules]\ncontact_min_s = 120\n")
    pub = PahoClient(broker.port, LOADGEN_USER, LOADGEN_PW)
    t0 = now_ms()
    near = fleet.offset(fleet.home, 80, 0)

    def send(device, ts, where):
        pub.client.publish(f"emfence/v1/{REGION_A}/{device}/fix",
                           orjson.dumps(fix(ts, where)), qos=1).wait_for_publish()

    try:
        engine.start().wait_log("connected to")
        for k in range(4):  # together from t0 on, a fix each per minute
            send("BR-1", t0 + k * 60_000, fleet.home)
            send("BR-0", t0 + k * 60_000 + 1000, near)
        [raised] = _until(lambda: _events(engine.store_url, "contact"), 1)
        # on S-0 (the smaller id), at the moment contact_min_s was reached
        assert (raised["event"], raised["subject_id"], raised["device_id"], raised["at"]) == (
            "raised", "S-0", "BR-0", t0 + 1000 + 120_000)
        assert (raised["peer_subject_id"], raised["peer_device_id"]) == ("S-1", "BR-1")
        send("BR-1", t0 + 240_000, fleet.offset(fleet.home, -2000, 0))
        events = _until(lambda: _events(engine.store_url, "contact"), 2)
        assert [(e["event"], e["alarm_id"], e["at"]) for e in events] == [
            ("raised", raised["alarm_id"], t0 + 121_000),
            ("cleared", raised["alarm_id"], t0 + 240_000)]
        assert engine.stop() == 0
    finally:
        pub.close()
        engine.close()
