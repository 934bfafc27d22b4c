"""The engine: registry + device state + rule kernels behind a small Python API.

Python only converts at the edges: numpy arrays in, alarm event dicts out (key order as
in ``docs/internals.md``). All rule work happens in :mod:`engine.kernels`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from emfence.config import LEVELS, Config
from engine import kernels as K
from engine.registry import Registry
from engine.state import (
    DeviceState,
    adopt,
    bytes_per_device,
    id_arrays,
    load_checkpoint,
    load_checkpoint_bytes,
    new_state,
    recompute_deadlines,
    snapshot_arrays,
    write_checkpoint,
)

_EVIDENCE_TYPES = (K.T_OUTBOUND, K.T_EXCLUSION)


def alarm_id(device_id: str, type_name: str, zone_id: str | None, episode_at_ms: int,
             late: bool) -> str:
    """Deterministic alarm id: the same episode gives the same id for its raised and
    cleared events, in every run and across restarts. The episode is identified by
    device, type, zone and the ``at`` of its raised event (and whether it is a late
    pair, which never shares an id with a live episode)."""
    key = f"{device_id}\x1f{type_name}\x1f{zone_id or ''}\x1f{episode_at_ms}\x1f{int(late)}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def _entry_point(dispatcher: Any, args: tuple) -> Any:
    """The native entry point numba compiled (or loaded from its cache) for exactly the
    types of ``args``; the plain function itself when JIT is disabled.

    A call through a dispatcher first computes the numba type of every argument to pick
    the compiled version: for the rule kernel's 23 arguments, three of them NamedTuples of
    48 arrays in all, that is ~12-17 us per call, more than a 100-fix batch takes to run.
    The engine's argument types never change between calls (the state, registry and zone
    arrays are its own; the batch columns are coerced by :func:`_as` to one dtype, 1-D, C
    order), so it resolves the entry point once (per reload) and calls it directly.
    """
    typeof = getattr(dispatcher, "typeof_pyval", None)
    if typeof is None:  # NUMBA_DISABLE_JIT=1: kernels are plain Python functions
        return dispatcher
    return dispatcher.compile(tuple(typeof(a) for a in args))


class _Absent:
    """Constant columns for the fields a batch of one kind does not carry (a fix has no
    battery, a status no position), kept across calls instead of allocated per call. The
    kernels only read them; slices of one buffer, grown when a larger batch comes."""

    def __init__(self) -> None:
        self._grow(256)

    def _grow(self, n: int) -> None:
        self.capacity = n
        self.nan = np.full(n, np.nan)
        self.minus_one = np.full(n, -1, np.int8)
        self.zero = np.zeros(n, np.uint8)
        self.one = np.ones(n, np.uint8)

    def ensure(self, n: int) -> None:
        if n > self.capacity:
            self._grow(max(n, 2 * self.capacity))


def _as(arr: Any, dtype, name: str, n: int | None) -> np.ndarray:
    a = np.ascontiguousarray(arr, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} elements, expected {n} (like device_idx)")
    return a


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
        self.state: DeviceState = new_state(registry.n_devices, registry.n_slots)
        self._counters = np.zeros(K.N_COUNTERS, dtype=np.int64)
        self._events = K.new_events(1024)
        self._absent = _Absent()
        self._ids = None  # checkpoint id arrays, built at the first snapshot
        self._bind()

    # ----- configuration -------------------------------------------------------------
    def _set_rules(self, config: Config) -> None:
        r = config.rules
        self._offline_after_ms = np.array(
            [round(r.offline_after_s.for_level(lvl) * 1000) for lvl in LEVELS], dtype=np.int64)
        self._buffer_m = float(r.buffer_m)
        self._confirm = int(r.outbound_confirm_fixes)
        self._battery_low = float(r.battery_low_pct)
        self._battery_clear = float(r.battery_clear_pct)

    @staticmethod
    def _check_zones(zones: Any, registry: Registry) -> None:
        if list(zones.zone_ids) != registry.zone_ids:
            raise ValueError("registry was loaded against other zones: load_registry(subjects, "
                             "zones) with the same CompiledZones the engine gets")

    # ----- processing ----------------------------------------------------------------
    def process_fixes(self, device_idx, ts_ms, lat, lon, acc_m, coord_sys, rx_ms) -> list[dict]:
        """Run the rules over fixes in arrival order (equal-length arrays: ``device_idx``
        int32 from the registry, ``ts_ms``/``rx_ms`` epoch ms, ``lat``/``lon`` degrees,
        ``acc_m`` metres, ``coord_sys`` 0 WGS-84 / 1 GCJ-02). Returns alarm events."""
        dev = _as(device_idx, np.int32, "device_idx", None)
        n = dev.shape[0]
        a = self._absent
        a.ensure(n)
        return self._run(a.zero[:n], dev, _as(ts_ms, np.int64, "ts_ms", n),
                         _as(rx_ms, np.int64, "rx_ms", n), _as(lat, np.float64, "lat", n),
                         _as(lon, np.float64, "lon", n), _as(acc_m, np.float64, "acc_m", n),
                         _as(coord_sys, np.uint8, "coord_sys", n), a.nan[:n], a.minus_one[:n])

    def process_statuses(self, device_idx, ts_ms, rx_ms, battery_pct, strap,
                         charging) -> list[dict]:
        """Run tamper/battery rules over statuses in arrival order (``battery_pct`` NaN =
        absent; ``strap`` -1 absent, 0 ok, 1 open; ``charging`` is accepted, unused by the
        rules). Every status is also a sign of life for the offline rule."""
        dev = _as(device_idx, np.int32, "device_idx", None)
        n = dev.shape[0]
        _as(charging, np.int8, "charging", n)
        a = self._absent
        a.ensure(n)
        nan = a.nan[:n]
        return self._run(a.one[:n], dev, _as(ts_ms, np.int64, "ts_ms", n),
                         _as(rx_ms, np.int64, "rx_ms", n), nan, nan, nan,
                         a.zero[:n], _as(battery_pct, np.float64, "battery_pct", n),
                         _as(strap, np.int8, "strap", n))

    def process_records(self, kind, device_idx, ts_ms, rx_ms, lat, lon, acc_m, coord_sys,
                        battery_pct, strap, *, clock_now_ms: int | None = None
                        ) -> tuple[list[dict], int | None]:
        """Mixed fixes (kind 0) and statuses (kind 1) in arrival order. With
        ``clock_now_ms`` (replay), the receive clock advances with each record and the
        offline sweep runs whenever it does; returns (events, the clock afterwards)."""
        dev = _as(device_idx, np.int32, "device_idx", None)
        n = dev.shape[0]
        clock = clock_now_ms is not None
        now = int(clock_now_ms) if clock else 0
        args = (_as(kind, np.uint8, "kind", n), dev, _as(ts_ms, np.int64, "ts_ms", n),
                _as(rx_ms, np.int64, "rx_ms", n), _as(lat, np.float64, "lat", n),
                _as(lon, np.float64, "lon", n), _as(acc_m, np.float64, "acc_m", n),
                _as(coord_sys, np.uint8, "coord_sys", n),
                _as(battery_pct, np.float64, "battery_pct", n), _as(strap, np.int8, "strap", n))
        events, now = self._run_clock(*args, clock, now)
        return events, (now if clock else None)

    def _run(self, *arrays) -> list[dict]:
        return self._run_clock(*arrays, False, 0)[0]

    def _run_clock(self, kind, dev, ts, rx, lat, lon, acc, coord, battery, strap, clock, now):
        ev_i, ev_f = self._events
        ev_i, ev_f, n, now = self._process_batch(
            kind, dev, ts, rx, lat, lon, acc, coord, battery, strap, self.state,
            self.registry.arrays, self.zones.arrays, self._offline_after_ms, self._buffer_m,
            self._confirm, self._battery_low, self._battery_clear, clock, int(now),
            ev_i, ev_f, self._counters)
        self._events = (ev_i, ev_f)  # keep grown buffers
        return self._to_dicts(ev_i, ev_f, n), int(now)

    def _bind(self) -> None:
        """Resolve the kernels' native entry points for this engine's argument types (see
        :func:`_entry_point`); again after a reload, which replaces the arrays."""
        ev_i, ev_f = self._events
        a = self._absent
        f8, i8 = a.nan[:0], np.zeros(0, np.int64)
        self._process_batch = _entry_point(K.process_batch, (
            a.zero[:0], np.zeros(0, np.int32), i8, i8, f8, f8, f8, a.zero[:0], f8,
            a.minus_one[:0], self.state, self.registry.arrays, self.zones.arrays,
            self._offline_after_ms, self._buffer_m, self._confirm, self._battery_low,
            self._battery_clear, False, 0, ev_i, ev_f, self._counters))
        self._sweep = _entry_point(K.sweep, (self.state, 0, ev_i, ev_f, self._counters))

    def sweep(self, now_ms: int) -> list[dict]:
        """Offline ``raised`` events for devices silent (by receive time) longer than their
        level's ``offline_after`` at ``now_ms``. Cheap when nothing is due."""
        ev_i, ev_f = self._events
        ev_i, ev_f, n = self._sweep(self.state, int(now_ms), ev_i, ev_f, self._counters)
        self._events = (ev_i, ev_f)
        return self._to_dicts(ev_i, ev_f, n)

    def _to_dicts(self, ev_i: np.ndarray, ev_f: np.ndarray, n: int) -> list[dict]:
        """Event rows -> alarm event dicts (keys in the contract's order)."""
        if n == 0:
            return []
        reg = self.registry
        device_ids = reg.device_ids
        subjects = reg.subjects
        zone_ids = self.zones.zone_ids
        type_names = K.TYPE_NAMES
        rows = ev_i[:n].tolist()
        floats = ev_f[:n].tolist()
        subject_idx = reg.arrays.device_subject[ev_i[:n, K.EV_DEVICE]].tolist()
        out: list[dict] = []
        append = out.append
        for (d, typ, z, raised, at, episode, late), (lat, lon, dist, acc), s in zip(
                rows, floats, subject_idx):
            device_id = device_ids[d]
            subject = subjects[s]
            type_name = type_names[typ]
            zone_id = zone_ids[z] if z >= 0 else None
            late = late != 0
            ev = {
                "event": "raised" if raised else "cleared",
                "alarm_id": alarm_id(device_id, type_name, zone_id, episode, late),
                "type": type_name,
                "subject_id": subject.subject_id,
                "device_id": device_id,
                "zone_id": zone_id,
                "region": subject.region,
                "at": at,
                "late": late,
            }
            if typ in _EVIDENCE_TYPES:
                ev["lat"] = lat
                ev["lon"] = lon
                ev["distance_m"] = round(dist, 1)
                ev["acc"] = acc
            append(ev)
        return out

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
        """Measured rule state (plus the registry's per-device arrays), bytes per device."""
        return bytes_per_device(self.state, self.registry.arrays)

    def open_alarms(self) -> list[dict]:
        """The episodes open right now (for a console's start-up view and for tests):
        dicts with alarm_id, type, device_id, zone_id, at."""
        st, reg = self.state, self.registry
        out = []
        per_device = ((K.T_OUTBOUND, st.outbound_at_ms), (K.T_OFFLINE, st.offline_at_ms),
                      (K.T_TAMPER, st.tamper_at_ms), (K.T_LOW_BATTERY, st.battery_at_ms))
        for typ, arr in per_device:
            for d in np.flatnonzero(arr != K.NONE_MS).tolist():
                z = int(st.outbound_zone[d]) if typ == K.T_OUTBOUND else -1
                out.append(self._open(d, typ, z, int(arr[d])))
        slots = np.flatnonzero(st.exclusion_at_ms != K.NONE_MS).tolist()
        if slots:
            owner = np.searchsorted(reg.arrays.device_slot_off, slots, side="right") - 1
            for slot, d in zip(slots, owner.tolist()):
                s = int(reg.arrays.device_subject[d])
                k = slot - int(reg.arrays.device_slot_off[d])
                z = int(reg.arrays.excl_zone[int(reg.arrays.excl_off[s]) + k])
                out.append(self._open(d, K.T_EXCLUSION, z, int(st.exclusion_at_ms[slot])))
        return out

    def _open(self, d: int, typ: int, z: int, at: int) -> dict:
        device_id = self.registry.device_ids[d]
        zone_id = self.zones.zone_ids[z] if z >= 0 else None
        name = K.TYPE_NAMES[typ]
        return {"alarm_id": alarm_id(device_id, name, zone_id, at, False), "type": name,
                "device_id": device_id, "zone_id": zone_id, "at": at}

    # ----- persistence and reload ---------------------------------------------------
    def checkpoint(self, path: str | Path) -> None:
        """Write the whole state to ``path`` atomically (temp file, fsync, rename)."""
        write_checkpoint(path, self.snapshot())

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of what :meth:`checkpoint` writes, taken in memory (milliseconds even for
        a large fleet); ``engine.state.write_checkpoint(path, snapshot)`` writes it later,
        e.g. in another thread while this engine goes on processing."""
        if self._ids is None:  # the ids change only with the registry (reload)
            self._ids = id_arrays(self.registry.device_ids, self.registry.slot_keys(),
                                  list(self.zones.zone_ids))
        return snapshot_arrays(self.state, self._ids, self._counters)

    @classmethod
    def restore(cls, path: str | Path, zones: Any, registry: Registry,
                config: Config | None = None) -> Engine:
        """An engine continuing the episodes of the checkpoint at ``path``: open alarms stay
        open (no second raised) and clear with the same alarm_id. State is mapped by device
        id and (device id, exclusion zone id), so the registry may have changed."""
        return cls._restored(load_checkpoint(path), zones, registry, config)

    @classmethod
    def restore_bytes(cls, data: bytes, zones: Any, registry: Registry,
                      config: Config | None = None, *, where: str = "checkpoint") -> Engine:
        """:meth:`restore` from a checkpoint's bytes (``engine.state.checkpoint_bytes``, e.g.
        kept in the alarm store); ``where`` names them in a :class:`CheckpointError`."""
        return cls._restored(load_checkpoint_bytes(data, where), zones, registry, config)

    @classmethod
    def _restored(cls, loaded, zones: Any, registry: Registry, config: Config | None
                  ) -> Engine:
        state, device_ids, slot_keys, zone_ids, counters = loaded
        eng = cls(zones, registry, config)
        adopt(state, device_ids, slot_keys, zone_ids, eng.state, registry.device_ids,
              registry.slot_keys(), dict(zones.index))
        eng._counters[: len(counters)] = counters[: K.N_COUNTERS]
        recompute_deadlines(eng.state, registry.arrays.device_level, eng._offline_after_ms)
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
        fresh = new_state(registry.n_devices, registry.n_slots)
        stats = adopt(self.state, self.registry.device_ids, self.registry.slot_keys(),
                      list(self.zones.zone_ids), fresh, registry.device_ids,
                      registry.slot_keys(), dict(zones.index))
        recompute_deadlines(fresh, registry.arrays.device_level, self._offline_after_ms)
        self.zones, self.registry, self.state = zones, registry, fresh
        self._ids = None
        self._bind()
        return stats
