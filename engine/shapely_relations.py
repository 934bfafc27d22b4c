"""Proximity and contact in plain Python for :class:`engine.shapely_core.ShapelyEngine`
(docs/rules.md, "Proximity", "Contact"): the same decisions as
:mod:`engine.relation_kernels`, distances from pyproj's geodesic."""

from __future__ import annotations

import math
from typing import Any

from pyproj import Geod

from engine.relation_kernels import T_CONTACT, T_PROXIMITY
from engine.relations import relation_arrays

_GEOD = Geod(ellps="WGS84")


def _metres(a: tuple, b: tuple) -> float:
    """Geodesic metres between two (ts, lon, lat, acc) fixes."""
    return float(_GEOD.inv(a[1], a[2], b[1], b[2])[2])


class PlainRelations:
    """``fix(d, ts, latest, event, out)`` after ``latest[d]`` holds the fix (ts, lon,
    lat, acc); ``event`` is ShapelyEngine._event."""

    def __init__(self, registry: Any, config: Any):
        self.registry = registry
        self.rules = config.rules
        ra = relation_arrays(registry)[0]
        self.subj_devs = [list(range(ra.subj_dev_off[s], ra.subj_dev_off[s + 1]))
                          for s in range(len(ra.subj_dev_off) - 1)]
        self.person_devs = [ra.person_dev[ra.person_dev_off[v]:ra.person_dev_off[v + 1]].tolist()
                            for v in range(len(ra.person_dev_off) - 1)]
        self.watch: dict[int, list[int]] = {}
        self.pairs: dict[int, list[int]] = {}
        for r, d in enumerate(ra.rel_dev.tolist()):
            self.watch[d] = ra.prox_person[ra.prox_off[r]:ra.prox_off[r + 1]].tolist()
            self.pairs[d] = ra.cont_pair[ra.cont_off[r]:ra.cont_off[r + 1]].tolist()
        self.cont_subj = ra.cont_subj.tolist()
        self.prox_open: dict[tuple[int, int], int] = {}
        self.contact = [[None, None, None] for _ in self.cont_subj]  # at, since, device

    def fix(self, d: int, ts: int, latest: dict, event, out: list) -> None:
        for v in self.watch.get(d, ()):
            self._proximity(d, v, ts, latest, event, out)
        for c in self.pairs.get(d, ()):
            self._contact(d, c, ts, latest, event, out)

    def _proximity(self, d, v, ts, latest, event, out) -> None:
        fixes = [latest[q] for q in self.person_devs[v] if q in latest]
        if not fixes:
            return
        vf = max(fixes, key=lambda f: f[0])
        if ts - vf[0] > self.rules.proximity_fresh_s * 1000:
            return
        me = latest[d]
        dist = _metres(me, vf)
        closest = dist - me[3] - vf[3]
        key = (d, v)
        ep = self.prox_open.get(key)
        if ep is None and closest <= self.rules.proximity_m:
            self.prox_open[key] = ts
        elif ep is not None and closest > self.rules.proximity_m + self.rules.buffer_m:
            del self.prox_open[key]
        else:
            return
        person = self.registry.protected[v].person_id
        # (ShapelyEngine._dicts puts the person in the alarm id's zone place, as Engine)
        out.append(event(d, T_PROXIMITY, -1, ep is None, ts, ts if ep is None else ep, False,
                         (me[2], me[1], dist, me[3]), {"person_id": person}))

    def _contact(self, d, c, ts, latest, event, out) -> None:
        first, second = self.cont_subj[c]
        s = int(self.registry.arrays.device_subject[d])
        other = second if s == first else first
        window = self.rules.separation_window_s * 1000
        best, q = math.inf, -1
        for k in self.subj_devs[other]:
            if k in latest and abs(ts - latest[k][0]) <= window:
                dist = _metres(latest[d], latest[k])
                if dist < best:
                    best, q = dist, k
        if q < 0:
            return
        state = self.contact[c]
        t = max(ts, latest[q][0])
        r = self.rules
        if best <= r.contact_m:
            if state[1] is None:
                state[1] = t
            if state[0] is not None or t - state[1] < r.contact_min_s * 1000:
                return
            on = d if s == first else q
            state[0], state[2] = state[1] + round(r.contact_min_s * 1000), on
            raised, at, episode, peer = True, state[0], state[0], q if on == d else d
        elif best > r.contact_m + r.buffer_m:
            state[1] = None
            if state[0] is None:
                return
            raised, at, episode, on = False, t, state[0], state[2]
            peer = q if s == first else d
            state[0] = None
        else:
            if state[0] is None:
                state[1] = None
            return
        peer_subject = self.registry.subject_of(peer)
        out.append(event(on, T_CONTACT, -1, raised, at, episode, False, None,
                         {"peer_subject_id": peer_subject,
                          "peer_device_id": self.registry.device_ids[peer],
                          "distance_m": round(best, 1)}))
