"""Where each subject really is, and what its devices report.

The model, in a local metric frame (:class:`simulators.geo.LocalFrame`):

- Each subject has a *home* and a few other anchors (*work*, *errands*) inside their
  inclusion zones. Days are star-shaped: home -> anchor -> home, with indoor dwells at
  each end, and trips on foot (1.4 m/s), by bicycle (4.5 m/s) or by car (11 m/s).
- Why star-shaped: anchors are drawn at least ``trip_radius_m`` inside the county and
  within ``2 * trip_radius_m`` of home, so every point of every straight trip lies inside
  a disc of radius ``trip_radius_m`` around one of its ends, hence inside the county:
  normal movement never leaves it, without testing each trip against the polygon.
  Home keeps ``2 * trip_radius_m + NOISE_CLEARANCE_M`` from every exclusion zone, so
  normal movement never comes within the largest position error of one.
- ``time_scale`` speeds the day up (dwells and trips last ``1 / time_scale`` of their
  real length in wall time) so a one-minute demo shows movement; fix timestamps stay
  on the wall clock.
- Injected events (:mod:`simulators.scenario`) insert a *detour*: leave the current
  position, go to targets (outside the county, into an exclusion zone), dwell, come back,
  then the day resumes, shifted by the detour's length.

What devices report (:meth:`MovementModel.observe`): the true position plus an error
whose size matches the reported accuracy. ``acc`` is drawn per fix by source, log-uniform
in GPS 3-30 m, Wi-Fi 50-300 m, cell 300-2000 m; the error is Rayleigh-distributed with
``acc`` as its 95th percentile and truncated at ``acc``, so the reported ``acc`` always
covers the truth (the rules treat a fix as *out* only beyond max(buffer, acc), so a
device that is really inside never looks out). Indoors the source is mostly Wi-Fi or
cell, and some fixes are missing altogether (drop-outs); while moving it is mostly GPS;
during an injected event it is GPS (outdoors, and it keeps the ground truth sharp).
Phones report GCJ-02 (the coordinates of Chinese map SDKs), bracelets WGS-84.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import shapely

from simulators.fleet import Fleet, MovementError, time_ms  # noqa: F401 (re-exported)
from simulators.geo import sample_points_in

# Sources, as the wire contract spells them; the index is the code used in arrays.
SOURCES = ("gps", "wifi", "cell")
SRC_GPS, SRC_WIFI, SRC_CELL, SRC_NONE = 0, 1, 2, 3
ACC_RANGE_M = {SRC_GPS: (3.0, 30.0), SRC_WIFI: (50.0, 300.0), SRC_CELL: (300.0, 2000.0)}
MAX_ERROR_M = 2000.0
# Keep normal movement this far from exclusion zones: the largest error, plus a margin.
NOISE_CLEARANCE_M = MAX_ERROR_M + 200.0
# Issue #14 relations, kept apart in normal movement so that only an injected event
# brings them together: listed contacts' homes at least CONTACT_APART_M + 4 trip radii
# apart, a protected person VICTIM_APART_M + 2 trip radii from the subject's home. Both
# cover the largest error of each side; the margins allow contact_m <= 1 km and
# proximity_m <= 5 km (Simulation checks the config against them).
CONTACT_MARGIN_M = 1000.0
CONTACT_APART_M = 2 * MAX_ERROR_M + CONTACT_MARGIN_M
VICTIM_MARGIN_M = 5000.0
VICTIM_APART_M = 2 * MAX_ERROR_M + VICTIM_MARGIN_M
# Source probabilities (gps, wifi, cell, none = drop-out) by what the subject is doing.
LEG_DWELL, LEG_MOVING, LEG_EVENT = 0, 1, 2
SOURCE_P = {
    LEG_DWELL: (0.25, 0.45, 0.15, 0.15),
    LEG_MOVING: (0.93, 0.02, 0.05, 0.0),
    LEG_EVENT: (1.0, 0.0, 0.0, 0.0),
}
SPEEDS_M_S = {"walk": 1.4, "cycle": 4.5, "drive": 11.0}
MIN_MS = 60_000
# Dwell lengths in simulated minutes: (low, high) by anchor kind.
DWELL_MIN = {"home": (30, 180), "work": (120, 300), "errand": (5, 45)}
FOREVER_MS = 2**40  # leg end of the last dwell: ~35 years
COORD_WGS84, COORD_GCJ02 = 0, 1
# Device kinds that are phone apps: GCJ-02 coordinates, no strap in their statuses.
PHONE_KINDS = ("phone", "victim")


class MovementModel:
    """Day plans for every subject of a :class:`Fleet` from ``start_ms`` on (wall time).

    ``true_position_m(subject, t_ms)`` answers vectorised; ``observe`` adds what a device
    reports. Deterministic for a given ``seed``."""

    def __init__(self, fleet: Fleet, *, seed: int, start_ms: int, time_scale: float = 1.0,
                 trip_radius_m: float = 2000.0, horizon_ms: int = 7 * 24 * 3_600_000):
        if time_scale <= 0:
            raise MovementError(f"time_scale must be positive, got {time_scale}")
        self.fleet = fleet
        self.start_ms = int(start_ms)
        self.time_scale = float(time_scale)
        self.seed = seed
        rng = np.random.default_rng([seed, 0x6D6F7665])
        self.home = np.zeros((fleet.n_movers, 2))
        self.anchors: list[list[tuple[str, float, float]]] = []
        self._legs: list[list[tuple]] = []
        self.trip_radius_m = trip_radius_m
        # Listed contacts whose homes could not be kept CONTACT_APART_M apart (a small
        # county): normal movement may bring them together; the truth header names them.
        self.contacts_close: list[tuple[str, str]] = []
        # Per device, windows (t0, t1, x, y) where it stays put, apart from its subject.
        self.pins: dict[int, list[tuple[int, int, float, float]]] = {}
        # GPS reports after each detour's return (see insert_detour); set by Simulation.
        self.settle_ms = 0
        eroded_cache: dict[tuple[int, float], object] = {}
        for s in range(fleet.n_subjects):
            home, anchors = self._place_anchors(s, rng, trip_radius_m, eroded_cache)
            self.home[s] = home
            self.anchors.append(anchors)
            self._legs.append(self._day_plan(s, rng, horizon_ms))
        self._place_victims(np.random.default_rng([seed, 0x5AFE]))
        self._compiled = None

    # -- planning (Python, once per subject) ------------------------------------------

    def _place_anchors(self, s: int, rng, trip_radius_m: float, cache):
        fleet = self.fleet
        sid = fleet.subject_ids[s]
        incl = fleet.inclusion_m[s]
        excl = [g for _, g in fleet.exclusions_m[s]]
        excl_union = shapely.union_all(excl) if excl else None
        # Smaller trip radii for subjects whose county is too small or crowded.
        for radius in (trip_radius_m, trip_radius_m / 2, trip_radius_m / 4):
            key = (id(incl), radius)
            if key not in cache:
                cache[key] = incl.buffer(-radius)
            eroded = cache[key]
            if eroded.is_empty:
                continue
            shapely.prepare(eroded)
            cand = sample_points_in(eroded, 64, rng)
            if excl_union is not None:
                keep = (shapely.distance(shapely.points(cand), excl_union)
                        >= 2 * radius + NOISE_CLEARANCE_M)
                cand = cand[keep]
            if not len(cand):
                continue
            home = self._apart_from_contacts(s, cand, trip_radius_m)
            anchors = [("home", home[0], home[1])]
            kinds = ["work"] + ["errand"] * int(rng.integers(2, 5))
            # Other anchors: uniform in the disc of radius 2 * radius around home, kept
            # where they are inside the eroded county (rejection, vectorised).
            k = 16 * len(kinds)
            rr = 2 * radius * 0.98 * np.sqrt(rng.random(k))
            aa = rng.uniform(0, 2 * np.pi, k)
            px, py = home[0] + rr * np.cos(aa), home[1] + rr * np.sin(aa)
            ok = shapely.contains_xy(eroded, px, py)
            for kind, x, y in zip(kinds, px[ok], py[ok]):
                anchors.append((kind, float(x), float(y)))
            return home, anchors
        raise MovementError("no place for a home: the inclusion zone is too small or its "
                            "exclusion zones leave no room", subject_id=sid)

    def _apart_from_contacts(self, s: int, cand: np.ndarray, radius: float) -> np.ndarray:
        """The first candidate home far enough from the homes of ``s``'s listed contacts
        placed so far (else the farthest, noted in ``contacts_close``)."""
        placed = [c for c in self.fleet.contacts[s] if c < s] if self.fleet.contacts else []
        if not placed:
            return cand[0]
        homes = self.home[placed]
        d = np.min(np.hypot(cand[:, None, 0] - homes[None, :, 0],
                            cand[:, None, 1] - homes[None, :, 1]), axis=1)
        ok = np.flatnonzero(d >= 4 * radius + CONTACT_APART_M)
        if len(ok):
            return cand[ok[0]]
        ids = self.fleet.subject_ids
        self.contacts_close += [(ids[c], ids[s]) for c in placed]
        return cand[int(np.argmax(d))]

    def _place_victims(self, rng) -> None:
        """Each protected person stays at a home VICTIM_APART_M + 2 trip radii from the
        homes of the subjects it is protected from (outside the county, maybe: a victim
        has no zones of its own), indoors (its phone reports as any phone does there)."""
        fleet = self.fleet
        for v, frm in enumerate(fleet.victim_from):
            far = 2 * self.trip_radius_m + VICTIM_APART_M
            for _ in range(32):
                a = rng.uniform(0, 2 * np.pi)
                x, y = self.home[frm[0]] + far * np.array([np.cos(a), np.sin(a)])
                if all(np.hypot(x - self.home[s][0], y - self.home[s][1]) >= far * 0.999
                       for s in frm):
                    break
            else:
                raise MovementError("no home far enough from all the subjects it is "
                                    "protected from", subject_id=fleet.victim_ids[v])
            self.home[fleet.n_subjects + v] = (x, y)
            self._legs.append([(self.start_ms - 7 * 86_400_000, self.start_ms + FOREVER_MS,
                                x, y, x, y, LEG_DWELL)])

    def pin(self, d: int, t0_ms: int, t1_ms: int) -> tuple[float, float]:
        """Device ``d`` stays where its subject is at ``t0_ms`` until ``t1_ms`` (left at
        home while the subject goes on), reporting GPS fixes; returns that place."""
        x, y = self.position_at(int(self.fleet.device_subject[d]), t0_ms)
        self.pins.setdefault(d, []).append((int(t0_ms), int(t1_ms), x, y))
        return x, y

    def _trip_ms(self, rng, length_m: float) -> int:
        r = rng.random()
        if length_m < 1200 and r < 0.7:
            mode = "walk"
        elif length_m < 3000 and r < 0.6:
            mode = "cycle"
        else:
            mode = "drive"
        return max(1, int(length_m / SPEEDS_M_S[mode] * 1000 / self.time_scale))

    def _dwell_ms(self, rng, kind: str) -> int:
        lo, hi = DWELL_MIN[kind]
        return max(1, int(rng.uniform(lo, hi) * MIN_MS / self.time_scale))

    def _day_plan(self, s: int, rng, horizon_ms: int) -> list[tuple]:
        """Legs ``(t0_ms, t1_ms, x0, y0, x1, y1, kind)`` from before ``start_ms`` until
        ``horizon_ms`` of wall time after it (then home, for good)."""
        anchors = self.anchors[s]
        hx, hy = self.home[s]
        # Start at home at a random point of a home dwell.
        t = self.start_ms - int(rng.uniform(0, 1) * self._dwell_ms(rng, "home"))
        legs = []
        end = self.start_ms + int(horizon_ms)
        others = anchors[1:]
        while t < end and others:
            dwell = self._dwell_ms(rng, "home")
            legs.append((t, t + dwell, hx, hy, hx, hy, LEG_DWELL))
            t += dwell
            kind, ax, ay = others[int(rng.integers(len(others)))]
            trip = self._trip_ms(rng, float(np.hypot(ax - hx, ay - hy)))
            legs.append((t, t + trip, hx, hy, ax, ay, LEG_MOVING))
            t += trip
            dwell = self._dwell_ms(rng, kind)
            legs.append((t, t + dwell, ax, ay, ax, ay, LEG_DWELL))
            t += dwell
            trip = self._trip_ms(rng, float(np.hypot(ax - hx, ay - hy)))
            legs.append((t, t + trip, ax, ay, hx, hy, LEG_MOVING))
            t += trip
        legs.append((t, t + FOREVER_MS, hx, hy, hx, hy, LEG_DWELL))
        return legs

    def position_at(self, s: int, t_ms: int) -> tuple[float, float]:
        """True position (metres) of subject ``s`` at wall time ``t_ms`` (scalar)."""
        x, y, _ = self.true_position_m(np.array([s]), np.array([t_ms]))
        return float(x[0]), float(y[0])

    def insert_detour(self, s: int, t_ms: int, targets: list[tuple[float, float]], *,
                      travel_ms: int, dwell_ms: int) -> tuple[int, int]:
        """From ``t_ms`` on, subject ``s`` goes through ``targets`` (metres; each leg
        ``travel_ms`` long, with a ``dwell_ms`` stop at the last), comes back to where it
        was, and resumes its day shifted by the detour. Returns the detour's
        ``(start_ms, end_ms)``. The detour's fixes are GPS (:data:`LEG_EVENT`), and so
        are those of ``settle_ms`` more at the place it came back to (after ``end_ms``):
        no indoor drop-out right after a fast return can leave one device's newest fix
        kilometres behind the other's (a separation nobody injected)."""
        x, y = self.position_at(s, t_ms)
        legs = self._legs[s]
        pts = [(x, y)] + list(targets)
        detour = []
        t = t_ms
        for (ax, ay), (bx, by) in itertools.pairwise(pts):
            detour.append((t, t + travel_ms, ax, ay, bx, by, LEG_EVENT))
            t += travel_ms
        lx, ly = pts[-1]
        detour.append((t, t + dwell_ms, lx, ly, lx, ly, LEG_EVENT))
        t += dwell_ms
        for (ax, ay), (bx, by) in zip(pts[::-1][:-1], pts[::-1][1:]):
            detour.append((t, t + travel_ms, ax, ay, bx, by, LEG_EVENT))
            t += travel_ms
        end = t
        if self.settle_ms > 0:
            detour.append((t, t + self.settle_ms, x, y, x, y, LEG_EVENT))
            t += self.settle_ms
        shift = t - t_ms
        new = []
        for leg in legs:
            t0, t1, x0, y0, x1, y1, kind = leg
            if t1 <= t_ms:
                new.append(leg)
            elif t0 >= t_ms:
                new.append((t0 + shift, t1 + shift, x0, y0, x1, y1, kind))
            else:  # the leg running at t_ms: split it around the detour
                new.append((t0, t_ms, x0, y0, x, y, kind))
                new += detour
                new.append((t, t1 + shift, x, y, x1, y1, kind))
        self._legs[s] = new
        self._compiled = None
        return t_ms, end

    def shift(self, delta_ms: int) -> None:
        """Move every plan ``delta_ms`` later (see ``Simulation.shift``)."""
        self.start_ms += delta_ms
        self._legs = [[(t0 + delta_ms, t1 + delta_ms, *rest) for t0, t1, *rest in legs]
                      for legs in self._legs]
        self.pins = {d: [(a + delta_ms, b + delta_ms, x, y) for a, b, x, y in w]
                     for d, w in self.pins.items()}
        self._compiled = None

    # -- vectorised queries ------------------------------------------------------------

    def _compile(self):
        if self._compiled is None:
            n = [len(legs) for legs in self._legs]
            arr = np.array([leg for legs in self._legs for leg in legs], dtype=np.float64)
            subj = np.repeat(np.arange(len(n), dtype=np.int64), n)
            t0 = np.array([leg[0] for legs in self._legs for leg in legs], dtype=np.int64)
            t1 = np.array([leg[1] for legs in self._legs for leg in legs], dtype=np.int64)
            base = min(int(t0.min()), self.start_ms) - 1
            self._base = base
            self._span = int(t1.max() - base) + 1
            keys = subj * self._span + (t0 - base)
            self._compiled = (keys, t0, t1, arr[:, 2:6], arr[:, 6].astype(np.int8))
        return self._compiled

    def true_position_m(self, subject: np.ndarray, t_ms: np.ndarray):
        """True positions (metres) of subjects at wall times: ``(x, y, leg_kind)``."""
        keys, t0, t1, xy, kind = self._compile()
        subject = np.asarray(subject, dtype=np.int64)
        t = np.asarray(t_ms, dtype=np.int64)
        q = subject * self._span + (np.maximum(t, self._base + 1) - self._base)
        i = np.searchsorted(keys, q, side="right") - 1
        dur = np.maximum(t1[i] - t0[i], 1)
        f = np.clip((t - t0[i]) / dur, 0.0, 1.0)
        x = xy[i, 0] + (xy[i, 2] - xy[i, 0]) * f
        y = xy[i, 1] + (xy[i, 3] - xy[i, 1]) * f
        return x, y, kind[i]

    def _pinned(self, device, t, x, y, kind):
        x, y, kind = x.copy(), y.copy(), kind.copy()
        for d, windows in self.pins.items():
            for a, b, px, py in windows:
                sel = (device == d) & (t >= a) & (t < b)
                x[sel], y[sel], kind[sel] = px, py, LEG_EVENT
        return x, y, kind

    def observe(self, device: np.ndarray, t_ms: np.ndarray, rng: np.random.Generator, *,
                dropouts: bool = True, u: np.ndarray | None = None) -> Observations:
        """What devices report at wall times ``t_ms``: positions with errors, accuracy,
        source, coordinate system. ``src == SRC_NONE`` marks a drop-out (no fix); with
        ``dropouts=False`` every report has a fix (load runs: plain fixes only). ``u``
        (uniform in [0, 1), one per report) picks the source instead of ``rng``: equal
        values give a subject's devices of one round the same source, so both drop out
        together indoors (see :func:`round_uniform`)."""
        from geofence.gcj02 import wgs84_to_gcj02

        fleet = self.fleet
        device = np.asarray(device, dtype=np.int64)
        subj = fleet.device_subject[device]
        x, y, kind = self.true_position_m(subj, t_ms)
        if self.pins:
            x, y, kind = self._pinned(device, np.asarray(t_ms, dtype=np.int64), x, y, kind)
        n = len(device)
        src = np.full(n, SRC_GPS, dtype=np.int8)
        u = rng.random(n) if u is None else np.asarray(u, dtype=np.float64)
        for k, p in SOURCE_P.items():
            sel = kind == k
            p = np.asarray(p) if dropouts else np.asarray(p[:3]) / sum(p[:3])
            edges = np.cumsum(p)
            src[sel] = np.searchsorted(edges, u[sel], side="right").clip(0, 3)
        acc = np.zeros(n)
        for code, (lo, hi) in ACC_RANGE_M.items():
            sel = src == code
            acc[sel] = np.exp(rng.uniform(np.log(lo), np.log(hi), int(sel.sum())))
        acc = np.ceil(acc * 10.0) / 10.0  # reported with 0.1 m resolution, rounded up
        # Rayleigh with acc as its 95th percentile (sigma = acc / 2.448), truncated at acc.
        err = np.minimum(rng.rayleigh(acc / 2.4477), 0.98 * acc)
        ang = rng.uniform(0, 2 * np.pi, n)
        ox, oy = x + err * np.cos(ang), y + err * np.sin(ang)
        lon, lat = fleet.frame.to_deg(ox, oy)
        tlon, tlat = fleet.frame.to_deg(x, y)
        phone = np.array([fleet.device_kind[d] in PHONE_KINDS for d in device], dtype=bool)
        coord = np.where(phone, COORD_GCJ02, COORD_WGS84).astype(np.int8)
        if phone.any():
            glon, glat = wgs84_to_gcj02(lon[phone], lat[phone])
            lon = lon.copy()
            lat = lat.copy()
            lon[phone], lat[phone] = glon, glat
        return Observations(device, np.asarray(t_ms, dtype=np.int64), lon, lat, acc, src, coord,
                            tlon, tlat, err)


def round_uniform(seed: int, subject: np.ndarray, rnd: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per (seed, subject, round), the same in every call
    (splitmix64 of the three): the source draw a subject's devices share in one round."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             + np.asarray(subject, dtype=np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + np.asarray(rnd, dtype=np.uint64) * np.uint64(0x94D049BB133111EB))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class Observations:
    """Per fix: ``lon``/``lat`` as reported (in ``coord`` system), ``acc`` metres,
    ``src`` code, and the truth (``true_lon``/``true_lat`` WGS-84, ``error_m``)."""

    device: np.ndarray
    t_ms: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    acc: np.ndarray
    src: np.ndarray
    coord: np.ndarray
    true_lon: np.ndarray
    true_lat: np.ndarray
    error_m: np.ndarray
