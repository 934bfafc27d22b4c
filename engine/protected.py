"""The subjects file's relations (docs/replay.md): protected persons (the top-level
``protected`` list) and prohibited contacts (a subject's ``contacts``), parsed and
checked for :func:`engine.registry.load_registry` (which passes its error class: this
module does not import the registry). The rules that use them: :mod:`engine.relations`.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Protected(NamedTuple):
    """A protected person of the subjects file's ``protected`` list."""

    person_id: str
    region: str
    device_ids: tuple[str, ...]  # devices of kind "victim"
    protected_from: tuple[str, ...]  # subject ids


def with_persons(subjects: list, protected: tuple, subject_cls: Any) -> list:
    """The subjects, then each protected person as a subject without zones (level
    "protected", devices of kind "victim"): their devices are indexed after every
    subject's device, and their events are never emitted (engine.relations)."""
    return list(subjects) + [
        subject_cls(p.person_id, p.region, "protected", p.device_ids, (), (), (),
                    ("victim",) * len(p.device_ids)) for p in protected]


def contacts_of(raw: dict, sid: str, source: str | None, error: type) -> tuple[str, ...]:
    """A subject's ``contacts``: a list of subject ids (absent: none)."""
    value = raw.get("contacts") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error("'contacts' must be a list of subject ids", subject_id=sid, source=source)
    return tuple(dict.fromkeys(value))


def check_contacts(subjects: list, source: str | None,
                   error: type) -> None:
    """Every subject's ``contacts`` names another known subject (``error`` if not)."""
    known = {s.subject_id for s in subjects}
    for s in subjects:
        for other in s.contacts:
            if other == s.subject_id or other not in known:
                what = "itself" if other == s.subject_id else f"unknown subject {other!r}"
                raise error(f"'contacts' lists {what}", subject_id=s.subject_id,
                                    source=source)


def parse_protected(data: dict, subject_ids: set[str], device_owner: dict[str, str],
                    source: str | None, error: type) -> tuple:
    """The subjects file's top-level ``protected`` list as :class:`engine.registry.
    Protected` tuples, checked: ids, region, devices of kind ``victim`` (unique across
    the whole file), ``protected_from`` naming known subjects."""
    subjects_only = set(subject_ids)
    raw = data.get("protected") or []
    if not isinstance(raw, list):
        raise error("'protected' must be a list", source=source)
    out = []
    for i, p in enumerate(raw):
        where = f"protected[{i}]"
        if not isinstance(p, dict):
            raise error(f"{where} is not an object", source=source)
        for key in ("person_id", "region"):
            if not isinstance(p.get(key), str) or not ID_RE.fullmatch(p[key]):
                raise error(f"{where}.{key} {p.get(key)!r} is not [A-Za-z0-9_-]{{1,64}}",
                                    source=source)
        pid = p["person_id"]
        if pid in subject_ids:
            raise error(f"{where}.person_id {pid!r} is also a subject id", source=source)
        subject_ids.add(pid)
        devices = p.get("devices")
        if not isinstance(devices, list) or not devices:
            raise error(f"{where}.devices must be a non-empty list", source=source)
        dev_ids = []
        for k, dev in enumerate(devices):
            did = dev.get("device_id") if isinstance(dev, dict) else None
            if not isinstance(did, str) or not ID_RE.fullmatch(did):
                raise error(f"{where}.devices[{k}].device_id {did!r} is not "
                                    "[A-Za-z0-9_-]{1,64}", source=source)
            if dev.get("kind", "victim") != "victim":
                raise error(f"{where}.devices[{k}]: kind {dev.get('kind')!r}, a "
                                    "protected person's device is of kind 'victim'",
                                    source=source)
            if did in device_owner:
                raise error(f"{where}: device {did!r} is also listed by "
                                    f"{device_owner[did]!r}", source=source)
            device_owner[did] = pid
            dev_ids.append(did)
        frm = p.get("protected_from")
        if (not isinstance(frm, list) or not frm
                or not all(isinstance(x, str) for x in frm)):
            raise error(f"{where}.protected_from must be a non-empty list of subject "
                                "ids", source=source)
        unknown = [x for x in frm if x not in subjects_only]
        if unknown:
            raise error(f"{where}.protected_from: unknown subject {unknown[0]!r}",
                                source=source)
        out.append(Protected(pid, p["region"], tuple(dev_ids), tuple(dict.fromkeys(frm))))
    return tuple(out)
