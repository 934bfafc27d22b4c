"""A plain-Python reference of the relation rules (issue #14, docs/rules.md "Relations"),
written from the issue text, not from the kernels: pyproj's geodesic for metres, dicts
for state. :class:`engine_reference.Reference` runs it for every in-order fix, before
that fix's zone rules.

Events are the reference's tuples ``(event, type, device_id, zone_id, at, late)``; the
evidence of each event is kept beside them in ``evidence`` (same order) for the tests
that compare it.
"""

from __future__ import annotations

from pyproj import Geod

GEOD = Geod(ellps="WGS84")


def geodesic_m(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    return float(GEOD.inv(lon0, lat0, lon1, lat1)[2])


class RelationReference:
    """Separation: a subject's first bracelet and first phone. Proximity: every device of
    a subject against each protected person protected from that subject."""

    def __init__(self, subjects: dict, *, separation_window_s=300.0, separation_m=500.0,
                 separation_confirm=2, proximity_m=1000.0, proximity_fresh_s=300.0,
                 buffer_m=50.0, contact_m=200.0, contact_min_s=600.0):
        self.window_ms = separation_window_s * 1000
        self.sep_m = separation_m
        self.confirm = separation_confirm
        self.prox_m = proximity_m
        self.fresh_ms = proximity_fresh_s * 1000
        self.buffer_m = buffer_m
        self.person_devices = {p["person_id"]: [d["device_id"] for d in p["devices"]]
                               for p in subjects.get("protected", [])}
        self.person_of = {d: pid for pid, devs in self.person_devices.items() for d in devs}
        self.watched: dict[str, list[str]] = {}  # subject device -> person ids
        by_id = {s["subject_id"]: s for s in subjects["subjects"]}
        for p in subjects.get("protected", []):
            for sid in dict.fromkeys(p["protected_from"]):
                for dev in by_id[sid]["devices"]:
                    self.watched.setdefault(dev["device_id"], []).append(p["person_id"])
        self.prox_open: dict[tuple[str, str], int] = {}
        # contact: pairs of subject ids (smaller first), either side listing the other
        self.contact_m = contact_m
        self.contact_min_ms = contact_min_s * 1000
        self.subject_of = {d["device_id"]: s["subject_id"] for s in subjects["subjects"]
                           for d in s["devices"]}
        self.devices_of = {s["subject_id"]: [d["device_id"] for d in s["devices"]]
                           for s in subjects["subjects"]}
        self.pairs = sorted({tuple(sorted((s["subject_id"], o))) for s in subjects["subjects"]
                             for o in s.get("contacts", [])})
        self.contact_open: dict[tuple, tuple[int, str]] = {}  # pair -> (at, device)
        self.contact_since: dict[tuple, int] = {}
        self.partner: dict[str, str] = {}
        self.pair_of: dict[str, str] = {}  # device -> subject id
        for s in subjects["subjects"]:
            kinds = {}
            for dev in s["devices"]:
                kinds.setdefault(dev.get("kind", "bracelet"), dev["device_id"])
            if "bracelet" in kinds and "phone" in kinds:
                b, p = kinds["bracelet"], kinds["phone"]
                self.partner[b], self.partner[p] = p, b
                self.pair_of[b] = self.pair_of[p] = s["subject_id"]
        self.latest: dict[str, tuple[int, float, float, float]] = {}  # ts, lon, lat, acc
        self.run: dict[str, int] = {}  # subject -> consecutive far pairs
        self.open: dict[str, tuple[int, str]] = {}  # subject -> (raised at, device)
        self.evidence: list[dict] = []

    def fix(self, device_id: str, ts: int, lon: float, lat: float, acc: float) -> list[tuple]:
        """An in-order fix (WGS-84) of ``device_id``: its relation events."""
        self.latest[device_id] = (ts, lon, lat, acc)
        out: list[tuple] = []
        if device_id in self.partner:
            out += self._separation(device_id, ts, lon, lat, acc)
        for pid in self.watched.get(device_id, []):
            out += self._proximity(device_id, pid, ts, lon, lat, acc)
        sid = self.subject_of.get(device_id)
        for pair in self.pairs:
            if sid in pair:
                out += self._contact(pair, device_id, sid, ts, lon, lat)
        return out

    def _nearest(self, other: str, ts: int, lon: float, lat: float):
        """(distance, device, its ts) of the other subject's nearest fix within the
        separation window of ts, or None."""
        near = [(geodesic_m(lon, lat, f[1], f[2]), d, f[0])
                for d in self.devices_of[other] if (f := self.latest.get(d))
                and abs(ts - f[0]) <= self.window_ms]
        return min(near) if near else None

    def _contact(self, pair: tuple, dev: str, sid: str, ts: int, lon: float, lat: float
                 ) -> list[tuple]:
        first, second = pair
        near = self._nearest(second if sid == first else first, ts, lon, lat)
        if near is None:
            return []
        dist, peer, pts = near
        t = max(ts, pts)
        if dist <= self.contact_m:
            since = self.contact_since.setdefault(pair, t)
            if pair in self.contact_open or t - since < self.contact_min_ms:
                return []
            on = dev if sid == first else peer
            at = since + self.contact_min_ms
            self.contact_open[pair] = (at, on)
            return [self._contact_event("raised", on, dev if on == peer else peer, at, dist)]
        if dist > self.contact_m + self.buffer_m:
            self.contact_since.pop(pair, None)
            if pair in self.contact_open:
                _, on = self.contact_open.pop(pair)
                return [self._contact_event("cleared", on, peer if sid == first else dev, t,
                                            dist)]
        elif pair not in self.contact_open:
            self.contact_since.pop(pair, None)
        return []

    def _contact_event(self, kind: str, device: str, peer: str, at: int, dist: float) -> tuple:
        self.evidence.append({"distance_m": dist, "peer_subject_id": self.subject_of[peer],
                              "peer_device_id": peer})
        return (kind, "contact", device, None, at, False)

    def _victim(self, pid: str) -> tuple[int, float, float, float] | None:
        """The person's newest fix over their devices."""
        fixes = [self.latest[d] for d in self.person_devices[pid] if d in self.latest]
        return max(fixes, key=lambda f: f[0]) if fixes else None

    def _proximity(self, dev: str, pid: str, ts: int, lon: float, lat: float, acc: float
                   ) -> list[tuple]:
        v = self._victim(pid)
        if v is None or ts - v[0] > self.fresh_ms:
            return []  # no fresh fix of the person
        dist = geodesic_m(lon, lat, v[1], v[2])
        closest = dist - acc - v[3]  # the accuracies count against the subject
        key = (dev, pid)
        if key not in self.prox_open:
            if closest > self.prox_m:
                return []
            self.prox_open[key] = ts
            kind = "raised"
        else:
            if closest <= self.prox_m + self.buffer_m:
                return []
            del self.prox_open[key]
            kind = "cleared"
        self.evidence.append({"lat": lat, "lon": lon, "distance_m": dist, "acc": acc,
                              "person_id": pid})
        return [(kind, "proximity", dev, None, ts, False)]

    def _separation(self, dev: str, ts: int, lon: float, lat: float, acc: float) -> list[tuple]:
        peer = self.partner[dev]
        if peer not in self.latest:
            return []
        pts, plon, plat, pacc = self.latest[peer]
        if abs(ts - pts) > self.window_ms:
            return []  # not a pair
        sid = self.pair_of[dev]
        dist = geodesic_m(lon, lat, plon, plat)
        at = max(ts, pts)
        mine = {dev: (lat, lon, acc), peer: (plat, plon, pacc)}
        if dist <= self.sep_m:
            self.run[sid] = 0
            if sid not in self.open:
                return []
            _, on = self.open.pop(sid)
            return [self._event("cleared", on, at, dist, mine)]
        if dist > self.sep_m + acc + pacc:
            self.run[sid] = self.run.get(sid, 0) + 1
            if self.run[sid] >= self.confirm and sid not in self.open:
                on = dev if ts >= pts else peer  # the later fix's device
                self.open[sid] = (at, on)
                return [self._event("raised", on, at, dist, mine)]
        return []

    def _event(self, kind: str, device: str, at: int, dist: float, pos: dict) -> tuple:
        peer = self.partner[device]
        lat, lon, acc = pos[device]
        plat, plon, pacc = pos[peer]
        self.evidence.append({"lat": lat, "lon": lon, "distance_m": dist, "acc": acc,
                              "peer_device_id": peer, "peer_lat": plat, "peer_lon": plon,
                              "peer_acc": pacc})
        return (kind, "separation", device, None, at, False)

    def ambiguity_m(self, device_id: str, ts: int, lon: float, lat: float, acc: float
                    ) -> float:
        """How close this fix's relation decisions come to a threshold (metres), against
        the latest fixes noted so far (scenario generators drop fixes below a tolerance
        and :meth:`fix` the ones they keep, in order)."""
        gaps = [float("inf")]
        sid = self.subject_of.get(device_id)
        for pair in self.pairs:
            if sid in pair:
                other = pair[1] if sid == pair[0] else pair[0]
                near = sorted(geodesic_m(lon, lat, f[1], f[2]) for d in self.devices_of[other]
                              if (f := self.latest.get(d)) and abs(ts - f[0]) <= self.window_ms)
                if near:
                    gaps += [abs(near[0] - self.contact_m),
                             abs(near[0] - self.contact_m - self.buffer_m)]
                if len(near) > 1:
                    gaps.append(near[1] - near[0])  # which device is nearest
        for pid in self.watched.get(device_id, []):
            v = self._victim(pid)
            if v is not None and ts - v[0] <= self.fresh_ms:
                closest = geodesic_m(lon, lat, v[1], v[2]) - acc - v[3]
                gaps += [abs(closest - self.prox_m), abs(closest - self.prox_m - self.buffer_m)]
        peer = self.partner.get(device_id)
        if peer in self.latest:
            pts, plon, plat, pacc = self.latest[peer]
            if abs(ts - pts) <= self.window_ms:
                dist = geodesic_m(lon, lat, plon, plat)
                gaps += [abs(dist - self.sep_m), abs(dist - self.sep_m - acc - pacc)]
        return min(gaps)
