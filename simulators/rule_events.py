"""The injected events of issue #14's rules (the ``rules`` scenario), each with its truth.

A mixin of :class:`simulators.events.EventInjector` (it uses the injector's ``sim``,
``fleet``, ``model``, ``config``, ``interval_ms``, ``_window``, ``_device``, ``_script``,
``_truth`` and ``_free``). Every event keeps the ground truth exact:

- ``separation``: the subject walks away from the phone it left behind, far beyond
  ``separation_m`` plus both fixes' largest GPS accuracy, and comes back to it;
- ``foil``: the bracelet sends statuses but no fix for longer than ``no_fix_after_s``;
- ``power_off``: a status with ``"power": "off"``, silence for longer than the offline
  threshold (``offline`` must not be raised as well), then ``"power": "on"`` (both on a
  subject without a phone, whose fresh fixes would rightly raise separation);
- ``approach``: the subject walks toward one of its exclusion zones, waits inside the
  approach band (``approach_m / 2`` from it), walks on into the zone and back;
- ``proximity``: the subject and a person protected from it walk toward each other and
  stay ``PROXIMITY_CLOSE_M`` apart for a while;
- ``contact``: two listed co-defendants meet (``CONTACT_CLOSE_M`` apart) for longer than
  ``contact_min_s``.

Separation and contact alarms are raised on the subject, matched by subject, not device;
proximity is one episode per (subject device, person): a truth line per device, like the
zone events (:mod:`simulators.score`); ``detail`` names the other party (``person_id``,
``peer_subject_id``) and ``allow`` lists the types that may also be raised inside the
window without being false (``approach`` while walking back out past a zone).
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import LineString, Point
from shapely.ops import nearest_points

from simulators.movement import ACC_RANGE_M, MAX_ERROR_M, SRC_GPS

# Those needing two parties first, while most subjects are still free.
RULE_EVENTS = ("contact", "proximity", "separation", "foil", "power_off", "approach")
RULE_EXPECTED = {"separation": "separation", "foil": "no_fix", "power_off": "power_off",
                 "approach": "approach", "proximity": "proximity", "contact": "contact"}
GPS_ACC_MAX_M = ACC_RANGE_M[SRC_GPS][1]  # the largest GPS accuracy reported
PROXIMITY_CLOSE_M = 300.0  # how close a subject and its victim come (at most 0.3 proximity_m)
CONTACT_CLOSE_M = 40.0  # how close co-defendants stand while they meet
# Clearance of an event's path from the subject's other exclusion zones, beyond approach_m.
PATH_CLEARANCE_M = 150.0
# How far back a foil's last fix may lie, in report intervals (indoor drop-outs and
# heartbeats are no fixes: eight in a row before the foil are very unlikely).
FOIL_LOOKBACK_REPORTS = 8


class RuleEvents:
    """``_ev_<kind>`` for each of :data:`RULE_EVENTS` (see the module docstring)."""

    def _legs(self) -> tuple[int, int]:
        iv = self.interval_ms
        return int(max(2 * iv, 4000)), int(max(6 * iv, 10_000))

    def _worn(self, s: int, rng) -> int | None:
        """The subject's bracelet, else any device of it (the truth's device_id)."""
        d = self._device(s, rng, "bracelet")
        return d if d is not None else self._device(s, rng)

    def _path_ok(self, s: int, pts: list, *, except_zone: str | None = None,
                 meeting: int | None = None) -> bool:
        """The path through ``pts`` (metres) stays inside ``s``'s inclusion zones (100 m
        from their border), clear of its exclusion zones (but ``except_zone``) and of
        the people it must not meet (but ``meeting``)."""
        path = LineString(pts) if len(pts) > 1 else Point(pts[0])
        incl = self.fleet.inclusion_m[s]
        if not incl.contains(path) or shapely.distance(path, incl.boundary) < 100.0:
            return False
        clear = self.config.rules.approach_m + PATH_CLEARANCE_M
        return all(shapely.distance(path, g) >= clear
                   for z, g in self.fleet.exclusions_m[s] if z != except_zone
                   ) and self._relations_ok(s, path, meeting=meeting)

    def _relations_ok(self, s: int, path, *, meeting: int | None = None) -> bool:
        """``path`` (metres) keeps subject ``s`` away from the people it must not meet:
        the persons protected from it (at home) and its listed contacts (anywhere in
        their day's range), but ``meeting``; both sides' largest errors counted."""
        fleet, model, r = self.fleet, self.model, self.config.rules
        far_v = r.proximity_m + 2 * MAX_ERROR_M + 500.0
        far_c = 2 * model.trip_radius_m + r.contact_m + 2 * MAX_ERROR_M + 500.0
        for v in fleet.victim_of(s):
            if shapely.distance(path, Point(model.home[fleet.n_subjects + v])) < far_v:
                return False
        return all(shapely.distance(path, Point(model.home[c])) >= far_c
                   for c in (fleet.contacts[s] if fleet.contacts else ()) if c != meeting)

    def _ev_separation(self, s, rng, warm, tail) -> bool:
        bracelet, phone = self._device(s, rng, "bracelet"), self._device(s, rng, "phone")
        travel, dwell = self._legs()
        ta = self._window(rng, 2 * travel + dwell, warm, tail)
        if bracelet is None or phone is None or ta is None:
            return False
        r = self.config.rules
        far = max(1000.0, r.separation_m + 2 * GPS_ACC_MAX_M + 400.0)
        p0 = self.model.position_at(s, ta)
        for a in rng.uniform(0, 2 * np.pi, 8):
            target = (p0[0] + far * np.cos(a), p0[1] + far * np.sin(a))
            if self._path_ok(s, [p0, target]):
                break
        else:
            return False
        start, end = self.model.insert_detour(s, ta, [target], travel_ms=travel, dwell_ms=dwell)
        self.model.pin(phone, start, end)
        self._truth("separation", bracelet, start, end, "separation",
                    phone=self.fleet.device_ids[phone], apart_m=round(far, 1))
        return True

    def _alone(self, s: int, rng) -> int | None:
        """The bracelet of a subject without a phone: with a phone, the phone's fresh
        fixes would pair with the bracelet's stale ones and rightly raise separation."""
        return self._device(s, rng, "bracelet") if len(self.fleet.devices_of(s)) == 1 else None

    def _ev_foil(self, s, rng, warm, tail) -> bool:
        d = self._alone(s, rng)
        level = self.fleet.subject_level[s]
        thr = int(self.config.rules.no_fix_after_s.for_level(level) * 1000)
        length = thr + max(3 * self.interval_ms, 5000)
        ta = self._window(rng, length, warm, tail)
        if d is None or ta is None:
            return False
        tb = int(ta + length)
        self._script(d).nofix.append((ta, tb))
        # at = the last fix's receive time + the threshold; that fix came before ta.
        self._truth("foil", d, ta - FOIL_LOOKBACK_REPORTS * self.interval_ms + thr,
                    tb + self.interval_ms, "no_fix", no_fix_after_ms=thr)
        return True

    def _ev_power_off(self, s, rng, warm, tail) -> bool:
        d = self._alone(s, rng)
        thr = self.sim.offline_after_ms(s)
        length = thr + max(3 * self.interval_ms, 5000)
        ta = self._window(rng, length, warm, tail)
        if d is None or ta is None:
            return False
        tb = int(ta + length)
        sc = self._script(d)
        sc.power_off.append((ta, tb))
        sc.oneshots.append((tb, "status", {"power": "on"}))
        # Neither offline nor no_fix while it is open (docs/rules.md, power off).
        self._truth("power_off", d, ta, tb + self.interval_ms, "power_off",
                    offline_after_ms=thr)
        return True

    def _ev_approach(self, s, rng, warm, tail) -> bool:
        excl = self.fleet.exclusions_m[s]
        travel, dwell = self._legs()
        ta = self._window(rng, 6 * travel + dwell, warm, tail)
        if not excl or ta is None:
            return False
        zone, g = excl[int(rng.integers(len(excl)))]
        p0 = self.model.position_at(s, ta)
        b, _ = nearest_points(g.boundary, Point(p0))
        norm = float(np.hypot(p0[0] - b.x, p0[1] - b.y)) or 1.0
        band = self.config.rules.approach_m / 2
        wait = (b.x + (p0[0] - b.x) / norm * band, b.y + (p0[1] - b.y) / norm * band)
        c = g.centroid
        if not g.contains(c) or shapely.distance(c, g.boundary) < 40:
            c = g.representative_point()
        if not 0.6 * band <= shapely.distance(Point(wait), g) <= 1.4 * band:
            return False
        if not self._path_ok(s, [p0, wait], except_zone=zone) or not self._path_ok(
                s, [wait, (c.x, c.y)], except_zone=zone):
            return False
        # p0 -> wait, wait there one leg, -> the centre, dwell; the same way back.
        start, end = self.model.insert_detour(s, ta, [wait, wait, (c.x, c.y)],
                                              travel_ms=travel, dwell_ms=dwell)
        for d in self.fleet.devices_of(s):
            self._truth("approach", d, start, start + 3 * travel, "approach", zone=zone,
                        band_m=round(band, 1))
            self._truth("approach", d, start, end, "exclusion", zone=zone, allow=["approach"])
        return True

    def _ev_proximity(self, s, rng, warm, tail) -> bool:
        fleet = self.fleet
        victims = [v for v in fleet.victim_of(s)
                   if (fleet.device_subject == fleet.n_subjects + v).any()]
        travel, dwell = self._legs()
        ta = self._window(rng, 2 * travel + dwell, warm, tail)
        if not victims or ta is None:
            return False
        v = victims[0]
        mv = fleet.n_subjects + v
        p0, q0 = self.model.position_at(s, ta), self.model.position_at(mv, ta)
        norm = float(np.hypot(q0[0] - p0[0], q0[1] - p0[1])) or 1.0
        u = ((q0[0] - p0[0]) / norm, (q0[1] - p0[1]) / norm)
        close = min(PROXIMITY_CLOSE_M, 0.3 * self.config.rules.proximity_m)
        meet = (p0[0] + 400.0 * u[0], p0[1] + 400.0 * u[1])
        if not self._path_ok(s, [p0, meet]):
            return False
        start, end = self.model.insert_detour(s, ta, [meet], travel_ms=travel, dwell_ms=dwell)
        self.model.insert_detour(mv, ta, [(meet[0] + close * u[0], meet[1] + close * u[1])],
                                 travel_ms=travel, dwell_ms=dwell)
        for d in fleet.devices_of(s):  # one episode per (subject device, person)
            self._truth("proximity", d, start, end, "proximity",
                        person_id=fleet.victim_ids[v], close_m=close)
        return True

    def _ev_contact(self, s, rng, warm, tail) -> bool:
        fleet = self.fleet
        free = {int(x) for x in self._free}
        partners = [t for t in fleet.contacts[s] if t in free] if fleet.contacts else []
        travel, dwell = self._legs()
        dwell += int(self.config.rules.contact_min_s * 1000)
        ta = self._window(rng, 2 * travel + dwell, warm, tail)
        if not partners or ta is None:
            return False
        t = partners[0]
        p, q = self.model.position_at(s, ta), self.model.position_at(t, ta)
        for meet in (((p[0] + q[0]) / 2, (p[1] + q[1]) / 2), p, q):
            other = (meet[0] + CONTACT_CLOSE_M, meet[1])
            if (self._path_ok(s, [p, meet], meeting=t)
                    and self._path_ok(t, [q, other], meeting=s)):
                break
        else:
            return False
        self._free.remove(t)  # the partner takes no event of its own
        start, end = self.model.insert_detour(s, ta, [meet], travel_ms=travel, dwell_ms=dwell)
        self.model.insert_detour(t, ta, [other], travel_ms=travel, dwell_ms=dwell)
        first, peer = sorted((s, t), key=lambda i: fleet.subject_ids[i])
        d = self._worn(first, rng)
        self._truth("contact", d, start, end, "contact",
                    peer_subject_id=fleet.subject_ids[peer],
                    contact_min_ms=int(self.config.rules.contact_min_s * 1000))
        return True
