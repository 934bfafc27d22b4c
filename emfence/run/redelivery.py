"""The redelivery horizon: digests of processed messages, kept for
``ingest.redelivery_horizon_s`` after their acknowledgement window closed, so that a
message the broker sends again long after it was acknowledged is recognised.

Why a horizon. The engine acknowledges a message once a checkpoint holds it. An
acknowledgement can be lost after it was sent: with NATS (JetStream-backed MQTT
sessions), PUBACKs sent to a node killed with ``kill -9`` never reach the consumer's
replicated state, and NATS sends those messages again only after its ``ack_wait`` (30 s
by default, 60 s in deploy/nats/mqtt.conf), through whichever node the engine reconnected
to. By then many acknowledgement windows have closed (one per
``ingest.checkpoint_interval_s`` or ``ingest.ack_window_messages``: a second at the
national rate), so the last windows' digests alone do not recognise them and the fixes
would be processed twice. The horizon must exceed the broker's ack wait plus the time a
failover takes (new JetStream leaders, the reconnect): the default 120 s covers NATS's
shipped 60 s with room. The DUP flag cannot replace it: NATS sets DUP only when the
node's in-memory session already tracks the message, so a redelivery through another
node after a failover comes with DUP clear (and aiomqtt's messages do not expose it).
What bounds the lookups instead: an acknowledgement is lost only with the connection
it was sent on, and the broker re-sends within its ack wait of the next connection, so
:class:`emfence.run.acks.Acks` asks the horizon only for ``horizon_s`` after each
(re)connect; a worker connected for longer skips the lookup (digests are still added).

How, compactly. Each window's digests (16 bytes: the identity :func:`message_digest`
gives) become two int64 columns sorted by the first (``hi``), ``lo`` alongside. The
windows of the current bucket (``horizon_s / BUCKETS`` long) are merged into one sorted
``recent`` array as they arrive; a full bucket is sealed, and the sealed buckets merged
into one sorted ``old`` array. Each array has a directory of its digests' top 16 bits,
so a lookup (one compiled call) reads a directory entry and a few rows of each of the
two arrays, a few microseconds whatever the horizon. A sealed bucket is dropped at the
first window closing after its newest window is older than the horizon, so a digest is
kept ``horizon_s`` after its window closed, and at most one bucket (``horizon_s /
BUCKETS``) and one window's gap longer. Memory: 16 bytes per message of that span
(measured: benchmarks/README.md, "Redelivery horizon").

After a restart. The broker sends again every message it holds unacknowledged. Those
processed before the stop are exactly the ones in the restored checkpoint whose
acknowledgement did not reach the broker: the last windows' (their PUBACKs were not yet
sent, or in flight, when the process ended), which the checkpoint carries as before
(:class:`emfence.run.acks.Acks`, the newest two windows), and, only after a broker node
was lost within ``ack_wait`` of the restart, the windows whose PUBACKs died with that
node. The checkpoint does not carry the whole horizon: at the national rate that is
~55 MB of digests rewritten with every checkpoint (every second or so), to cover a
double fault (a broker node lost, then the engine restarted within ack_wait) whose cost
is those few windows' fixes processed twice (stored twice in the track and counted
twice; the restored state is already past them, so they meet it as old fixes). Covering
it would take the digests of the windows acknowledged shortly before each lost
connection in the checkpoint for a horizon after the loss (a larger row, no new
column). The restored digests are kept for a whole horizon from the start, so a NATS
redelivery after ack_wait of the last windows is still recognised.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np
from numba import njit

from emfence.run.options import DIGEST_BYTES

# A horizon is kept in this many buckets (plus the one filling): a digest outlives the
# horizon by at most one bucket, and a lookup searches at most BUCKETS + 2 segments.
BUCKETS = 4
# A lookup reads the directory entry of the digest's top bits first: the digests are
# uniform, so a binary search then touches a few rows (~50 at 3.4 M digests), not the
# ~22 cache lines of a search over the whole array, which cost ~9 us a lookup measured.
DIRECTORY_BITS = 16
_EMPTY = np.empty(0, np.int64)
_EMPTY_DIR = np.zeros((1 << DIRECTORY_BITS) + 1, np.int64)


@njit(cache=True)
def _in(hi, lo, directory, h, low):
    """True when (h, low) is in ``hi``/``lo`` (sorted by ``hi``; ``directory[j]`` is the
    first row whose top DIRECTORY_BITS of ``hi`` are >= j): one directory read, then a
    binary search of the few rows that share those bits."""
    j = (h >> (64 - DIRECTORY_BITS)) + (1 << (DIRECTORY_BITS - 1))
    a, b = directory[j], directory[j + 1]
    i = a + np.searchsorted(hi[a:b], h)
    while i < b and hi[i] == h:
        if lo[i] == low:
            return True
        i += 1
    return False


@njit(cache=True)
def _contains(old_hi, old_lo, old_dir, recent_hi, recent_lo, recent_dir, h, low):
    return (_in(recent_hi, recent_lo, recent_dir, h, low)
            or _in(old_hi, old_lo, old_dir, h, low))


def directory(hi: np.ndarray) -> np.ndarray:
    """``directory[j]``: the first row of ``hi`` (sorted) whose top DIRECTORY_BITS, as a
    signed number plus 2**(DIRECTORY_BITS-1), are >= j; one more entry: ``hi.size``."""
    n = 1 << DIRECTORY_BITS
    bounds = (np.arange(n, dtype=np.int64) - n // 2) << (64 - DIRECTORY_BITS)
    return np.append(np.searchsorted(hi, bounds), hi.size).astype(np.int64)


def split(digests: Iterable[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """16-byte digests -> (hi, lo) int64 columns sorted by hi."""
    blob = b"".join(digests)
    if not blob:
        return _EMPTY, _EMPTY
    pairs = np.frombuffer(blob, dtype="<i8").reshape(-1, 2)
    order = np.argsort(pairs[:, 0], kind="stable")
    return pairs[order, 0].copy(), pairs[order, 1].copy()


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (hi, lo) columns merged into one (a stable sort of sorted runs: a merge)."""
    hi = np.concatenate([p[0] for p in parts])
    lo = np.concatenate([p[1] for p in parts])
    order = np.argsort(hi, kind="stable")
    return hi[order], lo[order]


class Horizon:
    """Digests of processed messages, each kept for at least ``horizon_s`` after
    :meth:`add` (the close of its window; ``now_s`` is a monotonic clock, seconds).

    :meth:`add` may run in a worker thread while the receiver calls ``in``: the lookup
    state is one tuple, replaced whole."""

    def __init__(self, horizon_s: float):
        if horizon_s <= 0:
            raise ValueError(f"horizon_s must be positive, got {horizon_s!r}")
        self.horizon_s = horizon_s
        self.bucket_s = horizon_s / BUCKETS
        self.sealed: deque[tuple[float, np.ndarray, np.ndarray]] = deque()
        self.recent: tuple[np.ndarray, np.ndarray] = (_EMPTY, _EMPTY)
        self.recent_since: float | None = None  # when the filling bucket's first window closed
        self.recent_last = 0.0
        self._old: tuple[np.ndarray, np.ndarray, np.ndarray] = (_EMPTY, _EMPTY, _EMPTY_DIR)
        self._state = self._old + (_EMPTY, _EMPTY, _EMPTY_DIR)

    def add(self, digests: Iterable[bytes], now_s: float) -> None:
        """A window closed at ``now_s``: keep its digests for the horizon (and drop the
        sealed buckets older than it)."""
        hi, lo = split(digests)
        sealing = self.recent_since is not None and now_s - self.recent_since >= self.bucket_s
        if sealing and self.recent[0].size:
            self.sealed.append((self.recent_last, *self.recent))
            self.recent, self.recent_since = (_EMPTY, _EMPTY), None
        expired = bool(self.sealed) and now_s - self.sealed[0][0] >= self.horizon_s
        while self.sealed and now_s - self.sealed[0][0] >= self.horizon_s:
            self.sealed.popleft()
        if sealing or expired:
            self._merge_sealed()
        if hi.size:
            if self.recent_since is None:
                self.recent_since = now_s
            self.recent = _merge([self.recent, (hi, lo)]) if self.recent[0].size else (hi, lo)
            self.recent_last = now_s
        self._publish()

    def _merge_sealed(self) -> None:
        """The sealed buckets merged into one sorted array (once a bucket)."""
        hi, lo = _merge([s[1:] for s in self.sealed]) if self.sealed else (_EMPTY, _EMPTY)
        self._old = (hi, lo, directory(hi))

    def _publish(self) -> None:
        hi, lo = self.recent
        self._state = self._old + (hi, lo, directory(hi))

    def __contains__(self, digest: bytes) -> bool:
        h = int.from_bytes(digest[:8], "little", signed=True)
        low = int.from_bytes(digest[8:DIGEST_BYTES], "little", signed=True)
        return _contains(*self._state, h, low)

    def __len__(self) -> int:
        return int(self._state[0].size + self._state[3].size)

    @property
    def nbytes(self) -> int:
        """Memory the digests take (the arrays searched), bytes."""
        return sum(int(a.nbytes) for a in self._state)
