"""What every part of `emfence run` shares: the tuning constants, the receive clock,
message identity, the run's options and a closed acknowledgement window (zones and
subjects are loaded by :mod:`emfence.run.model`)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The unacknowledged-message window, the dead-letter and track queue bounds and the
# escalation check period are configuration (ingest.ack_window_messages,
# ingest.deadletter_queue_messages, tracks.queue_rows, alarms.escalation_check_s).
# How often queued track rows are written (also before every acknowledgement), s.
TRACK_FLUSH_S = 1.0
# Track rows per store transaction. Large: the store writes them in key order, so a
# device's fixes of one transaction share index pages, and a SQLite store keeps them in a
# file of its own, so a long track write holds up no alarm.
TRACK_ROWS_PER_WRITE = 20_000
# How often fixes past the retention period are deleted (also once at start), s.
PURGE_PERIOD_S = 3600.0
# The receive loop yields to the other tasks at least every this many messages.
YIELD_EVERY = 200
# How long a clean shutdown keeps trying to deliver the outbox before it gives up (the
# rest is delivered at the next start).
SHUTDOWN_FLUSH_S = 10.0
# Closed acknowledgement windows that may wait while the acknowledger completes another,
# before the processor waits too. Unacknowledged messages are then at most three windows
# (being completed, waiting, being filled): 60 000 with ingest.ack_window_messages at
# 20 000, the deployed broker's max_inflight_messages.
MAX_OPEN_WINDOWS = 1
# A health message not acknowledged within this time is given up (the next one follows).
HEALTH_TIMEOUT_S = 5.0
# A broker that does not acknowledge the drain marker sent after CONNACK within this
# time is left for the next one, s: a NATS node that took the session while JetStream
# was electing new leaders (its node killed) can keep it and never deliver a message,
# where the client's own timeout (30 s) would hold the worker there.
DRAIN_ACK_S = 5.0
# A SIGTERM or SIGINT ends the process within this, s (docs/operations.md, "Signals"):
# at most the outbox flush and the final "offline" health on a broker that stopped
# answering; under a second otherwise. Past ingest.watchdog_s + SHUTDOWN_FLUSH_S the
# watchdog ends it anyway (exit 3).
SHUTDOWN_BOUND_S = SHUTDOWN_FLUSH_S + HEALTH_TIMEOUT_S
# Exit code of an engine its watchdog stopped (ingest.watchdog_s): stalled, not failed on
# bad input (1) or bad usage (2); the service manager restarts it.
EXIT_STALLED = 3
# Failed reconnect attempts of one cause are logged once, then at most once per this
# many seconds with their count (the backoff alone would log one line per 30 s for ever,
# and one per second at first).
RETRY_LOG_EVERY_S = 60.0
# How long a stalled engine tries to publish its "stalled" health before it exits, s.
STALL_REPORT_S = 2.0
# The payload of the engine's periodic ping to itself on its drain topic.
PING = b"ping"
# Offline sweeps are held once this many ping periods pass with nothing received.
SILENT_PINGS = 2

DIGEST_BYTES = 16


def wall_ms() -> int:
    """Epoch milliseconds now (receive time; only the adapters read the clock)."""
    return time.time_ns() // 1_000_000


def message_digest(topic: str, payload: bytes) -> bytes:
    """Identity of a message for recognising broker redeliveries (16 bytes)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(topic.encode("utf-8", "surrogateescape"))
    h.update(b"\0")
    h.update(payload)
    return h.digest()


def split_digests(blob: bytes) -> set[bytes]:
    """Concatenated message digests (as a checkpoint keeps them) -> a set."""
    n = DIGEST_BYTES
    return {blob[i:i + n] for i in range(0, len(blob) - len(blob) % n, n)}


@dataclass
class Options:
    """What `emfence run` was told (paths and names, already validated)."""

    zones_path: str
    subjects_path: str
    store_url: str
    name: str = "engine-1"
    regions: list[str] | None = None
    checkpoint: str | None = None
    http: str | None = None
    metrics_http: str | None = None  # HOST:PORT or PORT of the bare operations endpoints
    # Where the engine's state is kept: "store" (the default: the store's row for this
    # worker), "file" (--checkpoint) or "none" (--core shapely, which has no state to keep).
    state_in: str = "store"
    # With --checkpoint: the store holds an older row for this worker, deleted once the
    # file holds a checkpoint (so a later start without --checkpoint cannot go back to it).
    drop_store_checkpoint: bool = False
    # Where zones and subjects come from (emfence.run.model.ModelSource; None: the two
    # files above) and, from the register, its change sequence when the model was taken.
    source: object = None
    register_seq: int | None = None
    register_taken_ms: int | None = None  # when that model was taken (wall clock, ms)


@dataclass
class AckJob:
    """A closed acknowledgement window, waiting to become durable and be acknowledged.

    ``events_mark`` / ``tracks_mark``: alarm events and track rows queued for the store
    when the window closed (all of them must be stored first); ``window``: digests of the
    messages processed in it; ``snapshot``: the engine state at the close (in memory;
    None when the core keeps no state), a full checkpoint (``kind`` "base") or what
    changed since the previous window's (``kind`` "delta", engine.checkpoint_delta),
    written to the store's rows for this worker, or with ``--checkpoint`` a base to
    ``tmp`` and renamed over the file once the acks file names it, a delta appended to
    ``FILE.deltas``; ``done``: a future set when finished.
    """

    acks: list[tuple[int, int]]
    window: set[bytes]
    events_mark: int
    tracks_mark: int = 0
    snapshot: dict[str, np.ndarray] | None = None
    kind: str = "base"
    tmp: Path | None = None
    done: asyncio.Future | None = None


def redact(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
