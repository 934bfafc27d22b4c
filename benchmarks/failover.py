"""Failover benchmark: how long a worker group is without a working engine when its
holder is killed (issue #17; docs/operations.md, "Active and standby workers").

    python -m benchmarks.failover --json
    python -m benchmarks.failover --pg postgresql://postgres@127.0.0.1:5432/postgres \\
        --lease-ttl-s 10 --rounds 3 --json

Two `emfence run` processes with one ``--name`` share a fresh PostgreSQL database
(created on ``--pg``, default ``$EMFENCE_TEST_PG``, dropped afterwards) and a private
mosquitto; ``--devices`` devices publish a fix each every ``--period-s`` throughout.
Each round kills the holder with SIGKILL and measures, from the kill:

- ``took_lease_s``: until the standby logs that it took the lease;
- ``takeover_s``: until the standby's ``/readyz`` answers 200 (it holds the lease, is
  connected with the group's session and has drained the backlog: processing), polled
  every 20 ms; the target is at most ``ha.lease_ttl_s`` + 5 s;

then restarts the killed worker, which waits as the next standby. At the end every
published fix must be in the track store exactly once (``lost``, ``doubled``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

NAME = "bench-group"
REGION = "330723"


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def _write_model(root: Path, devices: int) -> tuple[Path, Path]:
    """A square inclusion zone (about 11 km a side) and ``devices`` subjects in it."""
    ring = [[120.0, 29.0], [120.1, 29.0], [120.1, 29.1], [120.0, 29.1], [120.0, 29.0]]
    zones = root / "zones.geojson"
    zones.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"zone_id": "county"},
         "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    subjects = root / "subjects.json"
    subjects.write_bytes(orjson.dumps({"subjects": [
        {"subject_id": f"S-{i:04d}", "region": REGION, "level": "strict",
         "devices": [{"device_id": f"BR-{i:04d}"}], "inclusion": ["county"]}
        for i in range(devices)]}))
    return zones, subjects


class Worker:
    """One `emfence run` of the group, logging to its own file."""

    def __init__(self, root: Path, tag: str, args: list[str]):
        self.port = _free_port()
        self.log_path = root / f"worker-{tag}.log"
        self.args = [*args, "--metrics-http", str(self.port)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        return _get(self.port, "/readyz") == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    from ingest.mosquitto import free_port

    return free_port()


def _until(cond, timeout_s: float, what: str, step_s: float = 0.02) -> float:
    """Poll ``cond()`` until true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(step_s)
    raise RuntimeError(f"timed out waiting for {what}")


class Devices(threading.Thread):
    """Every device publishes one fix (QoS 1) every ``period_s`` until stopped."""

    def __init__(self, port: int, devices: int, period_s: float):
        import paho.mqtt.client as mqtt

        super().__init__(daemon=True)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-devices",
                                  clean_session=False)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.devices, self.period_s = devices, period_s
        self.sent = 0
        self.infos: list = []
        self.stopped = threading.Event()

    def run(self) -> None:
        t0 = time.time_ns() // 1_000_000
        k = 0
        while not self.stopped.is_set():
            for d in range(self.devices):
                fix = {"ts": t0 + k * round(self.period_s * 1000), "lat": 29.05,
                       "lon": 120.05 + d * 1e-4, "acc": 10, "seq": k}
                self.infos.append(self.client.publish(f"emfence/v1/{REGION}/BR-{d:04d}/fix",
                                                      orjson.dumps(fix), qos=1))
                self.sent += 1
            k += 1
            self.stopped.wait(self.period_s)

    def finish(self) -> None:
        self.stopped.set()
        self.join()
        for info in self.infos:
            info.wait_for_publish(30)
        self.client.loop_stop()
        self.client.disconnect()


def _round(holder: Worker, standby: Worker, ttl_s: float) -> dict:
    mark = len(standby.log())
    holder.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    holder.proc.wait()
    took = _until(lambda: "took the lease" in standby.log()[mark:], ttl_s + 60,
                  "the standby to take the lease")
    ready = _until(standby.ready, 60, "the new holder's /readyz 200")
    return {"took_lease_s": round(took - killed, 3), "takeover_s": round(ready - killed, 3)}


def _stored_fixes(url: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*), COUNT(DISTINCT (device_id, ts)) FROM tracks"
                           ).fetchone()
    return int(row[0]), int(row[1])


def bench(args: argparse.Namespace) -> dict:
    from benchmarks.store import fresh_pg_database
    from ingest.mosquitto import Mosquitto

    root = Path(tempfile.mkdtemp(prefix="emfence-failover-"))
    zones, subjects = _write_model(root, args.devices)
    (root / "ha.toml").write_text(f"[ha]\nlease_ttl_s = {args.lease_ttl_s}\n"
                                  "[ingest]\nbatch_max_ms = 10\nhealth_interval_s = 1\n"
                                  "checkpoint_interval_s = 1\n")
    broker = Mosquitto(root / "mosquitto", auth=False)
    broker.start()
    out: dict = {"lease_ttl_s": args.lease_ttl_s, "devices": args.devices,
                 "fixes_per_s": round(args.devices / args.period_s, 1),
                 "load_average": list(os.getloadavg())}
    with fresh_pg_database(args.pg) as url:
        cmd = [sys.executable, "-m", "emfence", "run", "--broker", broker.url, "--name", NAME,
               "--zones", str(zones), "--subjects", str(subjects), "--store", url,
               "--config", str(root / "ha.toml")]
        workers = [Worker(root, "a", cmd).start()]
        devices = None
        try:
            _until(workers[0].ready, 300, "the first holder's /readyz 200", 0.1)
            workers.append(Worker(root, "b", cmd).start())
            _until(lambda: "waiting as a standby" in workers[1].log(), 300, "a standby", 0.1)
            devices = Devices(broker.port, args.devices, args.period_s)
            devices.start()
            rounds = []
            for r in range(args.rounds):
                holder, standby = workers[r % 2], workers[(r + 1) % 2]
                time.sleep(args.lease_ttl_s / 2)  # the holder working, mid-stream
                rounds.append(_round(holder, standby, args.lease_ttl_s))
                holder.start()  # restarted, as its service manager would: the next standby
                _until(lambda h=holder: "waiting as a standby" in h.log().rsplit(
                    "took the lease", 1)[-1], 300, "the restarted worker to stand by", 0.1)
                print(f"round {r + 1}: {rounds[-1]}", file=sys.stderr)
            devices.finish()
            _until(lambda: _stored_fixes(url)[0] >= devices.sent, 120,
                   "every fix in the track store", 0.2)
        finally:
            if devices is not None and devices.is_alive():
                devices.stopped.set()
            for w in workers:
                w.stop()
            broker.stop()
        stored, distinct = _stored_fixes(url)
    takeovers = [r["takeover_s"] for r in rounds]
    out.update({"rounds": rounds, "takeover_s_median": round(statistics.median(takeovers), 3),
                "takeover_s_max": max(takeovers), "bound_s": args.lease_ttl_s + 5,
                "within_bound": max(takeovers) <= args.lease_ttl_s + 5,
                "fixes_published": devices.sent, "lost": devices.sent - distinct,
                "doubled": stored - distinct, "load_average_after": list(os.getloadavg())})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.failover",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--pg", default=os.environ.get("EMFENCE_TEST_PG"),
                   help="PostgreSQL server URL (default: $EMFENCE_TEST_PG)")
    p.add_argument("--lease-ttl-s", type=float, default=10.0, help="ha.lease_ttl_s")
    p.add_argument("--rounds", type=int, default=3, help="kills of the holder")
    p.add_argument("--devices", type=int, default=50, help="devices publishing")
    p.add_argument("--period-s", type=float, default=0.5, help="each device's fix period")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    if not args.pg:
        p.error("--pg (or $EMFENCE_TEST_PG) is required: a worker group needs PostgreSQL")
    if args.rounds < 1 or args.devices < 1 or args.lease_ttl_s < 1 or args.period_s <= 0:
        p.error("--rounds and --devices at least 1, --lease-ttl-s at least 1, --period-s > 0")
    result = bench(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
