"""A naive judge of issue #14's behaviours in what the simulator sends (for the tests).

It reads a run's replay lines (what an engine would receive) and finds, by brute force
and plain Python, every moment where a rule of docs/rules.md's issue #14 part *could*
fire (``possible``: taking the accuracies in the subject's favour's opposite, i.e. the
widest reading) and where it *surely* fires (the narrowest reading). The tests hold the
ground truth against it: every injected behaviour surely fires inside its window, and
nothing could fire outside the windows. It shares no code with the simulator's events.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import orjson
import shapely

from geofence.gcj02 import gcj02_to_wgs84


@dataclass
class Record:
    device: str
    rx: int
    ts: int
    fix: bool
    x: float = 0.0
    y: float = 0.0
    acc: float = 0.0
    power: str | None = None


@dataclass
class Run:
    """The replay lines, per device in receive order, positions in the fleet's metres."""

    by_device: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls, lines: list[bytes], frame) -> Run:
        run = cls()
        recs = [r for r in map(_json_or_none, lines)
                if isinstance(r, dict) and "device_id" in r and isinstance(r.get("ts"), int)]
        fixes = [r for r in recs if "lat" in r]
        lon = np.array([r["lon"] for r in fixes], dtype=np.float64)
        lat = np.array([r["lat"] for r in fixes], dtype=np.float64)
        gcj = np.array([r.get("coord_sys") == "gcj02" for r in fixes], dtype=bool)
        if gcj.any():
            glon, glat = gcj02_to_wgs84(lon[gcj], lat[gcj])
            lon[gcj], lat[gcj] = glon, glat
        x, y = frame.to_m(lon, lat)
        k = 0
        for r in recs:
            if "lat" in r:
                rec = Record(r["device_id"], r["rx"], r["ts"], True, float(x[k]), float(y[k]),
                             float(r.get("acc", 0.0)))
                k += 1
            else:
                rec = Record(r["device_id"], r["rx"], r["ts"], False, power=r.get("power"))
            run.by_device[r["device_id"]].append(rec)
        return run

    def fixes(self, device: str) -> list[Record]:
        return [r for r in self.by_device.get(device, []) if r.fix]


def _json_or_none(line: bytes):
    """A replay line's record, or None for a malformed one (the engine rejects those)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def _dist(a: Record, b: Record) -> float:
    return float(np.hypot(a.x - b.x, a.y - b.y))


def separation_pairs(run: Run, bracelet: str, phone: str, rules
                     ) -> list[tuple[int, bool, bool, bool]]:
    """Each pair (a fix of one device with the other's latest within the window), in
    receive order: ``(ts of the later fix, apart, surely apart, close)``: apart beyond
    separation_m and both accuracies (2 x both: surely, whatever the distance measure),
    close within separation_m (a pair in between changes nothing)."""
    merged = sorted(run.fixes(bracelet) + run.fixes(phone), key=lambda r: (r.rx, r.device))
    latest: dict[str, Record] = {}
    out = []
    for r in merged:
        other = latest.get(phone if r.device == bracelet else bracelet)
        latest[r.device] = r
        if other is None or abs(r.ts - other.ts) > rules.separation_window_s * 1000:
            continue
        d = _dist(r, other)
        # Apart when farther than separation_m + both accuracies: reported distances.
        out.append((max(r.ts, other.ts), d > rules.separation_m + r.acc + other.acc,
                    d > rules.separation_m + 2 * (r.acc + other.acc), d <= rules.separation_m))
    return out


def no_fix_moments(run: Run, device: str, nofix_ms: int, offline_ms: int, end_ms: int
                   ) -> list[int]:
    """Times ``t`` = a fix's receive time + ``nofix_ms`` by which no further fix had come
    while ``device`` was not silent at ``t`` (a message within ``offline_ms`` before it):
    there a no_fix could be raised."""
    recs = run.by_device.get(device, [])
    fix_rx = [r.rx for r in recs if r.fix]
    all_rx = np.array([r.rx for r in recs], dtype=np.int64)
    out = []
    for a, b in zip(fix_rx, fix_rx[1:] + [end_ms]):
        t = a + nofix_ms
        if b < t or t > end_ms:
            continue
        k = np.searchsorted(all_rx, t, side="right") - 1
        if k >= 0 and all_rx[k] > t - offline_ms:
            out.append(t)
    return out


def silences(run: Run, device: str, min_ms: int) -> list[tuple[int, int]]:
    """Gaps longer than ``min_ms`` between consecutive messages of ``device`` (rx)."""
    recs = run.by_device.get(device, [])
    return [(a.rx, b.rx) for a, b in itertools.pairwise(recs) if b.rx - a.rx > min_ms]


def zone_fixes(run: Run, device: str, zone_m, rules, tol_m: float = 2.0
               ) -> list[tuple[int, str]]:
    """Per fix that could raise exclusion or approach at the zone (docs/rules.md: inside
    raises exclusion; outside beyond the margin max(buffer_m, acc) but within approach_m
    raises approach): ``(ts, "in" | "band" | "maybe")``: in = inside, band = surely in
    the approach band, maybe = in it within ``tol_m`` (the distance measures differ)."""
    out = []
    for r in run.fixes(device):
        d = float(shapely.distance(shapely.Point(r.x, r.y), zone_m))
        margin = max(rules.buffer_m, r.acc)
        if d <= tol_m:
            out.append((r.ts, "in"))
        elif margin + tol_m < d <= rules.approach_m - tol_m:
            out.append((r.ts, "band"))
        elif margin - tol_m < d <= rules.approach_m + tol_m:
            out.append((r.ts, "maybe"))
    return out


def near_pairs(run: Run, mine: list[str], theirs: list[str], limit_m: float, fresh_ms: int
               ) -> list[tuple[int, bool, bool]]:
    """For each fix of ``mine``, the latest fix of ``theirs`` (by receive order) at most
    ``fresh_ms`` older: ``(ts, possibly within limit_m, surely within limit_m)``."""
    merged = sorted([r for d in mine + theirs for r in run.fixes(d)],
                    key=lambda r: (r.rx, r.device))
    latest = None
    out = []
    for r in merged:
        if r.device in theirs:
            latest = r
            continue
        if latest is None or r.ts - latest.ts > fresh_ms:
            continue
        d = _dist(r, latest)
        out.append((r.ts, d - r.acc - latest.acc <= limit_m, d + r.acc + latest.acc <= limit_m))
    return out


def surely_near_spells(pairs: list[tuple[int, bool, bool]]) -> list[tuple[int, int]]:
    """Spells (first ts, last ts) of consecutive surely-near pairs."""
    spells = []
    start = last = None
    for ts, _, sure in pairs:
        if sure:
            start = ts if start is None else start
            last = ts
        elif start is not None:
            spells.append((start, last))
            start = None
    if start is not None:
        spells.append((start, last))
    return spells
