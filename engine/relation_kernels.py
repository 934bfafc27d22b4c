"""The relation rules' kernels (docs/rules.md, "Relations"): pure ``@njit(cache=True)``
functions over :mod:`engine.relations`' arrays, called by
:func:`engine.kernels.process_batch` for an in-order fix of a device that has a relation
slot, before that fix's zone rules (and before the settled-device shortcut, which must
not hide a fix from its relations).

A relation is looked up by index: the device's slot, the slot's pair, the pair's other
device; never by scanning devices. process_batch notes the device's newest fix and calls
:func:`separation_rule`, :func:`proximity_rule` and :func:`contact_rule` with the arrays
it took out of the NamedTuples once (a call taking the NamedTuples costs a reference
count on each of their ~20 arrays: three times what a rule itself costs).

Event rows are those of :mod:`engine.kernels` plus the peer columns: ``ev_i[:, EV_PEER]``
the other device of the relation, ``ev_f[:, EF_PEER_LAT/LON/ACC]`` its fix.
"""

from __future__ import annotations

import math

from numba import njit

from contract.alarms import ALARM_TYPES
from engine.state import P_ACC, P_LAT, P_LON

NONE_MS = -(2**63)
T_SEPARATION = ALARM_TYPES.index("separation")
T_PROXIMITY = ALARM_TYPES.index("proximity")
T_CONTACT = ALARM_TYPES.index("contact")

# Event row columns beyond engine.kernels' (they are used by the relation types only).
EV_PEER = 7
EF_PEER_LAT, EF_PEER_LON, EF_PEER_ACC = 4, 5, 6

# The relation rules' numbers (Engine builds this float64 array from [rules]).
CFG_SEP_WINDOW_MS, CFG_SEP_M, CFG_SEP_CONFIRM = 0, 1, 2
CFG_PROX_M, CFG_PROX_FRESH_MS, CFG_BUFFER_M = 3, 4, 5
CFG_CONTACT_M, CFG_CONTACT_MIN_MS = 6, 7
N_CFG = 8

# RelationState.contact columns (engine.relations.CONTACT_*): the open episode's raised
# at, the start of the current run of close pairs, the episode's device.
CT_AT, CT_SINCE, CT_DEV = 0, 1, 2

# WGS-84 ellipsoid
_A = 6378137.0
_E2 = 0.00669437999014
SEP_RUN_MAX = 1 << 30
# Upper bounds of pair_distance_m's metres per degree anywhere on the ellipsoid: of
# longitude N(phi) cos(phi) <= a (at the equator, 111 319.49 m), of latitude
# M(phi) <= a / sqrt(1 - e2) (at the poles, 111 693.9 m); rounded up, so a pair
# within separation_m by these is within it by pair_distance_m too.
_M_PER_DEG_LON_MAX = 111_320.0
_M_PER_DEG_LAT_MAX = 111_700.0
# A lower bound of its metres per degree of latitude: M(phi) >= a (1 - e2) (at the
# equator, 110 574.3 m); rounded down, so a pair farther than a threshold in latitude
# alone by this is farther than it by pair_distance_m too.
_M_PER_DEG_LAT_MIN = 110_570.0


@njit(cache=True, _nrt=False, inline="always")
def pair_distance_m(lon0, lat0, lon1, lat1):
    """Metres between two WGS-84 points (degrees): the ellipsoid's radii of curvature at
    the mean latitude, on the local plane. Within a millimetre of the geodesic up to a
    few kilometres (where the relation thresholds are); for far pairs the error grows
    (~0.1 % at 100 km), which no threshold notices."""
    phi = math.radians(0.5 * (lat0 + lat1))
    s = math.sin(phi)
    w = 1.0 - _E2 * s * s
    n_m = _A / math.sqrt(w)
    m_m = _A * (1.0 - _E2) / (w * math.sqrt(w))
    dx = math.radians(lon1 - lon0) * n_m * math.cos(phi)
    dy = math.radians(lat1 - lat0) * m_m
    return math.sqrt(dx * dx + dy * dy)


@njit(cache=True, _nrt=False)
def _put_rel(ev_i, ev_f, n, device, typ, raised, at, episode, lat, lon, dist, acc, peer,
             peer_lat, peer_lon, peer_acc):
    """Write relation event row ``n`` (no zone, never late; the caller made room)."""
    ev_i[n, 0] = device
    ev_i[n, 1] = typ
    ev_i[n, 2] = -1
    ev_i[n, 3] = raised
    ev_i[n, 4] = at
    ev_i[n, 5] = episode
    ev_i[n, 6] = 0
    ev_i[n, EV_PEER] = peer
    ev_f[n, 0] = lat
    ev_f[n, 1] = lon
    ev_f[n, 2] = dist
    ev_f[n, 3] = acc
    ev_f[n, EF_PEER_LAT] = peer_lat
    ev_f[n, EF_PEER_LON] = peer_lon
    ev_f[n, EF_PEER_ACC] = peer_acc
    return n + 1


@njit(cache=True, _nrt=False, inline="always")
def separation_step(open_at_ms, run, dist_m, far_m, near_m, confirm):
    """The separation rule for one pair of fixes: ``(open_at_ms, run, distance, far
    threshold = separation_m + both accuracies, near threshold = separation_m, confirm)``
    -> ``(run after, action)`` with action 0 none, 1 raise, 2 clear.

    ===========================  ===========  ==========================================
    pair                          run after    action
    ===========================  ===========  ==========================================
    distance <= separation_m      0            clear, if an episode is open
    beyond far threshold          run + 1      raise, if run after >= confirm, none open
    in between (uncertain)        unchanged    none
    ===========================  ===========  ==========================================
    """
    if dist_m <= near_m:
        return 0, (2 if open_at_ms != NONE_MS else 0)
    if dist_m > far_m:
        if run < SEP_RUN_MAX:
            run += 1
        if run >= confirm and open_at_ms == NONE_MS:
            return run, 1
    return run, 0


@njit(cache=True, _nrt=False, inline="always")
def separation_rule(sep_dev, last_pos, last_fix, sep, cfg, p, d, ts, lon, lat, acc,
                    ev_i, ev_f, n):
    """Device ``d``'s fix against its pair partner's latest fix (pair ``p``). Takes the
    arrays themselves (process_batch took them out of the NamedTuples once): this is
    the relation every paired device's fix runs."""
    side = 0 if sep_dev[p, 0] == d else 1
    q = sep_dev[p, 1 - side]
    qts = last_fix[q]
    if qts == NONE_MS or abs(ts - qts) > cfg[CFG_SEP_WINDOW_MS]:
        return n  # no pair
    qlon = last_pos[q, P_LON]
    qlat = last_pos[q, P_LAT]
    ep = sep[p, 0]
    near = cfg[CFG_SEP_M]
    if ep == NONE_MS:
        # The common pair (a carried phone): certainly within separation_m by a bound
        # without trigonometry, so the rule only resets the run (separation_step's first
        # row with no episode open) and the exact distance is not needed.
        dx = abs(lon - qlon) * _M_PER_DEG_LON_MAX
        dy = abs(lat - qlat) * _M_PER_DEG_LAT_MAX
        if dx * dx + dy * dy <= near * near:
            sep[p, 2] = 0
            return n
    qacc = last_pos[q, P_ACC]
    far = near + acc + qacc
    if abs(lat - qlat) * _M_PER_DEG_LAT_MIN > far:
        # Certainly beyond the far threshold by latitude alone (e.g. the bracelet's new
        # fix against the phone's previous one, the subject moving fast): the rule's
        # step is the same as with the exact distance, needed only for a raise's evidence.
        dist = math.nan
        run, act = separation_step(ep, sep[p, 2], math.inf, far, near, cfg[CFG_SEP_CONFIRM])
    else:
        dist = pair_distance_m(lon, lat, qlon, qlat)
        run, act = separation_step(ep, sep[p, 2], dist, far, near, cfg[CFG_SEP_CONFIRM])
    sep[p, 2] = run
    if act == 0:
        return n
    if math.isnan(dist):
        dist = pair_distance_m(lon, lat, qlon, qlat)
    return _separation_event(sep, p, act, side, d, q, ts, qts, ep, lon, lat, acc, qlon, qlat,
                             qacc, dist, ev_i, ev_f, n)


@njit(cache=True, _nrt=False)
def _separation_event(sep, p, act, side, d, q, ts, qts, ep, lon, lat, acc, qlon, qlat, qacc,
                      dist, ev_i, ev_f, n):
    at = max(ts, qts)
    if act == 1:
        ev_side = side if ts >= qts else 1 - side  # the later fix's device
        sep[p, 0] = at
        sep[p, 1] = ev_side
    else:
        ev_side = sep[p, 1]  # the device the episode was raised on (its alarm_id)
        sep[p, 0] = NONE_MS
    if ev_side == side:
        return _put_rel(ev_i, ev_f, n, d, T_SEPARATION, 1 if act == 1 else 0, at,
                        at if act == 1 else ep, lat, lon, dist, acc, q, qlat, qlon, qacc)
    return _put_rel(ev_i, ev_f, n, q, T_SEPARATION, 1 if act == 1 else 0, at,
                    at if act == 1 else ep, qlat, qlon, dist, qacc, d, lat, lon, acc)


@njit(cache=True, _nrt=False)
def proximity_step(open_at_ms, near_m, far_m, prox_m, buffer_m):
    """The proximity rule for one fix and one protected person: ``near_m`` = distance
    minus both accuracies (the closest the two may be), ``far_m`` the same (the
    accuracies count against the subject both ways) -> action 0 none, 1 raise, 2 clear.

    =======  ==============================  ==========================================
    open?     raise                           clear
    =======  ==============================  ==========================================
    no        near_m <= proximity_m           -
    yes       -                               far_m > proximity_m + buffer_m
    =======  ==============================  ==========================================
    """
    if open_at_ms == NONE_MS:
        return 1 if near_m <= prox_m else 0
    return 2 if far_m > prox_m + buffer_m else 0


@njit(cache=True, _nrt=False)
def _victim_fix(person_dev_off, person_dev, last_fix, v):
    """The slot of protected person ``v``'s newest fix (over their devices), or -1."""
    best = -1
    best_ts = NONE_MS
    for k in range(person_dev_off[v], person_dev_off[v + 1]):
        q = person_dev[k]
        if last_fix[q] != NONE_MS and (best < 0 or last_fix[q] > best_ts):
            best = q
            best_ts = last_fix[q]
    return best


@njit(cache=True, _nrt=False)
def proximity_rule(prox_off, prox_person, person_dev_off, person_dev, last_pos, last_fix,
                   prox_at, cfg, r, d, ts, lon, lat, acc, ev_i, ev_f, n):
    """Device ``d``'s fix (slot ``r``) against each protected person it is watched for.
    The event carries the distance and the person (through the device of their fix),
    never the person's position."""
    nan = math.nan
    for e in range(prox_off[r], prox_off[r + 1]):
        vq = _victim_fix(person_dev_off, person_dev, last_fix, prox_person[e])
        if vq < 0 or ts - last_fix[vq] > cfg[CFG_PROX_FRESH_MS]:
            continue  # no fresh fix of the person: nothing is decided
        dist = pair_distance_m(lon, lat, last_pos[vq, P_LON], last_pos[vq, P_LAT])
        closest = dist - acc - last_pos[vq, P_ACC]
        ep = prox_at[e]
        act = proximity_step(ep, closest, closest, cfg[CFG_PROX_M], cfg[CFG_BUFFER_M])
        if act == 0:
            continue
        prox_at[e] = ts if act == 1 else NONE_MS
        n = _put_rel(ev_i, ev_f, n, d, T_PROXIMITY, 1 if act == 1 else 0, ts,
                     ts if act == 1 else ep, lat, lon, dist, acc, vq, nan, nan, nan)
    return n


@njit(cache=True, _nrt=False)
def contact_step(open_at_ms, since_ms, t_ms, dist_m, contact_m, buffer_m, min_ms):
    """The contact rule for one fix of one subject against the other's fresh fixes:
    ``(open at, start of the close run, the pair's later ts, nearest distance)`` ->
    ``(start of the run after, action, raise at)``; action 0 none, 1 raise, 2 clear.

    ==============================  ======================  ============================
    nearest distance                 run after               action
    ==============================  ======================  ============================
    <= contact_m                     kept, or starts at t    raise at start + min, once
                                                             t - start >= contact_min
    beyond contact_m + buffer_m      none                    clear, if an episode is open
    in between                       none (open: kept)       none
    ==============================  ======================  ============================
    """
    if dist_m <= contact_m:
        if since_ms == NONE_MS:
            since_ms = t_ms
        if open_at_ms == NONE_MS and t_ms - since_ms >= min_ms:
            return since_ms, 1, since_ms + min_ms
        return since_ms, 0, 0
    if dist_m > contact_m + buffer_m:
        return NONE_MS, (2 if open_at_ms != NONE_MS else 0), 0
    return (since_ms if open_at_ms != NONE_MS else NONE_MS), 0, 0


@njit(cache=True, _nrt=False)
def _nearest_peer(subj_dev_off, last_pos, last_fix, cfg, s, ts, lon, lat):
    """(distance, slot) of subject ``s``'s nearest device fix within the separation
    window of ``ts``; (inf, -1) when none is fresh."""
    best = math.inf
    best_q = -1
    for q in range(subj_dev_off[s], subj_dev_off[s + 1]):
        qts = last_fix[q]
        if qts == NONE_MS or abs(ts - qts) > cfg[CFG_SEP_WINDOW_MS]:
            continue
        dist = pair_distance_m(lon, lat, last_pos[q, P_LON], last_pos[q, P_LAT])
        if dist < best:
            best = dist
            best_q = q
    return best, best_q


@njit(cache=True, _nrt=False)
def contact_rule(cont_off, cont_pair, cont_subj, subj_dev_off, last_pos, last_fix, contact, cfg,
                 r, d, s, ts, lon, lat, ev_i, ev_f, n):
    """Device ``d``'s fix (slot ``r``, subject ``s``) against each listed contact."""
    nan = math.nan
    for k in range(cont_off[r], cont_off[r + 1]):
        c = cont_pair[k]
        first = cont_subj[c, 0]
        other = cont_subj[c, 1] if first == s else first
        dist, q = _nearest_peer(subj_dev_off, last_pos, last_fix, cfg, other, ts, lon, lat)
        if q < 0:
            continue  # no fresh fix of the other: nothing is decided
        t = max(ts, last_fix[q])
        ep = contact[c, CT_AT]
        since, act, at = contact_step(ep, contact[c, CT_SINCE], t, dist, cfg[CFG_CONTACT_M],
                                      cfg[CFG_BUFFER_M], cfg[CFG_CONTACT_MIN_MS])
        contact[c, CT_SINCE] = since
        if act == 1:
            on = d if first == s else q  # the alarm is on the first subject (sorted ids)
            contact[c, CT_AT] = at
            contact[c, CT_DEV] = on - subj_dev_off[first]
            n = _put_rel(ev_i, ev_f, n, on, T_CONTACT, 1, at, at, nan, nan, dist, nan,
                         q if on == d else d, nan, nan, nan)
        elif act == 2:
            on = subj_dev_off[first] + contact[c, CT_DEV]
            contact[c, CT_AT] = NONE_MS
            peer = q if first == s else d
            n = _put_rel(ev_i, ev_f, n, on, T_CONTACT, 0, t, ep, nan, nan, dist, nan, peer,
                         nan, nan, nan)
    return n
