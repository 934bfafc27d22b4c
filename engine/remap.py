"""Which row of an old device state each row of a new one continues (a reload, a restore
onto a changed registry), found with sorted arrays, not a Python dict per device.

State is carried by device id and by (device id, exclusion zone id) (engine.state.adopt).
:func:`index_of` looks ids up by value (a stable argsort and ``np.searchsorted``); a slot's
(device, zone) pair is looked up as one int64, both mapped to the new registry's indices.
At national size (1.4 M devices) ``Engine.reload`` took ~55 s with the dicts and loops
this replaces, 2.3 s with it (benchmarks/README.md, "scale").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Remap(NamedTuple):
    """The rows of an old state each row of a new one continues."""

    dev_old: np.ndarray  # int64[n_new_devices]: the old device row, -1: a new device
    slot_old: np.ndarray  # int64[n_new_slots]: the old exclusion slot, -1: a new slot
    zone_new: np.ndarray  # int32[n_old_zones + 1]: the new index of each old zone, -1: gone
    #                       (the last entry, -1, is where "no zone" (-1) indexes)
    n_old_devices: int
    n_old_slots: int


def index_of(ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """int64 position in ``ids`` of each of ``queries``, -1 where it is not there; of an
    id that is repeated, its last position (as ``{id: i for i, id in enumerate(ids)}``).
    Both 1-D arrays of one kind (strings, or integers)."""
    ids = np.asarray(ids)
    queries = np.asarray(queries)
    out = np.full(len(queries), -1, dtype=np.int64)
    if len(ids) == 0 or len(queries) == 0:
        return out
    order = np.argsort(ids, kind="stable")
    ranked = ids[order]
    last = np.ones(len(ranked), dtype=bool)  # the last of each run of equal ids
    last[:-1] = ranked[1:] != ranked[:-1]
    if not last.all():
        ranked, order = ranked[last], order[last]
    at = np.minimum(np.searchsorted(ranked, queries), len(ranked) - 1)
    hit = ranked[at] == queries
    out[hit] = order[at[hit]]
    return out


def _pair_index(old_dev: np.ndarray, old_zone: np.ndarray, new_dev: np.ndarray,
                new_zone: np.ndarray, n_zones: int) -> np.ndarray:
    """The old slot of each new slot (-1: none): the old slots' device and zone given as
    the new registry's indices (-1: not in it), matched as one int64 ``dev * n_zones +
    zone``."""
    valid = np.flatnonzero((old_dev >= 0) & (old_zone >= 0))
    keys = old_dev[valid].astype(np.int64) * n_zones + old_zone[valid]
    found = index_of(keys, new_dev.astype(np.int64) * n_zones + new_zone)
    return np.where(found >= 0, valid[np.maximum(found, 0)] if len(valid) else -1, -1)


def _zone_new(old_zone_ids: Any, new_zone_ids: Any) -> np.ndarray:
    """The new index of each old zone, -1 for one gone, and a last -1 (for "no zone")."""
    old_ids, new_ids = list(old_zone_ids), list(new_zone_ids)
    if old_ids == new_ids:
        found = np.arange(len(old_ids), dtype=np.int64)
    else:
        found = index_of(_strings(new_ids), _strings(old_ids))
    return np.append(found, -1).astype(np.int32)


def _strings(values: Any) -> np.ndarray:
    return np.array(values, dtype=np.str_).reshape(-1)


def remap_registry(old: Any, new: Any, old_zone_ids: Any, new_zone_ids: Any) -> Remap:
    """How a state of registry ``old`` (on zones ``old_zone_ids``) maps onto registry
    ``new`` (both :class:`engine.registry.Registry`, whose device ids are unique)."""
    dev_old = index_of(old.device_id_array, new.device_id_array)
    zone_new = _zone_new(old_zone_ids, new_zone_ids)
    kept = np.flatnonzero(dev_old >= 0)
    new_of_old = np.full(old.n_devices + 1, -1, dtype=np.int64)  # [-1]: the absent's
    new_of_old[dev_old[kept]] = kept
    old_dev, old_zone = old.slot_arrays()
    new_dev, new_zone = new.slot_arrays()
    slot_old = _pair_index(new_of_old[old_dev], zone_new[old_zone], new_dev, new_zone,
                           len(new.zone_ids))
    return Remap(dev_old, slot_old, zone_new, old.n_devices, old.n_slots)


def remap_ids(device_ids: Any, slot_keys: Any, zone_ids: Any, new: Any,
              new_zone_ids: Any) -> Remap:
    """How a state whose rows are named by ids (a checkpoint's ``device_ids``, its slots'
    ``(device id, zone id)`` and ``zone_ids``) maps onto registry ``new``."""
    new_zone_arr = _strings(list(new_zone_ids))
    slot_dev = _strings([k[0] for k in slot_keys])
    slot_zone = _strings([k[1] for k in slot_keys])
    new_dev, new_zone = new.slot_arrays()
    slot_old = _pair_index(index_of(new.device_id_array, slot_dev),
                           index_of(new_zone_arr, slot_zone), new_dev, new_zone,
                           len(new_zone_arr))
    return Remap(index_of(_strings(device_ids), new.device_id_array), slot_old,
                 _zone_new(zone_ids, new_zone_ids), len(device_ids), len(slot_keys))


def pair_old(old_pairs: np.ndarray, old_keys: list[str], new_pairs: np.ndarray,
             new_keys: list[str], dev_old: np.ndarray, n_old_devices: int) -> np.ndarray:
    """The old separation pair each new one continues (-1: none), as matching their keys
    (subject, bracelet and phone ids; unique in a registry) would: the one candidate is
    the old pair whose bracelet is the new bracelet's old row, kept if the keys are equal
    (``old_pairs``/``new_pairs``: (bracelet, phone) device rows, int[n, 2])."""
    out = np.full(len(new_pairs), -1, dtype=np.int64)
    if len(old_pairs) == 0 or len(new_pairs) == 0:
        return out
    pair_of = np.full(n_old_devices, -1, dtype=np.int64)
    pair_of[old_pairs[:, 0]] = np.arange(len(old_pairs))
    bracelet = dev_old[new_pairs[:, 0]]
    cand = np.where(bracelet >= 0, pair_of[np.maximum(bracelet, 0)], -1)
    p = np.flatnonzero(cand >= 0)
    same = np.array([old_keys[q] == new_keys[j] for j, q in zip(p.tolist(), cand[p].tolist())],
                    dtype=bool).reshape(-1)
    out[p[same]] = cand[p[same]]
    return out
