"""Issue 17 live: `emfence run` as a subprocess, a real mosquitto, a real county boundary
(武义县, GCJ-02). Messages are delivered out of order as a broker redelivering them
would (NATS JetStream after its ack_wait: behind newer ones, in order among themselves):
each device publishes its newer message first, then older ones with earlier ts. The
late ones are judged on their own ts: past outbound, exclusion, tamper, low_battery and
power_off episodes (raised and cleared at their ts, ``late``), the live alarms untouched."""

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


def _events(store_url: str) -> list[dict]:
    store = open_store(store_url)
    try:
        return [r["data"] for r in store.events_since(0, limit=10_000)]
    finally:
        store.close_store()


def _brief(events: list[dict]) -> list[tuple]:
    return [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
            for e in events]


def test_messages_delivered_out_of_order_are_judged_on_their_own_ts(tmp_path,
                                                                    mosquitto_factory):
    fleet = Fleet(tmp_path, devices_a=2, devices_b=1)
    br, other = fleet.ids(REGION_A)[:2]
    broker = mosquitto_factory(passwords=fleet.passwords())
    engine = EngineProcess(tmp_path, fleet, broker, config=CONFIG)
    pub = PahoClient(broker.port, LOADGEN_USER, LOADGEN_PW)
    county = f"county-{REGION_A}"
    t0 = now_ms() - 60_000

    def send(device: str, kind: str, payload: dict) -> None:
        pub.client.publish(f"emfence/v1/{REGION_A}/{device}/{kind}", orjson.dumps(payload),
                           qos=1).wait_for_publish()

    def wait_for(n: int) -> list[dict]:
        got = until(lambda: _events(engine.store_url), lambda ev: len(ev) >= n, 120)
        assert len(got) >= n, _brief(got)
        return got

    try:
        engine.start().wait_log("connected to")
        # The bracelet: its newest fix (home, t0 + 30 s) first, then the 30 s before it,
        # redelivered: two fixes abroad (a past excursion), one in the victim's circle.
        send(br, "fix", fix(t0 + 30_000, fleet.home))
        send(br, "fix", fix(t0, fleet.abroad))
        send(br, "fix", fix(t0 + 10_000, fleet.abroad))
        send(br, "fix", fix(t0 + 20_000, fleet.victim))
        # Its newest status (strap ok, battery fine), then an older one: the strap was
        # open, the battery low and it said it was switching off.
        send(br, "status", {"ts": t0 + 30_000, "strap": "ok", "battery": 80})
        send(br, "status", {"ts": t0 + 5_000, "strap": "open", "battery": 9, "power": "off"})
        ev = wait_for(10)
        late = [(e, "late" if e[5] else "live") for e in _brief(ev)]
        want = [("raised", "outbound", br, county, t0 + 10_000, True),
                ("cleared", "outbound", br, county, t0 + 10_000, True),
                ("raised", "exclusion", br, "victim-home", t0 + 20_000, True),
                ("cleared", "exclusion", br, "victim-home", t0 + 20_000, True)] + [
            (e, typ, br, None, t0 + 5_000, True)
            for typ in ("tamper", "low_battery", "power_off") for e in ("raised", "cleared")]
        assert _brief(ev) == want, late
        assert ev[0]["alarm_id"] == ev[1]["alarm_id"] != ev[2]["alarm_id"]
        assert ev[0]["distance_m"] > 20_000 and ev[6]["battery_pct"] == 9
        # The live state is as the newest messages left it: the bracelet is home, no
        # episode open; a live excursion raises as usual, not confirmed by the late ones.
        send(br, "fix", fix(t0 + 40_000, fleet.abroad))
        send(other, "fix", fix(t0 + 40_000, fleet.home))  # a marker: processed after it
        send(other, "status", {"ts": t0 + 40_000, "strap": "open"})
        ev = wait_for(11)
        assert _brief(ev[10:]) == [("raised", "tamper", other, None, t0 + 40_000, False)]
        send(br, "fix", fix(t0 + 50_000, fleet.abroad))
        ev = wait_for(12)
        assert _brief(ev[11:]) == [("raised", "outbound", br, county, t0 + 50_000, False)]
        # A late fix abroad while that live alarm is open neither clears nor repeats it.
        send(br, "fix", fix(t0 + 45_000, fleet.home))
        send(br, "fix", fix(t0 + 46_000, fleet.abroad))
        send(br, "fix", fix(t0 + 47_000, fleet.abroad))
        send(br, "fix", fix(t0 + 60_000, fleet.home))  # the live clear, after them
        ev = wait_for(13)
        assert _brief(ev[12:]) == [("cleared", "outbound", br, county, t0 + 60_000, False)]
        assert ev[12]["alarm_id"] == ev[11]["alarm_id"]
        assert len(_events(engine.store_url)) == 13
        assert engine.stop() == 0
    finally:
        pub.close()
        engine.close()
