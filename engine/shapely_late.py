"""Late messages in :class:`engine.shapely_core.ShapelyEngine`: judged on their own ts
(docs/rules.md, "Duplicates and late messages"), the twin of the kernels'
``_late_status`` and ``_late_fix_rules`` (no curfew: that core has no curfew rule)."""

from __future__ import annotations

import math

from engine import kernels as K


class LateRules:
    """Mixed into ShapelyEngine: needs its ``config``, ``_devices``, ``_counts``,
    ``_event`` and ``_allowed``. Per device, the late state [previous late fix ts, the
    newest in-order ts then, the outbound late run (None: its pair written), previous
    late status ts]."""

    def _late_state(self, d: int) -> list:
        late = self.__dict__.setdefault("_late", {})
        return late.setdefault(d, [None, None, 0, None])

    def _late_prev(self, d: int) -> int | None:
        """The previous late fix's ts while no in-order fix came since, as the kernels
        keep it (newest - it in 31 bits, none once an in-order fix came)."""
        state, newest = self._late_state(d), self._devices[d].last_fix_ts
        if state[0] is None or state[1] - state[0] >= 2**31 or newest != state[1]:
            return None
        return newest - (state[1] - state[0])

    def _late_duplicate(self, d: int, ts: int) -> bool:
        """A late fix with the ts of the device's previous late fix (delivered again)."""
        return self._late_prev(d) == ts

    def _late_status(self, d: int, ts: int, battery: float, strap: int, power: int,
                     out: list) -> None:
        """A status older than the newest: a past tamper, low_battery, power_off episode
        each (a late pair at ts) unless the live one is open; the same late ts again is a
        duplicate."""
        dev, state = self._devices[d], self._late_state(d)
        if state[3] == ts % 2**31:  # (as the kernels: its low 31 bits)
            self._counts["duplicate_statuses"] += 1
            return
        state[3] = ts % 2**31
        self._counts["late_statuses"] += 1
        if strap == 1 and dev.tamper is None:
            out.append(self._event(d, K.T_TAMPER, -1, True, ts, ts, True,
                                   extra={**dev.position, "strap": "open"}))
            out.append(self._event(d, K.T_TAMPER, -1, False, ts, ts, True,
                                   extra={**dev.position, "strap": "ok"}))
        if not math.isnan(battery) and battery <= self.config.rules.battery_low_pct \
                and dev.battery is None:
            for raised in (True, False):
                out.append(self._event(d, K.T_LOW_BATTERY, -1, raised, ts, ts, True,
                                       extra={"battery_pct": battery}))
        if power == 1 and dev.power_off is None:
            for raised in (True, False):
                out.append(self._event(d, K.T_POWER_OFF, -1, raised, ts, ts, True,
                                       extra=dev.position))

    def _late_outbound(self, d: int, s: int, ts: int, lat: float, lon: float, acc: float,
                       margin: float, out: list) -> None:
        """Outbound of a late fix (after its exclusion pairs) over the late run."""
        dev, state = self._devices[d], self._late_state(d)
        prev = self._late_prev(d)
        if prev is None or ts < prev:
            state[2] = 0
        state[0], state[1] = ts, dev.last_fix_ts
        a = self.registry.arrays
        if a.incl_off[s + 1] == a.incl_off[s]:
            return
        dist, inclusion, dists = self._allowed(s, ts, lon, lat)
        if dist == 0.0:
            state[2] = 0
            return
        if dist <= margin or state[2] is None:
            return
        state[2] += 1
        if state[2] < self.config.rules.outbound_confirm_fixes:
            return
        state[2] = None
        if dev.outbound is None:
            z = inclusion[min(range(len(inclusion)), key=lambda i: (dists[i], i))]
            for raised in (True, False):
                out.append(self._event(d, K.T_OUTBOUND, z, raised, ts, ts, True,
                                       (lat, lon, dist, acc)))
