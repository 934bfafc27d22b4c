"""The outage bookkeeping of `emfence run` (emfence/run/health.py) without a server: one
outage per resource however many parts see it, its end only once every failing part
works again, what was held back, and the other parts' store errors kept out of the log
while it lasts."""

from __future__ import annotations

import logging
import re

import pytest

from alarms.store import StoreError
from emfence.run.health import QUIET_LOGGERS, Outages, QuietDuringOutage, WatchedStore

DOWN = StoreError("cannot connect to PostgreSQL: connection refused\n"
                  "\tIs the server running on that host and accepting TCP/IP connections?")


@pytest.fixture
def outages():
    o = Outages(checkpoint_in_store=True)
    held = iter([(1, 10, 100), (5, 50, 500), (2, 20, 200)] + [(0, 0, 0)] * 100)
    o.held = lambda: next(held)
    return o


def run_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "emfence.run"]


def test_many_parts_failing_make_one_outage_that_ends_when_all_work(outages, caplog):
    caplog.set_level(logging.INFO)
    for part in ("events", "tracks", "checkpoint", "reads", "events", "tracks"):
        outages.failed(part, DOWN)
    assert [o["what"] for o in outages.health()] == ["alarm store"]
    outages.ok("events")  # events work, track rows and the checkpoint still fail
    outages.ok("tracks")
    assert outages.health() and len(run_lines(caplog)) == 1
    outages.ok("checkpoint")  # the last failing part: the outage ends ("reads" with it)
    assert outages.health() == []
    start, end = run_lines(caplog)
    assert start.startswith("alarm store failed, an outage: cannot connect to PostgreSQL: "
                            "connection refused; Is the server running on that host")
    assert "\n" not in start
    assert "alarm store works again after an outage of" in end
    assert "(6 failed attempts)" in end
    # the most that waited at any moment of it, not what waits at its end
    assert "held back meanwhile: 5 alarm events, 50 track rows, 500 messages " \
           "unacknowledged" in end


def test_a_read_failure_alone_is_an_outage_any_working_call_ends(outages, caplog):
    caplog.set_level(logging.INFO)
    outages.failed("reads", DOWN)
    assert outages.health()[0]["reason"].startswith("cannot connect")
    outages.ok("events")
    assert outages.health() == []
    assert len(run_lines(caplog)) == 2


def test_the_checkpoint_file_is_its_own_outage(caplog):
    caplog.set_level(logging.INFO)
    o = Outages(checkpoint_in_store=False)
    o.failed("checkpoint", OSError(28, "No space left on device"))
    o.failed("events", DOWN)
    assert sorted(x["what"] for x in o.health()) == ["alarm store", "checkpoint file"]
    o.ok("events")
    assert [x["what"] for x in o.health()] == ["checkpoint file"]


def test_other_parts_store_errors_are_quiet_while_the_outage_lasts(outages, caplog):
    """The outbox reader and the escalation check (through WatchedStore) and the store's
    reconnect warnings: quiet during the outage, heard outside it; other warnings of the
    same loggers (a failed publish) always heard."""
    caplog.set_level(logging.INFO)
    quiet = QuietDuringOutage(outages.store)
    publisher, store_log = (logging.getLogger(n) for n in reversed(QUIET_LOGGERS))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        class Store:
            def pending(self, n):
                raise DOWN

        watched = WatchedStore(Store(), outages)
        with pytest.raises(StoreError):
            watched.pending(10)  # the outbox's read: the outage starts here
        publisher.error("alarm store unreadable; retrying in %.1f s: %s", 1.0, DOWN)
        store_log.warning("%s: store connection was lost; reconnecting", "record events")
        publisher.warning("alarm publish failed; retried in %.1f s: %s", 1.0,
                          TimeoutError("no PUBACK"))
        outages.ok("reads")
        publisher.error("alarm store unreadable; retrying in %.1f s: %s", 1.0, DOWN)
    finally:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
    shown = [(r.name, r.levelname, re.sub(r"[0-9.]+ s", "N s", r.getMessage().split(";")[0]))
             for r in caplog.records]
    assert shown == [
        ("emfence.run", "ERROR",
         "alarm store failed, an outage: cannot connect to PostgreSQL: connection refused"),
        ("emfence.alarms.publisher", "WARNING", "alarm publish failed"),
        ("emfence.run", "WARNING",
         "alarm store works again after an outage of N s (1 failed attempts)"),
        ("emfence.alarms.publisher", "ERROR", "alarm store unreadable"),
    ]
    assert quiet.quieted == 2
