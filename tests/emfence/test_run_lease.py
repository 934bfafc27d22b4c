"""The lease of `emfence run` (emfence.run.lease) at start: a worker restarted after a
crash on the same machine takes its dead run's lease at once instead of waiting out its
TTL; a holder that runs, or runs elsewhere, is waited for."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

from alarms import open_store
from emfence.run.lease import Lease, holder_gone


def test_a_restart_takes_over_the_lease_of_its_dead_run_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    assert holder_gone(f"{here}:{dead.pid}:abc123")
    assert not holder_gone(f"{here}:{os.getppid()}:abc123")  # runs
    assert not holder_gone(f"{here}:{os.getpid()}:abc123")  # this very process
    assert not holder_gone(f"elsewhere.example:{dead.pid}:abc123")  # cannot tell: wait
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    try:
        assert store.take_lease("worker-1", f"{here}:{dead.pid}:abc123", 600_000).epoch == 1
        lease = Lease(store, group="worker-1", ttl_s=600)
        assert asyncio.run(asyncio.wait_for(lease.wait([]), 10))
        assert lease.epoch == 2 and lease.held and store.fence.epoch == 2
        assert store.lease("worker-1").holder == lease.holder
        # a live holder's lease is not taken
        other = Lease(store, group="worker-1", ttl_s=600)
        assert not other.reclaim() and other.seen.holder == lease.holder
    finally:
        store.close_store()
