"""The registry: who is supervised, by which devices, within which zones.

``load_registry(subjects, zones)`` reads the subjects file (JSON, see ``docs/replay.md``)
and maps every id to a dense index. The rule kernels never see a string: they read the
CSR arrays of :class:`RegistryArrays` (one NamedTuple, passed to numba as one argument).

Subjects file::

    {"subjects": [{"subject_id": "S-0001", "region": "330723", "level": "strict",
                   "devices": [{"device_id": "B-0001", "kind": "bracelet"}],
                   "inclusion": ["330723"], "exclusion": ["victim-17"],
                   "leaves": [{"start": 1763600000000, "end": "2025-11-22T08:00:00+08:00",
                               "zones": ["330702"], "returned": 1763700000000}],
                   "curfews": [{"start": "22:00", "end": "06:00", "zone": "home-1"}],
                   "suspensions": [{"type": "offline", "start": 1763600000000,
                                    "end": 1763900000000}]}]}

Times are epoch milliseconds (integers) or ISO 8601 strings with a UTC offset.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from contract.alarms import DEVICE_KINDS
from contract.errors import EmfenceError
from emfence.config import LEVELS
from engine.protected import (
    Protected,
    check_contacts,
    contacts_of,
    parse_protected,
    with_persons,
)
from engine.schedules import Curfew, Suspension, curfew_windows, parse_curfew, parse_suspension

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Level names -> the small code the kernels index per-level tables with.
LEVEL_CODES = {name: i for i, name in enumerate(LEVELS)}

# RegistryArrays.subject_flags bits: what a subject has beyond inclusion and exclusion.
# A subject with none of the kernel's bits takes the common path (grid, settled cache)
# and never touches the arrays of the rules below.
F_LEAVES = 1  # leaves: the leave_overdue rule
F_CURFEWS = 2  # curfews: the curfew rule
F_SUSPENSIONS = 4  # suspensions (applied when events are built, not in the kernels)
F_KERNEL = F_LEAVES | F_CURFEWS


class RegistryError(EmfenceError, ValueError):
    """The subjects file is wrong. ``subject_id`` names the subject (None: the file as a
    whole), ``reason`` says what, ``source`` is the file (or None for a dict)."""

    def __init__(self, reason: str, *, subject_id: str | None = None, source: str | None = None):
        self.reason = reason
        self.subject_id = subject_id
        self.source = source
        parts = []
        if source:
            parts.append(f"{source}:")
        if subject_id is not None:
            parts.append(f"subject {subject_id!r}:")
        parts.append(reason)
        super().__init__(" ".join(parts))


class RegistryArrays(NamedTuple):
    """Dense, read-only arrays for the kernels. ``s`` subject index, ``d`` device index,
    ``z`` zone index (position in ``CompiledZones.zone_ids``), ``l`` leave index.

    CSR layout: the items of subject ``s`` are ``X_zone[X_off[s]:X_off[s+1]]``.
    """

    device_subject: np.ndarray  # int32[n_devices]
    device_level: np.ndarray  # int8[n_devices]: 0 strict, 1 ordinary, 2 lenient
    device_slot_off: np.ndarray  # int32[n_devices+1]: per-(device, exclusion zone) state slots
    incl_off: np.ndarray  # int32[n_subjects+1]
    incl_zone: np.ndarray  # int32
    excl_off: np.ndarray  # int32[n_subjects+1]; slot k of a device is its subject's excl k
    excl_zone: np.ndarray  # int32
    leave_off: np.ndarray  # int32[n_subjects+1]
    leave_start_ms: np.ndarray  # int64[n_leaves], inclusive
    leave_end_ms: np.ndarray  # int64[n_leaves], inclusive: min(end, returned)
    leave_zone_off: np.ndarray  # int32[n_leaves+1]
    leave_zone: np.ndarray  # int32
    subject_flags: np.ndarray  # int8[n_subjects]: F_* bits
    cw_off: np.ndarray  # int32[n_subjects+1]: curfew windows of subject s, CSR
    cw: np.ndarray  # int64[n_windows, 3]: start_ms (incl.), end_ms (excl.), zone index


class Subject(NamedTuple):
    subject_id: str
    region: str
    level: str
    device_ids: tuple[str, ...]
    inclusion: tuple[str, ...]
    exclusion: tuple[str, ...]
    # (start_ms, end_ms, zone ids); end_ms = min(end, returned): the window's true end
    leaves: tuple[tuple[int, int, tuple[str, ...]], ...]
    device_kinds: tuple[str, ...] = ()  # per device_ids; empty: all bracelets
    curfews: tuple[Curfew, ...] = ()
    suspensions: tuple[Suspension, ...] = ()
    contacts: tuple[str, ...] = ()  # subject ids of prohibited contacts (either side lists)


# The level code of a protected person's devices: past LEVELS, so a per-level table needs
# one more entry for them (Engine gives them no offline deadline).
VICTIM_LEVEL = len(LEVELS)


class Registry:
    """Subjects, devices and their zones as dense indices (see module docstring).

    ``device_ids[d]`` / ``subject_ids[s]`` give ids back; ``arrays`` feeds the kernels.
    """

    def __init__(self, subjects: list[Subject], zone_ids: list[str], zone_index: dict[str, int],
                 protected: tuple[Protected, ...] = ()):
        self.zone_ids = list(zone_ids)
        self.subject_ids = [s.subject_id for s in subjects]
        self.protected = tuple(protected)  # after the subjects (engine.protected)
        self.n_subject_devices = sum(len(s.device_ids) for s in subjects)
        self.subjects = subjects = with_persons(subjects, self.protected, Subject)
        self.device_ids, self.device_kinds, dev_subject = _device_rows(subjects)
        self._device_index = {dev: d for d, dev in enumerate(self.device_ids)}
        self.regions: set[str] = {s.region for s in subjects}
        self.device_id_array, self.device_kind_code = _id_arrays(self.device_ids,
                                                                 self.device_kinds)

        def csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
            off = np.zeros(len(lists) + 1, dtype=np.int32)
            off[1:] = np.cumsum([len(x) for x in lists])
            flat = np.array([v for x in lists for v in x], dtype=np.int32)
            return off, flat

        incl_off, incl_zone = csr([[zone_index[z] for z in s.inclusion] for s in subjects])
        excl_off, excl_zone = csr([[zone_index[z] for z in s.exclusion] for s in subjects])
        all_leaves = [lv for s in subjects for lv in s.leaves]
        leave_off = np.zeros(len(subjects) + 1, dtype=np.int32)
        leave_off[1:] = np.cumsum([len(s.leaves) for s in subjects])
        leave_zone_off, leave_zone = csr([[zone_index[z] for z in lv[2]] for lv in all_leaves])
        device_subject = np.array(dev_subject, dtype=np.int32)
        levels = np.array([LEVEL_CODES.get(s.level, VICTIM_LEVEL) for s in subjects], np.int8)
        flags = np.array([(F_LEAVES if s.leaves else 0) | (F_CURFEWS if s.curfews else 0)
                          | (F_SUSPENSIONS if s.suspensions else 0) for s in subjects],
                         dtype=np.int8)
        self.has_curfews = bool(any(s.curfews for s in subjects))
        # Per subject: has suspensions (a list: read per alarm event, in Python)
        self.suspends = [bool(s.suspensions) for s in subjects]
        self._zone_index = zone_index
        n_excl = np.diff(excl_off)
        slot_off = np.zeros(len(device_subject) + 1, dtype=np.int32)
        slot_off[1:] = np.cumsum(n_excl[device_subject]) if len(device_subject) else []
        self.arrays = RegistryArrays(
            device_subject=device_subject,
            device_level=levels[device_subject] if len(device_subject) else np.zeros(0, np.int8),
            device_slot_off=slot_off,
            incl_off=incl_off,
            incl_zone=incl_zone,
            excl_off=excl_off,
            excl_zone=excl_zone,
            leave_off=leave_off,
            leave_start_ms=np.array([lv[0] for lv in all_leaves], dtype=np.int64),
            leave_end_ms=np.array([lv[1] for lv in all_leaves], dtype=np.int64),
            leave_zone_off=leave_zone_off,
            leave_zone=leave_zone,
            subject_flags=flags,
            cw_off=np.zeros(len(subjects) + 1, dtype=np.int32),
            cw=np.zeros((0, 3), dtype=np.int64),
        )

    def curfew_arrays(self, lo_ms: int, hi_ms: int, tz_name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(cw_off, cw)``: every subject's curfew windows overlapping ``[lo_ms, hi_ms)``
        in the local time zone ``tz_name`` (see :mod:`engine.schedules`)."""
        return curfew_windows([s.curfews for s in self.subjects], self._zone_index,
                              lo_ms, hi_ms, tz_name)

    @property
    def n_devices(self) -> int:
        return len(self.device_ids)

    @property
    def n_slots(self) -> int:
        return int(self.arrays.device_slot_off[-1])

    def device_index(self, device_id: str) -> int:
        """Dense index of ``device_id``, or -1 when it is not registered."""
        return self._device_index.get(device_id, -1)

    def subject_index_of(self, idx: int) -> int:
        return int(self.arrays.device_subject[idx])

    def subject_of(self, idx: int) -> str:
        """Subject id of device index ``idx``."""
        return self.subjects[int(self.arrays.device_subject[idx])].subject_id

    def device_region(self, idx: int) -> str:
        """Region (supervising county code) of device index ``idx``."""
        return self.subjects[int(self.arrays.device_subject[idx])].region

    def device_level(self, idx: int) -> str:
        code = int(self.arrays.device_level[idx])
        return LEVELS[code] if code < len(LEVELS) else "protected"

    def slot_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(device index, exclusion zone index) of every exclusion state slot, in slot
        order (int64 each): slot ``device_slot_off[d] + k`` is device d's subject's
        exclusion zone k."""
        a = self.arrays
        counts = np.diff(a.device_slot_off).astype(np.int64)
        device = np.repeat(np.arange(self.n_devices, dtype=np.int64), counts)
        # the slot's index in excl_zone: its subject's excl_off, plus k
        base = a.excl_off[a.device_subject].astype(np.int64) - a.device_slot_off[:-1]
        zone = a.excl_zone[np.repeat(base, counts) + np.arange(self.n_slots, dtype=np.int64)]
        return device, zone.astype(np.int64)

    def slot_keys(self) -> list[tuple[str, str]]:
        """(device_id, exclusion zone_id) of every exclusion state slot, in slot order."""
        device, zone = self.slot_arrays()
        zone_ids = self.zone_ids
        return list(zip(self.device_id_array[device].tolist(), [zone_ids[z] for z in
                                                              zone.tolist()]))

    def __repr__(self) -> str:
        return (f"Registry({len(self.subjects)} subjects, {self.n_devices} devices, "
                f"{len(self.regions)} regions)")


def _device_rows(subjects: list[Subject]) -> tuple[list[str], list[str], list[int]]:
    """(device ids, kinds, subject index) of every device, in subject order."""
    device_ids: list[str] = []
    kinds: list[str] = []
    dev_subject: list[int] = []
    for s_idx, s in enumerate(subjects):
        device_ids.extend(s.device_ids)
        kinds.extend(s.device_kinds if s.device_kinds else ("bracelet",) * len(s.device_ids))
        dev_subject.extend([s_idx] * len(s.device_ids))
    return device_ids, kinds, dev_subject


def _id_arrays(device_ids: list[str], kinds: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The device ids as one array (engine.remap looks them up sorted: a reload, a
    restore, a checkpoint's ids) and the kinds as int8 codes of DEVICE_KINDS."""
    code = {k: i for i, k in enumerate(DEVICE_KINDS)}
    return (np.array(device_ids, dtype=np.str_).reshape(-1),
            np.fromiter(map(code.__getitem__, kinds), dtype=np.int8, count=len(kinds)))


def parse_time_ms(value: Any, what: str) -> int:
    """Epoch milliseconds from an integer, or from an ISO 8601 string with a UTC offset.

    Raises ``ValueError`` naming ``what`` otherwise (naive ISO times are refused: a
    leave's end must not depend on the server's time zone).
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be epoch ms or ISO 8601 with offset, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not an ISO 8601 time") from None
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise ValueError(f"{what}: {value!r} has no UTC offset (write e.g. +08:00)")
        # Exact integer arithmetic: timestamp() is a float and can be off by a millisecond.
        delta = dt - datetime.fromisoformat("1970-01-01T00:00:00+00:00")
        return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    raise TypeError(f"{what} must be epoch ms or ISO 8601 with offset, got {value!r}")


def _str_list(raw: dict, key: str, sid: str, source: str | None, *, required: bool) -> list[str]:
    if key not in raw or raw[key] is None:
        if required:
            raise RegistryError(f"missing {key!r}", subject_id=sid, source=source)
        return []
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{key!r} must be a list of zone ids", subject_id=sid, source=source)
    return value


def _check_zones(ids: list[str], what: str, sid: str, zone_index: dict[str, int],
                 source: str | None) -> tuple[str, ...]:
    seen = []
    for z in ids:
        if z not in zone_index:
            raise RegistryError(f"unknown zone id {z!r} in {what}", subject_id=sid, source=source)
        if z not in seen:  # a repeated id adds nothing; keep the first
            seen.append(z)
    return tuple(seen)


def read_subjects_file(subjects: str | Path | dict) -> tuple[dict, str | None]:
    """(the parsed subjects document, its path or None for a dict given as such): the one
    reader of the subjects file (the engine, ``emfence mqtt-passwords`` and the
    simulators use it). Raises :class:`RegistryError` naming the file when it cannot be
    read, is not JSON or is not an object with a ``subjects`` list."""
    source: str | None = None
    if isinstance(subjects, (str, Path)):
        source = str(subjects)
        try:
            data = orjson.loads(Path(subjects).read_bytes())
        except OSError as exc:
            raise RegistryError(f"cannot read: {exc.strerror}", source=source) from exc
        except orjson.JSONDecodeError as exc:
            raise RegistryError(f"not valid JSON: {exc}", source=source) from exc
    else:
        data = subjects
    if not isinstance(data, dict) or not isinstance(data.get("subjects"), list):
        raise RegistryError('expected an object {"subjects": [...]}', source=source)
    return data, source


def _subject_header(i: int, raw: Any, subject_seen: set[str], source: str | None
                    ) -> tuple[str, str, str]:
    """(subject_id, region, level) of ``subjects[i]``, checked; the id is noted as seen."""
    if not isinstance(raw, dict):
        raise RegistryError(f"subjects[{i}] is not an object", source=source)
    sid = raw.get("subject_id")
    if not isinstance(sid, str) or not ID_RE.fullmatch(sid):
        raise RegistryError(f"subjects[{i}].subject_id {sid!r} is not [A-Za-z0-9_-]{{1,64}}",
                            source=source)
    if sid in subject_seen:
        raise RegistryError("duplicate subject id", subject_id=sid, source=source)
    subject_seen.add(sid)
    region = raw.get("region")
    if not isinstance(region, str) or not ID_RE.fullmatch(region):
        raise RegistryError(f"region {region!r} is not [A-Za-z0-9_-]{{1,64}}", subject_id=sid,
                            source=source)
    level = raw.get("level")
    if level not in LEVEL_CODES:
        raise RegistryError(f"level {level!r} is not one of {', '.join(LEVELS)}",
                            subject_id=sid, source=source)
    return sid, region, level


def _devices(raw: dict, sid: str, device_owner: dict[str, str], source: str | None
             ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The subject's device ids and kinds, checked (ids also against every earlier
    subject's)."""
    devices = raw.get("devices")
    if not isinstance(devices, list) or not devices:
        raise RegistryError("'devices' must be a non-empty list", subject_id=sid, source=source)
    device_ids: list[str] = []
    kinds: list[str] = []
    for k, dev in enumerate(devices):
        if not isinstance(dev, dict):
            raise RegistryError(f"devices[{k}] is not an object", subject_id=sid, source=source)
        did = dev.get("device_id")
        if not isinstance(did, str) or not ID_RE.fullmatch(did):
            raise RegistryError(f"devices[{k}].device_id {did!r} is not [A-Za-z0-9_-]{{1,64}}",
                                subject_id=sid, source=source)
        kind = dev.get("kind", "bracelet")
        if kind not in DEVICE_KINDS:
            raise RegistryError(f"device {did!r}: kind {kind!r} is not one of "
                                f"{', '.join(DEVICE_KINDS)}", subject_id=sid, source=source)
        if did in device_owner:
            owner = device_owner[did]
            where = "twice" if owner == sid else f"also on subject {owner!r}"
            raise RegistryError(f"device {did!r} is listed {where}", subject_id=sid,
                                source=source)
        device_owner[did] = sid
        device_ids.append(did)
        kinds.append(kind)
    return tuple(device_ids), tuple(kinds)


def _leaves(raw: dict, sid: str, zone_index: dict[str, int], source: str | None
            ) -> tuple[tuple[int, int, tuple[str, ...]], ...]:
    """The subject's leaves as (start_ms, end_ms, zone ids), checked; end_ms is the
    window's true end, min(end, returned) (a return before the start: an empty window)."""
    leaves_raw = raw.get("leaves") or []
    if not isinstance(leaves_raw, list):
        raise RegistryError("'leaves' must be a list", subject_id=sid, source=source)
    leaves = []
    for k, lv in enumerate(leaves_raw):
        if not isinstance(lv, dict):
            raise RegistryError(f"leaves[{k}] is not an object", subject_id=sid, source=source)
        try:
            start = parse_time_ms(lv.get("start"), f"leaves[{k}].start")
            end = parse_time_ms(lv.get("end"), f"leaves[{k}].end")
            returned = (None if lv.get("returned") is None
                        else parse_time_ms(lv["returned"], f"leaves[{k}].returned"))
        except (TypeError, ValueError) as exc:
            raise RegistryError(str(exc), subject_id=sid, source=source) from None
        if end < start:
            raise RegistryError(f"leaves[{k}] ends ({end}) before it starts ({start})",
                                subject_id=sid, source=source)
        lz = _check_zones(_str_list(lv, "zones", sid, source, required=True),
                          f"leaves[{k}].zones", sid, zone_index, source)
        leaves.append((start, end if returned is None else min(end, returned), lz))
    return tuple(leaves)


def _schedules(raw: dict, sid: str, zone_index: dict[str, int], source: str | None
               ) -> tuple[tuple[Curfew, ...], tuple[Suspension, ...]]:
    """The subject's curfews and suspensions, checked."""
    out: list[list] = [[], []]
    for key, parse in (("curfews", parse_curfew), ("suspensions", parse_suspension)):
        items = raw.get(key) or []
        if not isinstance(items, list):
            raise RegistryError(f"{key!r} must be a list", subject_id=sid, source=source)
        for k, item in enumerate(items):
            try:
                parsed = parse(item, f"{key}[{k}]", parse_time_ms)
            except (TypeError, ValueError) as exc:
                raise RegistryError(str(exc), subject_id=sid, source=source) from None
            if key == "curfews":
                parsed, zone = parsed
                _check_zones([zone], f"curfews[{k}].zone", sid, zone_index, source)
            out[0 if key == "curfews" else 1].append(parsed)
    return tuple(out[0]), tuple(out[1])


def load_registry(subjects: str | Path | dict, zones: Any) -> Registry:
    """Read a subjects file (path, or an already parsed dict) against compiled ``zones``.

    ``zones`` is a ``geofence.CompiledZones`` (only ``zone_ids`` and ``index`` are used).
    Raises :class:`RegistryError` naming the subject for: a bad or duplicate subject id,
    a bad level, a bad or repeated device id (also across subjects), an unknown zone id,
    a leave whose end is before its start or whose times are unreadable, a curfew or
    suspension that does not parse (:mod:`engine.schedules`; the message names the field,
    e.g. ``curfews[0].start``).
    """
    data, source = read_subjects_file(subjects)
    zone_index: dict[str, int] = dict(zones.index)
    out: list[Subject] = []
    subject_seen: set[str] = set()
    device_owner: dict[str, str] = {}
    for i, raw in enumerate(data["subjects"]):
        sid, region, level = _subject_header(i, raw, subject_seen, source)
        device_ids, kinds = _devices(raw, sid, device_owner, source)
        if "victim" in kinds:
            raise RegistryError(f"device {device_ids[kinds.index('victim')]!r}: kind 'victim' is "
                                "for a protected person's device (the top-level "
                                "'protected' list)", subject_id=sid, source=source)
        inclusion = _check_zones(_str_list(raw, "inclusion", sid, source, required=False),
                                 "inclusion", sid, zone_index, source)
        exclusion = _check_zones(_str_list(raw, "exclusion", sid, source, required=False),
                                 "exclusion", sid, zone_index, source)
        out.append(Subject(sid, region, level, device_ids, inclusion, exclusion,
                           _leaves(raw, sid, zone_index, source), kinds,
                           *_schedules(raw, sid, zone_index, source),
                           contacts_of(raw, sid, source, RegistryError)))
    check_contacts(out, source, RegistryError)
    protected = parse_protected(data, subject_seen, device_owner, source, RegistryError)
    return Registry(out, list(zones.zone_ids), zone_index, protected)
