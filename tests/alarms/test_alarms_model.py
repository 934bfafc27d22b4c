"""The store held against a plain in-memory model of the lifecycle (hypothesis stateful test).

Random interleavings of engine events (new raises, clears, replays of either), operator
actions (acknowledge, close with any disposition, including refused ones), escalation
rounds and broker acknowledgements; after every step the store's alarms, event log and
outbox must equal what a few lines of plain Python say they should be.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
import pytest
from alarms_helpers import REGION_A, REGION_B, cleared, raised
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from alarms import DISPOSITIONS, AlarmActionError, open_store

ESCALATE_AFTER_MS = 300_000


class Model:
    """What the store must hold, computed the obvious way."""

    def __init__(self):
        self.alarms: dict[str, dict] = {}
        self.log: list[tuple[str, str]] = []  # (alarm_id, event) in seq order
        self.delivered: set[tuple[str, str]] = set()

    def append(self, alarm_id, event):
        if (alarm_id, event) not in self.log:
            self.log.append((alarm_id, event))


def make_machine(open_url):  # noqa: C901 - the branches counted are the rules of one machine
    class StoreVersusModel(RuleBasedStateMachine):
        @initialize()
        def setup(self):
            self.store = open_url()
            self.model = Model()
            self.now = 1_000_000
            self.raised: dict[str, dict] = {}
            self.counter = 0

        def teardown(self):
            self.store.close()

        def tick(self, dt):
            self.now += dt
            return self.now

        # --- engine events ---------------------------------------------------------
        @rule(dt=st.integers(0, 200_000), n=st.integers(1, 3),
              region=st.sampled_from([REGION_A, REGION_B]),
              type=st.sampled_from(["outbound", "exclusion", "offline", "tamper"]))
        def raise_new(self, dt, n, region, type):
            now = self.tick(dt)
            evs = []
            for _ in range(n):
                self.counter += 1
                aid = f"A-{self.counter}"
                ev = raised(aid, at=now - 5_000, region=region, type=type)
                self.raised[aid] = ev
                evs.append(ev)
                self.model.alarms[aid] = {"state": "active", "workflow": "new",
                                          "recorded_at": now, "escalated_at": None,
                                          "cleared_at": None, "region": region}
                self.model.append(aid, "raised")
            self.store.record_events(evs, now)

        @rule(data=st.data(), dt=st.integers(0, 200_000), replay_raise=st.booleans())
        def clear_some(self, data, dt, replay_raise):
            if not self.raised:
                return
            aid = data.draw(st.sampled_from(sorted(self.raised)))
            now = self.tick(dt)
            ev = cleared(self.raised[aid], at=now - 1_000)
            batch = [ev] + ([self.raised[aid]] if replay_raise else [])
            self.store.record_events(batch, now)
            m = self.model.alarms[aid]
            if m["state"] == "active":
                m["state"], m["cleared_at"] = "cleared", now - 1_000
            self.model.append(aid, "cleared")

        @rule(data=st.data())
        def replay_everything(self, data):
            """A restart re-records events already stored: nothing may change."""
            if not self.raised:
                return
            aids = data.draw(st.lists(st.sampled_from(sorted(self.raised)), max_size=4))
            evs = [self.raised[a] for a in aids]
            evs += [cleared(self.raised[a], at=self.model.alarms[a]["cleared_at"])
                    for a in aids if self.model.alarms[a]["state"] == "cleared"]
            self.store.record_events(evs, self.tick(1))

        # --- operators -------------------------------------------------------------
        @rule(data=st.data(), dt=st.integers(0, 400_000))
        def acknowledge(self, data, dt):
            if not self.raised:
                return
            aid = data.draw(st.sampled_from(sorted(self.raised)))
            now = self.tick(dt)
            m = self.model.alarms[aid]
            if m["workflow"] == "new":
                self.store.acknowledge(aid, "olga", None, now)
                m["workflow"] = "acknowledged"
                self.model.append(aid, "acknowledged")
            else:
                with pytest.raises(AlarmActionError, match="already"):
                    self.store.acknowledge(aid, "ivan", None, now)

        @rule(data=st.data(), dt=st.integers(0, 400_000),
              disposition=st.sampled_from(DISPOSITIONS))
        def close(self, data, dt, disposition):
            if not self.raised:
                return
            aid = data.draw(st.sampled_from(sorted(self.raised)))
            now = self.tick(dt)
            m = self.model.alarms[aid]
            if m["workflow"] == "acknowledged":
                self.store.close_alarm(aid, "olga", disposition, "why", now)
                m["workflow"] = "closed"
                self.model.append(aid, "closed")
            else:
                expected = "must be acknowledged" if m["workflow"] == "new" else "already closed"
                with pytest.raises(AlarmActionError, match=expected):
                    self.store.close_alarm(aid, "olga", disposition, "why", now)

        # --- system ----------------------------------------------------------------
        @rule(dt=st.integers(0, 400_000))
        def escalate(self, dt):
            now = self.tick(dt)
            out = self.store.escalate_due(now, ESCALATE_AFTER_MS)
            due = sorted((m["recorded_at"], aid) for aid, m in self.model.alarms.items()
                         if m["workflow"] == "new" and m["escalated_at"] is None
                         and m["recorded_at"] <= now - ESCALATE_AFTER_MS)
            assert [e["alarm_id"] for e in out] == [aid for _, aid in due]
            for _, aid in due:
                self.model.alarms[aid]["escalated_at"] = now
                self.model.append(aid, "escalated")

        @rule(data=st.data())
        def broker_acknowledges(self, data):
            pend = self.store.pending(1000)
            if not pend:
                return
            k = data.draw(st.integers(1, len(pend)))
            chosen = data.draw(st.lists(st.sampled_from(pend), min_size=1, max_size=k))
            self.store.mark_delivered([p[0] for p in chosen], self.tick(1))
            for _, _, payload in chosen:
                ev = orjson.loads(payload)
                self.model.delivered.add((ev["alarm_id"], ev["event"]))

        # --- what must hold --------------------------------------------------------
        @invariant()
        def store_equals_model(self):
            if not hasattr(self, "store"):
                return
            log = self.store.events_since(0, limit=100_000)
            assert [(e["alarm_id"], e["event"]) for e in log] == self.model.log
            assert all(e["data"]["event"] == e["event"] for e in log)
            pending = [(e["alarm_id"], e["event"]) for e in log if e["delivered_at"] is None]
            assert pending == [k for k in self.model.log if k not in self.model.delivered]
            assert [orjson.loads(p[2])["alarm_id"] for p in self.store.pending(100_000)] == \
                [a for a, _ in pending]
            rows = {a["alarm_id"]: a for a in self.store.list_alarms(limit=100_000)}
            assert set(rows) == set(self.model.alarms)
            for aid, m in self.model.alarms.items():
                got = rows[aid]
                assert (got["state"], got["workflow"], got["escalated_at"], got["cleared_at"],
                        got["recorded_at"], got["region"]) == (
                    m["state"], m["workflow"], m["escalated_at"], m["cleared_at"],
                    m["recorded_at"], m["region"]), aid

    return StoreVersusModel


SETTINGS = settings(max_examples=40, stateful_step_count=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def test_sqlite_store_follows_the_model():
    with tempfile.TemporaryDirectory() as d:
        n = iter(range(10**9))

        def fresh():
            return open_store(f"sqlite:///{Path(d) / f'model-{next(n)}.db'}")

        machine = make_machine(fresh)
        machine.TestCase.settings = SETTINGS
        machine.TestCase().runTest()


@pytest.mark.postgres
def test_postgres_store_follows_the_model(pg_url):
    def fresh():
        s = open_store(pg_url)
        with s._db.tx("reset") as cur:  # one database per test: empty it per example
            cur.execute("TRUNCATE alarms, alarm_actions, events, audit RESTART IDENTITY")
        return s

    machine = make_machine(fresh)
    machine.TestCase.settings = settings(SETTINGS, max_examples=15)
    machine.TestCase().runTest()
