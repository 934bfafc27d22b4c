"""The separation rule of :class:`engine.shapely_core.ShapelyEngine` (the shapely/pyproj
core the benchmarks measure the numba core against): distances with pyproj's geodesic,
state per bracelet/phone pair (docs/rules.md, "Separation")."""

from __future__ import annotations

from pyproj import Geod

from engine.relation_kernels import T_SEPARATION

_GEOD = Geod(ellps="WGS84")


class SeparationRule:
    """Mixed into ShapelyEngine: needs its ``config``, ``registry``, ``_event`` and the
    ``_pairs``, ``_pair_of``, ``_sep``, ``_latest`` it sets up."""

    def _separation(self, d: int, ts: int, out: list) -> None:
        p = self._pair_of[d]
        q = self._pairs[p][0] + self._pairs[p][1] - d
        if q not in self._latest or abs(ts - self._latest[q][0]) > self._sep_window_ms():
            return
        r = self.config.rules
        state = self._sep[p]
        pos = {d: self._latest[d], q: self._latest[q]}
        dist = _GEOD.inv(pos[d][1], pos[d][2], pos[q][1], pos[q][2])[2]
        at = max(ts, pos[q][0])
        if dist <= r.separation_m:
            state[0] = 0
            if state[1] is None:
                return
            on, episode, raised = state[2], state[1], False
            state[1] = state[2] = None
        elif dist > r.separation_m + pos[d][3] + pos[q][3]:
            state[0] += 1
            if state[0] < r.separation_confirm or state[1] is not None:
                return
            on = d if ts >= pos[q][0] else q
            state[1], state[2], episode, raised = at, on, at, True
        else:
            return
        peer = q if on == d else d
        out.append(self._event(on, T_SEPARATION, -1, raised, at, episode, False,
                               (pos[on][2], pos[on][1], dist, pos[on][3]),
                               {"peer_device_id": self.registry.device_ids[peer],
                                "peer_lat": pos[peer][2], "peer_lon": pos[peer][1],
                                "peer_acc": pos[peer][3]}))

    def _sep_window_ms(self) -> float:
        return self.config.rules.separation_window_s * 1000
