"""The record batch: what the engine takes, built one way.

A :class:`RecordBatch` is eleven equal-length columns, one element per record (a fix or a
status) in arrival order, in the dtypes the rule kernel is compiled for. It is built
only by its classmethods (:meth:`RecordBatch.records`, :meth:`RecordBatch.fixes`,
:meth:`RecordBatch.statuses`, keyword arguments: no positional mix-ups), which coerce
and check every column, or by a :class:`RecordBuilder` that appends one record at a
time. Never call ``RecordBatch(...)`` directly: that would skip the checks.

Encodings: ``kind`` :data:`K_FIX` / :data:`K_STATUS`; ``coord_sys`` per
:data:`COORD_SYS_CODES`; ``strap`` per :data:`STRAP_CODES`, -1 absent; ``power`` per
:data:`POWER_CODES`, -1 absent; ``battery_pct`` NaN absent; ``device_idx`` the registry's
dense index (-1 unknown: counted, skipped).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

K_FIX, K_STATUS = 0, 1
COORD_SYS_CODES = {"wgs84": 0, "gcj02": 1}
STRAP_CODES = {"ok": 0, "open": 1}
# A status's ``power``: "off" is the firmware's last word before it shuts down (power_off).
POWER_CODES = {"on": 0, "off": 1}


def as_column(arr: Any, dtype, name: str, n: int | None) -> np.ndarray:
    """``arr`` as a C-contiguous 1-D array of ``dtype`` with ``n`` elements (any length
    when ``n`` is None); ``ValueError`` naming the column otherwise."""
    a = np.ascontiguousarray(arr, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} elements, expected {n} (like device_idx)")
    return a


class _Absent:
    """Constant columns for the fields a batch of one kind does not carry (a fix has no
    battery, a status no position), shared instead of allocated per batch: slices of one
    buffer, grown when a larger batch comes. Nothing writes to a batch's columns (the
    kernels only read them)."""

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


_ABSENT = _Absent()


class RecordBatch(NamedTuple):
    """Records in arrival order, one column per field (dtypes as annotated in the
    comments; the field order is the rule kernel's, ``engine.kernels.process_batch``)."""

    kind: np.ndarray         # uint8: K_FIX / K_STATUS
    device_idx: np.ndarray   # int32: the registry's dense device index
    ts_ms: np.ndarray        # int64: event time, epoch ms
    rx_ms: np.ndarray        # int64: receive time, epoch ms
    lat: np.ndarray          # float64: degrees in coord_sys (fixes; NaN for statuses)
    lon: np.ndarray          # float64
    acc_m: np.ndarray        # float64: horizontal accuracy, metres
    coord_sys: np.ndarray    # uint8: COORD_SYS_CODES
    battery_pct: np.ndarray  # float64: percent, NaN absent (statuses)
    strap: np.ndarray        # int8: STRAP_CODES, -1 absent (statuses)
    power: np.ndarray        # int8: POWER_CODES, -1 absent (statuses)

    @classmethod
    def records(cls, *, kind, device_idx, ts_ms, rx_ms, lat, lon, acc_m, coord_sys,
                battery_pct, strap, power=None) -> RecordBatch:
        """Fixes and statuses mixed, every column given (array-likes, coerced); ``power``
        may be left out (absent: -1 for every record)."""
        dev = as_column(device_idx, np.int32, "device_idx", None)
        n = dev.shape[0]
        return tuple.__new__(cls, (
            as_column(kind, np.uint8, "kind", n), dev, as_column(ts_ms, np.int64, "ts_ms", n),
            as_column(rx_ms, np.int64, "rx_ms", n), as_column(lat, np.float64, "lat", n),
            as_column(lon, np.float64, "lon", n), as_column(acc_m, np.float64, "acc_m", n),
            as_column(coord_sys, np.uint8, "coord_sys", n),
            as_column(battery_pct, np.float64, "battery_pct", n),
            as_column(strap, np.int8, "strap", n), _power(power, n)))

    @classmethod
    def fixes(cls, *, device_idx, ts_ms, rx_ms, lat, lon, acc_m, coord_sys) -> RecordBatch:
        """Fixes only: degrees in ``coord_sys`` (0 WGS-84, 1 GCJ-02), ``acc_m`` metres."""
        dev = as_column(device_idx, np.int32, "device_idx", None)
        n = dev.shape[0]
        a = _ABSENT
        if n > a.capacity:
            a.ensure(n)
        return tuple.__new__(cls, (
            a.zero[:n], dev, as_column(ts_ms, np.int64, "ts_ms", n),
            as_column(rx_ms, np.int64, "rx_ms", n), as_column(lat, np.float64, "lat", n),
            as_column(lon, np.float64, "lon", n), as_column(acc_m, np.float64, "acc_m", n),
            as_column(coord_sys, np.uint8, "coord_sys", n),
            a.nan[:n], a.minus_one[:n], a.minus_one[:n]))

    @classmethod
    def statuses(cls, *, device_idx, ts_ms, rx_ms, battery_pct, strap,
                 power=None) -> RecordBatch:
        """Statuses only: ``battery_pct`` (NaN absent), ``strap`` (-1 absent, 0 ok, 1 open),
        ``power`` (-1 absent, 0 on, 1 off; left out: absent)."""
        dev = as_column(device_idx, np.int32, "device_idx", None)
        n = dev.shape[0]
        a = _ABSENT
        if n > a.capacity:
            a.ensure(n)
        nan = a.nan[:n]
        return tuple.__new__(cls, (
            a.one[:n], dev, as_column(ts_ms, np.int64, "ts_ms", n),
            as_column(rx_ms, np.int64, "rx_ms", n),
            nan, nan, nan, a.zero[:n], as_column(battery_pct, np.float64, "battery_pct", n),
            as_column(strap, np.int8, "strap", n), _power(power, n)))

    @classmethod
    def empty(cls) -> RecordBatch:
        """No records (compiles or loads the kernels when an engine runs it)."""
        return cls.fixes(device_idx=(), ts_ms=(), rx_ms=(), lat=(), lon=(), acc_m=(),
                         coord_sys=())

    def select(self, index: slice | np.ndarray) -> RecordBatch:
        """The records at ``index`` (a slice or an index array), still a valid batch."""
        return tuple.__new__(type(self), (np.ascontiguousarray(c[index]) for c in self))


def _power(power, n: int) -> np.ndarray:
    """The power column: -1 (absent) for every record when not given."""
    if power is None:
        _ABSENT.ensure(n)
        return _ABSENT.minus_one[:n]
    return as_column(power, np.int8, "power", n)


# Columns of a RecordBuilder, in three groups so that each record appends only what its
# kind carries: every record (kind, device, ts, rx), fixes (lat, lon, acc, coord_sys),
# statuses (battery, strap, power). take() spreads the fix and status columns over the records
# with one numpy assignment each.
_RECORD_TYPES = (np.uint8, np.int32, np.int64, np.int64)
_RECORD_CODES = ("B", "i", "q", "q")
_FIX_TYPES = (np.float64, np.float64, np.float64, np.uint8)
_FIX_CODES = ("d", "d", "d", "B")
_STATUS_TYPES = (np.float64, np.int8, np.int8)
_STATUS_CODES = ("d", "b", "b")


class RecordBuilder:
    """Builds a :class:`RecordBatch` one record at a time, for readers of a stream
    (``emfence replay``): ``add_fix(device_idx, ts_ms, rx_ms, lat, lon, acc_m,
    coord_sys)``, ``add_status(device_idx, ts_ms, rx_ms, battery_pct, strap, power=-1)``
    (codes as in the batch: NaN / -1 absent), ``len(builder)``, and :meth:`take`.

    Records go straight into typed buffers (``array.array``): no Python object per record
    survives the call, so the garbage collector has nothing to traverse and a batch
    becomes numpy arrays with one copy per column. ``add_fix`` and ``add_status`` are
    closures over the buffers' bound ``append`` methods: a replay calls them once per
    line, and attribute look-ups there would cost more than the appends.
    """

    def __init__(self) -> None:
        self._rec = [array(code) for code in _RECORD_CODES]
        self._fix = [array(code) for code in _FIX_CODES]
        self._status = [array(code) for code in _STATUS_CODES]
        self.add_fix, self.add_status = self._appenders()

    def _appenders(self) -> tuple[Callable[..., None], Callable[..., None]]:
        a_kind, a_dev, a_ts, a_rx = (c.append for c in self._rec)
        a_lat, a_lon, a_acc, a_coord = (c.append for c in self._fix)
        a_battery, a_strap, a_power = (c.append for c in self._status)

        def add_fix(device_idx: int, ts_ms: int, rx_ms: int, lat: float, lon: float,
                    acc_m: float, coord_sys: int) -> None:
            a_kind(K_FIX)
            a_dev(device_idx)
            a_ts(ts_ms)
            a_rx(rx_ms)
            a_lat(lat)
            a_lon(lon)
            a_acc(acc_m)
            a_coord(coord_sys)

        def add_status(device_idx: int, ts_ms: int, rx_ms: int, battery_pct: float,
                       strap: int, power: int = -1) -> None:
            a_kind(K_STATUS)
            a_dev(device_idx)
            a_ts(ts_ms)
            a_rx(rx_ms)
            a_battery(battery_pct)
            a_strap(strap)
            a_power(power)

        return add_fix, add_status

    def __len__(self) -> int:
        return len(self._rec[0])

    def take(self) -> RecordBatch:
        """The records added since the last take, as a batch; the builder starts empty."""
        n = len(self._rec[0])
        # Copies (one memcpy each): the buffers are emptied and refilled for the next batch.
        kind, dev, ts, rx = (np.frombuffer(c, dtype=t).copy()
                             for c, t in zip(self._rec, _RECORD_TYPES, strict=True))
        is_fix = kind == K_FIX
        lat, lon, acc = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        coord = np.zeros(n, np.uint8)
        battery, strap = np.full(n, np.nan), np.full(n, -1, np.int8)
        power = np.full(n, -1, np.int8)
        for col, buf, t in zip((lat, lon, acc, coord), self._fix, _FIX_TYPES, strict=True):
            col[is_fix] = np.frombuffer(buf, dtype=t)
        for col, buf, t in zip((battery, strap, power), self._status, _STATUS_TYPES,
                               strict=True):
            col[~is_fix] = np.frombuffer(buf, dtype=t)
        for c in (*self._rec, *self._fix, *self._status):
            del c[:]
        return tuple.__new__(RecordBatch, (kind, dev, ts, rx, lat, lon, acc, coord, battery,
                                           strap, power))
