"""The register part of ``make demo``: the generated subjects and zones are enrolled in
the register of the demo's store (``store.register.import_files``, as ``emfence register
import`` does), the engine runs from that register (``emfence run --store`` alone), and a
leave is requested by an officer and approved by a supervisor while the engine runs.

The leave is chosen from the simulation: a subject whose injected excursion ends up in a
neighbouring county (the whole detour within the subject's county and that one). Its
ground truth becomes "no alarm" (``excursion_on_leave``): the score then counts an
outbound alarm for it as a false alarm, and the demo says whether the leave was honoured.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import shapely

OFFICER = "demo-officer"
SUPERVISOR = "demo-supervisor"
# The detour's true path may come this close to leaving the county and the leave's
# zone (metres; the GPS error is far inside the rule's buffer).
PATH_TOLERANCE_M = 10.0
# The leave runs from its request until this long after the simulation's planned end
# (the publisher may start the whole run later than planned).
LEAVE_TAIL_MS = 600_000


@dataclass
class DemoLeave:
    """The leave the demo requests: subject, destination county, window (epoch ms),
    the subject's devices and the truth events it turns into "no alarm"."""

    subject_id: str
    zone_id: str
    zone_name: str
    start_ms: int
    end_ms: int
    devices: list[str]
    events: list
    leave_id: str = ""
    applied_s: float | None = None


def fresh_store(run: Path) -> str:
    """The demo's store URL, its files (alarms, tracks, checkpoint) removed first."""
    from alarms.store import tracks_path

    db = run / "alarms.db"
    for f in (db, tracks_path(db)):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{f}{suffix}").unlink(missing_ok=True)
    (run / "engine.checkpoint").unlink(missing_ok=True)
    return f"sqlite:///{db.resolve()}"


def enrol(store, zones_path: Path, subjects_path: Path) -> dict[str, int]:
    """The generated zones and subjects into the register, in one transaction."""
    return store.register.import_files(orjson.loads(zones_path.read_bytes()),
                                       orjson.loads(subjects_path.read_bytes()),
                                       actor=OFFICER, now_ms=_now_ms())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _counties_m(sim, zones_path: Path) -> dict[str, object]:
    """County zones of the zones file, in the simulation's metric frame."""
    from geofence import load_zones

    fc = orjson.loads(zones_path.read_bytes())
    county_ids = {f["properties"]["zone_id"] for f in fc["features"]
                  if f["properties"].get("kind") == "county"}
    return {z.zone_id: sim.fleet.frame.geom_to_m(z.geometry) for z in load_zones(fc)
            if z.zone_id in county_ids}


def pick_leave(sim, zones_path: Path, names: dict[str, str]) -> DemoLeave | None:
    """A subject (with no approved leave in the demo's window) whose excursion goes into a
    neighbouring county, and only there (None when the simulation has none)."""
    fleet = sim.fleet
    counties = _counties_m(sim, zones_path)
    by_subject: dict[str, list] = {}
    for e in sim.truth:
        by_subject.setdefault(e.subject_id, []).append(e)
    start_ms, end_ms = _now_ms() - 60_000, sim.end_ms + LEAVE_TAIL_MS
    for e in sorted((e for e in sim.truth if e.what == "excursion"), key=lambda e: e.start):
        s = fleet.subject_ids.index(e.subject_id)
        if any(a <= end_ms and start_ms <= b for a, b, _ in fleet.leaves[s]):
            continue  # approved leaves may not overlap
        times = np.linspace(e.start, e.end, 200).astype(np.int64)
        x, y, _ = sim.model.true_position_m(np.full(len(times), s), times)
        path = shapely.points(x, y)
        target = shapely.Point(*sim.model.position_at(s, (e.start + e.end) // 2))
        for zid, g in counties.items():
            if zid in fleet.inclusion_ids[s] or not g.contains(target):
                continue
            allowed = shapely.union_all([fleet.inclusion_m[s], g])
            if float(shapely.distance(path, allowed).max()) > PATH_TOLERANCE_M:
                continue
            events = [o for o in by_subject[e.subject_id]
                      if o.what == "excursion" and o.start == e.start]
            return DemoLeave(e.subject_id, zid, names.get(zid, ""), start_ms, end_ms,
                             [fleet.device_ids[d] for d in fleet.devices_of(s)], events)
    return None


def request_leave(store, leave: DemoLeave) -> None:
    """The officer's request (before the engine starts: the engine never sees it)."""
    got = store.register.request_leave(
        leave.subject_id, zones=[leave.zone_id], start_ms=leave.start_ms,
        end_ms=leave.end_ms, reason="探亲 (demo)", actor=OFFICER, now_ms=_now_ms())
    leave.leave_id = got["leave_id"]
    for e in leave.events:
        e.what, e.expect = "excursion_on_leave", None
        e.detail = {**e.detail, "leave_id": leave.leave_id, "leave_zone": leave.zone_id}


def approve_leave(store, leave: DemoLeave, engine_log: Path) -> None:
    """The supervisor approves while the engine runs; waits (bounded) until the engine's
    log says it reloaded, and keeps how long that took."""
    mark = len(engine_log.read_bytes())
    t = time.monotonic()
    store.register.approve_leave(leave.leave_id, actor=SUPERVISOR, role="supervisor",
                                 now_ms=_now_ms())
    while time.monotonic() - t < 10.0:
        if b"reloaded:" in engine_log.read_bytes()[mark:]:
            leave.applied_s = time.monotonic() - t
            return
        time.sleep(0.05)


def describe(leave: DemoLeave) -> str:
    where = f"{leave.zone_id} ({leave.zone_name})" if leave.zone_name else leave.zone_id
    return f"leave {leave.leave_id} of {leave.subject_id} to {where}"


def verdict(leave: DemoLeave, alarms: list[dict]) -> str:
    """One line: was the leave honoured (no outbound for the subject's devices while
    its excursion was in the leave's county)?"""
    if not leave.events:
        return f"{describe(leave)}: no excursion to check"
    start = min(e.start for e in leave.events)
    end = max(e.end for e in leave.events)
    outbound = [a for a in alarms if a.get("type") == "outbound" and a.get("event") == "raised"
                and a.get("device_id") in leave.devices and start <= a.get("at", 0) <= end]
    if outbound:
        return (f"{describe(leave)}: NOT honoured, {len(outbound)} outbound alarm(s) during "
                "its excursion")
    return (f"{describe(leave)}: honoured, its excursion into the county raised no outbound "
            "alarm")


def start_engine(rig, store_url: str, ready_timeout_s: float = 240.0) -> None:
    """``emfence run --store URL`` (no --zones, no --subjects: the register) for ``rig``;
    waits until its health says online."""
    from simulators.live import ENGINE_NAME, ENGINE_USER, wait_engine_online

    run = rig.run_dir
    rig.store_url = store_url
    rig.engine_log = run / "engine.log"
    cmd = [sys.executable, "-m", "emfence", "run", "--broker", rig.broker.url,
           "--store", store_url, "--name", ENGINE_NAME, "--username", ENGINE_USER,
           "--password-file", str(run / f"{ENGINE_USER}.password"),
           "--config", str(rig.config_path), "--checkpoint", str(run / "engine.checkpoint")]
    rig.engine_launched_ms = _now_ms()
    with open(rig.engine_log, "ab") as log:
        rig.engine = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    asyncio.run(wait_engine_online(rig, ready_timeout_s))
