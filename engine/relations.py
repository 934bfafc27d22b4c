"""The relation rules' data (docs/rules.md, "Relations"): which devices are related to
which, the state of each relation, and its part of a checkpoint.

The relation rules compare one device's fix with another device's latest fix:

- ``separation``: a subject's bracelet and phone (the first device of each kind listed);
- ``proximity``: each device of a subject against each protected person (the subjects
  file's top-level ``protected`` list) protected from that subject (the person's devices,
  kind ``victim``, have slots too);
- ``contact``: two subjects either of which lists the other in ``contacts`` (one pair,
  the subject with the smaller id first), every device of both;

Nothing here is per device except :attr:`RelationArrays.dev_rel` (int32, 4 bytes): the
*relation slot* of a device that takes part in any relation, -1 for the others (which
the kernels then never look at again). Everything else lives in side tables sized by the
relations: per separation pair, proximity entry and contact pair its episode. The other
device's newest in-order fix is the device state's own (``DeviceState.last_pos`` and
``last_fix_ts_ms``, which every in-order fix writes for the device alarms' evidence), so
the relations keep no copy of it. The kernels are :mod:`engine.relation_kernels`.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any, NamedTuple

import numpy as np

from contract.alarms import DEVICE_KINDS
from engine.checkpoint_arrays import open_arrays
from engine.relation_kernels import EF_PEER_ACC, EF_PEER_LAT, EF_PEER_LON, EV_PEER
from engine.remap import index_of, pair_old
from engine.state import NONE_MS

# RelationState.sep columns
SEP_AT = 0  # the open episode's raised at (epoch ms), or NONE_MS
SEP_SIDE = 1  # the side (0 bracelet, 1 phone) whose device the episode was raised on
SEP_RUN = 2  # consecutive far pairs so far
SEP_FRESH = (NONE_MS, 0, 0)
CONTACT_FRESH = (NONE_MS, NONE_MS, 0)  # RelationState.contact: engine.relation_kernels.CT_*


class RelationArrays(NamedTuple):
    """Read-only relation arrays for the kernels (``d`` device index, ``r`` relation
    slot, ``p`` separation pair, ``e`` proximity entry, ``v`` protected person)."""

    dev_rel: np.ndarray  # int32[n_devices]: relation slot of device d, -1: none
    rel_dev: np.ndarray  # int32[n_rel]: the device of slot r
    rel_sep: np.ndarray  # int32[n_rel]: the separation pair of slot r, -1: none
    sep_dev: np.ndarray  # int32[n_sep, 2]: (bracelet, phone) device indices of pair p
    prox_off: np.ndarray  # int32[n_rel+1]: proximity entries of slot r, CSR
    prox_person: np.ndarray  # int32[n_prox]: the protected person of entry e
    person_dev_off: np.ndarray  # int32[n_persons+1]: the person's devices, CSR
    person_dev: np.ndarray  # int32: device indices
    subj_dev_off: np.ndarray  # int32[n_subjects+1]: subject s's devices are [off[s], off[s+1])
    # (only with contact pairs; [0] otherwise)
    cont_off: np.ndarray  # int32[n_rel+1]: contact pairs of slot r, CSR
    cont_pair: np.ndarray  # int32: contact pair indices
    cont_subj: np.ndarray  # int32[n_contact, 2]: the pair's subjects, smaller id first


class RelationState(NamedTuple):
    """Mutable relation state (the kernels update it in place)."""

    sep: np.ndarray  # int64[n_sep, 3]: SEP_* columns
    prox_at: np.ndarray  # int64[n_prox]: open proximity episode's raised at, or NONE_MS
    contact: np.ndarray  # int64[n_contact, 3]: open at, start of the close run (NONE_MS),
    #                      the episode's device as an offset into the first subject's


class RelationKeys(NamedTuple):
    """What identifies each pair and entry across registries (for checkpoints)."""

    sep: list[str]  # "subject\\x1fbracelet\\x1fphone" of each pair
    prox: list[str]  # "device\\x1fperson" of each proximity entry
    contact: list[str]  # "subject\\x1fsubject\\x1fthe first's devices" of each pair


def _separation_pairs(registry: Any) -> tuple[np.ndarray, list[str]]:
    """(int32[n, 2] (bracelet, phone) device indices, keys) of every subject with both a
    bracelet and a phone: the first device of each kind it lists, in subject order."""
    subject = registry.arrays.device_subject
    kind = registry.device_kind_code

    def first(code: int) -> tuple[np.ndarray, np.ndarray]:
        """(subjects, their first device of kind ``code``): devices are in subject order."""
        dev = np.flatnonzero(kind == code)
        subjects, at = np.unique(subject[dev], return_index=True)
        return subjects, dev[at]

    sb, bracelet = first(DEVICE_KINDS.index("bracelet"))
    sp, phone = first(DEVICE_KINDS.index("phone"))
    both, ib, ip = np.intersect1d(sb, sp, assume_unique=True, return_indices=True)
    pairs = np.stack([bracelet[ib], phone[ip]], axis=1).astype(np.int32).reshape(-1, 2)
    ids, sids = registry.device_ids, registry.subject_ids  # (a person has no pair)
    keys = [f"{sids[s]}\x1f{ids[b]}\x1f{ids[p]}"
            for s, b, p in zip(both.tolist(), pairs[:, 0].tolist(), pairs[:, 1].tolist())]
    return pairs, keys


def _protection(registry: Any) -> tuple[dict[int, list[int]], list[list[int]]]:
    """({subject device index: [person index, ...]}, [[person's device index, ...]])."""
    if not registry.protected:
        return {}, []
    index = registry.device_index
    person_devs = [[index(d) for d in p.device_ids] for p in registry.protected]
    subject_of = {sid: s for s, sid in enumerate(registry.subject_ids)}
    watched: dict[int, list[int]] = {}
    for v, p in enumerate(registry.protected):
        for sid in p.protected_from:
            for dev in registry.subjects[subject_of[sid]].device_ids:
                watched.setdefault(index(dev), []).append(v)
    return watched, person_devs


def _contact_pairs(registry: Any) -> list[tuple[int, int]]:
    """Subject index pairs (smaller subject id first) of the prohibited contacts."""
    named = {tuple(sorted((s.subject_id, other)))
             for s in registry.subjects[:len(registry.subject_ids)] if s.contacts
             for other in s.contacts}
    if not named:
        return []
    index = {sid: s for s, sid in enumerate(registry.subject_ids)}
    pairs = {(index[a], index[b]) for a, b in named}
    return sorted(pairs, key=lambda p: (registry.subject_ids[p[0]], registry.subject_ids[p[1]]))


def relation_arrays(registry: Any) -> tuple[RelationArrays, RelationKeys]:
    """The relations of ``registry`` (an :class:`engine.registry.Registry`)."""
    pairs, sep_keys = _separation_pairs(registry)
    watched, person_devs = _protection(registry)
    contacts = _contact_pairs(registry)
    subj_dev_off = np.zeros(len(registry.subjects) + 1, dtype=np.int32)
    if contacts:  # (read by the contact rule only: without contact pairs, not kept)
        subj_dev_off[1:] = np.cumsum([len(s.device_ids) for s in registry.subjects])
    cont_of: dict[int, list[int]] = {}
    for c, pair in enumerate(contacts):
        for s in pair:
            for d in range(subj_dev_off[s], subj_dev_off[s + 1]):
                cont_of.setdefault(d, []).append(c)
    sep_dev = pairs
    person_dev = np.array([d for x in person_devs for d in x], dtype=np.int32)
    mark = np.zeros(registry.n_devices, dtype=bool)  # (np.unique's hash: 5x slower)
    for devices in (sep_dev.ravel(), np.fromiter(watched, dtype=np.int32, count=len(watched)),
                    person_dev, np.fromiter(cont_of, dtype=np.int32, count=len(cont_of))):
        mark[devices] = True
    related = np.flatnonzero(mark).astype(np.int32)
    dev_rel = np.full(registry.n_devices, -1, dtype=np.int32)
    dev_rel[related] = np.arange(len(related), dtype=np.int32)
    rel_sep = np.full(len(related), -1, dtype=np.int32)
    rel_sep[dev_rel[sep_dev[:, 0]]] = np.arange(len(pairs), dtype=np.int32)
    rel_sep[dev_rel[sep_dev[:, 1]]] = np.arange(len(pairs), dtype=np.int32)
    related_list = related.tolist()
    prox_lists = _per_slot(watched, related_list)
    cont_lists = _per_slot(cont_of, related_list)
    arrays = RelationArrays(
        dev_rel=dev_rel,
        rel_dev=related,
        rel_sep=rel_sep,
        sep_dev=sep_dev,
        prox_off=_offsets(prox_lists, len(related)),
        prox_person=np.array([v for x in prox_lists.values() for v in x], dtype=np.int32),
        person_dev_off=_offsets(person_devs),
        person_dev=person_dev,
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


def _contact_key(registry: Any, a: int, b: int) -> str:
    first = registry.subjects[a]
    return "\x1f".join((first.subject_id, registry.subject_ids[b], ",".join(first.device_ids)))


def _offsets(lists: Any, n: int | None = None) -> np.ndarray:
    """CSR offsets of a list of lists, or of ``{slot: list}`` (sorted by slot) over ``n``
    slots (the slots absent have none)."""
    if n is None:
        off = np.zeros(len(lists) + 1, dtype=np.int32)
        off[1:] = np.cumsum([len(x) for x in lists])
        return off
    counts = np.zeros(n, dtype=np.int32)
    if lists:
        counts[np.fromiter(lists, dtype=np.int64, count=len(lists))] = [len(x) for x in
                                                                         lists.values()]
    off = np.zeros(n + 1, dtype=np.int32)
    off[1:] = np.cumsum(counts)
    return off


def _per_slot(by_device: dict[int, list[int]], related: list[int]) -> dict[int, list[int]]:
    """``{slot: entries}`` of the slots whose device has entries, in slot order."""
    if not by_device:
        return {}
    slot = {d: r for r, d in enumerate(related)}
    return dict(sorted((slot[d], x) for d, x in by_device.items()))


def new_relation_state(arrays: RelationArrays) -> RelationState:
    """Fresh state: no episode open."""
    return RelationState(
        sep=np.tile(np.array(SEP_FRESH, dtype=np.int64), (len(arrays.sep_dev), 1)),
        prox_at=np.full(len(arrays.prox_person), NONE_MS, dtype=np.int64),
        contact=np.tile(np.array(CONTACT_FRESH, dtype=np.int64), (len(arrays.cont_subj), 1)),
    )


def relation_key_arrays(keys: RelationKeys) -> dict[str, np.ndarray]:
    """The keys part of a checkpoint's relations (``rel_*_keys``): they change only with
    the registry, so the engine builds them once per registry."""
    return {"rel_contact_keys": np.array(keys.contact, dtype=np.str_),
            "rel_sep_keys": np.array(keys.sep, dtype=np.str_),
            "rel_prox_keys": np.array(keys.prox, dtype=np.str_)}


def relation_snapshot(state: RelationState, keys: dict[str, np.ndarray], copy: bool = True
                      ) -> dict[str, np.ndarray]:
    """The relation part of a checkpoint (``rel_*`` arrays), copied unless ``copy`` is
    False; ``keys``: :func:`relation_key_arrays` (never written to, so not copied)."""
    own = {"rel_sep": state.sep, "rel_prox_at": state.prox_at, "rel_contact": state.contact}
    return {**{k: a.copy() if copy else a for k, a in own.items()}, **keys}


def load_relation_snapshot(source: Any) -> tuple[RelationState, RelationKeys] | None:
    """The relation part of a checkpoint (a path, the bytes of one or its arrays), or None
    when it has none (written before the relation rules: they start fresh)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with open_arrays(source) as data:
            if "rel_sep_keys" not in data.files:
                return None
            state = RelationState(sep=data["rel_sep"].copy(),
                                  prox_at=data["rel_prox_at"].copy(),
                                  contact=data["rel_contact"].copy())
            keys = RelationKeys(sep=[str(x) for x in data["rel_sep_keys"]],
                                prox=[str(x) for x in data["rel_prox_keys"]],
                                contact=[str(x) for x in data["rel_contact_keys"]])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # the main loader has already refused a checkpoint it cannot read
    return state, keys


def reloaded_relations(old: tuple[RelationArrays, RelationState, RelationKeys],
                       registry: Any, dev_old: np.ndarray, n_old_devices: int
                       ) -> tuple[RelationArrays, RelationKeys, RelationState]:
    """The relations of ``registry``, their state carried over from ``old`` (see
    :func:`adopt_relations`; ``dev_old``: each device's old row, engine.remap)."""
    relations, keys = relation_arrays(registry)
    state = new_relation_state(relations)
    sep_old = pair_old(old[0].sep_dev, old[2].sep, relations.sep_dev, keys.sep, dev_old,
                       n_old_devices)
    adopt_relations(old[1], old[2], state, keys, sep_old)
    return relations, keys, state


def adopt_relations(old: RelationState, old_keys: RelationKeys, new: RelationState,
                    new_keys: RelationKeys, sep_old: np.ndarray | None = None) -> None:
    """Copy ``old`` into ``new`` by key: a separation pair's episode and run by
    (subject, bracelet, phone), a proximity episode by (device, person); a pair whose
    devices changed starts fresh (its open alarm, if any, stays open in the store for the
    operator), as does a protection that was lifted. ``sep_old``: the old pair of each
    new one, when known (:func:`engine.remap.pair_old`)."""
    for old_t, new_t, ok, nk in ((old.sep, new.sep, old_keys.sep, new_keys.sep),
                                 (old.prox_at, new.prox_at, old_keys.prox, new_keys.prox),
                                 (old.contact, new.contact, old_keys.contact, new_keys.contact)):
        if len(ok) == 0 or len(nk) == 0:
            continue
        pos = sep_old if sep_old is not None and new_t is new.sep else index_of(
            np.array(ok, dtype=np.str_), np.array(nk, dtype=np.str_))
        kept = np.flatnonzero(pos >= 0)
        new_t[kept] = old_t[pos[kept]]


def relation_event_parts(type_name: str, evidence: list[float], row_i: np.ndarray,
                         row_f: np.ndarray, registry: Any
                         ) -> tuple[tuple[float, float, float, float] | None, dict]:
    """(evidence, extra keys) of a relation event row (engine.relation_kernels)."""
    peer = registry.device_ids[int(row_i[EV_PEER])]
    if type_name == "proximity":  # never the protected person's position
        # (a protected person is the registry's subject of their devices: engine.protected)
        return tuple(evidence), {"person_id": registry.subject_of(int(row_i[EV_PEER]))}
    if type_name == "contact":
        return None, {"peer_subject_id": registry.subject_of(int(row_i[EV_PEER])),
                      "peer_device_id": peer, "distance_m": round(float(row_f[2]), 1)}
    if type_name == "separation":
        return tuple(evidence), {"peer_device_id": peer,
                                 "peer_lat": float(row_f[EF_PEER_LAT]),
                                 "peer_lon": float(row_f[EF_PEER_LON]),
                                 "peer_acc": float(row_f[EF_PEER_ACC])}
    raise ValueError(f"not a relation type: {type_name}")


def relation_open_alarms(arrays: RelationArrays, state: RelationState, registry: Any
                         ) -> list[tuple[str, int, int, str | None]]:
    """(type, device index, raised at, the other or None) of every open relation episode
    (a proximity alarm's identity has the person in the place of the zone, a contact
    alarm's the other subject)."""
    out: list[tuple[str, int, int, str | None]] = []
    for p in np.flatnonzero(state.sep[:, SEP_AT] != NONE_MS).tolist():
        out.append(("separation", int(arrays.sep_dev[p, int(state.sep[p, SEP_SIDE])]),
                    int(state.sep[p, SEP_AT]), None))
    for e in np.flatnonzero(state.prox_at != NONE_MS).tolist():
        r = int(np.searchsorted(arrays.prox_off, e, side="right")) - 1
        person = registry.protected[int(arrays.prox_person[e])].person_id
        out.append(("proximity", int(arrays.rel_dev[r]), int(state.prox_at[e]), person))
    for c in np.flatnonzero(state.contact[:, 0] != NONE_MS).tolist():
        first = int(arrays.cont_subj[c, 0])
        out.append(("contact", int(arrays.subj_dev_off[first] + state.contact[c, 2]),
                    int(state.contact[c, 0]), registry.subject_ids[int(arrays.cont_subj[c, 1])]))
    return out
