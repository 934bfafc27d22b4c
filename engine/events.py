"""Event rows -> alarm event dicts (keys in the contract's order, docs/internals.md).

The rows are folded per subject first, on the arrays (engine.fold: ``alarm_per =
"subject"``), so a device event that folds into nothing never becomes a dict; only the
rows that leave something are read into Python.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from contract.alarms import ALARM_TYPES, EVIDENCE_TYPES, alarm_event, alarm_id
from engine import kernels as K
from engine.evidence import DEVICE_EVIDENCE, device_evidence
from engine.relations import relation_event_parts

# The relation rules' types (their events carry the peer's keys: engine.relations).
REL_TYPES = frozenset(("separation", "proximity", "contact"))
# Up to this many event rows are read into Python as rows, more as columns.
FEW_ROWS = 16


def suspended(subject: Any, type_name: str, at_ms: int) -> bool:
    """Is an alarm of ``type_name`` at ``at_ms`` in one of ``subject``'s suspensions of
    that type (``[start, end]``, both inclusive)?"""
    return any(sp.type == type_name and sp.start_ms <= at_ms <= sp.end_ms
               for sp in subject.suspensions)


def event_dicts(engine: Any, ev_i: np.ndarray, ev_f: np.ndarray, n: int) -> list[dict]:
    """The alarm event dicts of ``engine``'s first ``n`` event rows, in row order."""
    if n == 0:
        return []
    reg = engine.registry
    table = engine._per_subject
    _, kept_i, kept_f, parts, pool = table.fold(ev_i, ev_f, n, engine._alarm_per == "subject")
    if not len(kept_i):  # (every row folded into nothing)
        return []
    subjects, suspends, zone_ids = reg.subjects, reg.suspends, engine.zones.zone_ids
    names, kinds, n_devices = table.names, reg.device_kinds, table.n_devices
    curfew = K.T_CURFEW
    # Columns, not rows, for many rows: 2n row lists alive through the loop set off full
    # collections; for a few, rows (a column list each costs more than they do).
    rows = zip(*kept_i.T.tolist(), *kept_f.T.tolist(), strict=True) \
        if len(kept_i) > FEW_ROWS else map(list.__add__, kept_i.tolist(), kept_f.tolist())
    out: list[dict] = []
    append = out.append
    pi = 0
    for k, m, d, typ, z, raised, at, episode, late, s, lat, lon, aux, acc in rows:
        subject = subjects[s]
        zone_id = zone_ids[z] if z >= 0 else None
        if m < 0:
            append(_device_event(reg, ev_i[k], ev_f[k], d, ALARM_TYPES[typ], zone_id,
                                 raised != 0, at, episode, late != 0, (lat, lon, aux, acc),
                                 subject, suspends[s]))
            continue
        # Folded (a zone type of engine.per_subject.SUBJECT_TYPES): the events it became.
        evidence = None if (ALARM_TYPES[typ] not in EVIDENCE_TYPES
                            or (typ == curfew and math.isnan(acc))) else (lat, lon, aux, acc)
        for up, t, lead, ep_at, off, count in parts[pi:pi + m]:
            name = ALARM_TYPES[t]
            ev = alarm_event(up != 0, name, subject.subject_id, names[lead], zone_id,
                             subject.region, at, ep_at, False, evidence)
            ev["devices"] = list(map(names.__getitem__, pool[off:off + count]))  # (no key check)
            ev["device_kind"] = kinds[lead if lead < n_devices else d]  # the lead's
            if suspends[s] and suspended(subject, name, at):
                ev["suspended"] = True
            append(ev)
        pi += m
    return out


def _device_event(reg: Any, row_i: np.ndarray, row_f: np.ndarray, d: int, type_name: str,
                  zone_id: str | None, raised: bool, at: int, episode: int, late: bool,
                  evidence: tuple, subject: Any, suspends: bool) -> dict:
    """The event of one device event row as it is (not folded)."""
    extra = None
    if type_name in REL_TYPES:  # engine.relations: evidence and the peer's keys
        evidence, extra = relation_event_parts(type_name, evidence, row_i, row_f, reg)
    elif type_name in DEVICE_EVIDENCE:
        extra = device_evidence(type_name, raised, evidence)
        evidence = None
    elif type_name not in EVIDENCE_TYPES or (type_name == "curfew"
                                             and evidence[3] != evidence[3]):
        evidence = None  # (a curfew cleared by its window's end: no fix, NaN)
    device_id = reg.device_ids[d]
    ev = alarm_event(raised, type_name, subject.subject_id, device_id, zone_id,
                     subject.region, at, episode, late, evidence, extra)
    if extra and ("person_id" in extra or "peer_subject_id" in extra):
        # one episode per (device, person) or per pair: the other in the zone's place
        other = extra.get("person_id") or extra["peer_subject_id"]
        ev["alarm_id"] = alarm_id(device_id, type_name, other, episode, late)
    ev["device_kind"] = reg.device_kinds[d]
    if suspends and suspended(subject, type_name, at):
        ev["suspended"] = True
    return ev
