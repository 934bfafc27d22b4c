"""The reload's mapping as it was written before it was vectorised: Python loops and
dicts over device ids. The oracle the vectorised functions (engine.remap, engine.state,
engine.relations, engine.registry) are held against in test_engine_reload_vs_reference."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.state import (
    EXT_FRESH,
    NONE_MS,
    OUT_RUN_MAX,
    PER_DEVICE_FIELDS,
    X_CURFEW_AT,
    X_CURFEW_RUN,
    X_CURFEW_ZONE,
    X_OUT_TYPE,
    DeviceState,
)


def slot_keys(registry: Any) -> list[tuple[str, str]]:
    """(device_id, exclusion zone_id) of every exclusion state slot, in slot order."""
    keys = []
    for d, dev in enumerate(registry.device_ids):
        for z in registry.subjects[int(registry.arrays.device_subject[d])].exclusion:
            keys.append((dev, z))
    return keys


def carried_ext(old: DeviceState, old_device_ids: list[str], new_device_ids: list[str]
                ) -> np.ndarray:
    fresh = np.array(EXT_FRESH, dtype=np.int64)
    busy = np.any(old.ext[old.ext_row] != fresh, axis=1)
    pos = {dev: i for i, dev in enumerate(old_device_ids)}
    return np.array([bool(busy[pos[dev]]) if dev in pos else False for dev in new_device_ids],
                    dtype=bool)


def adopt(old: DeviceState, old_device_ids: list[str], old_slot_keys: list[tuple[str, str]],
          old_zone_ids: list[str], new: DeviceState, new_device_ids: list[str],
          new_slot_keys: list[tuple[str, str]], new_zone_index: dict[str, int]) -> dict[str, int]:
    old_pos = {dev: i for i, dev in enumerate(old_device_ids)}
    pairs = [(j, old_pos[dev]) for j, dev in enumerate(new_device_ids) if dev in old_pos]
    kept = len(pairs)
    if pairs:
        nj = np.array([p[0] for p in pairs], dtype=np.int64)
        oi = np.array([p[1] for p in pairs], dtype=np.int64)
        for f in PER_DEVICE_FIELDS:
            if f == "outbound_zone":
                continue
            getattr(new, f)[nj] = getattr(old, f)[oi]
        new.out_run[nj] = np.minimum(old.out_run[oi], OUT_RUN_MAX)
        zone_map = np.array([new_zone_index.get(z, -1) for z in old_zone_ids] + [-1],
                            dtype=np.int32)
        oz = old.outbound_zone[oi]
        new.outbound_zone[nj] = zone_map[np.where(oz >= 0, oz, len(old_zone_ids))]
        lost = (new.outbound_at_ms[nj] != NONE_MS) & (new.outbound_zone[nj] < 0)
        new.outbound_at_ms[nj[lost]] = NONE_MS
        _adopt_ext(old, oi, new, nj, zone_map, len(old_zone_ids))
        new.ext[new.ext_row[nj[lost]], X_OUT_TYPE] = 0
        _adopt_border(old, oi, new, nj, zone_map, len(old_zone_ids))
    old_slot = {key: i for i, key in enumerate(old_slot_keys)}
    slot_pairs = [(j, old_slot[k]) for j, k in enumerate(new_slot_keys) if k in old_slot]
    if slot_pairs:
        new.exclusion_at_ms[[p[0] for p in slot_pairs]] = old.exclusion_at_ms[
            [p[1] for p in slot_pairs]]
        new.approach_at_ms[[p[0] for p in slot_pairs]] = old.approach_at_ms[
            [p[1] for p in slot_pairs]]
    return {"devices_kept": kept, "devices_dropped": len(old_device_ids) - kept,
            "devices_new": len(new_device_ids) - kept,
            "exclusion_slots_kept": len(slot_pairs),
            "exclusion_slots_dropped": len(old_slot_keys) - len(slot_pairs)}


def _adopt_ext(old, oi, new, nj, zone_map, n_old_zones) -> None:
    own = new.ext_row[nj] > 0
    rows = new.ext_row[nj[own]]
    x = new.ext
    x[rows] = old.ext[old.ext_row[oi[own]]]
    cz = x[rows, X_CURFEW_ZONE]
    x[rows, X_CURFEW_ZONE] = zone_map[np.where(cz >= 0, cz, n_old_zones)]
    gone = (x[rows, X_CURFEW_AT] != NONE_MS) & (x[rows, X_CURFEW_ZONE] < 0)
    x[rows[gone], X_CURFEW_AT] = NONE_MS
    x[rows[gone], X_CURFEW_RUN] = 0


def _adopt_border(old, oi, new, nj, zone_map, n_old_zones) -> None:
    new.border_at_ms[nj] = old.border_at_ms[oi]
    bz = old.border_zone[oi]
    new.border_zone[nj] = zone_map[np.where(bz >= 0, bz, n_old_zones)]
    gone = (new.border_at_ms[nj] != NONE_MS) & (new.border_zone[nj] < 0)
    new.border_at_ms[nj[gone]] = NONE_MS


def separation_pairs(registry: Any) -> tuple[list[tuple[int, int]], list[str]]:
    index = registry._device_index
    pairs: list[tuple[int, int]] = []
    keys: list[str] = []
    for s in registry.subjects:
        kinds = s.device_kinds
        if "phone" in kinds and "bracelet" in kinds:
            b = s.device_ids[kinds.index("bracelet")]
            p = s.device_ids[kinds.index("phone")]
            pairs.append((index[b], index[p]))
            keys.append(f"{s.subject_id}\x1f{b}\x1f{p}")
    return pairs, keys


def adopt_relations(old, old_keys, new, new_keys) -> None:
    for old_t, new_t, ok, nk in ((old.sep, new.sep, old_keys.sep, new_keys.sep),
                                 (old.prox_at, new.prox_at, old_keys.prox, new_keys.prox),
                                 (old.contact, new.contact, old_keys.contact, new_keys.contact)):
        pos = {k: i for i, k in enumerate(ok)}
        pairs = [(j, pos[k]) for j, k in enumerate(nk) if k in pos]
        if pairs:
            new_t[[j for j, _ in pairs]] = old_t[[i for _, i in pairs]]


def folded(engine: Any) -> set[str]:
    """The subjects folded per subject, as the reconcile after a reload was given them."""
    return {s.subject_id for s in engine.registry.subjects if len(s.device_ids) > 1} \
        if engine._alarm_per == "subject" else set()
