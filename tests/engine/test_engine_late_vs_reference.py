"""Issue 17: late messages judged on their own ts, held against the plain reference on
real county boundaries (the scenarios of test_engine_vs_reference: Nanyang's districts,
exclusion circles on the county line, leaves, curfews, statuses, GCJ-02 fixes) delivered
as a broker redelivering unacknowledged messages delivers them: groups of one device's
messages of one topic, in order among themselves, arrive again behind newer ones (NATS
JetStream after its ack_wait). Both sides see the same records; their alarm streams
must be identical, every late pair well formed, and the live alarms the same as with
the late messages left out (a late message never touches a live episode).
"""

from __future__ import annotations

import random

import pytest
from engine_reference import Reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_vs_reference import REF_ZONES, check_episodes, engine_events, generate

# Types whose live events depend on nothing a late message may change (offline and
# no_fix run on receive time, power_off is cleared by any newer ts, late or not).
LIVE_TYPES = ("outbound", "leave_overdue", "exclusion", "curfew", "tamper", "low_battery",
              "approach", "separation")


def redeliver(records: list[dict], rng: random.Random, groups: int) -> list[dict]:
    """``records`` with ``groups`` groups (1-5 consecutive messages of one device and
    topic) taken out and delivered again 3-40 messages later, in their order, with the
    receive time of where they land (the receive clock never goes back)."""
    recs = list(records)
    for _ in range(groups):
        if len(recs) < 2:
            break
        i = rng.randrange(len(recs))
        dev, is_fix = recs[i]["device_id"], "lat" in recs[i]
        idx = [j for j in range(i, len(recs))
               if recs[j]["device_id"] == dev and ("lat" in recs[j]) == is_fix]
        idx = idx[:rng.randint(1, 5)]
        group = [recs[j] for j in idx]
        for j in reversed(idx):
            del recs[j]
        k = min(len(recs), idx[0] + rng.randint(3, 40))
        rx = recs[k - 1].get("rx", 0) if k > 0 else 0
        recs[k:k] = [{**g, "rx": max(g["rx"], rx)} for g in group]
    return recs


def scenario(seed: int, n: int, groups: int) -> tuple[dict, list[dict], int]:
    subj, records, until = generate(seed, n, schedules=True, device_rules=True)
    return subj, redeliver(records, random.Random(seed ^ 0x5EED), groups), until


def brief(events: list[dict]) -> list[tuple]:
    return [(e["event"], e["type"], e["device_id"], e["zone_id"], e["at"], e["late"])
            for e in events]


def in_order_only(records: list[dict]) -> list[dict]:
    """The records that are not late (older than the device's newest of their kind)."""
    newest: dict[tuple, int] = {}
    out = []
    for r in records:
        key = (r["device_id"], "lat" in r)
        if r["ts"] >= newest.get(key, r["ts"]):
            out.append(r)
            newest[key] = r["ts"]
    return out


def stored(events: list[dict]) -> list[dict]:
    """The events as the alarm store keeps them: its log is keyed by (alarm_id, event)
    and skips a second one (alarms/events.py, ``ON CONFLICT DO NOTHING``). Only a late
    pair may come twice (a late message redelivered after others is judged again,
    docs/rules.md), and then exactly as the first time."""
    first: dict[tuple, dict] = {}
    for e in events:
        key = (e["alarm_id"], e["event"])
        if key in first:
            assert e["late"] and e == first[key], (e, first[key])
        else:
            first[key] = e
    return list(first.values())


def check(seed: int, n: int, groups: int) -> list[tuple]:
    subj, records, until = scenario(seed, n, groups)
    got = engine_events(subj, records, until)
    want = Reference(REF_ZONES, subj).replay(records, until)
    assert brief(got) == want
    check_episodes(stored(got))
    pairs = [e for e in got if e["late"]]  # each a raised and a cleared, one id, one at
    assert [e["event"] for e in pairs] == ["raised", "cleared"] * (len(pairs) // 2)
    for raised, cleared in zip(pairs[::2], pairs[1::2], strict=True):
        assert (raised["alarm_id"], raised["at"]) == (cleared["alarm_id"], cleared["at"])
    # The live alarms are those of the same records without the late ones.
    live = [e for e in brief(got) if not e[5] and e[1] in LIVE_TYPES]
    alone = brief(engine_events(subj, in_order_only(records), until))
    assert live == [e for e in alone if e[1] in LIVE_TYPES]
    return want


@pytest.mark.parametrize("seed", range(6))
def test_redelivered_messages_match_the_reference(seed):
    check(seed, 400, groups=30)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=100, max_value=10**9),
       n=st.integers(min_value=1, max_value=250), groups=st.integers(min_value=0, max_value=40))
def test_redelivered_messages_match_the_reference_property(seed, n, groups):
    check(seed, n, groups)


def test_redelivered_scenarios_cover_every_late_rule():
    """Agreement proves something only if the scenarios write late pairs of each rule."""
    seen = set()
    for seed in range(6):
        subj, records, until = scenario(seed, 400, 30)
        seen |= {e[1] for e in Reference(REF_ZONES, subj).replay(records, until) if e[5]}
    assert {"outbound", "exclusion", "curfew", "tamper", "low_battery", "power_off"} <= seen


def test_the_late_comparison_is_sensitive():
    """A reference whose late runs confirm at the first out fix, or that never writes a
    late status pair, disagrees with the engine somewhere."""
    diffs = set()
    for seed in range(6):
        subj, records, until = scenario(seed, 400, 30)
        got = brief(engine_events(subj, records, until))
        eager = Reference(REF_ZONES, subj)
        step = eager._late_step
        eager._late_step = lambda run, obs, step=step: step(run, obs) if obs != "out" or \
            run is None else (None, True)
        if got != eager.replay(records, until):
            diffs.add("late run")
        mute = Reference(REF_ZONES, subj)
        mute._late_status = lambda *a: []
        if got != mute.replay(records, until):
            diffs.add("late status")
    assert diffs == {"late run", "late status"}
