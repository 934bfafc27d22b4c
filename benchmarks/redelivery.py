"""The redelivery horizon's cost at a given message rate (emfence.run.redelivery).

    python -m benchmarks.redelivery --json
    python -m benchmarks.redelivery --rate 23000 --horizon 120 --window 20000

Every processed message's 16-byte digest is kept for ``--horizon`` seconds after its
acknowledgement window closed (``ingest.redelivery_horizon_s``). This program feeds a
:class:`~emfence.run.redelivery.Horizon` windows of ``--window`` random digests at
``--rate`` messages per second on a simulated clock, for two horizons plus one bucket
(so it reaches its steady size), and reports:

- ``digests``, ``mb``: what the horizon holds at the end, and the bytes of its arrays;
- ``add_ms_median``, ``add_ms_max``: one window closing (sort, merge, and at a bucket's
  end the flat copy), in the acknowledger's worker thread;
- ``lookup_us_new``, ``lookup_us_kept``: one ``digest in horizon`` of the receive path,
  for a new message (the common case) and for one kept (a redelivery);
- ``cpu_share``: the share of one core both take at ``--rate``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from emfence.run.redelivery import BUCKETS, Horizon


def run(rate: float, horizon_s: float, window: int, lookups: int = 200_000) -> dict:
    h = Horizon(horizon_s)
    window_s = window / rate
    n_windows = int((2 * horizon_s + horizon_s / BUCKETS) / window_s) + 1
    add_ms = []
    kept: list[bytes] = []
    now = 0.0
    for k in range(n_windows):
        digests = [os.urandom(16) for _ in range(window)]
        now += window_s
        t = time.perf_counter()
        h.add(digests, now)
        add_ms.append((time.perf_counter() - t) * 1000)
        if k == n_windows - 2:
            kept = digests[:lookups]
    new = [os.urandom(16) for _ in range(lookups)]
    assert all(d in h for d in kept[:1000])
    t = time.perf_counter()
    for d in new:
        d in h  # noqa: B015 - the lookup is what is measured
    new_us = (time.perf_counter() - t) / len(new) * 1e6
    t = time.perf_counter()
    for d in kept:
        d in h  # noqa: B015
    kept_us = (time.perf_counter() - t) / len(kept) * 1e6
    steady = add_ms[len(add_ms) // 2:]
    cpu = (statistics.mean(steady) / 1000) / window_s + new_us * 1e-6 * rate
    return {"rate": rate, "horizon_s": horizon_s, "window": window,
            "digests": len(h), "mb": round(h.nbytes / 1e6, 1),
            "add_ms_median": round(statistics.median(steady), 2),
            "add_ms_max": round(max(steady), 1),
            "lookup_us_new": round(new_us, 2), "lookup_us_kept": round(kept_us, 2),
            "cpu_share": round(cpu, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=23_000.0, help="messages per second")
    p.add_argument("--horizon", type=float, default=120.0, help="seconds")
    p.add_argument("--window", type=int, default=20_000,
                   help="messages per acknowledgement window")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = run(args.rate, args.horizon, args.window)
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
