"""The fleet: a subjects file with its zones, in the simulator's metric frame.

Subjects (with their devices, zones, leaves and listed contacts) and the protected
persons of the subjects file (issue #14: ``"protected": [{"person_id", "region",
"devices": [{"device_id", "kind": "victim"}], "protected_from": [...]}]``), whose victim
devices are appended after every subject's devices. Used by
:class:`simulators.movement.MovementModel` and :mod:`simulators.scenario`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import shapely
from shapely.geometry import Point

from contract.errors import EmfenceError
from simulators.geo import LocalFrame


class MovementError(EmfenceError, ValueError):
    """The subjects/zones do not allow a movement plan; names the subject and why."""

    def __init__(self, reason: str, *, subject_id: str | None = None):
        self.reason = reason
        self.subject_id = subject_id
        super().__init__(f"subject {subject_id!r}: {reason}" if subject_id else reason)


def time_ms(value, what: str) -> int:
    """Epoch ms from an int or an ISO 8601 string with a UTC offset."""
    if isinstance(value, bool):
        raise MovementError(f"{what}: expected epoch ms or ISO 8601, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError as exc:
            raise MovementError(f"{what}: not ISO 8601: {value!r}") from exc
        if dt.tzinfo is None:
            raise MovementError(f"{what}: ISO time without a UTC offset: {value!r}")
        return int(dt.timestamp() * 1000)
    raise MovementError(f"{what}: expected epoch ms or ISO 8601, got {value!r}")


@dataclass
class Fleet:
    """A subjects file with its zones, in the simulator's metric frame.

    Per subject ``s``: ``inclusion_m[s]`` (union of inclusion zones), ``allowed_any_m[s]``
    (inclusion plus every leave zone, whatever the window), ``exclusions_m[s]`` (list of
    ``(zone_id, geometry)``); per device ``d``: ``device_ids[d]``, ``device_subject[d]``,
    ``device_kind[d]``, ``device_region[d]``. All geometry in metres of ``frame``.

    Issue #14 relations: ``contacts[s]`` (indices of the subjects ``s`` lists as
    prohibited contacts, made symmetric); protected person ``v`` (``victim_ids[v]``,
    ``victim_region[v]``, ``victim_from[v]`` = indices of the subjects it is protected
    from) moves as mover ``n_subjects + v``: its victim devices have ``device_subject``
    = that index and come after every subject's devices. Links naming a subject not in
    the file (a ``--shard`` of it) are left out: the simulator cannot play them."""

    frame: LocalFrame
    subject_ids: list[str]
    subject_level: list[str]
    subject_region: list[str]
    inclusion_ids: list[list[str]]
    inclusion_m: list
    allowed_any_m: list
    exclusions_m: list[list[tuple[str, object]]]
    leaves: list[list[tuple[int, int, list[str]]]]
    device_ids: list[str]
    device_subject: np.ndarray
    device_kind: list[str]
    device_region: list[str]
    device_index: dict[str, int] = field(default_factory=dict)
    zone_m: dict[str, object] = field(default_factory=dict)
    contacts: list[list[int]] = field(default_factory=list)
    victim_ids: list[str] = field(default_factory=list)
    victim_region: list[str] = field(default_factory=list)
    victim_from: list[list[int]] = field(default_factory=list)

    @property
    def n_devices(self) -> int:
        return len(self.device_ids)

    @property
    def n_subjects(self) -> int:
        return len(self.subject_ids)

    @property
    def n_movers(self) -> int:
        """Subjects, then protected persons: everyone with a position."""
        return len(self.subject_ids) + len(self.victim_ids)

    def victim_of(self, s: int) -> list[int]:
        """The protected persons (indices ``v``) protected from subject ``s``."""
        return [v for v, frm in enumerate(self.victim_from) if s in frm]

    @classmethod
    def build(cls, subjects_doc: dict, zones, *, protected: bool = False) -> Fleet:
        """From a parsed subjects file and the zones of ``geofence.load_zones`` (WGS-84).
        ``protected=True`` adds the protected persons and their victim devices (the
        `rules` scenario; other scenarios leave them out, as before issue #14)."""
        by_id = {z.zone_id: z for z in zones}
        raw = subjects_doc.get("subjects") if isinstance(subjects_doc, dict) else None
        if not isinstance(raw, list) or not raw:
            raise MovementError('the subjects file needs a non-empty "subjects" list')

        def geom(zid: str, sid: str):
            if zid not in by_id:
                raise MovementError(f"unknown zone {zid!r}", subject_id=sid)
            return by_id[zid].geometry

        incl_wgs: dict[tuple, object] = {}
        for s in raw:
            sid = s.get("subject_id")
            ids = tuple(s.get("inclusion") or ())
            if not ids:
                raise MovementError("no inclusion zone: the simulator needs one to move in",
                                    subject_id=sid)
            if ids not in incl_wgs:
                incl_wgs[ids] = shapely.union_all([geom(z, sid) for z in ids])
        frame = LocalFrame.around(incl_wgs.values())
        cache: dict[str, object] = {}

        def geom_m(zid: str, sid: str):
            if zid not in cache:
                g = geom(zid, sid)
                circle = getattr(by_id[zid], "circle", None)
                if circle is not None:
                    # Exact in metres, and much cheaper than projecting the drawing polygon.
                    (x,), (y,) = frame.to_m([circle[0]], [circle[1]])
                    cache[zid] = Point(x, y).buffer(circle[2], quad_segs=16)
                else:
                    cache[zid] = frame.geom_to_m(g)
            return cache[zid]

        cols = _subject_columns(raw, geom_m)
        fleet = cls(frame, **cols)
        fleet.zone_m = cache
        _relations(fleet, raw, subjects_doc.get("protected") if protected else None)
        fleet.device_index = {d: i for i, d in enumerate(fleet.device_ids)}
        if len(fleet.device_index) != fleet.n_devices:
            dup = sorted({d for d in fleet.device_ids if fleet.device_ids.count(d) > 1})
            raise MovementError(f"device id(s) used twice: {', '.join(dup[:5])}")
        return fleet

    def devices_of(self, s: int) -> list[int]:
        return [int(d) for d in np.flatnonzero(self.device_subject == s)]


def _subject_columns(raw: list, geom_m) -> dict:
    """The per-subject and per-device columns of a :class:`Fleet` (its field names), zones
    in metres through ``geom_m(zone_id, subject_id)``."""
    subject_ids, levels, regions, incl_ids, incl_m, allowed, excl, leaves = (
        [] for _ in range(8))
    device_ids, device_subject, device_kind, device_region = [], [], [], []
    union_cache: dict[tuple, object] = {}
    for si, s in enumerate(raw):
        sid = s["subject_id"]
        subject_ids.append(sid)
        levels.append(s.get("level", "ordinary"))
        regions.append(str(s.get("region", "")))
        ids = tuple(s["inclusion"])
        incl_ids.append(list(ids))
        key = ids
        if key not in union_cache:
            union_cache[key] = shapely.union_all([geom_m(z, sid) for z in ids])
        incl_m.append(union_cache[key])
        lv, leave_zone_ids = _leaves(s, sid)
        leaves.append(lv)
        akey = ids + tuple(sorted(set(leave_zone_ids)))
        if akey not in union_cache:
            union_cache[akey] = shapely.union_all([geom_m(z, sid) for z in akey])
        allowed.append(union_cache[akey])
        excl.append([(z, geom_m(z, sid)) for z in (s.get("exclusion") or [])])
        for d in s.get("devices") or []:
            device_ids.append(d["device_id"])
            device_subject.append(si)
            device_kind.append(d.get("kind", "bracelet"))
            device_region.append(str(s.get("region", "")))
    return {"subject_ids": subject_ids, "subject_level": levels, "subject_region": regions,
            "inclusion_ids": incl_ids, "inclusion_m": incl_m, "allowed_any_m": allowed,
            "exclusions_m": excl, "leaves": leaves, "device_ids": device_ids,
            "device_subject": np.asarray(device_subject, dtype=np.int64),
            "device_kind": device_kind, "device_region": device_region}


def _leaves(s: dict, sid: str) -> tuple[list[tuple[int, int, list[str]]], list[str]]:
    """A subject's leaves as (start epoch ms, end epoch ms, zone ids), and all their zones."""
    lv = []
    leave_zone_ids: list[str] = []
    for k, leave in enumerate(s.get("leaves") or []):
        start = time_ms(leave.get("start"), f"subject {sid} leave {k} start")
        end = time_ms(leave.get("end"), f"subject {sid} leave {k} end")
        lv.append((start, end, list(leave.get("zones") or [])))
        leave_zone_ids += list(leave.get("zones") or [])
    return lv, leave_zone_ids


def _relations(fleet: Fleet, raw: list, protected) -> None:
    """Fill ``contacts`` and the protected persons (appending their victim devices)."""
    index = {sid: i for i, sid in enumerate(fleet.subject_ids)}
    fleet.contacts = [[] for _ in raw]
    for i, s in enumerate(raw):
        for other in s.get("contacts") or []:
            j = index.get(other)
            if j is None or j == i:
                continue
            for a, b in ((i, j), (j, i)):
                if b not in fleet.contacts[a]:
                    fleet.contacts[a].append(b)
    if protected is None:
        return
    if not isinstance(protected, list):
        raise MovementError('"protected" must be a list of protected persons')
    kinds, subj, regions = list(fleet.device_kind), list(fleet.device_subject), []
    for k, p in enumerate(protected):
        pid = p.get("person_id") if isinstance(p, dict) else None
        if not isinstance(pid, str):
            raise MovementError(f"protected[{k}] needs a person_id")
        frm = [index[x] for x in p.get("protected_from") or [] if x in index]
        if not frm:
            continue
        v = len(fleet.victim_ids)
        fleet.victim_ids.append(pid)
        fleet.victim_region.append(str(p.get("region", "")))
        fleet.victim_from.append(frm)
        for d in p.get("devices") or []:
            fleet.device_ids.append(d["device_id"])
            subj.append(fleet.n_subjects + v)
            kinds.append(d.get("kind", "victim"))
            regions.append(str(p.get("region", "")))
    fleet.device_kind = kinds
    fleet.device_subject = np.asarray(subj, dtype=np.int64)
    fleet.device_region = list(fleet.device_region) + regions
