"""Device state as struct-of-arrays, indexed by the registry's dense device index.

One :class:`DeviceState` NamedTuple is handed to the numba kernels as one argument;
the kernels update it in place. Times are epoch ms; ``NONE_MS`` marks "never / not
open" (an alarm's episode key is the ``at`` of its raised event, so "open" is simply
"episode time is set").

Per device (bytes): last_rx_ms 8, deadline_ms 8, last_fix_ts_ms 8, last_status_ts_ms 8,
out_run 1, outbound_at_ms 8, outbound_zone 4, offline_at_ms 8, tamper_at_ms 8,
battery_at_ms 8, settled cache 28, ``ext_row`` 4 (and the scheduled rules' ``ext`` row of
64, leave_overdue and curfew, only for the devices of subjects with leaves or curfews; see
:data:`X_OUT_TYPE` ...), the device rules (power_off, no_fix) and the last
position for evidence 64, the offline deadline 8 (in the device row, below), the late
messages 9 (late_status_lo 4, late_back_ms 4, late_run 1); per
(device, exclusion zone) slot: exclusion_at_ms 8. See
:func:`bytes_per_device` for the measured figure including the registry's per-device
arrays.

What the offline sweep touches of a device is one 64-byte row, aligned to a cache line
(``DeviceState.device_row``, the R_* columns): ``last_rx_ms``, ``offline_at_ms``,
``no_fix_deadline_ms`` and ``device_ms`` are views of its columns, beside the offline
deadline, so a raise reads and writes one cache line (and the last position's row), not
one per array. ``deadline_ms`` is the sweep's one stream: the earlier of the offline and
the no-fix deadline. A checkpoint holds the views as separate arrays, as before the row
(the row itself and the deadlines are rebuilt on restore: engine.Engine.restore
recomputes them), so its layout and version are unchanged.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from contract.errors import EmfenceError
from engine.checkpoint_arrays import open_arrays
from engine.late_state import LATE_FIELDS, late_fields
from engine.remap import Remap

NONE_MS = np.iinfo(np.int64).min  # "never" / "no open episode"
# Runs of out fixes saturate here: out_run is int8, and a run only has to reach the
# confirmation count (rules.outbound_confirm_fixes is at most 100).
OUT_RUN_MAX = 120
NO_DEADLINE_MS = np.iinfo(np.int64).max  # not due for offline (never heard, or already open)
CHECKPOINT_VERSION = 1
# Arrays a checkpoint may hold beside the state, the ids and the counters (written by the
# engine, engine.Engine.snapshot): the open subject episodes (engine.per_subject).
EXTRA_KEYS = ("subject_episodes",)

# Columns of DeviceState.ext (int64[n_rows, N_EXT]): the state of the rules of subjects
# with leaves or curfews, packed in one array so the common path's kernels take one more
# argument, not seven. Only the devices of such subjects have a row of their own
# (DeviceState.ext_row, 4 bytes a device instead of 64); every other device points at row
# 0, a fresh row that is never written (only the scheduled rules write, and X_OUT_TYPE is
# set only by the leave rule). Only the scheduled rules (engine.kernels._scheduled_rules)
# read them, except X_OUT_TYPE (read when an outbound-or-overdue episode clears).
X_OUT_TYPE = 0  # the open outbound_at_ms episode is 0 outbound / 1 leave_overdue
X_OWE = 1  # end (ms) of the latest ended leave the device has not been seen in since
X_LV_RUN = 2  # run of out fixes against the inclusion zones alone (leaves ignored)
X_LAST_TS = 3  # ts of the last fully evaluated in-order fix (a subject with leaves/curfews)
X_CURFEW_AT = 4  # open curfew episode's raised at, or NONE_MS
X_CURFEW_END = 5  # its window's end (ms, exclusive)
X_CURFEW_ZONE = 6  # its zone index
X_CURFEW_RUN = 7  # run of out fixes in the current curfew window
# The late curfew run (engine.kernels._late_curfew): out late fixes of the device in one
# window, consecutive and in order among themselves (-1: its late pair was written).
X_LATE_CF_RUN = 8
X_LATE_CF_START = 9  # start (ms) of the window of that run, NONE_MS: none
N_EXT = 10
# Columns of DeviceState.device_ms (int64[n_devices, N_DEVICE_MS]).
D_POWER_OFF_AT = 0  # open power_off episode's raised at (its ts), or NONE_MS
D_NO_FIX_AT = 1  # open no_fix episode's raised at, or NONE_MS
D_NO_FIX_FROM = 2  # receive time the no-fix count was started, NONE_MS: none runs
D_LAST_FIX_RX = 3  # latest receive time of an in-order fix, or NONE_MS
N_DEVICE_MS = 4
# Columns of DeviceState.last_pos (float64[n_devices, 3]; NaN: never fixed).
P_LAT, P_LON, P_ACC = 0, 1, 2  # WGS-84 degrees, degrees, metres
# Columns of DeviceState.device_row (int64[n_devices, N_ROW]): device_ms is columns
# R_DEVICE_MS .. R_DEVICE_MS + N_DEVICE_MS - 1 (so row[d, D_*] is device_ms[d, D_*]).
R_DEVICE_MS = 0
R_LAST_RX = 4  # = last_rx_ms
R_OFFLINE_AT = 5  # = offline_at_ms
R_NO_FIX_DEADLINE = 6  # = no_fix_deadline_ms
R_OFFLINE_DEADLINE = 7  # last receive + offline_after(level), or NO_DEADLINE_MS: not due
N_ROW = 8
# The DeviceState fields that are views of device_row's columns.
ROW_VIEWS = ("last_rx_ms", "offline_at_ms", "no_fix_deadline_ms", "device_ms")
EXT_FRESH = (0, np.iinfo(np.int64).min, 0, np.iinfo(np.int64).min, np.iinfo(np.int64).min,
             np.iinfo(np.int64).min, -1, 0, 0, np.iinfo(np.int64).min)


class DeviceState(NamedTuple):
    """Mutable per-device rule state (see module docstring for units)."""

    last_rx_ms: np.ndarray  # int64: receive time of the newest message (fix or status)
    deadline_ms: np.ndarray  # int64: the sweep's: the earlier of the offline deadline
    # (device_row's R_OFFLINE_DEADLINE) and no_fix_deadline_ms; NO_DEADLINE_MS: neither due
    last_fix_ts_ms: np.ndarray  # int64: ts of the newest processed fix (late/duplicate test)
    last_status_ts_ms: np.ndarray  # int64: ts of the newest processed status
    out_run: np.ndarray  # int8: consecutive *out* fixes (saturating at OUT_RUN_MAX)
    outbound_at_ms: np.ndarray  # int64: open outbound episode's raised at, or NONE_MS
    outbound_zone: np.ndarray  # int32: its zone index (nearest inclusion zone at raise)
    offline_at_ms: np.ndarray  # int64: open offline episode's at, or NONE_MS
    tamper_at_ms: np.ndarray  # int64
    battery_at_ms: np.ndarray  # int64
    exclusion_at_ms: np.ndarray  # int64[n_slots]: per (device, exclusion zone)
    floor_ms: np.ndarray  # int64[1]: lower bound of every deadline_ms (sweep early-out)
    ext: np.ndarray  # int64[n_rows, N_EXT]: leave_overdue and curfew state (X_* columns)
    ext_row: np.ndarray  # int32[n_devices]: the device's ext row; 0: the shared fresh row
    # Settled-device cache (engine.kernels._fix_rules): position of the last full
    # evaluation (WGS-84 degrees), the safe radius around it (metres, <= 0: none) and the
    # time its set of active leaves changes. Never carried over a reload or restore.
    near_lon: np.ndarray  # float64
    near_lat: np.ndarray  # float64
    safe_m: np.ndarray  # float32
    safe_until_ms: np.ndarray  # int64
    # The device rules (engine.kernels, docs/rules.md: power_off, no_fix) and the evidence
    # the device alarms carry. Rows, so that a message touches one or two cache lines.
    device_ms: np.ndarray  # int64[n_devices, N_DEVICE_MS]: the D_* columns
    last_pos: np.ndarray  # float64[n_devices, 3]: newest in-order fix, WGS-84 (P_* columns)
    no_fix_deadline_ms: np.ndarray  # int64: the no-fix count runs out (a lower bound: see
    # engine.kernels._sweep_into), or NO_DEADLINE_MS
    # The approach warning (docs/rules.md): per (device, exclusion zone) slot as
    # exclusion_at_ms, and the inclusion-border warning per device with its zone.
    approach_at_ms: np.ndarray  # int64[n_slots]: open approach episode's raised at, or NONE_MS
    border_at_ms: np.ndarray  # int64: open border (approach) episode's raised at, or NONE_MS
    border_zone: np.ndarray  # int32: its inclusion zone index
    # What the sweep reads and writes of a device, one cache line (R_* columns); the
    # ROW_VIEWS fields are views of its columns.
    device_row: np.ndarray  # int64[n_devices, N_ROW], 64-byte aligned
    # Late fixes judged on their own ts (engine.kernels._late_fix_rules): the late run.
    late_status_lo: np.ndarray  # int32: the previous late status's ts's low 31 bits, -1: none
    late_back_ms: np.ndarray  # int32: newest in-order ts - the previous late fix's (0: none)
    late_run: np.ndarray  # int8: out late fixes of the run (-1: its outbound pair written)


def new_state(n_devices: int, n_slots: int, ext_mask: np.ndarray | None = None
              ) -> DeviceState:
    """Fresh state: nothing heard, no episode open. ``ext_mask`` (bool per device): the
    devices with an ``ext`` row of their own (None: every device)."""
    ext_row, n_rows = ext_rows(np.ones(n_devices, bool) if ext_mask is None else ext_mask)
    def full(n: int, value: int, dtype=np.int64) -> np.ndarray:
        return np.full(n, value, dtype=dtype)

    row = new_device_rows(n_devices)
    return DeviceState(
        last_rx_ms=row[:, R_LAST_RX],
        deadline_ms=full(n_devices, NO_DEADLINE_MS),
        last_fix_ts_ms=full(n_devices, NONE_MS),
        last_status_ts_ms=full(n_devices, NONE_MS),
        out_run=np.zeros(n_devices, dtype=np.int8),
        outbound_at_ms=full(n_devices, NONE_MS),
        outbound_zone=full(n_devices, -1, np.int32),
        offline_at_ms=row[:, R_OFFLINE_AT],
        tamper_at_ms=full(n_devices, NONE_MS),
        battery_at_ms=full(n_devices, NONE_MS),
        exclusion_at_ms=full(n_slots, NONE_MS),
        floor_ms=full(1, NO_DEADLINE_MS),
        ext=new_ext(n_rows),
        ext_row=ext_row,
        near_lon=np.full(n_devices, np.nan),
        near_lat=np.full(n_devices, np.nan),
        safe_m=np.full(n_devices, -1.0, dtype=np.float32),
        safe_until_ms=full(n_devices, 0),
        device_ms=row[:, R_DEVICE_MS:R_DEVICE_MS + N_DEVICE_MS],
        last_pos=np.full((n_devices, 3), np.nan),
        no_fix_deadline_ms=row[:, R_NO_FIX_DEADLINE],
        approach_at_ms=full(n_slots, NONE_MS),
        border_at_ms=full(n_devices, NONE_MS),
        border_zone=full(n_devices, -1, np.int32),
        device_row=row,
        **late_fields(n_devices),
    )


def new_device_rows(n_devices: int) -> np.ndarray:
    """Fresh ``DeviceState.device_row``: nothing heard, no episode, no deadline; its rows
    start on a 64-byte boundary (one cache line each)."""
    raw = np.empty(n_devices * N_ROW + 8, dtype=np.int64)  # 64 bytes to align in
    skip = (-raw.ctypes.data % 64) // 8
    row = raw[skip:skip + n_devices * N_ROW].reshape(n_devices, N_ROW)
    row[:] = NONE_MS
    row[:, R_NO_FIX_DEADLINE] = NO_DEADLINE_MS
    row[:, R_OFFLINE_DEADLINE] = NO_DEADLINE_MS
    return row


# The device rules' state and the last position: a checkpoint written before them has
# none (fresh: no count, no episode, never fixed).
DEVICE_RULE_FIELDS = ("device_ms", "last_pos", "no_fix_deadline_ms")


def ext_rows(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(ext_row per device, rows): rows 1.. for the devices in ``mask`` in device order,
    0 (the shared fresh row) for the others."""
    row = np.zeros(len(mask), dtype=np.int32)
    own = np.flatnonzero(mask)
    row[own] = np.arange(1, len(own) + 1, dtype=np.int32)
    return row, len(own) + 1


def carried_ext(old: DeviceState, dev_old: np.ndarray) -> np.ndarray:
    """Bool per new device: its old ext row holds state (not fresh), so it keeps a row of
    its own even if its subject no longer has leaves or curfews (an open leave_overdue
    must still clear as such). ``dev_old``: each new device's old row, -1 for a new one
    (:class:`engine.remap.Remap`)."""
    fresh = np.array(EXT_FRESH, dtype=np.int64)
    busy = np.any(old.ext != fresh, axis=1)  # per row, not per device (ext_row gathers)
    out = np.zeros(len(dev_old), dtype=bool)
    kept = dev_old >= 0
    out[kept] = busy[old.ext_row[dev_old[kept]]]
    return out


def new_ext(n_devices: int) -> np.ndarray:
    """Fresh ``DeviceState.ext`` rows: no leave owed, no episode, no run."""
    return np.tile(np.array(EXT_FRESH, dtype=np.int64), (n_devices, 1))


PER_DEVICE_FIELDS = ("last_rx_ms", "deadline_ms", "last_fix_ts_ms", "last_status_ts_ms", "out_run",
                     "outbound_at_ms", "outbound_zone", "offline_at_ms", "tamper_at_ms",
                     "battery_at_ms", "device_ms", "last_pos", "no_fix_deadline_ms",
                     "late_status_lo", "late_back_ms", "late_run")
CACHE_FIELDS = ("near_lon", "near_lat", "safe_m", "safe_until_ms")
# The warning state added with the approach rule: a checkpoint written before it has none
# (fresh: no warning open).
WARN_FIELDS = ("approach_at_ms", "border_at_ms", "border_zone")


def bytes_per_device(state: DeviceState, registry_arrays=None) -> float:
    """Measured bytes of state per device: every per-device array, the exclusion slots and
    the scheduled rules' own ext rows spread over the devices, and (if given) the
    registry's per-device arrays."""
    n = len(state.last_rx_ms)
    if n == 0:
        return 0.0
    total = sum(getattr(state, f).nbytes for f in PER_DEVICE_FIELDS + CACHE_FIELDS
                if f not in ROW_VIEWS) + state.device_row.nbytes
    # (ext's row 0, the shared fresh row, is 64 bytes for the whole fleet: not per device)
    total += state.exclusion_at_ms.nbytes + state.ext[1:].nbytes + state.ext_row.nbytes
    total += state.approach_at_ms.nbytes
    total += state.border_at_ms.nbytes + state.border_zone.nbytes
    if registry_arrays is not None:
        total += (registry_arrays.device_subject.nbytes + registry_arrays.device_level.nbytes
                  + registry_arrays.device_slot_off.nbytes)
    return total / n


def recompute_deadlines(state: DeviceState, device_level: np.ndarray,
                        offline_after_ms: np.ndarray,
                        no_fix_after_ms: np.ndarray | None = None) -> None:
    """Offline deadline = last receive + offline_after(level) for devices heard from and
    not already offline (nor powered off); no-fix deadline = the no-fix count's start +
    no_fix_after(level) where one runs (``no_fix_after_ms`` None: left as they are); the
    sweep's deadline the earlier of both, and the sweep floor the smallest of those."""
    heard = state.last_rx_ms != NONE_MS
    due = heard & (state.offline_at_ms == NONE_MS) & (
        state.device_ms[:, D_POWER_OFF_AT] == NONE_MS)
    deadline = np.full(len(state.last_rx_ms), NO_DEADLINE_MS, dtype=np.int64)
    deadline[due] = state.last_rx_ms[due] + offline_after_ms[device_level[due]]
    state.device_row[:, R_OFFLINE_DEADLINE] = deadline
    if no_fix_after_ms is not None:
        start = state.device_ms[:, D_NO_FIX_FROM]
        counting = start != NONE_MS
        nf = np.full(len(state.last_rx_ms), NO_DEADLINE_MS, dtype=np.int64)
        nf[counting] = start[counting] + no_fix_after_ms[device_level[counting]]
        state.no_fix_deadline_ms[:] = nf
    np.minimum(deadline, state.no_fix_deadline_ms, out=state.deadline_ms)
    state.floor_ms[0] = state.deadline_ms.min() if len(deadline) else NO_DEADLINE_MS


def adopt(old: DeviceState, new: DeviceState, remap: Remap) -> dict[str, int]:
    """Copy ``old`` into ``new`` by device id and by (device id, exclusion zone id), as
    ``remap`` (:mod:`engine.remap`) found them.

    Devices and slots that no longer exist are dropped; new ones start fresh. An open
    outbound episode whose zone id no longer exists is dropped too (its alarm stays open
    in the store for the operator). Deadlines must be recomputed afterwards. Returns
    counts of what was kept and dropped.
    """
    nj = np.flatnonzero(remap.dev_old >= 0)
    kept = len(nj)
    if kept:
        oi = remap.dev_old[nj]
        for f in PER_DEVICE_FIELDS:
            if f == "outbound_zone":
                continue
            getattr(new, f)[nj] = getattr(old, f)[oi]
        # (a checkpoint from before out_run was int8 may hold longer runs: saturated)
        new.out_run[nj] = np.minimum(old.out_run[oi], OUT_RUN_MAX)
        zone_map = remap.zone_new
        n_old_zones = len(zone_map) - 1
        oz = old.outbound_zone[oi]
        new.outbound_zone[nj] = zone_map[np.where(oz >= 0, oz, n_old_zones)]
        lost = (new.outbound_at_ms[nj] != NONE_MS) & (new.outbound_zone[nj] < 0)
        new.outbound_at_ms[nj[lost]] = NONE_MS
        _adopt_ext(old, oi, new, nj, zone_map, n_old_zones)
        new.ext[new.ext_row[nj[lost]], X_OUT_TYPE] = 0  # (row 0's is 0 already)
        _adopt_border(old, oi, new, nj, zone_map, n_old_zones)
    sj = np.flatnonzero(remap.slot_old >= 0)
    if len(sj):
        si = remap.slot_old[sj]
        new.exclusion_at_ms[sj] = old.exclusion_at_ms[si]
        new.approach_at_ms[sj] = old.approach_at_ms[si]
    return {"devices_kept": kept, "devices_dropped": remap.n_old_devices - kept,
            "devices_new": len(remap.dev_old) - kept,
            "exclusion_slots_kept": len(sj),
            "exclusion_slots_dropped": remap.n_old_slots - len(sj)}


def _adopt_ext(old: DeviceState, oi: np.ndarray, new: DeviceState, nj: np.ndarray,
               zone_map: np.ndarray, n_old_zones: int) -> None:
    """Copy the scheduled rules' rows of the devices with a row of their own in ``new``
    (see :func:`carried_ext`); a curfew episode whose zone id is gone is dropped (its
    alarm stays open in the store for the operator), as outbound's is."""
    own = new.ext_row[nj] > 0
    rows = new.ext_row[nj[own]]
    x = new.ext
    x[rows] = old.ext[old.ext_row[oi[own]]]
    cz = x[rows, X_CURFEW_ZONE]
    x[rows, X_CURFEW_ZONE] = zone_map[np.where(cz >= 0, cz, n_old_zones)]
    gone = (x[rows, X_CURFEW_AT] != NONE_MS) & (x[rows, X_CURFEW_ZONE] < 0)
    x[rows[gone], X_CURFEW_AT] = NONE_MS
    x[rows[gone], X_CURFEW_RUN] = 0


def _adopt_border(old: DeviceState, oi: np.ndarray, new: DeviceState, nj: np.ndarray,
                  zone_map: np.ndarray, n_old_zones: int) -> None:
    """Copy the border warnings; one whose zone id is gone is dropped (as outbound's)."""
    new.border_at_ms[nj] = old.border_at_ms[oi]
    bz = old.border_zone[oi]
    new.border_zone[nj] = zone_map[np.where(bz >= 0, bz, n_old_zones)]
    gone = (new.border_at_ms[nj] != NONE_MS) & (new.border_zone[nj] < 0)
    new.border_at_ms[nj[gone]] = NONE_MS


class IdArrays(NamedTuple):
    """The ids a checkpoint stores beside the state (so a restore can map state onto a
    changed registry), as the arrays written; they change only with the registry."""

    device_ids: np.ndarray
    slot_devices: np.ndarray
    slot_zones: np.ndarray
    zone_ids: np.ndarray


def id_arrays(device_ids: list[str], slot_keys: list[tuple[str, str]],
              zone_ids: list[str]) -> IdArrays:
    return IdArrays(np.array(device_ids, dtype=np.str_),
                    np.array([k[0] for k in slot_keys], dtype=np.str_),
                    np.array([k[1] for k in slot_keys], dtype=np.str_),
                    np.array(zone_ids, dtype=np.str_))


def registry_id_arrays(registry, zone_ids) -> IdArrays:
    """:func:`id_arrays` of an :class:`engine.registry.Registry` on zones ``zone_ids``,
    gathered from its arrays (no Python loop over the devices or the slots)."""
    zones = np.array(list(zone_ids), dtype=np.str_).reshape(-1)
    slot_dev, slot_zone = registry.slot_arrays()
    ids = registry.device_id_array
    return IdArrays(ids, ids[slot_dev], zones[slot_zone], zones)


def snapshot_arrays(state: DeviceState, ids: IdArrays, counters: np.ndarray,
                    copy: bool = True) -> dict[str, np.ndarray]:
    """What a checkpoint file holds, copied: the state may change as soon as this returns
    while the copy is written elsewhere (:func:`write_checkpoint`). ``copy=False``: the
    live arrays themselves (engine.checkpoint_delta copies what it keeps). The device row
    is not written: its views are (the layout of checkpoints before it)."""
    arrays = {f: getattr(state, f).copy() if copy else getattr(state, f)
              for f in DeviceState._fields if f not in CACHE_FIELDS and f != "device_row"}
    arrays.update(ids._asdict())  # never written to, so not copied
    arrays["counters"] = counters.copy() if copy else counters
    arrays["version"] = np.array([CHECKPOINT_VERSION], dtype=np.int64)
    return arrays


def write_checkpoint(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a :func:`snapshot_arrays` to one ``.npz`` file atomically: a temporary file in
    the same folder, fsync, rename over ``path``, fsync the folder. A crash leaves either
    the old or the new checkpoint, never a torn one."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoint_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A :func:`snapshot_arrays` as the bytes :func:`write_checkpoint` puts in a file (an
    ``.npz``), for a checkpoint kept elsewhere (the alarm store's ``engine_checkpoints``)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class CheckpointError(EmfenceError, ValueError):
    """A checkpoint file cannot be used; ``path`` names it."""

    def __init__(self, reason: str, path: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def load_checkpoint(path: str | Path):
    """Read a checkpoint file: ``(state, device_ids, slot_keys, zone_ids, counters,
    extras)``; ``extras`` maps each array of :data:`EXTRA_KEYS` the file has to it."""
    return _load(Path(path), str(path))


def load_checkpoint_bytes(data: bytes | Mapping[str, np.ndarray], where: str):
    """:func:`load_checkpoint` from the bytes of one (:func:`checkpoint_bytes`), or from its
    arrays already read (a chain restored by engine.checkpoint_delta); ``where`` names
    their origin in errors."""
    return _load(data if isinstance(data, Mapping) else io.BytesIO(data), where)


def _loaded_ext(data, n_devices: int) -> tuple[np.ndarray, np.ndarray]:
    """(ext, ext_row) of a checkpoint: as written; one written with a row per device (no
    ext_row) gets row 0 fresh in front; one written before the scheduled rules, fresh. A
    loaded state's ext is only read (engine.state.adopt copies it into the engine's)."""
    if "ext" not in data.files:  # every device reads the fresh row 0 (only ever read)
        return new_ext(1), np.zeros(n_devices, dtype=np.int32)
    rows = _widened_ext(data["ext"])
    if "ext_row" in data.files:
        return rows, data["ext_row"].copy()
    return (np.concatenate([new_ext(1), rows]),
            np.arange(1, n_devices + 1, dtype=np.int32))


def _widened_ext(rows: np.ndarray) -> np.ndarray:
    """ext rows of a checkpoint, with the columns added since it was written fresh."""
    if rows.shape[1] >= N_EXT:
        return rows.copy()
    out = new_ext(len(rows))
    out[:, :rows.shape[1]] = rows
    return out


def _load(source, where: str):
    path = where
    try:
        with open_arrays(source) as data:
            if int(data["version"][0]) != CHECKPOINT_VERSION:
                raise CheckpointError(f"checkpoint version {int(data['version'][0])}, "
                                      f"expected {CHECKPOINT_VERSION}", str(path))
            n_devices = len(data["last_rx_ms"])
            fresh = new_state(n_devices, len(data["exclusion_at_ms"]), np.zeros(n_devices, bool))
            # As written, but the row's views copied into a fresh row; one written before
            # the device rules has fresh device-rule state, one written before the
            # approach rule no warning open; the settled cache is never restored.
            fields = fresh._asdict()
            for f in DeviceState._fields:
                if f in CACHE_FIELDS + ("ext", "ext_row", "device_row"):
                    continue
                if f not in data.files:
                    if f not in DEVICE_RULE_FIELDS + WARN_FIELDS + LATE_FIELDS:
                        raise KeyError(f)
                elif f in ROW_VIEWS:
                    if data[f].shape != fields[f].shape:
                        raise ValueError(f"{f} has shape {data[f].shape}, expected "
                                         f"{fields[f].shape}")
                    fields[f][...] = data[f]
                else:
                    fields[f] = data[f].copy()
            fields["ext"], fields["ext_row"] = _loaded_ext(data, n_devices)
            state = DeviceState(**fields)
            device_ids = [str(x) for x in data["device_ids"]]
            slot_keys = list(zip((str(x) for x in data["slot_devices"]),
                                 (str(x) for x in data["slot_zones"])))
            zone_ids = [str(x) for x in data["zone_ids"]]
            counters = data["counters"].copy()
            extras = {k: data[k].copy() for k in EXTRA_KEYS if k in data.files}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot read checkpoint: {exc}", str(path)) from exc
    return state, device_ids, slot_keys, zone_ids, counters, extras
