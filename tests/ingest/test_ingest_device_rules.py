"""The device rules of issue 14 live: a real mosquitto with the shipped ACL, `emfence run`
as a real subprocess, devices publishing with their own credentials. A status with
``"power": "off"`` raises power_off (and holds offline back while the device is silent);
statuses without fixes raise no_fix; both clear at the device's next message, and every
device alarm carries its evidence into the store."""

from __future__ import annotations

import orjson
import pytest
from ingest_fleet import REGION_A, SECRET, fix, now_ms, until
from ingest_mqtt_helpers import PahoClient

from alarms.store import open_store
from ingest.passwords import device_password

pytestmark = pytest.mark.mqtt

# Short thresholds so the test runs in seconds: no fix for 3 s while statuses arrive is
# no_fix; 5 s of silence is offline. Sweeps every 200 ms.
CONFIG = """
[ingest]
batch_max_ms = 10
health_interval_s = 1
checkpoint_interval_s = 1
restart_grace_s = 1
sweep_interval_ms = 200
[alarms]
outbox_retry_s = 1
[rules]
offline_after_s = 5
no_fix_after_s = 3
"""


def _evidence(row: dict) -> dict:
    ev = row["evidence"]
    return orjson.loads(ev) if isinstance(ev, str | bytes) else ev


def test_power_off_and_no_fix_live(tmp_path, fleet, broker, engines):
    engine = engines(tmp_path, fleet, broker, config=CONFIG)
    engine.wait_log("connected to")
    a = fleet.ids(REGION_A)
    foil, off, silent = a[0], a[1], a[2]
    devs = {d: PahoClient(broker.port, d, device_password(SECRET, d)) for d in (foil, off, silent)}

    def send(d: str, kind: str, payload: dict) -> None:
        devs[d].publish(f"emfence/v1/{REGION_A}/{d}/{kind}", orjson.dumps(payload))

    t = now_ms()
    for d in (foil, off, silent):
        send(d, "fix", fix(t, fleet.home, acc=12.0))
    # off: the firmware's last word; then nothing.
    send(off, "status", {"ts": t + 100, "battery": 40, "power": "off"})
    # foil: statuses every 300 ms and no fix, for 6 s (no_fix after 3 s).
    store = open_store(engine.store_url)
    try:
        def alarms() -> dict:
            return {(r["type"], r["device_id"]): r for r in store.list_alarms()}

        for k in range(20):
            send(foil, "status", {"ts": t + 300 * (k + 1), "battery": 80})
            until(lambda: None, lambda _: False, timeout_s=0.3)
        # The silent device goes offline (5 s); the powered-off one does not.
        rows = until(alarms, lambda r: ("offline", silent) in r and ("no_fix", foil) in r,
                     timeout_s=60)
        assert ("offline", silent) in rows and ("no_fix", foil) in rows, rows
        assert rows[("power_off", off)]["state"] == "active"
        assert rows[("power_off", off)]["raised_at"] == t + 100
        assert ("offline", off) not in rows  # power_off holds offline back
        assert ("offline", foil) not in rows and ("no_fix", silent) not in rows, \
            {k: (v["raised_at"] - t, v.get("cleared_at")) for k, v in rows.items()}
        no_fix = rows[("no_fix", foil)]
        # Raised where the threshold was crossed: 3 s after the fix was received. The fix
        # cannot be received before `t` was read, but may be within the same millisecond
        # (whole-ms clocks, a broker on loopback): `t <=`, not `t <`.
        assert t <= no_fix["raised_at"] - 3000 < t + 10_000
        ev = _evidence(no_fix)
        assert ev["lat"] == pytest.approx(fleet.home[1]) and ev["acc"] == 12.0
        assert ev["last_fix_rx_ms"] == no_fix["raised_at"] - 3000
        assert _evidence(rows[("offline", silent)])["last_rx_ms"] == \
            rows[("offline", silent)]["raised_at"] - 5000
        assert _evidence(rows[("power_off", off)])["lon"] == pytest.approx(fleet.home[0])

        # The next fix clears no_fix; the powered-off device's next message clears power_off
        # at that message's ts.
        t2 = now_ms()
        send(foil, "fix", fix(t2, fleet.home))
        send(off, "status", {"ts": t2 + 1, "power": "on", "battery": 90})
        rows = until(alarms, lambda r: r[("no_fix", foil)]["state"] == "cleared"
                     and r[("power_off", off)]["state"] == "cleared", timeout_s=60)
        assert rows[("no_fix", foil)]["state"] == "cleared"
        assert rows[("power_off", off)]["state"] == "cleared"
        assert rows[("power_off", off)]["cleared_at"] == t2 + 1
    finally:
        store.close_store()
    assert engine.stop() == 0
    for c in devs.values():
        c.close()
