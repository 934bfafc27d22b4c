"""One alarm per subject (``rules.alarm_per = "subject"``, docs/rules.md).

The kernels keep one episode per device; this folds the episodes of a subject's devices
of one type and zone into one alarm, as the events leave the engine (Python, in event
order, so replay stays byte-deterministic):

* the first device to raise opens the subject's episode: its raise is emitted, with
  ``devices`` = [that device];
* another device of the subject raising the same type and zone while the episode is open
  joins it: nothing is emitted;
* a device clearing while others of the episode are still open leaves it: nothing is
  emitted; the last one to clear closes it: a ``cleared`` event with the alarm identity of
  the first raise (its device_id and episode at, so the same ``alarm_id``) and
  ``devices`` = every device that was in the episode, in the order they joined.

A subject's violation supersedes its warning as a device's does: the subject's
``approach`` alarm for a zone is open while one of its devices has an approach episode
for that zone open and none has the violation (``exclusion``; ``outbound`` /
``leave_overdue`` for the inclusion zone). When the subject's violation opens, its open
approach alarm is cleared at that at, just before the raise; the devices' approach
episodes still open are kept (*superseded*: their raises and clears emit nothing). When
the violation closes and some of them are still open, the approach alarm is raised
again at that at, led by the first of them.

Only the zone types of :data:`SUBJECT_TYPES`, only live events (a late pair stays per
device) and only subjects with two devices or more are folded; everything else passes
as it is. The open episodes go into the checkpoint (:meth:`SubjectEpisodes.to_array`),
so a restart continues them; :meth:`SubjectEpisodes.reconcile` fits them to the device
episodes that are open after a restore or a registry change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

# The types folded per subject: those of a place, which every device of the subject can
# break at once. Device faults (offline, tamper, low_battery) stay per device.
SUBJECT_TYPES = ("outbound", "leave_overdue", "exclusion", "approach", "curfew")

# The violations that supersede the subject's approach warning for their zone.
SUPERSEDES = ("exclusion", "outbound", "leave_overdue")

# The checkpoint array that holds the open subject episodes (one JSON document).
CHECKPOINT_KEY = "subject_episodes"


@dataclass(slots=True)
class Episode:
    """An open subject episode: the alarm identity (``lead`` device id, ``at`` of its
    raise), every device that joined (in order) and those still open."""

    lead: str
    at: int
    devices: list[str] = field(default_factory=list)
    open: list[str] = field(default_factory=list)
    superseded: bool = False  # (approach) no alarm while the subject's violation is open


Key = tuple[str, str, str | None]  # (subject id, type, zone id)


class SubjectEpisodes:
    """The open subject episodes of one engine, keyed by (subject id, type, zone id)."""

    def __init__(self) -> None:
        self.episodes: dict[Key, Episode] = {}
        self._warnings = 0  # approach episodes in ``episodes`` (a superseded one included)

    # (One function on the hot path of every folded event: a call more cost ~10 %.)
    def fold(self, raised: bool, type_name: str, subject_id: str, device_id: str,
             zone_id: str | None, episode_at: int, at: int) -> tuple[tuple, ...]:
        """One device event of a folded type (the caller checks :func:`folds`; ``at`` its
        at): the events to emit in its place, in order, each (raised, type, device_id,
        episode at, devices); at and evidence are the device event's."""
        episodes = self.episodes
        key = (subject_id, type_name, zone_id)
        ep = episodes.get(key)
        if raised:
            out: tuple = ()
            if self._warnings and type_name in SUPERSEDES:
                warn = episodes.get((subject_id, "approach", zone_id))
                if warn is not None and not warn.superseded:
                    warn.superseded = True
                    out = ((False, "approach", warn.lead, warn.at, list(warn.devices)),)
            if ep is None:
                episodes[key] = Episode(device_id, episode_at, [device_id], [device_id])
                if type_name != "approach":
                    return (*out, (True, type_name, device_id, episode_at, [device_id]))
                self._warnings += 1
                if self._violated(subject_id, zone_id):  # no warning beside the violation
                    episodes[key].superseded = True
                    return out
                return (True, type_name, device_id, episode_at, [device_id]),
            if device_id not in ep.open:
                ep.open.append(device_id)
            if device_id not in ep.devices:
                ep.devices.append(device_id)
            return out
        if ep is None or device_id not in ep.open:  # not folded (e.g. restored without)
            return ((False, type_name, device_id, episode_at, [device_id]),)
        ep.open.remove(device_id)
        if ep.open:
            return ()
        del episodes[key]
        if type_name == "approach":
            self._warnings -= 1
        out = () if ep.superseded else ((False, type_name, ep.lead, ep.at, list(ep.devices)),)
        if self._warnings and type_name in SUPERSEDES:
            warn = episodes.get((subject_id, "approach", zone_id))
            if warn is not None and warn.superseded and not self._violated(subject_id, zone_id):
                # The violation closed with devices still near: the warning again, at this at.
                warn.superseded = False
                warn.lead, warn.at, warn.devices = warn.open[0], at, list(warn.open)
                out += ((True, "approach", warn.lead, at, list(warn.devices)),)
        return out

    def _violated(self, subject_id: str, zone_id: str | None) -> bool:
        """Is one of the subject's violations of the zone open?"""
        return any((subject_id, t, zone_id) in self.episodes for t in SUPERSEDES)

    def _count(self) -> None:
        self._warnings = sum(1 for k in self.episodes if k[1] == "approach")

    def reconcile(self, open_device_episodes: list[tuple[str, str, str, str | None, int]],
                  folded: set[str]) -> None:
        """Fit the episodes to the device episodes open in the kernels' state, each
        ``(subject id, device id, type, zone id, at)`` in a stable order (registry
        order), and to ``folded``, the subjects whose events are folded now (two devices
        or more, alarm_per "subject"): a device no longer open leaves its episode (one
        left empty is dropped: its alarm stays open in the store, as a removed device's
        does), as does every episode of a subject no longer folded; an open device
        episode of a folded subject in no subject episode opens one (the earliest at
        leads: what a checkpoint written before alarm_per gives)."""
        open_keys = {(s, d, t, z) for s, d, t, z, _ in open_device_episodes}
        for key in list(self.episodes):
            ep = self.episodes[key]
            ep.open = [d for d in ep.open if (key[0], d, key[1], key[2]) in open_keys]
            if not ep.open or key[0] not in folded:
                del self.episodes[key]
        for s, d, t, z, at in sorted(open_device_episodes, key=lambda e: e[4]):
            if t not in SUBJECT_TYPES or s not in folded:
                continue
            ep = self.episodes.get((s, t, z))
            if ep is None:
                self.episodes[(s, t, z)] = Episode(d, at, [d], [d])
            elif d not in ep.open:
                ep.open.append(d)
                if d not in ep.devices:
                    ep.devices.append(d)
        for (s, t, z), ep in self.episodes.items():
            if t == "approach" and self._violated(s, z):
                ep.superseded = True
        self._count()

    def to_array(self) -> np.ndarray:
        """The open episodes as a checkpoint array (one JSON string, keys sorted)."""
        rows = [[s, t, z, ep.lead, ep.at, ep.devices, ep.open, ep.superseded]
                for (s, t, z), ep in sorted(self.episodes.items(),
                                            key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or ""))]
        return np.array([orjson.dumps(rows).decode()], dtype=np.str_)

    @classmethod
    def from_array(cls, arr: np.ndarray | None) -> SubjectEpisodes:
        """The episodes of :meth:`to_array` (None: a checkpoint without them: none)."""
        out = cls()
        if arr is not None and len(arr):
            for s, t, z, lead, at, devices, open_, sup in orjson.loads(str(arr[0])):
                out.episodes[(s, t, z)] = Episode(lead, int(at), list(devices), list(open_),
                                                  bool(sup))
        out._count()
        return out


def folds(alarm_per: str, type_name: str, late: bool, n_devices: int) -> bool:
    """Is this device event folded per subject?"""
    return (alarm_per == "subject" and not late and n_devices > 1
            and type_name in SUBJECT_TYPES)
