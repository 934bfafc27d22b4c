"""The relation rules' data (docs/rules.md, "Relations"): which devices are related to
which, the state of each relation, and its part of a checkpoint.

The relation rules compare one device's fix with another device's latest fix:

- ``separation``: a subject's bracelet and phone (the first device of each kind listed);

Nothing here is per device except :attr:`RelationArrays.dev_rel` (int32, 4 bytes): the
*relation slot* of a device that takes part in any relation, -1 for the others (which
the kernels then never look at again). Everything else lives in side tables sized by the
relations: per slot the newest in-order fix (lon, lat, acc_m, ts_ms), per separation
pair its episode. The kernels are :mod:`engine.relation_kernels`.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any, NamedTuple

import numpy as np

from engine.relation_kernels import EF_PEER_ACC, EF_PEER_LAT, EF_PEER_LON, EV_PEER
from engine.state import NONE_MS

# RelationState.sep columns
SEP_AT = 0  # the open episode's raised at (epoch ms), or NONE_MS
SEP_SIDE = 1  # the side (0 bracelet, 1 phone) whose device the episode was raised on
SEP_RUN = 2  # consecutive far pairs so far
SEP_FRESH = (NONE_MS, 0, 0)


class RelationArrays(NamedTuple):
    """Read-only relation arrays for the kernels (``d`` device index, ``r`` relation
    slot, ``p`` separation pair)."""

    dev_rel: np.ndarray  # int32[n_devices]: relation slot of device d, -1: none
    rel_dev: np.ndarray  # int32[n_rel]: the device of slot r
    rel_sep: np.ndarray  # int32[n_rel]: the separation pair of slot r, -1: none
    sep_dev: np.ndarray  # int32[n_sep, 2]: (bracelet, phone) device indices of pair p


class RelationState(NamedTuple):
    """Mutable relation state (the kernels update it in place)."""

    fix: np.ndarray  # float64[n_rel, 3]: lon, lat (WGS-84 degrees), acc_m of the newest fix
    fix_ts: np.ndarray  # int64[n_rel]: its ts (epoch ms), NONE_MS: no fix yet
    sep: np.ndarray  # int64[n_sep, 3]: SEP_* columns


class RelationKeys(NamedTuple):
    """What identifies each slot and pair across registries (for checkpoints)."""

    rel: list[str]  # device id of each slot
    sep: list[str]  # "subject\\x1fbracelet\\x1fphone" of each pair


def relation_arrays(registry: Any) -> tuple[RelationArrays, RelationKeys]:
    """The relations of ``registry`` (an :class:`engine.registry.Registry`)."""
    n_dev = registry.n_devices
    index = registry.device_index
    pairs: list[tuple[int, int]] = []
    sep_keys: list[str] = []
    for s in registry.subjects:
        kinds = list(s.device_kinds) or ["bracelet"] * len(s.device_ids)
        if "bracelet" in kinds and "phone" in kinds:
            b = s.device_ids[kinds.index("bracelet")]
            p = s.device_ids[kinds.index("phone")]
            pairs.append((index(b), index(p)))
            sep_keys.append(f"{s.subject_id}\x1f{b}\x1f{p}")
    related = sorted({d for pair in pairs for d in pair})
    dev_rel = np.full(n_dev, -1, dtype=np.int32)
    dev_rel[related] = np.arange(len(related), dtype=np.int32)
    rel_sep = np.full(len(related), -1, dtype=np.int32)
    for k, (b, p) in enumerate(pairs):
        rel_sep[dev_rel[b]] = k
        rel_sep[dev_rel[p]] = k
    arrays = RelationArrays(
        dev_rel=dev_rel,
        rel_dev=np.array(related, dtype=np.int32),
        rel_sep=rel_sep,
        sep_dev=np.array(pairs, dtype=np.int32).reshape(len(pairs), 2),
    )
    keys = RelationKeys(rel=[registry.device_ids[d] for d in related], sep=sep_keys)
    return arrays, keys


def new_relation_state(arrays: RelationArrays) -> RelationState:
    """Fresh state: no fix seen, no episode open."""
    n_rel = len(arrays.rel_dev)
    return RelationState(
        fix=np.full((n_rel, 3), np.nan),
        fix_ts=np.full(n_rel, NONE_MS, dtype=np.int64),
        sep=np.tile(np.array(SEP_FRESH, dtype=np.int64), (len(arrays.sep_dev), 1)),
    )


def relation_snapshot(state: RelationState, keys: RelationKeys) -> dict[str, np.ndarray]:
    """The relation part of a checkpoint (``rel_*`` arrays), copied."""
    return {"rel_fix": state.fix.copy(), "rel_fix_ts": state.fix_ts.copy(),
            "rel_sep": state.sep.copy(),
            "rel_keys": np.array(keys.rel, dtype=np.str_),
            "rel_sep_keys": np.array(keys.sep, dtype=np.str_)}


def load_relation_snapshot(source: Any) -> tuple[RelationState, RelationKeys] | None:
    """The relation part of a checkpoint (a path or the bytes of one), or None when it
    has none (written before the relation rules: they start fresh)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with np.load(source, allow_pickle=False) as data:
            if "rel_keys" not in data.files:
                return None
            state = RelationState(fix=data["rel_fix"].copy(), fix_ts=data["rel_fix_ts"].copy(),
                                  sep=data["rel_sep"].copy())
            keys = RelationKeys(rel=[str(x) for x in data["rel_keys"]],
                                sep=[str(x) for x in data["rel_sep_keys"]])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # the main loader has already refused a checkpoint it cannot read
    return state, keys


def adopt_relations(old: RelationState, old_keys: RelationKeys, new: RelationState,
                    new_keys: RelationKeys) -> None:
    """Copy ``old`` into ``new`` by key: a device's newest fix by device id, a separation
    pair's episode and run by (subject, bracelet, phone); a pair whose devices changed
    starts fresh (its open alarm, if any, stays open in the store for the operator)."""
    for old_t, new_t, ok, nk in ((old.fix, new.fix, old_keys.rel, new_keys.rel),
                                 (old.fix_ts, new.fix_ts, old_keys.rel, new_keys.rel),
                                 (old.sep, new.sep, old_keys.sep, new_keys.sep)):
        pos = {k: i for i, k in enumerate(ok)}
        pairs = [(j, pos[k]) for j, k in enumerate(nk) if k in pos]
        if pairs:
            new_t[[j for j, _ in pairs]] = old_t[[i for _, i in pairs]]


def relation_event_parts(type_name: str, evidence: list[float], row_i: np.ndarray,
                         row_f: np.ndarray, registry: Any
                         ) -> tuple[tuple[float, float, float, float] | None, dict]:
    """(evidence, extra keys) of a relation event row (engine.relation_kernels)."""
    peer = registry.device_ids[int(row_i[EV_PEER])]
    if type_name == "separation":
        return tuple(evidence), {"peer_device_id": peer,
                                 "peer_lat": float(row_f[EF_PEER_LAT]),
                                 "peer_lon": float(row_f[EF_PEER_LON]),
                                 "peer_acc": float(row_f[EF_PEER_ACC])}
    raise ValueError(f"not a relation type: {type_name}")


def relation_open_alarms(arrays: RelationArrays, state: RelationState
                         ) -> list[tuple[str, int, int]]:
    """(type, device index, raised at) of every open relation episode."""
    out = []
    for p in np.flatnonzero(state.sep[:, SEP_AT] != NONE_MS).tolist():
        out.append(("separation", int(arrays.sep_dev[p, int(state.sep[p, SEP_SIDE])]),
                    int(state.sep[p, SEP_AT])))
    return out
