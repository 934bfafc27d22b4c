"""Active and standby workers (issue #17, docs/operations.md "Active and standby
workers"): two `emfence run` processes with one ``--name`` and one PostgreSQL store, a
known-truth stream through mosquitto, the holder paused past its lease and later the
next holder killed with -9. Nothing may be lost or doubled: the store's alarm events are
exactly those a reference engine derives from the same messages, each once, and the
track store holds every fix (test_ingest_faults's scenario and checks)."""

from __future__ import annotations

import signal
import time

import pytest
from ingest_fleet import REGION_A, EngineProcess, Fleet, now_ms, until
from test_ingest_faults import CONFIG, Publisher, check_outcome, scenario, wait_processed
from test_run_brokers import get

from emfence.run.lease import EXIT_LEASE_LOST
from ingest.mosquitto import free_port

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres]

TTL_S = 2.0
STEPS = 90  # 18 s of fixes, 0.2 s apart


def worker(tmp_path, fleet, broker, url: str, tag: str, port: int) -> EngineProcess:
    """One worker of the group ``worker-1``, its state in the store, its own log and
    operations port."""
    e = EngineProcess(tmp_path, fleet, broker, store=url, checkpoint=False,
                      config=CONFIG + f"[ha]\nlease_ttl_s = {TTL_S}\n",
                      extra=["--metrics-http", str(port)])
    e.log_path = tmp_path / f"engine-{tag}.log"
    return e


def test_failover_of_a_paused_and_a_killed_holder_loses_and_doubles_nothing(
        tmp_path, mosquitto_factory, pg_url):
    fleet = Fleet(tmp_path, devices_a=20, devices_b=1)
    broker = mosquitto_factory(passwords=fleet.passwords())
    devices = fleet.ids(REGION_A)
    messages = scenario(fleet, devices, steps=STEPS, t0=now_ms() - 60_000)
    port_a, port_b = free_port(), free_port()
    a = worker(tmp_path, fleet, broker, pg_url, "a", port_a)
    b = worker(tmp_path, fleet, broker, pg_url, "b", port_b)
    try:
        a.start()
        a.wait_log("connected to")
        b.start()
        b.wait_log("waiting as a standby")
        # A standby is healthy, not ready, and says who holds the lease.
        status, body = until(lambda: get(port_b, "/readyz"), lambda r: r[0] == 503, 30)
        assert status == 503 and "standby: lease held by" in body, body
        assert get(port_b, "/healthz")[0] == 200
        assert until(lambda: get(port_a, "/readyz")[0], lambda s: s == 200, 30) == 200
        assert "connected to" not in b.log()  # a standby never touches the broker

        pub = Publisher(broker.port, messages, per_step=len(messages) // STEPS)
        pub.start()
        time.sleep(2.5)  # mid-stream
        # 1. The holder paused past its lease: the standby takes over ...
        a.signal(signal.SIGSTOP)
        b.wait_log("took the lease of worker group worker-1 (epoch 2)", timeout_s=30)
        b.wait_log("connected to", timeout_s=30)
        # ... and the old holder, woken, steps down on its own without writing.
        a.signal(signal.SIGCONT)
        assert a.proc.wait(30) == EXIT_LEASE_LOST, a.log()[-3000:]
        assert "stepping down" in a.log()
        # 2. Restarted (as its service manager would), it waits as a standby; the holder
        # is killed with -9 mid-stream and the standby takes over within the TTL + 5 s.
        mark = len(a.log())
        a.start()
        assert until(lambda: get(port_b, "/readyz")[0], lambda s: s == 200, 30) == 200
        assert "emfence_run_lease_epoch{worker=\"worker-1\"} 2.0" in get(port_b, "/metrics")[1]
        a.wait_log("waiting as a standby", after=mark)
        assert pub.is_alive(), "the stream ended before the kill: lengthen STEPS"
        b.kill9()
        killed = time.monotonic()
        a.wait_log("took the lease of worker group worker-1 (epoch 3)", after=mark,
                   timeout_s=30)
        a.wait_log("connected to", after=mark, timeout_s=30)
        takeover_s = time.monotonic() - killed
        assert takeover_s <= TTL_S + 5, takeover_s
        assert until(lambda: get(port_a, "/readyz")[0], lambda s: s == 200, 30) == 200

        pub.wait_acked()
        wait_processed(a, broker, sum(1 for t, _ in messages if t.endswith("/fix")))
        check_outcome(fleet, a, broker, messages, devices)  # stops it: exit 0
        assert "state restored from checkpoint" in a.log()[mark:]
        # (the woken holder's own log may hold asyncio's report of the socket the broker
        # closed while it was paused, before it stepped down)
        assert "Traceback" not in a.log()[mark:] + b.log()
    finally:
        for e in (a, b):
            if e.proc is not None and e.proc.poll() is None:
                e.signal(signal.SIGCONT)
            e.close()
