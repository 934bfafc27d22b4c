"""The open subject episodes as arrays (:class:`FoldTable`), folded by
:func:`engine.fold.kernels.fold_events`; the same episodes as
:class:`engine.per_subject.SubjectEpisodes` for the checkpoint and for reconcile
(:meth:`FoldTable.episodes`, :meth:`FoldTable.of_episodes`), so both keep their format.

A table holds the registry and zone ids its rows refer to: after a reload, take
:meth:`FoldTable.episodes` of the old table, reconcile them, and build the new one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contract.alarms import ALARM_TYPES
from engine.fold import kernels as FK
from engine.native import entry_point
from engine.per_subject import SUBJECT_TYPES, Episode, SubjectEpisodes

# Per alarm type: is it folded with alarm_per "subject".
FOLD_TYPES = np.array([t in SUBJECT_TYPES for t in ALARM_TYPES], dtype=np.bool_)
NO_FOLD = np.zeros(len(ALARM_TYPES), dtype=np.bool_)
# Columns of FoldTable.fold's kept rows (engine.fold.kernels.fold_events).
KEPT_I, KEPT_F = 10, 4


class FoldTable:
    """Open subject episodes of one engine's registry and zones (see the module)."""

    def __init__(self, registry: Any, zone_ids: list[str], extras: list[str] | None = None,
                 devices_max: int = 0):
        self.registry = registry
        self.n_devices = registry.n_devices
        self.zone_ids = list(zone_ids)
        self.n_z1 = len(self.zone_ids) + 1
        self.subject_ndev = np.array([len(s.device_ids) for s in registry.subjects] or [0],
                                     dtype=np.int64)
        # Ids outside the registry (refs n_devices + j): devices of a restored episode.
        self.extras = list(extras or ())
        self.names = list(registry.device_ids) + self.extras if self.extras \
            else registry.device_ids
        # Devices a row can list: those of its subject and those it was restored with.
        self.cap = max(2, int(self.subject_ndev.max()) + devices_max)
        self.meta = np.zeros(1, dtype=np.int64)  # free rows on the stack
        self.one = np.zeros(1, dtype=np.int64)
        self._fold = None  # fold_events' native entry point, resolved at the first fold
        # fold_events' arguments: the batch's (0-2, 6) set by each fold, the rest by
        # _rows and _parts (a call then builds no tuple of 20).
        self._args: list[Any] = [None, None, 0, registry.arrays.device_subject,
                                 self.subject_ndev, registry.n_subject_devices, NO_FOLD,
                                 self.n_z1, *[None] * 12]
        self._rows(16)
        self._parts(16)

    def _rows(self, rows: int) -> None:
        """(Re)allocate room for ``rows`` episodes, keeping those there are."""
        old = getattr(self, "rint", None)
        n_old = 0 if old is None else len(old)
        rint = np.full((rows, 6), FK.FREE, dtype=np.int64)
        rdev = np.zeros((rows, self.cap), dtype=np.int64)
        ropen = np.zeros((rows, self.cap), dtype=np.int64)
        free = np.empty(rows, dtype=np.int64)
        nfree = int(self.meta[0])
        if old is not None:
            rint[:n_old], rdev[:n_old], ropen[:n_old] = old, self.rdev, self.ropen
            free[:nfree] = self.free[:nfree]
        added = np.arange(rows - 1, n_old - 1, -1, dtype=np.int64)  # (popped lowest first)
        free[nfree:nfree + len(added)] = added
        self.meta[0] = nfree + len(added)
        self.rint, self.rdev, self.ropen, self.free = rint, rdev, ropen, free
        self.slots = np.full(1 << max(4, (2 * rows - 1).bit_length()), -1, dtype=np.int64)
        FK.rehash(self.slots, self.rint)
        self._args[8:15] = (self.slots, rint, rdev, ropen, free, self.meta, self.one)

    def _parts(self, n: int) -> None:
        self.nparts = np.empty(n, dtype=np.int64)
        self.p_int = np.empty((2 * n, 6), dtype=np.int64)
        self.pool = np.empty(2 * n * self.cap, dtype=np.int64)
        self.kept_i = np.empty((n, KEPT_I), dtype=np.int64)
        self.kept_f = np.empty((n, KEPT_F), dtype=np.float64)
        self._args[15:20] = (self.nparts, self.p_int, self.pool, self.kept_i, self.kept_f)

    def fold(self, ev_i: np.ndarray, ev_f: np.ndarray, n: int, fold: bool
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, list]:
        """Fold the first ``n`` event rows of ``ev_i``/``ev_f`` (engine.kernels.new_events'
        buffers: C-ordered int64 and float64; ``fold``: alarm_per is "subject"). Returns
        per row -1 (as it is) or the number of events it becomes; the rows that become
        anything, in order, as ``kept_i`` (row, that number, the row's 7 ev_i columns,
        its subject index) and ``kept_f`` (its lat, lon, aux, acc); then those events
        (raised, type, lead ref, episode at, pool offset, count) and the pool of device
        refs."""
        if self.meta[0] < n:
            self._rows(max(2 * len(self.rint), len(self.rint) - int(self.meta[0]) + n))
        if len(self.nparts) < n:
            self._parts(max(n, 2 * len(self.nparts)))
        args = self._args
        args[0] = ev_i
        args[1] = ev_f
        args[2] = n
        args[6] = FOLD_TYPES if fold else NO_FOLD
        if self._fold is None:  # the types of these arguments never change (see _parts)
            self._fold = entry_point(FK.fold_events, tuple(args))
        m, nk = self._fold(*args)
        parts = self.p_int[:m].tolist()
        used = parts[-1][4] + parts[-1][5] if m else 0
        return (self.nparts[:n], self.kept_i[:nk], self.kept_f[:nk], parts,
                self.pool[:used].tolist())

    def to_array(self) -> np.ndarray:
        """The checkpoint array of the open episodes (SubjectEpisodes.to_array)."""
        return self.episodes().to_array()

    def __len__(self) -> int:
        return len(self.rint) - int(self.meta[0])

    def episodes(self) -> SubjectEpisodes:
        """The open episodes as engine.per_subject's (ids, not refs)."""
        out = SubjectEpisodes()
        names, n_z1, subjects = self.names, self.n_z1, self.registry.subjects
        for r in np.flatnonzero(self.rint[:, FK.R_KEY] != FK.FREE).tolist():
            key, lead, at, sup, ndev, nopen = self.rint[r].tolist()
            s, rest = divmod(key, FK.N_TYPES * n_z1)
            t, z = divmod(rest, n_z1)
            devices = [names[x] for x in self.rdev[r, :ndev].tolist()]
            open_ = [names[x] for x in self.ropen[r, :nopen].tolist()]
            out.episodes[(subjects[s].subject_id, ALARM_TYPES[t],
                          self.zone_ids[z - 1] if z else None)] = Episode(
                names[lead], at, devices, open_, bool(sup))
        out._count()
        return out

    @classmethod
    def of_episodes(cls, eps: SubjectEpisodes, registry: Any, zone_ids: list[str]) -> FoldTable:
        """A table of ``eps`` (reconciled to ``registry``: their subjects and zones are
        there; devices that are not become extras)."""
        index = registry._device_index
        extras = sorted({d for ep in eps.episodes.values() for d in (ep.lead, *ep.devices)
                         if d not in index})
        table = cls(registry, zone_ids, extras,
                    max((len(ep.devices) for ep in eps.episodes.values()), default=0))
        ref = {**index, **{d: registry.n_devices + j for j, d in enumerate(extras)}}
        subject_index = {s.subject_id: i for i, s in enumerate(registry.subjects)}
        zone_index = {z: i for i, z in enumerate(table.zone_ids)}
        table._rows(max(16, 2 * len(eps.episodes)))
        for (s, t, z), ep in eps.episodes.items():
            key = ((subject_index[s] * FK.N_TYPES + ALARM_TYPES.index(t)) * table.n_z1
                   + (zone_index[z] + 1 if z is not None else 0))
            table.meta[0] -= 1
            r = int(table.free[table.meta[0]])
            table.rint[r] = (key, ref[ep.lead], ep.at, int(ep.superseded), len(ep.devices),
                             len(ep.open))
            table.rdev[r, :len(ep.devices)] = [ref[d] for d in ep.devices]
            table.ropen[r, :len(ep.open)] = [ref[d] for d in ep.open]
            table.slots[FK.find_slot(table.slots, table.rint, key)] = r
        return table
