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
    """Separation: a subject's first bracelet and first phone."""

    def __init__(self, subjects: dict, *, separation_window_s=300.0, separation_m=500.0,
                 separation_confirm=2):
        self.window_ms = separation_window_s * 1000
        self.sep_m = separation_m
        self.confirm = separation_confirm
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
        return out

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
        peer = self.partner.get(device_id)
        if peer in self.latest:
            pts, plon, plat, pacc = self.latest[peer]
            if abs(ts - pts) <= self.window_ms:
                dist = geodesic_m(lon, lat, plon, plat)
                gaps += [abs(dist - self.sep_m), abs(dist - self.sep_m - acc - pacc)]
        return min(gaps)
