"""The rule kernels: pure ``@njit(cache=True)`` functions over the state arrays.

Arrays in, arrays out; no clock, no I/O, no Python objects. ``now``/receive times are
parameters. The rules (see ``docs/replay.md``) run per device on the fix's own ``ts``,
in arrival order; silence (offline) runs on receive time.

Events are written to two growable 2-D arrays, one row per event:

* ``ev_i`` int64 columns: :data:`EV_DEVICE`, :data:`EV_TYPE`, :data:`EV_ZONE` (-1: none),
  :data:`EV_RAISED` (1 raised, 0 cleared), :data:`EV_AT` (epoch ms),
  :data:`EV_EPISODE` (the episode's raised ``at``: the alarm's identity), :data:`EV_LATE`;
* ``ev_f`` float64 columns: :data:`EF_LAT`, :data:`EF_LON` (WGS-84 degrees),
  :data:`EF_DISTANCE_M`, :data:`EF_ACC_M` (NaN where no evidence applies). The device
  alarms (offline, tamper, low_battery, no_fix, power_off) have no distance: their
  :data:`EF_AUX` (the same column) holds their own number (offline the last receive
  time, no_fix the last fix's receive time, both epoch ms; low_battery the percentage),
  and lat/lon/acc the device's last known position (NaN: never fixed).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from contract.alarms import ALARM_TYPES
from contract.records import K_FIX
from engine.late_state import LATE_BACK_MAX, LATE_STATUS_MASK
from engine.registry import F_CURFEWS, F_KERNEL, F_LEAVES
from engine.relation_kernels import contact_rule, proximity_rule, separation_rule
from engine.state import (
    D_LAST_FIX_RX,
    D_NO_FIX_AT,
    D_NO_FIX_FROM,
    D_POWER_OFF_AT,
    OUT_RUN_MAX,
    P_ACC,
    P_LAT,
    P_LON,
    R_LAST_RX,
    R_NO_FIX_DEADLINE,
    R_OFFLINE_AT,
    R_OFFLINE_DEADLINE,
    X_CURFEW_AT,
    X_CURFEW_END,
    X_CURFEW_RUN,
    X_CURFEW_ZONE,
    X_LAST_TS,
    X_LATE_CF_RUN,
    X_LATE_CF_START,
    X_LV_RUN,
    X_OUT_TYPE,
    X_OWE,
)
from geofence.kernels import (
    CELL_INSIDE,
    KIND_CIRCLE,
    KIND_POLYGON,
    gcj02_to_wgs84_point,
    zone_boundary_distance_m,
    zone_contains,
    zone_distance_m,
)

# Alarm type codes: indices into the shared vocabulary's ALARM_TYPES.
T_OUTBOUND, T_EXCLUSION, T_OFFLINE, T_TAMPER, T_LOW_BATTERY, T_LEAVE_OVERDUE, T_CURFEW = (
    ALARM_TYPES.index(name) for name in ("outbound", "exclusion", "offline", "tamper",
                                         "low_battery", "leave_overdue", "curfew"))
T_NO_FIX, T_POWER_OFF = ALARM_TYPES.index("no_fix"), ALARM_TYPES.index("power_off")
T_APPROACH = ALARM_TYPES.index("approach")

# Record kinds for process_batch: contract.records.K_FIX (imported above) / K_STATUS.

EV_DEVICE, EV_TYPE, EV_ZONE, EV_RAISED, EV_AT, EV_EPISODE, EV_LATE = 0, 1, 2, 3, 4, 5, 6
N_EV_I = 8  # + engine.relation_kernels.EV_PEER (written by the relation rules only)
EF_LAT, EF_LON, EF_DISTANCE_M, EF_ACC_M = 0, 1, 2, 3
EF_AUX = EF_DISTANCE_M  # a device alarm's own number (see the module docstring)
N_EV_F = 7  # + engine.relation_kernels.EF_PEER_LAT/LON/ACC (the relation rules only)

# Counter slots (Engine.counters names them).
C_FIXES, C_STATUSES, C_DUP_FIXES, C_DUP_STATUSES, C_LATE_FIXES, C_LATE_STATUSES = 0, 1, 2, 3, 4, 5
C_UNKNOWN_DEVICE, C_FULL_SWEEPS, C_SETTLED_FIXES, C_GRID_FIXES = 6, 7, 8, 9
N_COUNTERS = 10
COUNTER_NAMES = ("fixes", "statuses", "duplicate_fixes", "duplicate_statuses", "late_fixes",
                 "late_statuses", "unknown_device", "full_sweeps", "settled_fixes", "grid_fixes")

NONE_MS = np.iinfo(np.int64).min
NO_DEADLINE_MS = np.iinfo(np.int64).max
# A zone's bounding box is that of its drawing (for circles a 64-gon inscribed in the exact
# circle); pad it before using it to reject, so a point the exact test calls inside is
# never rejected. 1e-4 degrees is >= 6 m anywhere below 55 degrees of latitude.
BBOX_PAD_DEG = 1e-4
# Settled devices (see _fix_rules): the safe radius is only computed after a move of at
# most this many metres since the previous full evaluation, i.e. for a device that moves
# like a person; a fix that jumps far is evaluated in full and not worth caching.
SETTLE_MAX_MOVE_M = 2000.0
# Use the grid's ring bound (_ring_bound_m) from this many cells away from the
# nearest boundary cell; nearer, the exact ring search is short anyway.
SETTLE_RING_MIN = 3
# Upper bounds used to over-estimate a move in metres from degrees: metres per degree of
# latitude never exceed 111 695 (at the poles), of longitude 111 320 * cos(lat).
_M_PER_DEG_UPPER = 111_700.0


def new_events(capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty event buffers with room for ``capacity`` rows (they grow when full)."""
    capacity = max(int(capacity), 16)
    return np.empty((capacity, N_EV_I), np.int64), np.empty((capacity, N_EV_F), np.float64)


def approach_pads(zone_bbox: np.ndarray, approach_m: float) -> np.ndarray:
    """float64[n_zones, 2]: per zone, the degrees of longitude and latitude to pad its
    bounding box by so that every point within ``approach_m`` metres of the zone is in the
    padded box (plus BBOX_PAD_DEG; with approach_m <= 0 just that). A metre of latitude is
    at most 1/110 574 degree; a metre of longitude at most 1 / (111 319 cos(lat)) at the
    highest latitude the padded box reaches; both taken 1 % larger."""
    pads = np.full((len(zone_bbox), 2), BBOX_PAD_DEG, dtype=np.float64)
    if approach_m <= 0.0 or len(zone_bbox) == 0:
        return pads
    pad_lat = approach_m / 110_574.0 * 1.01
    top = np.minimum(np.maximum(np.abs(zone_bbox[:, 1]), np.abs(zone_bbox[:, 3])) + pad_lat,
                     89.0)
    pads[:, 0] += approach_m / (111_319.0 * np.cos(np.radians(top))) * 1.01
    pads[:, 1] += pad_lat
    return pads


def record_room(ra, rr) -> int:
    """The most event rows one record can write (process_batch's ``room``), for registry
    arrays ``ra`` and relation arrays ``rr``: clearing offline, power_off and no_fix (3),
    the relation rules (2, and one a protected person or contact of the device's slot)
    and the zone rules (5, and two an exclusion zone of the subject); a status writes at
    most 2 + 3 (a late one 2 + 6: three late pairs)."""
    max_excl = int(np.max(np.diff(ra.excl_off))) if len(ra.excl_off) > 1 else 0
    per_slot = np.diff(rr.prox_off) + np.diff(rr.cont_off)
    max_rel = int(np.max(per_slot)) if len(per_slot) else 0
    return 10 + max_rel + 2 * max_excl


@njit(cache=True, _nrt=False)
def _put(ev_i, ev_f, n, device, typ, zone, raised, at, episode, late, lat, lon, dist, acc):
    """Write event row ``n`` (the caller made room: see _room); returns n + 1. Compiled
    without reference counting, like the rule functions that call it."""
    ev_i[n, 0] = device
    ev_i[n, 1] = typ
    ev_i[n, 2] = zone
    ev_i[n, 3] = raised
    ev_i[n, 4] = at
    ev_i[n, 5] = episode
    ev_i[n, 6] = late
    ev_f[n, 0] = lat
    ev_f[n, 1] = lon
    ev_f[n, 2] = dist
    ev_f[n, 3] = acc
    return n + 1


@njit(cache=True)
def _room(ev_i, ev_f, n, need):
    """Event buffers with room for at least ``need`` rows (the first ``n`` kept)."""
    if need <= ev_i.shape[0]:
        return ev_i, ev_f
    cap = max(need, 2 * ev_i.shape[0])
    gi = np.empty((cap, ev_i.shape[1]), np.int64)
    gf = np.empty((cap, ev_f.shape[1]), np.float64)
    gi[:n] = ev_i[:n]
    gf[:n] = ev_f[:n]
    return gi, gf


@njit(cache=True, _nrt=False)
def _in_bbox(bbox, z, lon, lat):
    """Is (lon, lat) within zone ``z``'s bounding box, padded by BBOX_PAD_DEG? Takes the
    bbox array alone: passing the whole ZoneArrays tuple to a helper costs an
    incref/decref of every member per call, more than the test itself."""
    return not (lon < bbox[z, 0] - BBOX_PAD_DEG or lon > bbox[z, 2] + BBOX_PAD_DEG
                or lat < bbox[z, 1] - BBOX_PAD_DEG or lat > bbox[z, 3] + BBOX_PAD_DEG)


@njit(cache=True, _nrt=False, inline="always")
def _near_bbox(bbox, apad, z, lon, lat):
    """Is (lon, lat) within zone ``z``'s bounding box padded by ``apad[z]`` (degrees of
    longitude, latitude: engine.approach_pads, covering every point within approach_m of
    the zone)? False means farther than approach_m from the zone."""
    return not (lon < bbox[z, 0] - apad[z, 0] or lon > bbox[z, 2] + apad[z, 0]
                or lat < bbox[z, 1] - apad[z, 1] or lat > bbox[z, 3] + apad[z, 1])


@njit(cache=True, _nrt=False, inline="always")
def _beyond_circle(za, z, lon, lat, far_m):
    """Is (lon, lat) farther than ``far_m`` metres (>= 0) from zone ``z``, a circle (False
    for a polygon), measured as the exclusion and approach rules measure it
    (zone_distance_m)? Then those rules leave the zone's closed episodes closed: outside,
    and beyond the approach warning's distance."""
    return za.zone_kind[z] == KIND_CIRCLE and zone_distance_m(za, z, lon, lat) > far_m


@njit(cache=True, _nrt=False)
def moved_upper_m(lon0, lat0, lon, lat):
    """An upper bound of the metres between two nearby WGS-84 points (equirectangular with
    the larger metres-per-degree of both latitudes, +0.1 % and +0.5 m): safe to compare
    with a zone's metric boundary distance."""
    dlat = abs(lat - lat0) * _M_PER_DEG_UPPER
    dlon = abs(lon - lon0)
    if dlon > 180.0:
        dlon = 360.0 - dlon
    a = min(abs(lat), abs(lat0))
    dx = dlon * _M_PER_DEG_UPPER * math.cos(math.radians(a))
    return math.sqrt(dx * dx + dlat * dlat) * 1.001 + 0.5


@njit(cache=True, _nrt=False)
def _ring_bound_m(grid_shape, grid_origin, grid_inv_cell, grid_cell_offsets, cell_ring,
                  grid_cell_min_m, z, lon, lat):
    """A lower bound of the metres from (lon, lat) to polygon zone ``z``'s boundary from the
    zone's grid, or -1 where it gives none worth having (circles, off the grid, within
    SETTLE_RING_MIN cells of a boundary cell: there the exact ring search is short).

    The grid knows how many cells away (Chebyshev) the nearest cell holding an edge is,
    and a cell is at least ``grid_cell_min_m`` wide and high, so the boundary is at least
    (ring - 1) cells away.
    """
    nx = grid_shape[z, 0]
    if nx <= 0:
        return -1.0
    ny = grid_shape[z, 1]
    fx = (lon - grid_origin[z, 0]) * grid_inv_cell[z, 0]
    fy = (lat - grid_origin[z, 1]) * grid_inv_cell[z, 1]
    if fx >= 0.0 and fy >= 0.0 and fx < nx and fy < ny:
        r = cell_ring[grid_cell_offsets[z] + int(fy) * nx + int(fx)]
        if r >= SETTLE_RING_MIN:
            return (r - 1) * grid_cell_min_m[z]
    return -1.0


@njit(cache=True, _nrt=False)
def _cell_inside(zone_kind, bbox, grid_shape, grid_origin, grid_inv_cell, grid_cell_offsets,
                 cell_state, z, lon, lat):
    """True when the grid alone says (lon, lat) is inside polygon zone ``z``: within its
    bounding box, in a cell with no edge that is inside. Exactly the first steps of
    geofence's ``_polygon_contains`` (same bbox test, same clamped cell), so True here
    means ``zone_contains`` is True; False means "ask zone_contains" (a circle, a boundary
    cell, or outside)."""
    if zone_kind[z] != KIND_POLYGON:
        return False
    if lon < bbox[z, 0] or lon > bbox[z, 2] or lat < bbox[z, 1] or lat > bbox[z, 3]:
        return False
    nx = grid_shape[z, 0]
    ny = grid_shape[z, 1]
    f = (lon - grid_origin[z, 0]) * grid_inv_cell[z, 0]
    ix = 0 if not f >= 0.0 else (nx - 1 if f >= nx else int(f))
    f = (lat - grid_origin[z, 1]) * grid_inv_cell[z, 1]
    iy = 0 if not f >= 0.0 else (ny - 1 if f >= ny else int(f))
    return cell_state[grid_cell_offsets[z] + iy * nx + ix] == CELL_INSIDE


@njit(cache=True, _nrt=False)
def _next_leave_change_ms(ra, s, ts):
    """The first time after ``ts`` at which subject ``s``'s set of active leaves or curfew
    windows changes (windows: those of the engine's current horizon; the engine drops
    every settled cache when it moves the horizon)."""
    nxt = NO_DEADLINE_MS
    for lv in range(ra.leave_off[s], ra.leave_off[s + 1]):
        start = ra.leave_start_ms[lv]
        end = ra.leave_end_ms[lv]
        if start > ts and start < nxt:
            nxt = start
        if end >= ts and end + 1 < nxt:
            nxt = end + 1
    for w in range(ra.cw_off[s], ra.cw_off[s + 1]):
        start = ra.cw[w, 0]
        if start > ts and start < nxt:
            nxt = start
        if ra.cw[w, 1] > ts and ra.cw[w, 1] < nxt:
            nxt = ra.cw[w, 1]
    return nxt


@njit(cache=True)
def _sweep_into(st, now, ev_i, ev_f, n, counters):
    """Raise ``no_fix`` for every device whose no-fix count ran out before ``now`` while
    it kept sending (a message received after the count started, and its offline
    deadline after the moment the count ran out: a silent device is offline, not no_fix),
    then ``offline`` for every device whose offline deadline (last receive +
    offline_after) is before ``now``; each in device order. A device with an open
    power_off raises neither (it said it was switching off), and its deadlines are
    dropped. O(1) while ``now`` has not passed the floor (a lower bound of all
    deadlines); otherwise one pass over ``deadline_ms`` (per device the earlier of both
    deadlines) that collects the due devices and recomputes the floor, then the raises.

    The no-fix count runs from the later of its start (D_NO_FIX_FROM) and the newest
    fix's receive time (D_LAST_FIX_RX): a fix only writes the latter, and a deadline
    found due is first moved on by the newer fix (by the same no_fix_after: the old
    deadline minus the old start). The pass reads one array and writes only the list of
    due devices (:func:`_sweep_due`); the raises (:func:`_sweep_raises`) then read and
    write each due device's row (``DeviceState.device_row``, one cache line) and its last
    position, in a short loop whose cache misses overlap. Both loops run without
    reference counting; this function grows the list and the event buffers between
    them."""
    if now <= st.floor_ms[0]:
        return ev_i, ev_f, n
    counters[C_FULL_SWEEPS] += 1
    due = np.empty(1024, np.int64)
    d, m, floor = _sweep_due(st.deadline_ms, now, due, 0, 0, NO_DEADLINE_MS)
    while d < st.deadline_ms.shape[0]:  # the list is full: twice as long, and on
        grown = np.empty(2 * due.shape[0], np.int64)
        grown[:m] = due[:m]
        due = grown
        d, m, floor = _sweep_due(st.deadline_ms, now, due, d, m, floor)
    ev_i, ev_f = _room(ev_i, ev_f, n, n + 2 * m)  # at most no_fix and offline a device
    n, floor = _sweep_raises(st.deadline_ms, st.device_row, st.last_pos, now, due, m,
                             ev_i, ev_f, n, floor)
    st.floor_ms[0] = floor
    return ev_i, ev_f, n


@njit(cache=True, _nrt=False)
def _sweep_due(deadline, now, due, d0, m, floor):
    """_sweep_into's pass from device ``d0``: appends each device whose ``deadline`` is
    before ``now`` to ``due`` (``m`` there already), and lowers ``floor`` to every other
    deadline; returns (device, m, floor): device ``deadline.shape[0]`` when done,
    otherwise the first one not looked at (``due`` is full)."""
    cap = due.shape[0]
    for d in range(d0, deadline.shape[0]):
        dl = deadline[d]
        if dl < now:
            if m >= cap:
                return d, m, floor
            due[m] = d
            m += 1
        elif dl < floor:
            floor = dl
    return deadline.shape[0], m, floor


@njit(cache=True, _nrt=False)
def _sweep_raises(deadline, row, pos, now, due, m, ev_i, ev_f, n, floor):
    """_sweep_into's raises for the ``m`` devices in ``due`` (in device order): first
    every no_fix, then every offline, as two passes over all devices would give them;
    each device's sweep deadline becomes the earlier of what is left, lowering
    ``floor``. Returns (n, floor); the caller made room for 2 * m rows.

    ``deadline`` is the earlier of the row's offline deadline and its no-fix deadline;
    where it is before the no-fix deadline, it is the offline deadline (taken from it:
    the row's column is then rewritten with the same number)."""
    for k in range(m):
        d = due[k]
        nd = row[d, R_NO_FIX_DEADLINE]
        if deadline[d] < nd:
            row[d, R_OFFLINE_DEADLINE] = deadline[d]
        if nd < now:
            start = row[d, D_NO_FIX_FROM]
            if row[d, D_LAST_FIX_RX] > start:  # a newer fix restarted the count
                nd += row[d, D_LAST_FIX_RX] - start
                start = row[d, D_LAST_FIX_RX]
                row[d, D_NO_FIX_FROM] = start
                row[d, R_NO_FIX_DEADLINE] = nd
            if nd < now:
                # The count ran out: no_fix if the device kept sending (heard after the
                # count started, not silent at nd) and is not powered off; the count
                # stops anyway.
                if (nd < row[d, R_OFFLINE_DEADLINE] and row[d, R_LAST_RX] > start
                        and row[d, D_POWER_OFF_AT] == NONE_MS):
                    n = _device_raise(row, pos, d, T_NO_FIX, nd, ev_i, ev_f, n)
                row[d, R_NO_FIX_DEADLINE] = NO_DEADLINE_MS
                row[d, D_NO_FIX_FROM] = NONE_MS
    for k in range(m):
        d = due[k]
        dl = row[d, R_OFFLINE_DEADLINE]
        if dl < now:  # silence = now - last_rx > offline_after
            if row[d, D_POWER_OFF_AT] == NONE_MS:
                n = _device_raise(row, pos, d, T_OFFLINE, dl, ev_i, ev_f, n)
            row[d, R_OFFLINE_DEADLINE] = NO_DEADLINE_MS
            # Silence stops the no-fix count (a message after it starts a new one).
            row[d, R_NO_FIX_DEADLINE] = NO_DEADLINE_MS
            row[d, D_NO_FIX_FROM] = NONE_MS
        dl = min(row[d, R_OFFLINE_DEADLINE], row[d, R_NO_FIX_DEADLINE])
        deadline[d] = dl
        floor = min(floor, dl)
    return n, floor


@njit(cache=True, _nrt=False)
def _device_raise(row, pos, d, typ, at, ev_i, ev_f, n):
    """Raise the sweep's ``typ`` (T_NO_FIX or T_OFFLINE) for device ``d`` at ``at``, with
    the last position and its own number (last fix's resp. last message's receive time);
    returns n (the caller made room). Takes the arrays it needs, not the state."""
    if typ == T_NO_FIX:
        row[d, D_NO_FIX_AT] = at
        lf = row[d, D_LAST_FIX_RX]
        aux = np.nan if lf == NONE_MS else float(lf)
    else:
        row[d, R_OFFLINE_AT] = at
        aux = float(row[d, R_LAST_RX])
    return _put(ev_i, ev_f, n, d, typ, -1, 1, at, at, 0, pos[d, P_LAT], pos[d, P_LON], aux,
                pos[d, P_ACC])


@njit(cache=True)
def sweep(st, now, ev_i, ev_f, counters):
    """Offline sweep at receive-clock ``now`` (epoch ms); returns (ev_i, ev_f, n_events)."""
    return _sweep_into(st, now, ev_i, ev_f, 0, counters)


# The fix rules as tables in the style of Tile38's fence.go: each rule is a small
# function of (state before, observation now) -> (state after, action), and every path
# that applies a rule calls that function (the grid path of process_batch included).
# The rule functions below are inlined into their caller by numba (inline="always"): a
# call that is not inlined passes the state, registry and zone NamedTuples flattened into
# hundreds of scalars, and splitting _fix_rules into plain calls cost ~15 % of the
# scattered-fix throughput (benchmarks/README.md, "Restructure").
# Observations of a fix against a zone (or against the allowed region of a subject):
OBS_IN = 0         # inside (distance 0)
OBS_NEAR = 1       # outside, within the margin max(acc, buffer_m): uncertain
OBS_OUT = 2        # outside, beyond the margin
# Actions a rule asks for:
ACT_NONE, ACT_RAISE, ACT_CLEAR = 0, 1, 2


@njit(cache=True, _nrt=False, inline="always")
def observe(dist_m, margin_m):
    """The observation for a distance (metres; 0 inside) and a margin (metres, > 0: the
    wire contract's ``acc`` is > 0)."""
    if dist_m <= 0.0:
        return OBS_IN
    if dist_m > margin_m:
        return OBS_OUT
    return OBS_NEAR


@njit(cache=True, _nrt=False, inline="always")
def outbound_step(open_at_ms, out_run, obs, confirm):
    """The outbound rule, for one in-order fix: ``(open_at_ms, out_run, obs)`` ->
    ``(out_run after, action)``. ``open_at_ms`` is the open episode's raised ``at``
    (NONE_MS: none open), ``out_run`` the run of out fixes so far.

    ====================  =====================  ======================================
    observation            run after              action
    ====================  =====================  ======================================
    in                     0                      clear, if an episode is open
    near (uncertain)       unchanged              none
    out                    run + 1 (saturating)   raise, if run after >= confirm and
                                                  no episode is open
    ====================  =====================  ======================================
    """
    if obs == OBS_IN:
        return 0, (ACT_CLEAR if open_at_ms != NONE_MS else ACT_NONE)
    if obs == OBS_NEAR:
        return out_run, ACT_NONE
    if out_run < OUT_RUN_MAX:
        out_run += 1
    if out_run >= confirm and open_at_ms == NONE_MS:
        return out_run, ACT_RAISE
    return out_run, ACT_NONE


@njit(cache=True, _nrt=False, inline="always")
def exclusion_step(open_at_ms, obs):
    """The exclusion rule, for one in-order fix and one exclusion zone: ``(open_at_ms,
    obs)`` -> action. Raised at once inside; cleared only beyond the margin.

    ============  ===========  ===========  ============
    open?          in           near         out
    ============  ===========  ===========  ============
    no             raise        none         none
    yes            none         none         clear
    ============  ===========  ===========  ============
    """
    if open_at_ms == NONE_MS:
        return ACT_RAISE if obs == OBS_IN else ACT_NONE
    return ACT_CLEAR if obs == OBS_OUT else ACT_NONE


@njit(cache=True, _nrt=False, inline="always")
def approach_step(open_at_ms, dist_m, margin_m, warn_m):
    """The approach warning, for one in-order fix outside the zone (``dist_m`` metres from
    it, > 0 unless on its boundary) whose violation rule is closed: ``(open_at_ms, dist_m)``
    -> action. Raised when the fix is beyond the margin max(acc, buffer_m) (the band in
    which the violation rule's answer is uncertain) but within ``warn_m``; cleared beyond
    ``warn_m`` plus the margin (hysteresis); otherwise unchanged.

    ============  ====================  ======================  ====================
    open?          dist <= margin        margin < dist <= warn    warn + margin < dist
    ============  ====================  ======================  ====================
    no             none                  raise                   none
    yes            none                  none                    clear
    ============  ====================  ======================  ====================
    """
    if open_at_ms == NONE_MS:
        return ACT_RAISE if margin_m < dist_m <= warn_m else ACT_NONE
    return ACT_CLEAR if dist_m > warn_m + margin_m else ACT_NONE


@njit(cache=True, _nrt=False, inline="always")
def _contains(za, bbox, z, lon, lat):
    """Zone ``z`` contains (lon, lat): padded bbox first, then the exact test."""
    return _in_bbox(bbox, z, lon, lat) and zone_contains(za, z, lon, lat)


@njit(cache=True, _nrt=False, inline="always")
def _exclusion_rules(st, ra, za, d, s, ts, lon, lat, acc, margin, late, approach_m, apad,
                     ev_i, ev_f, n):
    """The exclusion rule over every exclusion zone of subject ``s`` for one fix of
    device ``d``, with its approach warning (``approach_m`` > 0); returns (n, settled):
    settled is False when an open episode's zone is near (the next fix may clear it) or
    a warning is open. A late fix only tells of a past visit: raised and cleared at its
    ts, state untouched, no warning. Only what the state needs is measured: a closed zone
    asks containment (and distance when the fix is within its approach-padded bbox), an
    open one distance. A raise clears an open warning of the zone first (at the same ts):
    the violation supersedes it."""
    settled = True
    bbox = za.zone_bbox
    e0 = ra.excl_off[s]
    slot0 = ra.device_slot_off[d]
    for k in range(ra.excl_off[s + 1] - e0):
        z = ra.excl_zone[e0 + k]
        slot = slot0 + k
        if late:
            if _contains(za, bbox, z, lon, lat):
                n = _put(ev_i, ev_f, n, d, T_EXCLUSION, z, 1, ts, ts, 1, lat, lon, 0.0, acc)
                n = _put(ev_i, ev_f, n, d, T_EXCLUSION, z, 0, ts, ts, 1, lat, lon, 0.0, acc)
            continue
        ep = st.exclusion_at_ms[slot]
        dz = 0.0
        if ep == NONE_MS:
            obs = OBS_IN if _contains(za, bbox, z, lon, lat) else OBS_OUT
            ap = st.approach_at_ms[slot]
            if obs == OBS_IN and ap != NONE_MS:  # superseded by the violation
                st.approach_at_ms[slot] = NONE_MS
                n = _put(ev_i, ev_f, n, d, T_APPROACH, z, 0, ts, ap, 0, lat, lon, 0.0, acc)
            elif obs == OBS_OUT and approach_m > 0.0 and (
                    ap != NONE_MS or _near_bbox(bbox, apad, z, lon, lat)):
                n, quiet = _approach(st.approach_at_ms, slot, d, z, ts, lon, lat, acc,
                                     zone_distance_m(za, z, lon, lat), margin, approach_m,
                                     ev_i, ev_f, n)
                settled = settled and quiet
        else:
            dz = zone_distance_m(za, z, lon, lat)
            obs = observe(dz, margin)
            if obs == OBS_NEAR:
                settled = False
        act = exclusion_step(ep, obs)
        if act == ACT_RAISE:
            st.exclusion_at_ms[slot] = ts
            n = _put(ev_i, ev_f, n, d, T_EXCLUSION, z, 1, ts, ts, 0, lat, lon, 0.0, acc)
        elif act == ACT_CLEAR:
            st.exclusion_at_ms[slot] = NONE_MS
            n = _put(ev_i, ev_f, n, d, T_EXCLUSION, z, 0, ts, ep, 0, lat, lon, dz, acc)
            if approach_m > 0.0:  # out of the zone, maybe still near it
                n, quiet = _approach(st.approach_at_ms, slot, d, z, ts, lon, lat, acc, dz,
                                     margin, approach_m, ev_i, ev_f, n)
                settled = settled and quiet
    return n, settled


@njit(cache=True, _nrt=False, inline="always")
def _approach(at_ms, k, d, z, ts, lon, lat, acc, dist, margin, warn_m, ev_i, ev_f, n):
    """Apply approach_step to warning slot ``at_ms[k]`` (zone ``z``) for a fix ``dist``
    metres outside the zone (or inside, for the border: from its boundary); returns (n,
    quiet): quiet is False while the warning is open."""
    ap = at_ms[k]
    act = approach_step(ap, dist, margin, warn_m)
    if act == ACT_RAISE:
        at_ms[k] = ts
        n = _put(ev_i, ev_f, n, d, T_APPROACH, z, 1, ts, ts, 0, lat, lon, dist, acc)
    elif act == ACT_CLEAR:
        at_ms[k] = NONE_MS
        n = _put(ev_i, ev_f, n, d, T_APPROACH, z, 0, ts, ap, 0, lat, lon, dist, acc)
    return n, at_ms[k] == NONE_MS


@njit(cache=True, _nrt=False, inline="always")
def _allowed_contains(ra, za, s, ts, lon, lat):
    """The first zone of subject ``s``'s allowed region at ``ts`` (inclusion zones, then
    the zones of leaves active at ts) that contains (lon, lat), or -1."""
    bbox = za.zone_bbox
    for j in range(ra.incl_off[s], ra.incl_off[s + 1]):
        if _contains(za, bbox, ra.incl_zone[j], lon, lat):
            return ra.incl_zone[j]
    for lv in range(ra.leave_off[s], ra.leave_off[s + 1]):
        if ra.leave_start_ms[lv] <= ts <= ra.leave_end_ms[lv]:
            for j in range(ra.leave_zone_off[lv], ra.leave_zone_off[lv + 1]):
                if _contains(za, bbox, ra.leave_zone[j], lon, lat):
                    return ra.leave_zone[j]
    return -1


@njit(cache=True, _nrt=False, inline="always")
def _allowed_distance(ra, za, s, ts, lon, lat):
    """(metres to subject ``s``'s allowed region at ``ts``, the nearest inclusion zone):
    the minimum over inclusion zones and the zones of leaves active at ts; the zone
    named is always an inclusion zone (ties keep the first listed for the subject)."""
    dist = np.inf
    nearest = -1
    for j in range(ra.incl_off[s], ra.incl_off[s + 1]):
        dz = zone_distance_m(za, ra.incl_zone[j], lon, lat)
        if dz < dist:  # strict: ties keep the first zone listed for the subject
            dist = dz
            nearest = ra.incl_zone[j]
    for lv in range(ra.leave_off[s], ra.leave_off[s + 1]):
        if ra.leave_start_ms[lv] <= ts <= ra.leave_end_ms[lv]:
            for j in range(ra.leave_zone_off[lv], ra.leave_zone_off[lv + 1]):
                dist = min(dist, zone_distance_m(za, ra.leave_zone[j], lon, lat))
    return dist, nearest


@njit(cache=True, _nrt=False, inline="always")
def _outbound_rule(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm, overdue, ev_i, ev_f,
                   n):
    """The outbound rule for one in-order fix of device ``d`` (subject ``s``, which has
    inclusion zones); returns (n, the allowed zone containing the fix or -1, the
    observation). Containment first: the common case is "inside", and it needs no
    distance at all. On the boundary (containment says no, distance says 0) the fix is
    in, but no zone contains it. ``overdue`` (a leave ended and the device has not been
    in since: _scheduled_rules) makes a raise ``leave_overdue`` at the subject's first
    inclusion zone instead of ``outbound``; the episode's type is kept in ext, so it
    clears as what it was raised as."""
    inside_zone = _allowed_contains(ra, za, s, ts, lon, lat)
    dist = 0.0
    nearest = -1
    if inside_zone < 0:
        dist, nearest = _allowed_distance(ra, za, s, ts, lon, lat)
    ep = st.outbound_at_ms[d]
    obs = observe(dist, margin)
    run, act = outbound_step(ep, st.out_run[d], obs, confirm)
    st.out_run[d] = run
    if act == ACT_RAISE:
        typ = T_OUTBOUND
        if overdue:
            typ = T_LEAVE_OVERDUE
            nearest = ra.incl_zone[ra.incl_off[s]]
        st.outbound_at_ms[d] = ts
        st.outbound_zone[d] = nearest
        if overdue:  # (0 otherwise: every leave_overdue clear resets it)
            st.ext[st.ext_row[d], X_OUT_TYPE] = 1
        n = _put(ev_i, ev_f, n, d, typ, nearest, 1, ts, ts, 0, lat, lon, dist, acc)
    elif act == ACT_CLEAR:
        st.outbound_at_ms[d] = NONE_MS
        typ = T_OUTBOUND
        if st.ext[st.ext_row[d], X_OUT_TYPE] == 1:
            typ = T_LEAVE_OVERDUE
            st.ext[st.ext_row[d], X_OUT_TYPE] = 0
        n = _put(ev_i, ev_f, n, d, typ, st.outbound_zone[d], 0, ts, ep, 0,
                 lat, lon, 0.0, acc)
    return n, inside_zone, obs


@njit(cache=True, _nrt=False, inline="always")
def _run_step(run, obs):
    """A run of out fixes after one observation: in resets it, near keeps it."""
    if obs == OBS_IN:
        return 0
    if obs == OBS_OUT and run < OUT_RUN_MAX:
        return run + 1
    return run


@njit(cache=True, _nrt=False)
def _leave_active(ra, s, ts):
    for lv in range(ra.leave_off[s], ra.leave_off[s + 1]):
        if ra.leave_start_ms[lv] <= ts <= ra.leave_end_ms[lv]:
            return True
    return False


@njit(cache=True, _nrt=False)
def _leave_rules(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm, ev_i, ev_f, n):
    """Outbound with leave_overdue for one in-order fix of a subject with leaves and
    inclusion zones; returns (n, inside zone or -1, settle allowed).

    A leave *ends* at E = min(end, returned) (its window is [start, E]). When this fix is
    the first since E (the last evaluated one was at or before E, or there was none), the
    device owes a return (X_OWE = E): until a fix is *in*, an out episode it raises is
    ``leave_overdue``. If the run of out fixes against the inclusion zones alone (X_LV_RUN)
    had reached the confirmation count at the last fix before E, and no other leave is
    open just after E, ``leave_overdue`` is raised at E itself (evidence: this fix). The
    out run then continues from that run. While a leave is open a device settles only
    inside an inclusion zone, so every other fix of a leave keeps X_LV_RUN.
    """
    x = st.ext
    xr = st.ext_row[d]  # the device's row (engine.state: 0 for none, never written)
    prev = x[xr, X_LAST_TS]
    ended = NONE_MS
    for lv in range(ra.leave_off[s], ra.leave_off[s + 1]):
        e = ra.leave_end_ms[lv]
        if e >= ra.leave_start_ms[lv] and e < ts and (prev == NONE_MS or prev <= e) \
                and e > ended:
            ended = e
    if ended != NONE_MS:
        x[xr, X_OWE] = ended
        run = x[xr, X_LV_RUN]
        st.out_run[d] = run
        if (run >= confirm and st.outbound_at_ms[d] == NONE_MS
                and not _leave_active(ra, s, ended + 1)):
            z = ra.incl_zone[ra.incl_off[s]]
            dist, _ = _allowed_distance(ra, za, s, ts, lon, lat)
            st.outbound_at_ms[d] = ended
            st.outbound_zone[d] = z
            x[xr, X_OUT_TYPE] = 1
            n = _put(ev_i, ev_f, n, d, T_LEAVE_OVERDUE, z, 1, ended, ended, 0, lat, lon,
                     dist, acc)
    n, inside_zone, obs = _outbound_rule(st, ra, za, d, s, ts, lon, lat, acc, margin,
                                         confirm, x[xr, X_OWE] != NONE_MS, ev_i, ev_f, n)
    if obs == OBS_IN:
        x[xr, X_OWE] = NONE_MS
    on_leave = _leave_active(ra, s, ts)
    if on_leave:  # the run against the inclusion zones alone
        dist = np.inf
        for j in range(ra.incl_off[s], ra.incl_off[s + 1]):
            dist = min(dist, zone_distance_m(za, ra.incl_zone[j], lon, lat))
        obs = observe(dist, margin)
    x[xr, X_LV_RUN] = _run_step(x[xr, X_LV_RUN], obs)
    # Settling keeps every containment answer of inside_zone, which is an inclusion zone
    # when the fix is in one (they are tried first): the run against them stays 0.
    return n, inside_zone, not on_leave or obs == OBS_IN


@njit(cache=True, _nrt=False)
def _curfew_rule(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm, ev_i, ev_f, n):
    """The curfew rule for one in-order fix of a subject with curfews; returns (n, settle
    allowed). An open episode whose window has ended (ts >= its end) clears first, ``at``
    = the window's end (evidence: none). Then within the open episode's window, or else
    the first window with start <= ts < end: the outbound table against that window's
    zone (runs count from the window's start). No settling inside a window."""
    x = st.ext
    xr = st.ext_row[d]  # the device's row (engine.state: 0 for none, never written)
    nan = np.nan
    ep = x[xr, X_CURFEW_AT]
    if ep != NONE_MS and ts >= x[xr, X_CURFEW_END]:
        n = _put(ev_i, ev_f, n, d, T_CURFEW, x[xr, X_CURFEW_ZONE], 0, x[xr, X_CURFEW_END], ep,
                 0, nan, nan, nan, nan)
        x[xr, X_CURFEW_AT] = NONE_MS
        x[xr, X_CURFEW_RUN] = 0
        ep = NONE_MS
    z = -1
    end = NONE_MS
    if ep != NONE_MS:
        z = x[xr, X_CURFEW_ZONE]
        end = x[xr, X_CURFEW_END]
    else:
        for w in range(ra.cw_off[s], ra.cw_off[s + 1]):
            if ra.cw[w, 0] <= ts < ra.cw[w, 1]:
                z = ra.cw[w, 2]
                end = ra.cw[w, 1]
                if x[xr, X_LAST_TS] == NONE_MS or x[xr, X_LAST_TS] < ra.cw[w, 0]:
                    x[xr, X_CURFEW_RUN] = 0  # the window's first fix: a new run
                break
    if z < 0:
        x[xr, X_CURFEW_RUN] = 0
        return n, True
    dist = zone_distance_m(za, z, lon, lat)
    run, act = outbound_step(ep, x[xr, X_CURFEW_RUN], observe(dist, margin), confirm)
    x[xr, X_CURFEW_RUN] = run
    if act == ACT_RAISE:
        x[xr, X_CURFEW_AT] = ts
        x[xr, X_CURFEW_END] = end
        x[xr, X_CURFEW_ZONE] = z
        n = _put(ev_i, ev_f, n, d, T_CURFEW, z, 1, ts, ts, 0, lat, lon, dist, acc)
    elif act == ACT_CLEAR:
        x[xr, X_CURFEW_AT] = NONE_MS
        n = _put(ev_i, ev_f, n, d, T_CURFEW, z, 0, ts, ep, 0, lat, lon, 0.0, acc)
    return n, False


@njit(cache=True, _nrt=False)
def _scheduled_rules(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm, ev_i, ev_f, n):
    """The rules of a subject with leaves or curfews (RegistryArrays.subject_flags), for
    one in-order fix: outbound (with leave_overdue for a subject with leaves), then
    curfew. Returns (n, inside zone or -1, settle allowed). Not inlined: the common path
    never calls it, and its code stays out of _fix_rules."""
    flags = ra.subject_flags[s]
    inside_zone = -1
    quiet = True
    if ra.incl_off[s + 1] > ra.incl_off[s]:
        if flags & F_LEAVES:
            n, inside_zone, quiet = _leave_rules(st, ra, za, d, s, ts, lon, lat, acc, margin,
                                                 confirm, ev_i, ev_f, n)
        else:
            n, inside_zone, _ = _outbound_rule(st, ra, za, d, s, ts, lon, lat, acc, margin,
                                               confirm, False, ev_i, ev_f, n)
        quiet = quiet and inside_zone >= 0
    if flags & F_CURFEWS:
        n, free = _curfew_rule(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm,
                               ev_i, ev_f, n)
        quiet = quiet and free
    st.ext[st.ext_row[d], X_LAST_TS] = ts
    return n, inside_zone, quiet


@njit(cache=True, _nrt=False, inline="always")
def _settle(st, ra, za, d, s, ts, lon, lat, inside_zone, approach_m, border_m):
    """Remember this position of a settled device and how far it may move before any
    rule's answer could change (see _fix_rules): the smallest lower bound of the metres
    to the boundary of an exclusion zone or of ``inside_zone`` (-1: none), less the
    warning distance where a warning could be raised (``approach_m`` for a closed
    exclusion zone, ``border_m`` for the inclusion zones, each when > 0; with the border
    warning on, every inclusion zone's boundary counts: crossing one may change which
    zone is the first to contain the fix). Not after a
    move of more than SETTLE_MAX_MOVE_M (the safe radius is then -1: no cache)."""
    safe = -1.0
    near_lon = st.near_lon[d]
    if math.isnan(near_lon) or moved_upper_m(near_lon, st.near_lat[d], lon, lat) \
            <= SETTLE_MAX_MOVE_M:
        safe = np.inf
        gs, go, gi = za.grid_shape, za.grid_origin, za.grid_inv_cell
        gc, cr, cm = za.grid_cell_offsets, za.cell_ring, za.grid_cell_min_m
        e0 = ra.excl_off[s]
        n_excl = ra.excl_off[s + 1] - e0
        for k in range(n_excl + 1):
            z = ra.excl_zone[e0 + k] if k < n_excl else inside_zone
            if z < 0:
                continue
            b = _ring_bound_m(gs, go, gi, gc, cr, cm, z, lon, lat)
            if b < 0.0:
                b = zone_boundary_distance_m(za, z, lon, lat)
            if k < n_excl:
                if approach_m > 0.0 and st.exclusion_at_ms[ra.device_slot_off[d] + k] == NONE_MS:
                    b -= approach_m
            elif border_m > 0.0:
                b -= border_m
            safe = min(safe, b)
        if border_m > 0.0:  # which inclusion zone is the first to contain the fix may change
            for j in range(ra.incl_off[s], ra.incl_off[s + 1]):
                z = ra.incl_zone[j]
                b = _ring_bound_m(gs, go, gi, gc, cr, cm, z, lon, lat)
                if b < 0.0:
                    b = zone_boundary_distance_m(za, z, lon, lat)
                safe = min(safe, b - border_m)
        st.safe_until_ms[d] = _next_leave_change_ms(ra, s, ts)
    st.safe_m[d] = safe
    st.near_lon[d] = lon
    st.near_lat[d] = lat


@njit(cache=True, _nrt=False)
def _border_rule(st, ra, za, d, s, ts, lon, lat, acc, margin, border_m, inside_zone, n0,
                 ev_i, ev_f, n):
    """The inclusion-border warning (``approach`` at an inclusion zone) for one in-order
    fix, after the outbound rule wrote rows ``n0 .. n``; returns (n, quiet).

    Inside an inclusion zone (``inside_zone``, the first that contains the fix), the
    metres to that zone's boundary go through approach_step with ``border_m``; an open
    warning is measured against the zone the fix is in. A fix in no inclusion zone
    changes nothing, unless the outbound rule opened an episode (outbound or
    leave_overdue) on it: the warning is then cleared at that episode's at, its row put
    just before the raise (superseded)."""
    bp = st.border_at_ms[d]
    incl = False
    for j in range(ra.incl_off[s], ra.incl_off[s + 1]):
        if ra.incl_zone[j] == inside_zone:
            incl = True
    if incl:
        b = zone_boundary_distance_m(za, inside_zone, lon, lat)
        if bp == NONE_MS:
            st.border_zone[d] = inside_zone
        z = st.border_zone[d]
        return _approach(st.border_at_ms, d, d, z, ts, lon, lat, acc, b, margin, border_m,
                         ev_i, ev_f, n)
    if bp == NONE_MS:
        return n, True
    for r in range(n0, n):
        if ev_i[r, EV_DEVICE] == d and ev_i[r, EV_RAISED] == 1 and (
                ev_i[r, EV_TYPE] == T_OUTBOUND or ev_i[r, EV_TYPE] == T_LEAVE_OVERDUE):
            for q in range(n, r, -1):  # make room at r (the caller made room for n + 1)
                for c in range(N_EV_I):
                    ev_i[q, c] = ev_i[q - 1, c]
                for c in range(N_EV_F):
                    ev_f[q, c] = ev_f[q - 1, c]
            _put(ev_i, ev_f, r, d, T_APPROACH, st.border_zone[d], 0, ev_i[r + 1, EV_AT], bp,
                 0, lat, lon, ev_f[r + 1, EF_DISTANCE_M], acc)
            st.border_at_ms[d] = NONE_MS
            return n + 1, True
    return n, False


@njit(cache=True, _nrt=False)
def _fix_rules(st, ra, za, d, ts, lon, lat, acc, late, buffer_m, confirm, approach_m,
               border_m, apad, ev_i, ev_f, n):
    """Exclusion and outbound rules for one fix (WGS-84 ``lon``/``lat``, ``acc`` metres),
    then the settled-device cache.

    Settled devices: after a full evaluation that leaves the device *settled* (inside its
    allowed region, and for every exclusion zone either outside and closed or inside and
    open), the kernel stores the fix position and a safe radius: a lower bound of the
    metric distance from it to the boundary of any zone that decided something. A later
    in-order fix closer than that to the stored position (by an over-estimate) must get
    the same answer from every containment test, and a settled device's rules then change
    nothing; so it is answered without touching a polygon, until a leave window opens or
    closes (that test is in process_batch, before this function is called).
    """
    s = ra.device_subject[d]
    margin = max(acc, buffer_m)
    n, settled = _exclusion_rules(st, ra, za, d, s, ts, lon, lat, acc, margin, late,
                                  approach_m, apad, ev_i, ev_f, n)
    if late:
        return _late_fix_rules(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm,
                               ev_i, ev_f, n)
    n0 = n
    inside_zone = -1
    if ra.subject_flags[s] & F_KERNEL:  # leaves or curfews: the scheduled rules
        n, inside_zone, quiet = _scheduled_rules(st, ra, za, d, s, ts, lon, lat, acc, margin,
                                                 confirm, ev_i, ev_f, n)
        settled = settled and quiet
    elif ra.incl_off[s + 1] > ra.incl_off[s]:  # a subject without inclusion zones: no rule
        n, inside_zone, _ = _outbound_rule(st, ra, za, d, s, ts, lon, lat, acc, margin,
                                           confirm, False, ev_i, ev_f, n)
        settled = settled and inside_zone >= 0
    if border_m > 0.0 and ra.incl_off[s + 1] > ra.incl_off[s]:
        n, quiet = _border_rule(st, ra, za, d, s, ts, lon, lat, acc, margin, border_m,
                                inside_zone, n0, ev_i, ev_f, n)
        settled = settled and quiet
    if settled:
        _settle(st, ra, za, d, s, ts, lon, lat, inside_zone, approach_m, border_m)
    else:
        st.safe_m[d] = -1.0
        st.near_lon[d] = lon
        st.near_lat[d] = lat
    return n


@njit(cache=True, _nrt=False, inline="always")
def late_step(run, obs, confirm):
    """A late run (docs/rules.md, "Duplicates and late messages") after one late fix:
    ``(run, obs)`` -> ``(run after, raise?)``. In resets it, near keeps it, out counts
    (saturating); the out fix that brings it to ``confirm`` raises, and the run is then
    -1 (its pair written) until an in fix resets it: one late pair per run."""
    if obs == OBS_IN:
        return 0, False
    if obs == OBS_NEAR or run < 0:
        return run, False
    if run < OUT_RUN_MAX:
        run += 1
    if run >= confirm:
        return -1, True
    return run, False


@njit(cache=True, _nrt=False, inline="always")
def late_prev_ts(back, newest):
    """The ts of the device's previous late fix, from its DeviceState.late_back_ms
    (engine.state) and its newest in-order ts ``newest``; NONE_MS when there is none, or
    an in-order fix came since (it set late_back_ms to 0)."""
    if back > 0:
        return newest - back
    return NONE_MS


@njit(cache=True, _nrt=False, inline="always")
def _late_seen(st, d, newest, ts):
    """Remember late fix ``ts`` of device ``d`` as its previous one (see late_prev_ts)."""
    back = newest - ts
    st.late_back_ms[d] = back if back <= LATE_BACK_MAX else 0


@njit(cache=True, _nrt=False, inline="always")
def _late_pair(ev_i, ev_f, n, d, typ, zone, ts, lat, lon, dist, acc):
    """A past episode told by a late message: raised and cleared at its ``ts``, late."""
    n = _put(ev_i, ev_f, n, d, typ, zone, 1, ts, ts, 1, lat, lon, dist, acc)
    return _put(ev_i, ev_f, n, d, typ, zone, 0, ts, ts, 1, lat, lon, dist, acc)


@njit(cache=True, _nrt=False)
def _late_fix_rules(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm, ev_i, ev_f, n):
    """Outbound and curfew for one late fix of device ``d`` (subject ``s``), judged on its
    own ``ts``, after its exclusion pairs; returns n. The late run continues when this fix
    is newer than the run's previous late fix and no in-order fix came in between, else
    starts afresh. Outbound: the allowed region at ``ts`` (inclusion zones and the zones
    of leaves open at ts), late_step over the run; the raising fix writes a late pair,
    ``outbound`` at the nearest inclusion zone, unless the device's live outbound (or
    leave_overdue) episode is open. Live state is never touched: only the late run."""
    newest = st.last_fix_ts_ms[d]
    prev = late_prev_ts(st.late_back_ms[d], newest)
    xr = st.ext_row[d]
    if prev == NONE_MS or ts < prev:  # (ts == prev: a duplicate, dropped before)
        st.late_run[d] = 0
        if xr > 0:
            st.ext[xr, X_LATE_CF_RUN] = 0
    _late_seen(st, d, newest, ts)
    if ra.incl_off[s + 1] > ra.incl_off[s]:
        dist = 0.0
        nearest = -1
        if _allowed_contains(ra, za, s, ts, lon, lat) < 0:
            dist, nearest = _allowed_distance(ra, za, s, ts, lon, lat)
        run, up = late_step(st.late_run[d], observe(dist, margin), confirm)
        st.late_run[d] = run
        if up and st.outbound_at_ms[d] == NONE_MS:
            n = _late_pair(ev_i, ev_f, n, d, T_OUTBOUND, nearest, ts, lat, lon, dist, acc)
    if ra.subject_flags[s] & F_CURFEWS and xr > 0:
        n = _late_curfew(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm, ev_i, ev_f, n)
    return n


@njit(cache=True, _nrt=False)
def _late_curfew(st, ra, za, d, s, ts, lon, lat, acc, margin, confirm, ev_i, ev_f, n):
    """Curfew for one late fix: within the window containing ``ts`` (the first starting,
    as live), late_step over the late curfew run against the window's zone (a run in
    another window, or none, starts afresh); the raising fix writes a late pair unless
    the device's live curfew episode is open. Outside every window the run ends."""
    x = st.ext
    xr = st.ext_row[d]
    z = -1
    start = NONE_MS
    for w in range(ra.cw_off[s], ra.cw_off[s + 1]):
        if ra.cw[w, 0] <= ts < ra.cw[w, 1]:
            z = ra.cw[w, 2]
            start = ra.cw[w, 0]
            break
    if x[xr, X_LATE_CF_START] != start:
        x[xr, X_LATE_CF_RUN] = 0
    x[xr, X_LATE_CF_START] = start
    if z < 0:
        return n
    dist = zone_distance_m(za, z, lon, lat)
    run, up = late_step(x[xr, X_LATE_CF_RUN], observe(dist, margin), confirm)
    x[xr, X_LATE_CF_RUN] = run
    if up and x[xr, X_CURFEW_AT] == NONE_MS:
        n = _late_pair(ev_i, ev_f, n, d, T_CURFEW, z, ts, lat, lon, dist, acc)
    return n


@njit(cache=True, _nrt=False)
def _late_status(st, d, ts, battery, strap, power, battery_low_pct, counters, ev_i, ev_f,
                 n):
    """One late status (older than the device's newest), judged on its own ``ts``: a
    strap open, a battery at or below ``battery_low_pct``, a power-off each tell of a past
    episode, written as a late pair at ts (tamper, low_battery, power_off) unless the
    device's live episode of that type is open. Live state is never touched: the
    hysteresis, the no-fix count and the power_off episode stay as the newest status left
    them. Evidence as live: tamper and power_off the last known position, low_battery
    the status's percentage. The previous late status again is a duplicate (counted;
    known by its ts's low 31 bits, DeviceState.late_status_lo)."""
    lo = ts & LATE_STATUS_MASK
    if st.late_status_lo[d] == lo:
        counters[C_DUP_STATUSES] += 1
        return n
    st.late_status_lo[d] = lo
    counters[C_LATE_STATUSES] += 1
    nan = np.nan
    pos = st.last_pos
    if strap == 1 and st.tamper_at_ms[d] == NONE_MS:
        n = _late_pair(ev_i, ev_f, n, d, T_TAMPER, -1, ts, pos[d, P_LAT], pos[d, P_LON], nan,
                       pos[d, P_ACC])
    if battery <= battery_low_pct and st.battery_at_ms[d] == NONE_MS:  # (NaN: absent)
        n = _late_pair(ev_i, ev_f, n, d, T_LOW_BATTERY, -1, ts, nan, nan, battery, nan)
    if power == 1 and st.device_ms[d, D_POWER_OFF_AT] == NONE_MS:
        n = _late_pair(ev_i, ev_f, n, d, T_POWER_OFF, -1, ts, pos[d, P_LAT], pos[d, P_LON],
                       nan, pos[d, P_ACC])
    return n


@njit(cache=True, _nrt=False)
def _status_rules(st, d, ts, rx, battery, strap, power, battery_low_pct, battery_clear_pct,
                  no_fix_after_ms, ev_i, ev_f, n):
    """Tamper and low-battery hysteresis for one in-order status, then power_off and the
    no-fix count (:func:`_power_status`). Evidence: tamper the last known position,
    low_battery the status's percentage (EF_AUX)."""
    nan = np.nan
    lat = st.last_pos[d, P_LAT]
    lon = st.last_pos[d, P_LON]
    acc = st.last_pos[d, P_ACC]
    if strap == 1:
        if st.tamper_at_ms[d] == NONE_MS:
            st.tamper_at_ms[d] = ts
            n = _put(ev_i, ev_f, n, d, T_TAMPER, -1, 1, ts, ts, 0, lat, lon, nan, acc)
    elif strap == 0:
        ep = st.tamper_at_ms[d]
        if ep != NONE_MS:
            st.tamper_at_ms[d] = NONE_MS
            n = _put(ev_i, ev_f, n, d, T_TAMPER, -1, 0, ts, ep, 0, lat, lon, nan, acc)
    if not math.isnan(battery):  # the status carried a battery level
        ep = st.battery_at_ms[d]
        if ep == NONE_MS:
            if battery <= battery_low_pct:
                st.battery_at_ms[d] = ts
                n = _put(ev_i, ev_f, n, d, T_LOW_BATTERY, -1, 1, ts, ts, 0,
                                      nan, nan, battery, nan)
        elif battery >= battery_clear_pct:
            st.battery_at_ms[d] = NONE_MS
            n = _put(ev_i, ev_f, n, d, T_LOW_BATTERY, -1, 0, ts, ep, 0,
                                  nan, nan, battery, nan)
    return _power_status(st, d, ts, rx, power, no_fix_after_ms, ev_i, ev_f, n)


@njit(cache=True, _nrt=False, inline="always")
def _power_status(st, d, ts, rx, power, no_fix_after_ms, ev_i, ev_f, n):
    """The device rules' part of one in-order status (after _status_rules): ``power`` 1
    (off) raises power_off at ``ts`` (kept open by a further one) and stops the no-fix
    count; any other status starts the count, at its receive time ``rx``, where none runs
    and no no_fix is open (a device never fixed, or back after silence or power-off)."""
    dev = st.device_ms
    if power == 1:
        if dev[d, D_POWER_OFF_AT] == NONE_MS:
            dev[d, D_POWER_OFF_AT] = ts
            pos = st.last_pos
            n = _put(ev_i, ev_f, n, d, T_POWER_OFF, -1, 1, ts, ts, 0, pos[d, P_LAT],
                     pos[d, P_LON], np.nan, pos[d, P_ACC])
        dev[d, D_NO_FIX_FROM] = NONE_MS
        st.no_fix_deadline_ms[d] = NO_DEADLINE_MS
        st.deadline_ms[d] = st.device_row[d, R_OFFLINE_DEADLINE]  # the earlier of both
    elif dev[d, D_NO_FIX_FROM] == NONE_MS and dev[d, D_NO_FIX_AT] == NONE_MS:
        dev[d, D_NO_FIX_FROM] = rx
        nd = rx + no_fix_after_ms
        st.no_fix_deadline_ms[d] = nd
        st.deadline_ms[d] = min(st.deadline_ms[d], nd)
        st.floor_ms[0] = min(st.floor_ms[0], nd)
    return n


@njit(cache=True, _nrt=False)
def _device_rules_message(st, d, t, r, is_power_off, ev_i, ev_f, n):
    """A message from device ``d`` (ts ``t``, receive time ``r``) ends its open power_off
    when it is newer than the power-off status (a duplicate or a late message is not a
    sign that the device came back), at its ``t``; a further power-off status keeps it
    open. Rare: process_batch calls this only while one is open. Returns n (the caller
    made room: see _run_records)."""
    ep = st.device_ms[d, D_POWER_OFF_AT]
    if t > ep and not is_power_off:
        pos = st.last_pos
        n = _put(ev_i, ev_f, n, d, T_POWER_OFF, -1, 0, t, ep, 0, pos[d, P_LAT], pos[d, P_LON],
                 np.nan, pos[d, P_ACC])
        st.device_ms[d, D_POWER_OFF_AT] = NONE_MS
    return n


@njit(cache=True, _nrt=False)
def _no_fix_cleared(st, d, r, ev_i, ev_f, n):
    """An in-order fix (received at ``r``) ends device ``d``'s open no_fix, at the receive
    time (never before its raise), with the evidence of the fix before it. process_batch
    then restarts the no-fix count and keeps the new position (inline: every fix does).
    Returns n (the caller made room)."""
    ep = st.device_ms[d, D_NO_FIX_AT]
    lf = st.device_ms[d, D_LAST_FIX_RX]
    pos = st.last_pos
    n = _put(ev_i, ev_f, n, d, T_NO_FIX, -1, 0, max(ep, r), ep, 0, pos[d, P_LAT],
             pos[d, P_LON], np.nan if lf == NONE_MS else float(lf), pos[d, P_ACC])
    st.device_ms[d, D_NO_FIX_AT] = NONE_MS
    return n


@njit(cache=True)
def process_batch(kind, device, ts, rx, lat, lon, acc, coord_sys, battery, strap,
                  power, k, buffer_m, confirm, battery_low_pct, battery_clear_pct, clock_sweep,
                  now, ev_i, ev_f, wgs_lat, wgs_lon, room):
    """Run the rules over records in arrival order; returns ``(ev_i, ev_f, n_events, now)``.

    Record ``i``: ``kind`` (K_FIX / K_STATUS), ``device`` (dense index; out of range is
    counted and skipped), ``ts`` event time and ``rx`` receive time (epoch ms); for fixes
    ``lat``/``lon`` degrees in ``coord_sys`` (0 WGS-84, 1 GCJ-02, converted here),
    ``acc`` metres; for statuses ``battery`` percent (NaN absent), ``strap`` (-1 absent,
    0 ok, 1 open) and ``power`` (-1 absent, 0 on, 1 off).

    ``k`` (:func:`engine.kernel_args.kernel_args`: one reference, unboxed once a call) holds
    the state ``st``, registry ``ra``, zone ``za`` and relation ``rr``/``rs`` arrays and
    ``offline_after_ms[level]``, ``no_fix_after_ms[level]``, ``warn_m`` float64[2]:
    approach_m and border_warn_m (metres, <= 0 off), ``apad`` float64[n_zones, 2]: each
    zone's bbox padding covering approach_m (engine.approach_pads), ``rel_cfg`` and the
    ``counters``. ``buffer_m`` metres; ``confirm`` out fixes.

    ``wgs_lat[i]``/``wgs_lon[i]`` (at least as long as the batch) receive the WGS-84
    position of every fix of a known device, duplicates and late fixes included: the very
    numbers the rules ran on, so nobody converts a GCJ-02 fix a second time (track rows).
    Other elements are left as they are.

    With ``clock_sweep`` (replay), ``now`` is a receive clock: it advances to each record's
    ``rx`` and the offline sweep runs whenever it does, before that record is processed,
    exactly as a live sweep between two messages would.

    ``k.rr``/``k.rs``/``k.rel_cfg``: the relation rules' arrays, state and numbers
    (:mod:`engine.relations`, :mod:`engine.relation_kernels`), run for an in-order fix
    of a device with a relation slot before its zone rules.

    ``room``: the most event rows one record can write (record_room). The
    records run in :func:`_run_records`, which never grows the buffers: it stops before
    a record when fewer than ``room`` rows are left, or when the receive clock is due a
    sweep, and this function grows them (or sweeps) and lets it go on. The buffers are
    never replaced inside the record loop: a variable holding an array that one branch
    may replace costs two atomic reference counts wherever the branches meet, ~35 a fix
    when the loop did so (the rules' costliest part on a settled fix).
    """
    st, ra, za, rr, rs = k.st, k.ra, k.za, k.rr, k.rs
    offline_after_ms, no_fix_after_ms, warn_m, apad = (k.offline_after_ms, k.no_fix_after_ms,
                                                       k.warn_m, k.apad)
    rel_cfg, counters = k.rel_cfg, k.counters
    n = 0
    i = 0
    while True:
        i, n, now, sweep_at = _run_records(
            kind, device, ts, rx, lat, lon, acc, coord_sys, battery, strap, power, st, ra, za,
            offline_after_ms, no_fix_after_ms, buffer_m, confirm, battery_low_pct,
            battery_clear_pct, warn_m, apad, clock_sweep, now, ev_i, ev_f, counters, wgs_lat,
            wgs_lon, rr, rs, rel_cfg, room, i, n)
        if sweep_at != NONE_MS:  # the receive clock passed the floor at record i
            now = sweep_at
            ev_i, ev_f, n = _sweep_into(st, now, ev_i, ev_f, n, counters)
        elif i >= kind.shape[0]:
            return ev_i, ev_f, n, now
        ev_i, ev_f = _room(ev_i, ev_f, n, n + room)


# One piece on purpose (hence the noqa): the per-record loop, with the receive clock,
# duplicates, the settled-device cache and the grid path inlined, is the hot path; each
# call from it to a helper taking the state NamedTuples costs refcounts on ~50 arrays, more
# than a settled fix takes. The rules themselves are the small functions above. Compiled
# without reference counting: it allocates nothing (process_batch grows the buffers).
@njit(cache=True, _nrt=False)
def _run_records(kind, device, ts, rx, lat, lon, acc, coord_sys, battery, strap,  # noqa: C901
                 power, st, ra, za, offline_after_ms, no_fix_after_ms, buffer_m, confirm,
                 battery_low_pct, battery_clear_pct, warn_m, apad, clock_sweep, now, ev_i, ev_f,
                 counters, wgs_lat, wgs_lon, rr, rs, rel_cfg, room, i0, n):
    """process_batch's records from ``i0`` on, event rows from ``n`` on; returns ``(i, n,
    now, sweep_at)``: ``i`` the first record not processed (all: ``kind.shape[0]``), and
    ``sweep_at`` the receive time the clock must sweep at before record ``i`` (NONE_MS:
    none; otherwise fewer than ``room`` rows were left)."""
    # The hot path (receive time, duplicates, settled devices) works on arrays taken out
    # of the NamedTuples once: every call that passes a NamedTuple of arrays costs an
    # incref/decref per member, which would dominate a settled fix.
    approach_m = warn_m[0]
    border_m = warn_m[1]
    far_m = max(approach_m, 0.0)  # a closed zone farther than this stays closed
    appr_at = st.approach_at_ms
    last_rx = st.last_rx_ms
    deadline = st.deadline_ms
    floor = st.floor_ms
    offline_at = st.offline_at_ms
    dev_ms = st.device_ms
    last_pos = st.last_pos
    nf_deadline = st.no_fix_deadline_ms
    row = st.device_row
    last_fix = st.last_fix_ts_ms
    last_status = st.last_status_ts_ms
    safe_m = st.safe_m
    safe_until = st.safe_until_ms
    near_lon = st.near_lon
    near_lat = st.near_lat
    level = ra.device_level
    subject = ra.device_subject
    excl_off = ra.excl_off
    excl_zone = ra.excl_zone
    slot_off = ra.device_slot_off
    incl_off = ra.incl_off
    incl_zone = ra.incl_zone
    sflags = ra.subject_flags
    excl_at = st.exclusion_at_ms
    outbound_at = st.outbound_at_ms
    out_run = st.out_run
    bbox = za.zone_bbox
    zone_kind = za.zone_kind
    grid_shape = za.grid_shape
    grid_origin = za.grid_origin
    grid_inv_cell = za.grid_inv_cell
    grid_cell_offsets = za.grid_cell_offsets
    cell_state = za.cell_state
    dev_rel = rr.dev_rel  # the relation rules (engine.relation_kernels)
    rel_sep = rr.rel_sep
    sep_dev = rr.sep_dev
    prox_off = rr.prox_off
    prox_person = rr.prox_person
    person_dev_off = rr.person_dev_off
    person_dev = rr.person_dev
    cont_off = rr.cont_off
    cont_pair = rr.cont_pair
    cont_subj = rr.cont_subj
    subj_dev_off = rr.subj_dev_off
    sep_state = rs.sep
    prox_at = rs.prox_at
    contact = rs.contact
    n_dev = last_rx.shape[0]
    cap = ev_i.shape[0]
    for i in range(i0, kind.shape[0]):
        d = device[i]
        if d < 0 or d >= n_dev:
            counters[C_UNKNOWN_DEVICE] += 1
            continue
        if n + room > cap:
            return i, n, now, NONE_MS
        r = rx[i]
        if clock_sweep and r > now:
            if r > floor[0]:
                return i, n, now, r
            now = r
        # A message was received: clear an open offline episode (at = the receive time,
        # never before the raise) and move the offline deadline.
        ep = offline_at[d]
        if ep != NONE_MS:
            n = _put(ev_i, ev_f, n, d, T_OFFLINE, -1, 0, max(ep, r), ep, 0, last_pos[d, P_LAT],
                     last_pos[d, P_LON], float(last_rx[d]), last_pos[d, P_ACC])
            offline_at[d] = NONE_MS
        if last_rx[d] == NONE_MS or r > last_rx[d]:
            last_rx[d] = r
        dl = last_rx[d] + offline_after_ms[level[d]]
        row[d, R_OFFLINE_DEADLINE] = dl
        dl = min(dl, row[d, R_NO_FIX_DEADLINE])  # the sweep's: the earlier of both
        deadline[d] = dl
        floor[0] = min(floor[0], dl)
        t = ts[i]
        if dev_ms[d, D_POWER_OFF_AT] != NONE_MS:  # powered off: a newer message ends it
            n = _device_rules_message(st, d, t, r, kind[i] != K_FIX and power[i] == 1,
                                      ev_i, ev_f, n)
        if kind[i] == K_FIX:
            counters[C_FIXES] += 1
            x = lon[i]
            y = lat[i]
            if coord_sys[i] == 1:
                x, y = gcj02_to_wgs84_point(x, y)
            wgs_lon[i] = x
            wgs_lat[i] = y
            last = last_fix[d]
            if t == last:
                counters[C_DUP_FIXES] += 1
                continue
            late = last != NONE_MS and t < last
            if late:
                if t == late_prev_ts(st.late_back_ms[d], last):  # again
                    counters[C_DUP_FIXES] += 1
                    continue
                counters[C_LATE_FIXES] += 1
            else:
                last_fix[d] = t
                st.late_back_ms[d] = 0  # the late run (if any) ends: see late_prev_ts
                # The device rules: a fresh fix ends no_fix, restarts the no-fix count at
                # its receive time (the sweep moves the deadline on: see _sweep_into) or
                # starts one, and is the last known position (alarm evidence).
                if dev_ms[d, D_NO_FIX_AT] != NONE_MS:
                    n = _no_fix_cleared(st, d, r, ev_i, ev_f, n)
                dev_ms[d, D_LAST_FIX_RX] = max(dev_ms[d, D_LAST_FIX_RX], r)
                last_pos[d, P_LAT] = y
                last_pos[d, P_LON] = x
                last_pos[d, P_ACC] = acc[i]
                if dev_ms[d, D_NO_FIX_FROM] == NONE_MS:
                    dev_ms[d, D_NO_FIX_FROM] = r
                    nd = r + no_fix_after_ms[level[d]]
                    nf_deadline[d] = nd
                    deadline[d] = min(deadline[d], nd)
                    floor[0] = min(floor[0], nd)
                rl = dev_rel[d]
                if rl >= 0:  # the relation rules (engine.relation_kernels)
                    n_prox = prox_off[rl + 1] - prox_off[rl]
                    n_cont = cont_off[rl + 1] - cont_off[rl]
                    if rel_sep[rl] >= 0:
                        n = separation_rule(sep_dev, last_pos, last_fix, sep_state, rel_cfg,
                                            rel_sep[rl], d, t, x, y, acc[i], ev_i, ev_f, n)
                    if n_prox > 0:
                        n = proximity_rule(prox_off, prox_person, person_dev_off, person_dev,
                                           last_pos, last_fix, prox_at, rel_cfg, rl, d, t, x,
                                           y, acc[i], ev_i, ev_f, n)
                    if n_cont > 0:
                        n = contact_rule(cont_off, cont_pair, cont_subj, subj_dev_off, last_pos,
                                         last_fix, contact, rel_cfg, rl, d, subject[d], t, x,
                                         y, ev_i, ev_f, n)
            # Settled device (see _fix_rules): nothing can change within the safe radius.
            if (not late and safe_m[d] > 0.0 and t < safe_until[d]
                    and moved_upper_m(near_lon[d], near_lat[d], x, y) < safe_m[d]):
                counters[C_SETTLED_FIXES] += 1
                continue
            # Grid path: the common fix that changes nothing but the run of out fixes and
            # the settled cache, answered here from the arrays above. A call to
            # _fix_rules costs ~200 ns before it does anything (it takes the three
            # NamedTuples, ~50 arrays), several times a grid lookup. The conditions are
            # exactly those under which _fix_rules would do only what is done here:
            # every exclusion zone closed and its padded bbox missed, or (a circle)
            # farther than approach_m by its exact distance (a late fix: its bbox missed,
            # whatever its state), no open outbound, the first inclusion zone containing
            # the fix by its grid cell alone, and no settle attempt (_fix_rules settles
            # only after a move of at most SETTLE_MAX_MOVE_M).
            si = subject[d]
            e0 = excl_off[si]
            e1 = excl_off[si + 1]
            quiet = True
            slot0 = slot_off[d]
            for k in range(e1 - e0):
                if late:
                    if _in_bbox(bbox, excl_zone[e0 + k], x, y):
                        quiet = False
                        break
                elif excl_at[slot0 + k] != NONE_MS or appr_at[slot0 + k] != NONE_MS or (
                        _near_bbox(bbox, apad, excl_zone[e0 + k], x, y)
                        and not _beyond_circle(za, excl_zone[e0 + k], x, y, far_m)):
                    quiet = False
                    break
            if quiet and late:  # no exclusion zone near: left are the late runs
                i0 = incl_off[si]
                if sflags[si] & F_CURFEWS == 0 and (incl_off[si + 1] == i0 or _cell_inside(
                        zone_kind, bbox, grid_shape, grid_origin, grid_inv_cell,
                        grid_cell_offsets, cell_state, incl_zone[i0], x, y)):
                    # (_late_fix_rules for a fix in its first inclusion zone, or with no
                    # late rule to run: the run restarts at 0, or does not matter)
                    _late_seen(st, d, last, t)
                    st.late_run[d] = 0
                    counters[C_GRID_FIXES] += 1
                    continue
            elif quiet:
                i0 = incl_off[si]
                nl = near_lon[d]
                if (outbound_at[d] == NONE_MS and incl_off[si + 1] > i0 and border_m <= 0.0
                        and sflags[si] & F_KERNEL == 0 and not math.isnan(nl)
                        and moved_upper_m(nl, near_lat[d], x, y) > SETTLE_MAX_MOVE_M
                        and _cell_inside(zone_kind, bbox, grid_shape, grid_origin,
                                         grid_inv_cell, grid_cell_offsets, cell_state,
                                         incl_zone[i0], x, y)):
                    # An in fix; no episode is open, so the rule only resets the run.
                    out_run[d] = outbound_step(NONE_MS, out_run[d], OBS_IN, confirm)[0]
                    safe_m[d] = -1.0
                    near_lon[d] = x
                    near_lat[d] = y
                    counters[C_GRID_FIXES] += 1
                    continue
            n = _fix_rules(st, ra, za, d, t, x, y, acc[i], late, buffer_m, confirm, approach_m,
                           border_m, apad, ev_i, ev_f, n)
        else:
            counters[C_STATUSES] += 1
            last = last_status[d]
            if t == last:
                counters[C_DUP_STATUSES] += 1
                continue
            if last != NONE_MS and t < last:  # judged on its own ts: a past episode
                n = _late_status(st, d, t, battery[i], strap[i], power[i], battery_low_pct,
                                 counters, ev_i, ev_f, n)
                continue
            last_status[d] = t
            n = _status_rules(st, d, t, r, battery[i], strap[i], power[i], battery_low_pct,
                              battery_clear_pct, no_fix_after_ms[level[d]], ev_i, ev_f, n)
    return kind.shape[0], n, now, NONE_MS
