"""The engine: registry + device state + rule kernels behind a small Python API.

Python only converts at the edges: numpy arrays in, alarm event dicts out (key order as
in ``docs/internals.md``). All rule work happens in :mod:`engine.kernels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contract.alarms import ALARM_TYPES, alarm_id
from contract.records import RecordBatch, as_column
from emfence.config import LEVELS, Config
from engine import kernels as K
from engine.events import event_dicts
from engine.fold.table import FoldTable
from engine.kernel_args import args_type, kernel_args
from engine.native import entry_point
from engine.per_subject import CHECKPOINT_KEY, SubjectEpisodes
from engine.positions import Positions
from engine.registry import F_KERNEL, Registry
from engine.relation_kernels import N_CFG as N_REL_CFG
from engine.relations import (
    adopt_relations,
    load_relation_snapshot,
    new_relation_state,
    relation_arrays,
    relation_key_arrays,
    relation_open_alarms,
    relation_snapshot,
    reloaded_relations,
)
from engine.remap import remap_ids, remap_registry
from engine.state import (
    D_NO_FIX_AT,
    D_POWER_OFF_AT,
    X_CURFEW_AT,
    X_CURFEW_ZONE,
    X_OUT_TYPE,
    DeviceState,
    adopt,
    bytes_per_device,
    carried_ext,
    load_checkpoint,
    load_checkpoint_bytes,
    new_state,
    recompute_deadlines,
    registry_id_arrays,
    snapshot_arrays,
    write_checkpoint,
)

# A protected person's device (level VICTIM_LEVEL) is never offline: its deadline is
# this far after its last message (~146 000 years; no overflow added to epoch ms).
NEVER_OFFLINE_MS = 1 << 62


class Engine:
    """Alarm rules over all registered devices of one process.

    ``zones``: a ``geofence.CompiledZones``; ``registry``: from :func:`load_registry` on
    those zones; ``config``: the :class:`emfence.config.Config` (only ``rules`` is used).
    """

    def __init__(self, zones: Any, registry: Registry, config: Config | None = None):
        self.config = config or Config()
        self._set_rules(self.config)
        self.zones = zones
        self.registry = registry
        self._check_zones(zones, registry)
        self.state: DeviceState = new_state(registry.n_devices, registry.n_slots,
                                            _scheduled(registry))
        self.relations, self._rel_keys = relation_arrays(registry)
        self.rel_state = new_relation_state(self.relations)
        self._counters = np.zeros(K.N_COUNTERS, dtype=np.int64)
        self._events = K.new_events(1024)
        self._scratch_n = 1024  # positions nobody asked for are written here
        self._scratch = tuple(Positions.nan(self._scratch_n))
        self._ids = None  # checkpoint id arrays, built at the first snapshot
        self._cw_span = (0, 0)  # [lo, hi) ms the curfew windows in the kernels' arrays cover
        # open subject episodes (alarm_per "subject"), folded on the event rows
        self._per_subject = FoldTable(registry, zones.zone_ids)
        self._bind()

    # ----- configuration -------------------------------------------------------------
    def _set_rules(self, config: Config) -> None:
        r = config.rules
        self._offline_after_ms = np.array(
            [round(r.offline_after_s.for_level(lvl) * 1000) for lvl in LEVELS]
            + [NEVER_OFFLINE_MS], dtype=np.int64)  # (+ VICTIM_LEVEL: a victim device)
        self._no_fix_after_ms = np.array(
            [round(r.no_fix_after_s.for_level(lvl) * 1000) for lvl in LEVELS]
            + [NEVER_OFFLINE_MS], dtype=np.int64)  # (a victim device: never no_fix either)
        self._buffer_m = float(r.buffer_m)
        self._confirm = int(r.outbound_confirm_fixes)
        self._battery_low = float(r.battery_low_pct)
        self._battery_clear = float(r.battery_clear_pct)
        self._warn_m = np.array([r.approach_m, r.border_warn_m], dtype=np.float64)
        self._alarm_per = r.alarm_per
        self._rel_cfg = np.array([r.separation_window_s * 1000, r.separation_m,
                                  r.separation_confirm, r.proximity_m,
                                  r.proximity_fresh_s * 1000, r.buffer_m, r.contact_m,
                                  r.contact_min_s * 1000], dtype=np.float64)
        assert len(self._rel_cfg) == N_REL_CFG

    @staticmethod
    def _check_zones(zones: Any, registry: Registry) -> None:
        if list(zones.zone_ids) != registry.zone_ids:
            raise ValueError("registry was loaded against other zones: load_registry(subjects, "
                             "zones) with the same CompiledZones the engine gets")

    # ----- processing ----------------------------------------------------------------
    def process(self, batch: RecordBatch, *, clock_now_ms: int | None = None,
                positions: Positions | None = None) -> tuple[list[dict], int | None]:
        """Run the rules over ``batch`` (a :class:`contract.RecordBatch`: fixes and
        statuses in arrival order). With ``clock_now_ms`` (replay), the receive clock
        advances with each record and the offline sweep runs whenever it does; returns
        (alarm events, the clock afterwards, None without ``clock_now_ms``).

        ``positions`` (:meth:`Positions.nan` of ``len(batch)``) receives the WGS-84
        position of every fix of a known device: what the rules ran on, for those who
        keep the fixes (the track rows), so a GCJ-02 fix is converted only once."""
        clock = clock_now_ms is not None
        if positions is not None:
            positions.check(len(batch.kind))
        events, now = self._run(batch, clock, int(clock_now_ms) if clock else 0, positions)
        return events, (now if clock else None)

    def process_fixes(self, device_idx, ts_ms, lat, lon, acc_m, coord_sys, rx_ms) -> list[dict]:
        """Run the rules over fixes in arrival order (equal-length arrays: ``device_idx``
        int32 from the registry, ``ts_ms``/``rx_ms`` epoch ms, ``lat``/``lon`` degrees,
        ``acc_m`` metres, ``coord_sys`` 0 WGS-84 / 1 GCJ-02). Returns alarm events."""
        return self._run(RecordBatch.fixes(device_idx=device_idx, ts_ms=ts_ms, rx_ms=rx_ms,
                                           lat=lat, lon=lon, acc_m=acc_m,
                                           coord_sys=coord_sys), False, 0)[0]

    def process_statuses(self, device_idx, ts_ms, rx_ms, battery_pct, strap,
                         charging, power=None) -> list[dict]:
        """Run tamper/battery/power rules over statuses in arrival order (``battery_pct``
        NaN = absent; ``strap`` -1 absent, 0 ok, 1 open; ``power`` -1 absent, 0 on, 1 off,
        None: all absent; ``charging`` is accepted, unused by the rules). Every status is
        also a sign of life for the offline rule."""
        batch = RecordBatch.statuses(device_idx=device_idx, ts_ms=ts_ms, rx_ms=rx_ms,
                                     battery_pct=battery_pct, strap=strap, power=power)
        as_column(charging, np.int8, "charging", len(batch.device_idx))  # checked, unused
        return self._run(batch, False, 0)[0]

    def process_records(self, kind, device_idx, ts_ms, rx_ms, lat, lon, acc_m, coord_sys,
                        battery_pct, strap, power=None, *, clock_now_ms: int | None = None
                        ) -> tuple[list[dict], int | None]:
        """:meth:`process` on ``RecordBatch.records(...)`` of these columns (kept for the
        callers that still build columns; new code builds a RecordBatch)."""
        return self.process(RecordBatch.records(
            kind=kind, device_idx=device_idx, ts_ms=ts_ms, rx_ms=rx_ms, lat=lat, lon=lon,
            acc_m=acc_m, coord_sys=coord_sys, battery_pct=battery_pct, strap=strap,
            power=power), clock_now_ms=clock_now_ms)

    def _run(self, batch: RecordBatch, clock: bool, now: int,
             positions: Positions | None = None) -> tuple[list[dict], int]:
        # (Plain tuples and len() here: this is the fixed cost of every call; a
        # NamedTuple's attributes, .shape and star-unpacking measured ~0.3 us more.)
        if positions is None:  # nobody asked: the kernel writes into a scratch pair
            if len(batch[0]) > self._scratch_n:
                self._scratch_n = max(len(batch[0]), 2 * self._scratch_n)
                self._scratch = tuple(Positions.nan(self._scratch_n))
            wgs_lat, wgs_lon = self._scratch
        else:
            wgs_lat, wgs_lon = positions
        if self.registry.has_curfews and len(batch[2]):
            self._cover(batch[2])
        ev_i, ev_f = self._events
        ev_i, ev_f, n, now = self._process_batch(*batch, *self._rule_args, clock, now,
                                                 ev_i, ev_f, wgs_lat, wgs_lon, self._room)
        self._events = (ev_i, ev_f)  # keep grown buffers
        return self._to_dicts(ev_i, ev_f, n), int(now)

    # Curfew windows are computed ahead for this long past the newest fix (and back this
    # far before the oldest), and again when a fix falls outside: a rolling horizon.
    CURFEW_AHEAD_MS = 7 * 86_400_000
    CURFEW_BEHIND_MS = 2 * 86_400_000

    def _cover(self, ts_ms: np.ndarray) -> None:
        """Make the kernels' curfew windows cover every ts of a batch (epoch ms): the
        windows of [oldest - CURFEW_BEHIND_MS, newest + CURFEW_AHEAD_MS) in the local time
        zone ``register.timezone``, computed here with zoneinfo (never in a kernel). A new
        horizon drops every settled cache (its validity was bounded by the old windows)."""
        lo, hi = int(ts_ms.min()), int(ts_ms.max())
        if self._cw_span[0] <= lo and hi < self._cw_span[1]:
            return
        span = (lo - self.CURFEW_BEHIND_MS, hi + self.CURFEW_AHEAD_MS)
        cw_off, cw = self.registry.curfew_arrays(*span, self.config.register.timezone)
        self._cw_span = span
        self._arrays = self._arrays._replace(cw_off=cw_off, cw=cw)
        self.state.safe_m[:] = -1.0
        self._rule_args = (self._kernel_args(), *self._rule_args[1:])
        if args_type(self._rule_args[0]) != self._args_type:  # (never seen: the curfew
            self._resolve()  # arrays keep their dtypes; a wrong type would read garbage)

    def _bind(self) -> None:
        """Resolve the kernels' native entry points for this engine's argument types (see
        :func:`engine.native.entry_point`); again after a reload, which replaces the arrays."""
        # The arguments after the batch that change only here (a call then looks up none
        # of them: on a batch of one fix, those look-ups were ~3 % of the call).
        self._arrays = self.registry.arrays  # with the curfew windows of _cover
        self._cw_span = (0, 0)
        self._apad = K.approach_pads(self.zones.arrays.zone_bbox, float(self._warn_m[0]))
        self._rule_args = (self._kernel_args(), self._buffer_m, self._confirm,
                           self._battery_low, self._battery_clear)
        self._room = K.record_room(self._arrays, self.relations)
        self._resolve()

    def _resolve(self) -> None:
        """The kernels' native entry points for the argument types bound now."""
        ev_i, ev_f = self._events
        self._args_type = args_type(self._rule_args[0])
        self._process_batch = entry_point(K.process_batch, (
            *RecordBatch.empty(), *self._rule_args, False, 0, ev_i, ev_f, *self._scratch,
            self._room))
        self._sweep = entry_point(K.sweep, (self.state, 0, ev_i, ev_f, self._counters))

    def _kernel_args(self) -> Any:
        """The kernel's long-lived arrays as one reference (engine.kernel_args): built
        again whenever one of them is replaced, never on a call."""
        return kernel_args(self.state, self._arrays, self.zones.arrays, self.relations,
                           self.rel_state, self._offline_after_ms, self._no_fix_after_ms,
                           self._warn_m, self._apad, self._rel_cfg, self._counters)

    def sweep(self, now_ms: int) -> list[dict]:
        """Offline ``raised`` events for devices silent (by receive time) longer than their
        level's ``offline_after`` at ``now_ms``, and no_fix ``raised`` events for devices
        heard from but without a fix for their level's ``no_fix_after``. Cheap when
        nothing is due."""
        ev_i, ev_f = self._events
        ev_i, ev_f, n = self._sweep(self.state, int(now_ms), ev_i, ev_f, self._counters)
        self._events = (ev_i, ev_f)
        return self._to_dicts(ev_i, ev_f, n)

    def _to_dicts(self, ev_i: np.ndarray, ev_f: np.ndarray, n: int) -> list[dict]:
        """Event rows -> alarm event dicts, folded per subject (engine.events)."""
        return event_dicts(self, ev_i, ev_f, n)

    # ----- counters, introspection ----------------------------------------------------
    @property
    def counters(self) -> dict[str, int]:
        """Message counters since start (restored from a checkpoint): fixes, statuses,
        duplicates, late, and their per-kind parts; unknown_device (indices out of range,
        skipped); full_sweeps (sweeps that had to read every deadline); settled_fixes
        (fixes answered from the settled-device cache, see engine.kernels._fix_rules);
        grid_fixes (fixes answered by the grid path of engine.kernels.process_batch)."""
        c = self._counters
        out = {name: int(v) for name, v in zip(K.COUNTER_NAMES, c)}
        out["duplicates"] = out["duplicate_fixes"] + out["duplicate_statuses"]
        out["late"] = out["late_fixes"] + out["late_statuses"]
        return out

    def bytes_per_device(self) -> float:
        """Measured rule state (plus the registry's per-device arrays, and the relation
        rules' arrays and state spread over the devices), bytes per device."""
        n = max(self.registry.n_devices, 1)
        rel = sum(a.nbytes for a in (*self.relations, *self.rel_state))
        return bytes_per_device(self.state, self.registry.arrays) + rel / n

    def open_alarms(self) -> list[dict]:
        """The device episodes open right now (for a console's start-up view and for
        tests): dicts with alarm_id, type, device_id, zone_id, at. Per device, also with
        ``alarm_per = "subject"`` (a subject's alarm is that of its first device)."""
        st, reg = self.state, self.registry
        out = []
        per_device = ((K.T_OUTBOUND, st.outbound_at_ms), (K.T_OFFLINE, st.offline_at_ms),
                      (K.T_TAMPER, st.tamper_at_ms), (K.T_LOW_BATTERY, st.battery_at_ms),
                      (K.T_NO_FIX, st.device_ms[:, D_NO_FIX_AT]),
                      (K.T_POWER_OFF, st.device_ms[:, D_POWER_OFF_AT]))
        for typ, arr in per_device:  # (a protected person's device has none to show)
            for d in np.flatnonzero(arr[:reg.n_subject_devices] != K.NONE_MS).tolist():
                z = int(st.outbound_zone[d]) if typ == K.T_OUTBOUND else -1
                overdue = typ == K.T_OUTBOUND and st.ext[st.ext_row[d], X_OUT_TYPE] == 1
                out.append(self._open(d, K.T_LEAVE_OVERDUE if overdue else typ, z,
                                      int(arr[d])))
        x = st.ext  # (a device without a row of its own reads row 0: fresh)
        for d in np.flatnonzero(x[st.ext_row, X_CURFEW_AT] != K.NONE_MS).tolist():
            out.append(self._open(d, K.T_CURFEW, int(x[st.ext_row[d], X_CURFEW_ZONE]),
                                  int(x[st.ext_row[d], X_CURFEW_AT])))
        for typ, d, at, person in relation_open_alarms(self.relations, self.rel_state,
                                                       self.registry):
            out.append(self._open(d, ALARM_TYPES.index(typ), -1, at))
            if person is not None:  # (see _to_dicts: the other in the zone's place)
                out[-1]["alarm_id"] = alarm_id(out[-1]["device_id"], typ, person, at, False)
                out[-1]["peer_subject_id" if typ == "contact" else "person_id"] = person
        for d in np.flatnonzero(st.border_at_ms != K.NONE_MS).tolist():
            out.append(self._open(d, K.T_APPROACH, int(st.border_zone[d]),
                                  int(st.border_at_ms[d])))
        for typ, arr in ((K.T_EXCLUSION, st.exclusion_at_ms), (K.T_APPROACH, st.approach_at_ms)):
            slots = np.flatnonzero(arr != K.NONE_MS).tolist()
            owner = np.searchsorted(reg.arrays.device_slot_off, slots, side="right") - 1
            for slot, d in zip(slots, owner.tolist()):
                s = int(reg.arrays.device_subject[d])
                k = slot - int(reg.arrays.device_slot_off[d])
                z = int(reg.arrays.excl_zone[int(reg.arrays.excl_off[s]) + k])
                out.append(self._open(d, typ, z, int(arr[slot])))
        return out

    def _reconcile(self, episodes: SubjectEpisodes) -> None:
        """Fit the open subject alarms (``episodes``: those of the checkpoint, or of the
        engine before a reload) to the state and registry: engine.per_subject's
        SubjectEpisodes.reconcile, given (subject id, device id, type, zone id, at) of
        every open device episode in device order; then the table the fold runs on."""
        reg = self.registry
        index = reg._device_index
        alarms = self.open_alarms()
        subjects = [reg.subjects[int(reg.arrays.device_subject[index[a["device_id"]]])]
                    for a in alarms]
        rows = sorted(((s.subject_id, a["device_id"], a["type"], a["zone_id"], a["at"])
                       for s, a in zip(subjects, alarms, strict=True)),
                      key=lambda r: (index[r[1]], r[2], r[3] or "", r[4]))
        # (reconcile asks only about subjects with an open device episode: those alone)
        folded = {s.subject_id for s in subjects if len(s.device_ids) > 1} \
            if self._alarm_per == "subject" else set()
        episodes.reconcile(rows, folded)
        self._per_subject = FoldTable.of_episodes(episodes, reg, self.zones.zone_ids)

    def _open(self, d: int, typ: int, z: int, at: int) -> dict:
        device_id = self.registry.device_ids[d]
        zone_id = self.zones.zone_ids[z] if z >= 0 else None
        name = ALARM_TYPES[typ]
        return {"alarm_id": alarm_id(device_id, name, zone_id, at, False), "type": name,
                "device_id": device_id, "zone_id": zone_id, "at": at}

    # ----- persistence and reload ---------------------------------------------------
    def checkpoint(self, path: str | Path) -> None:
        """Write the whole state to ``path`` atomically (temp file, fsync, rename)."""
        write_checkpoint(path, self.snapshot())

    def snapshot(self, copy: bool = True) -> dict[str, np.ndarray]:
        """A copy of what :meth:`checkpoint` writes, to be written later, e.g. by another
        thread; ``copy=False``: the engine's own arrays (engine.checkpoint_delta)."""
        if self._ids is None:  # the ids change only with the registry (reload)
            self._ids = (registry_id_arrays(self.registry, self.zones.zone_ids),
                         relation_key_arrays(self._rel_keys))
        arrays = snapshot_arrays(self.state, self._ids[0], self._counters, copy)
        arrays[CHECKPOINT_KEY] = self._per_subject.to_array()
        arrays.update(relation_snapshot(self.rel_state, self._ids[1], copy))
        return arrays

    @classmethod
    def restore(cls, path: str | Path, zones: Any, registry: Registry,
                config: Config | None = None) -> Engine:
        """An engine continuing the episodes of the checkpoint at ``path``: open alarms stay
        open (no second raised) and clear with the same alarm_id. State is mapped by device
        id and (device id, exclusion zone id), so the registry may have changed."""
        return cls._restored(load_checkpoint(path), zones, registry, config,
                             load_relation_snapshot(path))

    @classmethod
    def restore_bytes(cls, data: bytes | dict, zones: Any, registry: Registry,
                      config: Config | None = None, *, where: str = "checkpoint") -> Engine:
        """:meth:`restore` from a checkpoint's bytes (``checkpoint_bytes``, e.g. kept in the
        alarm store) or arrays; ``where`` names them in a :class:`CheckpointError`."""
        return cls._restored(load_checkpoint_bytes(data, where), zones, registry, config,
                             load_relation_snapshot(data))

    @classmethod
    def _restored(cls, loaded, zones: Any, registry: Registry, config: Config | None,
                  relations=None) -> Engine:
        state, device_ids, slot_keys, zone_ids, counters, extras = loaded
        eng = cls(zones, registry, config)
        remap = remap_ids(device_ids, slot_keys, zone_ids, registry, zones.zone_ids)
        eng.state = new_state(registry.n_devices, registry.n_slots, _scheduled(registry)
                              | carried_ext(state, remap.dev_old))
        eng._bind()
        adopt(state, eng.state, remap)
        eng._reconcile(SubjectEpisodes.from_array(extras.get(CHECKPOINT_KEY)))
        eng._counters[: len(counters)] = counters[: K.N_COUNTERS]
        recompute_deadlines(eng.state, registry.arrays.device_level, eng._offline_after_ms,
                            eng._no_fix_after_ms)
        if relations is not None:
            adopt_relations(*relations, eng.rel_state, eng._rel_keys)
        return eng

    def reload(self, zones: Any, registry: Registry, config: Config | None = None
               ) -> dict[str, int]:
        """Switch to new zones / registry (and optionally config) keeping the state of
        devices that still exist. Returns what was kept and dropped. Open alarms of
        removed devices or zones are not cleared: they stay open in the store for the
        operator to close."""
        self._check_zones(zones, registry)
        if config is not None:
            self.config = config
            self._set_rules(config)
        remap = remap_registry(self.registry, registry, self.zones.zone_ids, zones.zone_ids)
        episodes = self._per_subject.episodes()  # (by the old registry's ids)
        fresh = new_state(registry.n_devices, registry.n_slots, _scheduled(registry)
                          | carried_ext(self.state, remap.dev_old))
        stats = adopt(self.state, fresh, remap)
        recompute_deadlines(fresh, registry.arrays.device_level, self._offline_after_ms,
                            self._no_fix_after_ms)
        self.zones, self.registry, self.state = zones, registry, fresh
        self.relations, self._rel_keys, self.rel_state = reloaded_relations(
            (self.relations, self.rel_state, self._rel_keys), registry, remap.dev_old,
            remap.n_old_devices)
        self._ids = None
        self._bind()
        self._reconcile(episodes)
        return stats

    def swap_registry(self, registry: Registry, zones: Any) -> dict[str, int]:
        """Install a new registry and compiled zones (the register changed), keeping the
        rule state of every device that is still registered: open episodes (outbound,
        leave_overdue, exclusion per zone, curfew, offline, tamper, battery, no_fix,
        power_off), runs of out fixes, the no-fix count, the last fix (position too) and
        receive times. An episode whose zone id no longer exists
        is dropped (its alarm stays open in the store); one whose zone is still there
        stays open, so it is never raised a second time, and clears with its alarm_id.
        Only the settled-device cache starts afresh. Returns :meth:`reload`'s counts."""
        return self.reload(zones, registry)


def _scheduled(registry: Registry) -> np.ndarray:
    """Devices of subjects with leaves or curfews: those with an ext row of their own."""
    return (registry.arrays.subject_flags[registry.arrays.device_subject] & F_KERNEL) != 0
