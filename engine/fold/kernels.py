"""One alarm per subject, compiled: :meth:`engine.per_subject.SubjectEpisodes.fold` over
the event rows of a batch, before any of them becomes a dict (engine.fold.table).

The open subject episodes are rows of arrays (:class:`engine.fold.table.FoldTable`),
found by their key ``(subject * N_TYPES + type) * (n_zones + 1) + zone + 1`` in an
open-addressing hash table (``slots``: a row or -1; linear probing, deletion by
backward shift). A device is a *ref*: its registry index, or ``n_devices + j`` for the
j-th id of the table's ids outside the registry (from a checkpoint).

Per event row k, ``nparts[k]``: -1 not folded (the caller builds its event as it
is), else how many events it becomes (0, 1 or 2), written in event order to the
``p_*`` columns, their device lists in ``pool`` (``p_off``, ``p_len``).
"""

from __future__ import annotations

from numba import njit

from contract.alarms import ALARM_TYPES

N_TYPES = len(ALARM_TYPES)
T_APPROACH = ALARM_TYPES.index("approach")
# engine.per_subject.SUPERSEDES, as type indices.
T_SUP0, T_SUP1, T_SUP2 = (ALARM_TYPES.index("exclusion"), ALARM_TYPES.index("outbound"),
                          ALARM_TYPES.index("leave_overdue"))
# Row fields of ``rint`` (int64[rows, 6]).
R_KEY, R_LEAD, R_AT, R_SUP, R_NDEV, R_NOPEN = 0, 1, 2, 3, 4, 5
FREE = -1  # R_KEY of a free row


@njit(cache=True, _nrt=False, inline="always")
def _home(key, mask):
    """The first slot to probe for ``key`` (>= 0): a multiplicative hash, computed
    without an overflow so that the plain-Python run (NUMBA_DISABLE_JIT) is the same."""
    return ((((key & 0x7FFFFFFF) * 0x9E3779B1) >> 16) ^ (key >> 31)) & mask


@njit(cache=True, _nrt=False)
def find_slot(slots, rint, key):
    """The slot holding ``key``'s row, or the empty slot where it would go."""
    mask = len(slots) - 1
    i = _home(key, mask)
    while True:
        r = slots[i]
        if r < 0 or rint[r, R_KEY] == key:
            return i
        i = (i + 1) & mask


@njit(cache=True, _nrt=False)
def delete_slot(slots, rint, i):
    """Empty slot ``i``, shifting back the rows probed past it."""
    mask = len(slots) - 1
    j = i
    while True:
        j = (j + 1) & mask
        r = slots[j]
        if r < 0:
            break
        k = _home(rint[r, R_KEY], mask)
        if j > i:
            stays = i < k <= j
        else:
            stays = k > i or k <= j
        if not stays:
            slots[i] = r
            i = j
    slots[i] = -1


@njit(cache=True, _nrt=False)
def rehash(slots, rint):
    """Put every used row of ``rint`` in ``slots`` (all -1)."""
    for r in range(len(rint)):
        if rint[r, R_KEY] != FREE:
            slots[find_slot(slots, rint, rint[r, R_KEY])] = r


@njit(cache=True, _nrt=False, inline="always")
def _row(slots, rint, key):
    r = slots[find_slot(slots, rint, key)]
    return r


@njit(cache=True, _nrt=False, inline="always")
def _violated(slots, rint, base, n_z1):
    """Is one of the subject's violations of the zone open? (``base``: the key less
    its type term.)"""
    return (_row(slots, rint, base + T_SUP0 * n_z1) >= 0
            or _row(slots, rint, base + T_SUP1 * n_z1) >= 0
            or _row(slots, rint, base + T_SUP2 * n_z1) >= 0)


@njit(cache=True, _nrt=False, inline="always")
def _part(pi, raised, typ, lead, at, devs, ndev, p_int, pool, npool):
    """Write one emitted event: (raised, type, lead ref, episode at, pool offset, count)."""
    p_int[pi, 0] = raised
    p_int[pi, 1] = typ
    p_int[pi, 2] = lead
    p_int[pi, 3] = at
    p_int[pi, 4] = npool
    p_int[pi, 5] = ndev
    for j in range(ndev):
        pool[npool + j] = devs[j]
    return npool + ndev


@njit(cache=True, _nrt=False, inline="always")
def _index(row, count, ref):
    for j in range(count):
        if row[j] == ref:
            return j
    return -1


@njit(cache=True, _nrt=False, inline="always")
def _is_violation(typ):
    return typ == T_SUP0 or typ == T_SUP1 or typ == T_SUP2


@njit(cache=True, _nrt=False, inline="always")
def _raised(d, typ, episode_at, base, n_z1, i, slots, rint, rdev, ropen, free, meta, one,
            p_int, pool, pi, npool):
    """A device's raise (SubjectEpisodes.fold, raised): returns (pi, npool) after it."""
    r = slots[i]
    if _is_violation(typ):
        w = _row(slots, rint, base + T_APPROACH * n_z1)
        if w >= 0 and rint[w, R_SUP] == 0:
            rint[w, R_SUP] = 1
            npool = _part(pi, 0, T_APPROACH, rint[w, R_LEAD], rint[w, R_AT], rdev[w],
                          rint[w, R_NDEV], p_int, pool, npool)
            pi += 1
    if r >= 0:  # joins the open episode
        if _index(ropen[r], rint[r, R_NOPEN], d) < 0:
            ropen[r, rint[r, R_NOPEN]] = d
            rint[r, R_NOPEN] += 1
        if _index(rdev[r], rint[r, R_NDEV], d) < 0:
            rdev[r, rint[r, R_NDEV]] = d
            rint[r, R_NDEV] += 1
        return pi, npool
    meta[0] -= 1
    r = free[meta[0]]
    slots[i] = r
    rint[r, R_KEY] = base + typ * n_z1
    rint[r, R_LEAD] = d
    rint[r, R_AT] = episode_at
    rint[r, R_SUP] = 0
    rint[r, R_NDEV] = 1
    rint[r, R_NOPEN] = 1
    rdev[r, 0] = d
    ropen[r, 0] = d
    if typ == T_APPROACH and _violated(slots, rint, base, n_z1):
        rint[r, R_SUP] = 1  # no warning beside the violation
        return pi, npool
    one[0] = d
    npool = _part(pi, 1, typ, d, episode_at, one, 1, p_int, pool, npool)
    return pi + 1, npool


@njit(cache=True, _nrt=False, inline="always")
def _cleared(d, typ, episode_at, at, base, n_z1, i, slots, rint, rdev, ropen, free, meta,
             one, p_int, pool, pi, npool):
    """A device's clear (SubjectEpisodes.fold, cleared): returns (pi, npool) after it."""
    r = slots[i]
    j = _index(ropen[r], rint[r, R_NOPEN], d) if r >= 0 else -1
    if j < 0:  # not folded (e.g. restored without)
        one[0] = d
        npool = _part(pi, 0, typ, d, episode_at, one, 1, p_int, pool, npool)
        return pi + 1, npool
    m = rint[r, R_NOPEN] - 1
    for q in range(j, m):
        ropen[r, q] = ropen[r, q + 1]
    rint[r, R_NOPEN] = m
    if m > 0:
        return pi, npool
    if rint[r, R_SUP] == 0:
        npool = _part(pi, 0, typ, rint[r, R_LEAD], rint[r, R_AT], rdev[r], rint[r, R_NDEV],
                      p_int, pool, npool)
        pi += 1
    delete_slot(slots, rint, i)
    rint[r, R_KEY] = FREE
    free[meta[0]] = r
    meta[0] += 1
    if not _is_violation(typ):
        return pi, npool
    w = _row(slots, rint, base + T_APPROACH * n_z1)
    if w >= 0 and rint[w, R_SUP] != 0 and not _violated(slots, rint, base, n_z1):
        # The violation closed with devices still near: the warning again, at this at.
        rint[w, R_SUP] = 0
        rint[w, R_LEAD] = ropen[w, 0]
        rint[w, R_AT] = at
        for q in range(rint[w, R_NOPEN]):
            rdev[w, q] = ropen[w, q]
        rint[w, R_NDEV] = rint[w, R_NOPEN]
        npool = _part(pi, 1, T_APPROACH, rint[w, R_LEAD], at, rdev[w], rint[w, R_NDEV],
                      p_int, pool, npool)
        pi += 1
    return pi, npool


@njit(cache=True, _nrt=False)
def fold_events(ev_i, ev_f, n, dev_subject, subject_ndev, n_subject_devices, fold_type, n_z1,
                slots, rint, rdev, ropen, free, meta, one, nparts, p_int, pool, kept_i, kept_f):
    """Fold the first ``n`` event rows (columns of engine.kernels: device, type, zone,
    raised, at, episode, late); ``fold_type[t]``: type t is folded (none when alarm_per
    is "device"); ``meta[0]`` free rows on the ``free`` stack (the caller leaves at
    least ``n``); ``one``: int64[1], scratch. Returns ``(parts, kept)``: the number of
    parts written and of rows kept.

    A row that becomes anything (``nparts`` not 0) is also copied, in order, into the
    caller's columns: ``kept_i[j]`` = (row, nparts, its 7 ev_i columns, subject index),
    ``kept_f[j]`` its 4 ev_f columns (lat, lon, aux, acc), so the caller reads them
    into Python in one step instead of indexing ev_i and ev_f by the rows kept."""
    pi = 0
    npool = 0
    nk = 0
    for k in range(n):
        d = ev_i[k, 0]
        if d >= n_subject_devices:
            nparts[k] = 0  # a protected person's device raises nothing of its own
            continue
        typ = ev_i[k, 1]
        s = dev_subject[d]
        if not fold_type[typ] or ev_i[k, 6] != 0 or subject_ndev[s] < 2:
            m = -1
        else:
            base = s * N_TYPES * n_z1 + ev_i[k, 2] + 1
            i = find_slot(slots, rint, base + typ * n_z1)
            pi0 = pi
            if ev_i[k, 3] != 0:
                pi, npool = _raised(d, typ, ev_i[k, 5], base, n_z1, i, slots, rint, rdev,
                                    ropen, free, meta, one, p_int, pool, pi, npool)
            else:
                pi, npool = _cleared(d, typ, ev_i[k, 5], ev_i[k, 4], base, n_z1, i, slots,
                                     rint, rdev, ropen, free, meta, one, p_int, pool, pi,
                                     npool)
            m = pi - pi0
        nparts[k] = m
        if m != 0:
            kept_i[nk, 0] = k
            kept_i[nk, 1] = m
            for c in range(7):
                kept_i[nk, 2 + c] = ev_i[k, c]
            kept_i[nk, 9] = s
            for c in range(4):
                kept_f[nk, c] = ev_f[k, c]
            nk += 1
    return pi, nk
