"""The reload's mapping as it was written before it was vectorised: Python loops and
dicts over device ids. The oracle the vectorised functions (engine.remap, engine.state,
engine.relations, engine.registry) are held against in test_engine_reload_vs_reference."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.engine import _scheduled
from engine.fold.table import FoldTable
from engine.relations import (
    RelationArrays,
    RelationKeys,
    _contact_key,
    _offsets,
    _per_slot,
    new_relation_state,
)
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
    new_state,
    recompute_deadlines,
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


def protection(registry: Any) -> tuple[dict[int, list[int]], list[list[int]]]:
    index = registry.device_index
    person_devs = [[index(d) for d in p.device_ids] for p in registry.protected]
    subject_of = {sid: s for s, sid in enumerate(registry.subject_ids)}
    watched: dict[int, list[int]] = {}
    for v, p in enumerate(registry.protected):
        for sid in p.protected_from:
            for dev in registry.subjects[subject_of[sid]].device_ids:
                watched.setdefault(index(dev), []).append(v)
    return watched, person_devs


def contact_pairs(registry: Any) -> list[tuple[int, int]]:
    index = {sid: s for s, sid in enumerate(registry.subject_ids)}
    pairs = set()
    for s in registry.subjects[:len(registry.subject_ids)]:
        for other in s.contacts:
            a, b = sorted((s.subject_id, other))
            pairs.add((index[a], index[b]))
    return sorted(pairs, key=lambda p: (registry.subject_ids[p[0]], registry.subject_ids[p[1]]))


def relation_arrays(registry: Any) -> tuple[RelationArrays, RelationKeys]:
    pairs, sep_keys = separation_pairs(registry)
    watched, person_devs = protection(registry)
    contacts = contact_pairs(registry)
    subj_dev_off = np.zeros(len(registry.subjects) + 1, dtype=np.int32)
    if contacts:
        subj_dev_off[1:] = np.cumsum([len(s.device_ids) for s in registry.subjects])
    cont_of: dict[int, list[int]] = {}
    for c, pair in enumerate(contacts):
        for s in pair:
            for d in range(subj_dev_off[s], subj_dev_off[s + 1]):
                cont_of.setdefault(d, []).append(c)
    sep_dev = np.array(pairs, dtype=np.int32).reshape(len(pairs), 2)
    person_dev = np.array([d for x in person_devs for d in x], dtype=np.int32)
    related = np.unique(np.concatenate([
        sep_dev.ravel(), np.fromiter(watched, dtype=np.int32, count=len(watched)), person_dev,
        np.fromiter(cont_of, dtype=np.int32, count=len(cont_of))]).astype(np.int32))
    dev_rel = np.full(registry.n_devices, -1, dtype=np.int32)
    dev_rel[related] = np.arange(len(related), dtype=np.int32)
    rel_sep = np.full(len(related), -1, dtype=np.int32)
    rel_sep[dev_rel[sep_dev[:, 0]]] = np.arange(len(pairs), dtype=np.int32)
    rel_sep[dev_rel[sep_dev[:, 1]]] = np.arange(len(pairs), dtype=np.int32)
    related_list = related.tolist()
    prox_lists = _per_slot(watched, related_list)
    cont_lists = _per_slot(cont_of, related_list)
    arrays = RelationArrays(
        dev_rel=dev_rel, rel_dev=related, rel_sep=rel_sep, sep_dev=sep_dev,
        prox_off=_offsets(prox_lists, len(related)),
        prox_person=np.array([v for x in prox_lists.values() for v in x], dtype=np.int32),
        person_dev_off=_offsets(person_devs), person_dev=person_dev,
        subj_dev_off=subj_dev_off if contacts else np.zeros(1, dtype=np.int32),
        cont_off=_offsets(cont_lists, len(related)),
        cont_pair=np.array([c for x in cont_lists.values() for c in x], dtype=np.int32),
        cont_subj=np.array(contacts, dtype=np.int32).reshape(len(contacts), 2),
    )
    ids = registry.device_ids
    persons = [p.person_id for p in registry.protected]
    keys = RelationKeys(sep=sep_keys,
                        prox=[f"{ids[related_list[r]]}\x1f{persons[v]}"
                              for r, x in prox_lists.items() for v in x],
                        contact=[_contact_key(registry, a, b) for a, b in contacts])
    return arrays, keys


def open_device_episodes(engine: Any) -> list[tuple[str, str, str, str | None, int]]:
    reg = engine.registry
    index = {dev: d for d, dev in enumerate(reg.device_ids)}
    subject_of = reg.arrays.device_subject
    rows = [(reg.subjects[int(subject_of[index[a["device_id"]]])].subject_id,
             a["device_id"], a["type"], a["zone_id"], a["at"]) for a in engine.open_alarms()]
    return sorted(rows, key=lambda r: (index[r[1]], r[2], r[3] or "", r[4]))


def reload(engine: Any, zones: Any, registry: Any) -> dict[str, int]:
    """Engine.reload as it was (without a new config)."""
    engine._check_zones(zones, registry)
    fresh = new_state(registry.n_devices, registry.n_slots, _scheduled(registry)
                      | carried_ext(engine.state, engine.registry.device_ids,
                                    registry.device_ids))
    stats = adopt(engine.state, engine.registry.device_ids, slot_keys(engine.registry),
                  list(engine.zones.zone_ids), fresh, registry.device_ids,
                  slot_keys(registry), dict(zones.index))
    recompute_deadlines(fresh, registry.arrays.device_level, engine._offline_after_ms,
                        engine._no_fix_after_ms)
    engine.zones, engine.registry, engine.state = zones, registry, fresh
    relations, rel_keys = relation_arrays(registry)
    rel_state = new_relation_state(relations)
    adopt_relations(engine.rel_state, engine._rel_keys, rel_state, rel_keys)
    engine.relations, engine._rel_keys, engine.rel_state = relations, rel_keys, rel_state
    engine._ids = None
    engine._bind()
    episodes = engine._per_subject.episodes()  # (the table still reads the old registry)
    episodes.reconcile(open_device_episodes(engine), folded(engine))
    engine._per_subject = FoldTable.of_episodes(episodes, registry, zones.zone_ids)
    return stats


def restore_bytes(data: bytes, zones: Any, registry: Any, config: Any) -> Any:
    """Engine.restore_bytes as it was."""
    from engine import Engine
    from engine.per_subject import CHECKPOINT_KEY, SubjectEpisodes
    from engine.relations import load_relation_snapshot
    from engine.state import load_checkpoint_bytes

    state, device_ids, keys, zone_ids, counters, extras = load_checkpoint_bytes(data, "ref")
    eng = Engine(zones, registry, config)
    eng.state = new_state(registry.n_devices, registry.n_slots, _scheduled(registry)
                          | carried_ext(state, device_ids, registry.device_ids))
    eng._bind()
    adopt(state, device_ids, keys, zone_ids, eng.state, registry.device_ids,
          slot_keys(registry), dict(zones.index))
    episodes = SubjectEpisodes.from_array(extras.get(CHECKPOINT_KEY))
    episodes.reconcile(open_device_episodes(eng), folded(eng))
    eng._per_subject = FoldTable.of_episodes(episodes, registry, zones.zone_ids)
    eng._counters[: len(counters)] = counters[: len(eng._counters)]
    recompute_deadlines(eng.state, registry.arrays.device_level, eng._offline_after_ms,
                        eng._no_fix_after_ms)
    relations = load_relation_snapshot(data)
    if relations is not None:
        adopt_relations(*relations, eng.rel_state, eng._rel_keys)
    return eng
