"""A PostgreSQL outage that ends, end to end: `emfence run` (a real subprocess) against a
PostgreSQL server of the test's own and a real mosquitto with the shipped config; the
server is stopped for ~12 s under traffic and started again.

The log says it once when it starts and once when it ends (with the duration and what
was held back), in single lines, not once per retry; nothing is lost: every alarm of the
reference engine reaches the store, every fix is stored once, and the broker redelivers
what the engine could not acknowledge meanwhile.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

import pytest
from ingest_fleet import REGION_A, EngineProcess, Fleet, now_ms

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres, pytest.mark.slow]

OUTAGE_S = 12.0
STEPS = 200  # x 0.2 s per step: 40 s of traffic, the outage in its middle

START_RE = re.compile(r"alarm store failed, an outage: (.*)")
END_RE = re.compile(r"alarm store works again after an outage of ([0-9.]+) s \((\d+) failed "
                    r"attempts\); held back meanwhile: (\d+) alarm events, (\d+) track rows, "
                    r"(\d+) messages unacknowledged")


@pytest.mark.parametrize("engine_fate", ["keeps running", "killed during the outage"])
def test_a_postgresql_outage_is_said_once_when_it_starts_and_once_when_it_ends(
        tmp_path, mosquitto_factory, private_pg, engine_fate):
    """Traffic raises alarms before, during and after the outage. Nothing is lost either
    way: the engine that keeps running writes what it held once the server is back; the
    one killed during the outage gets everything it had not acknowledged from the broker
    again after its restart."""
    from test_ingest_faults import CONFIG, Publisher, check_outcome, scenario, wait_processed

    fleet = Fleet(tmp_path, devices_a=30, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    devices = fleet.ids(REGION_A)
    messages = scenario(fleet, devices, steps=STEPS, t0=now_ms() - 60_000)
    engine = EngineProcess(tmp_path, fleet, broker, store=private_pg.url, checkpoint=False,
                           config=CONFIG)
    try:
        engine.start().wait_log("connected to")
        pub = Publisher(broker.port, messages, per_step=len(messages) // STEPS)
        pub.start()
        time.sleep(8.0)  # traffic, alarms and checkpoints before the outage
        mark = len(engine.log())
        private_pg.stop("fast")
        t_stop = time.monotonic()
        engine.wait_log("an outage", after=mark, timeout_s=60)
        if engine_fate != "keeps running":
            time.sleep(OUTAGE_S / 2)
            engine.kill9()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_stop)))
        during = engine.log()[mark:]
        private_pg.start()
        if engine_fate == "keeps running":
            engine.wait_log("works again after an outage", after=mark, timeout_s=120)
        else:
            restart = len(engine.log())
            engine.start().wait_log("connected to", after=restart)
        pub.wait_acked()
        wait_processed(engine, broker, sum(1 for t, _ in messages if t.endswith("/fix")))
        text = engine.log()[mark:]
        check_outcome(fleet, engine, broker, messages, devices)  # nothing lost or doubled
    finally:
        engine.close()

    assert "Traceback" not in text
    # bounded: the outage's line (and the store noticing its connections gone, as the
    # outage begins), not a line (or two) per retry
    lines = [line for line in during.splitlines() if line.strip()]
    assert len(lines) <= 6, during
    said = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in lines]
    assert max(said) - min(said) <= timedelta(seconds=3), during
    starts = [m for line in text.splitlines() if (m := START_RE.search(line))]
    assert len(starts) == 1, text
    ends = [m for line in text.splitlines() if (m := END_RE.search(line))]
    if engine_fate != "keeps running":
        assert ends == [], text  # the process that saw it start died in it
        return
    assert len(ends) == 1, text
    took_s, failures, events, rows, unacked = ends[0].groups()
    assert OUTAGE_S - 1 <= float(took_s) <= OUTAGE_S + 120
    # what waited: alarms raised during the outage, their fixes' track rows, and the
    # messages the broker kept unacknowledged
    assert int(failures) > 1 and int(events) > 0 and int(rows) > 0 and int(unacked) > 0


def test_a_driver_message_of_several_lines_is_said_in_one(private_pg):
    """PostgreSQL's "connection refused" comes with a second line ("Is the server running
    on that host ...?"): the outage line carries both, on one line."""
    from alarms.store import StoreError, open_store
    from emfence.run.health import one_line

    private_pg.stop("fast")
    with pytest.raises(StoreError) as down:
        open_store(private_pg.url)
    assert "\n" in str(down.value)  # what the driver says
    said = one_line(down.value)
    assert "\n" not in said and "Is the server running" in said and "refused" in said
