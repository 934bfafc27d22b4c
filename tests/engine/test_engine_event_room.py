"""The event buffers grow between records, never inside the record loop (process_batch
and _run_records): one batch that writes far more rows than the buffers hold, with the
replay clock's sweep raising hundreds of alarms in its middle, gives exactly the events
of the same records sent one at a time.

Marked ``kernel``: ``make test`` re-runs it with NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import T0
from test_engine_rules import INSIDE, east, engine, subject

from contract import RecordBatch
from contract.records import K_FIX, K_STATUS
from engine import kernels as K

pytestmark = pytest.mark.kernel

S = 1000  # ms
N_SUBJECTS = 300  # two devices each: 600 devices
VICTIM_CENTRE = (120.03, 30.03)  # the exclusion circle of test_engine_rules' subjects


def records() -> tuple[RecordBatch, list[tuple[str, int, int]]]:
    """Rounds over every device: inside, in the exclusion circle, twice out of the
    inclusion zone (outbound at the second), back inside; then a long silence and one
    status each (the sweep raises offline for every device on the first record after it,
    and each status clears its own offline). ~3 000 event rows."""
    ids = [f"B-{s}-{k}" for s in range(N_SUBJECTS) for k in (1, 2)]
    rounds = [INSIDE, VICTIM_CENTRE, east(500), east(700), INSIDE]
    kind, dev, ts, rx, lat, lon = [], [], [], [], [], []
    t = T0
    for where in rounds:
        for d in range(len(ids)):
            kind.append(K_FIX)
            dev.append(d)
            ts.append(t)
            rx.append(t)
            lon.append(where[0])
            lat.append(where[1])
            t += 10
        t += 10 * S
    t += 3_600 * S  # silent for an hour: offline for every device (strict: 600 s)
    for d in range(len(ids)):
        kind.append(K_STATUS)
        dev.append(d)
        ts.append(t)
        rx.append(t)
        lon.append(np.nan)
        lat.append(np.nan)
        t += 10
    n = len(kind)
    batch = RecordBatch.records(
        kind=kind, device_idx=dev, ts_ms=ts, rx_ms=rx, lat=lat, lon=lon, acc_m=[10.0] * n,
        coord_sys=[0] * n, battery_pct=[80.0] * n, strap=[0] * n, power=[0] * n)
    return batch, ids


def fleet():
    subjects = [subject(f"S-{s}", devices=(f"B-{s}-1", f"B-{s}-2"))
                for s in range(N_SUBJECTS)]
    return engine(subjects, alarm_per="device")


def test_one_batch_growing_its_buffers_gives_the_events_of_one_record_at_a_time():
    batch, _ = records()
    whole = fleet()
    whole._events = K.new_events(1)  # the smallest buffers: they grow all through the batch
    got, now_whole = whole.process(batch, clock_now_ms=T0)
    assert whole._events[0].shape[0] >= len(got) > 2_000
    single = fleet()
    want = []
    now = T0
    room = K.record_room(single._arrays, single.relations)
    for i in range(len(batch.kind)):
        events, now = single.process(RecordBatch(*(col[i:i + 1] for col in batch)),
                                     clock_now_ms=now)
        want += events
        # What the record itself wrote (not the sweep before it) fits the room it is given.
        own = [e for e in events if not (e["type"] in ("offline", "no_fix")
                                         and e["event"] == "raised")]
        assert len(own) <= room
    assert now_whole == now
    assert got == want
    types = {(e["type"], e["event"]) for e in got}
    assert {("exclusion", "raised"), ("outbound", "raised"), ("outbound", "cleared"),
            ("offline", "raised"), ("offline", "cleared")} <= types
    offline = [e for e in got if e["type"] == "offline" and e["event"] == "raised"]
    assert len(offline) == 2 * N_SUBJECTS
