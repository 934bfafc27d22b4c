"""The wire contract's fix validation over many fixes at once, as numpy columns.

:func:`parse_fixes` accepts exactly the fix objects :func:`ingest.decode.parse_fix`
accepts, with the same values, and refuses the others; it does not name a fault: for a
refused fix the caller asks ``parse_fix`` for the reason, so the one validator names every
rejection and the two can never disagree on words. A property test holds the two together
on valid and hostile objects (tests/ingest/test_decode_batch.py).

Each field is checked as a column: the values are taken out of every object with one
C-level ``map`` per field, their JSON types checked with one more, and ranges with numpy.
Columns of unusual content (a number too big for int64, an unhashable value) are checked
element by element in Python, with the same rules. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

from contract import COORD_SYS_CODES, POWER_CODES, STRAP_CODES
from ingest.decode import (
    DEFAULT_ACC_M,
    MAX_SEQ,
    MAX_TS_MS,
    MIN_TS_MS,
    SOURCES,
)

_NUMBER_TYPES = frozenset((int, float))  # bool is neither: JSON true is not a number
_INT_TYPE = {int}
_DICT_TYPE = {dict}
_SOURCES_OR_ABSENT = frozenset((*SOURCES, None))
_COORD_OR_ABSENT = frozenset((*COORD_SYS_CODES, None))
_COORD_CODE = {None: COORD_SYS_CODES["wgs84"], **COORD_SYS_CODES}


class FixColumns(NamedTuple):
    """Fix fields of ``n`` objects; ``ok[i]``: ``parse_fix(objs[i])`` accepts it, and then
    the other columns hold its values (zeros where not ok)."""

    ok: np.ndarray         # bool
    ts_ms: np.ndarray      # int64, epoch ms
    lat: np.ndarray        # float64, degrees
    lon: np.ndarray        # float64, degrees
    acc_m: np.ndarray      # float64, metres (50 when absent)
    coord_sys: np.ndarray  # uint8, contract.COORD_SYS_CODES (wgs84 when absent)


def objects(objs: Sequence[Any]) -> tuple[list[dict], np.ndarray]:
    """``(dicts, is_dict)``: ``objs`` as a list of dicts (``{}`` in place of anything that
    is not a JSON object: its fields read as absent) and where they were objects."""
    m = len(objs)
    if set(map(type, objs)) == _DICT_TYPE:
        return (objs if isinstance(objs, list) else list(objs)), np.ones(m, bool)
    is_dict = np.fromiter(map(operator.is_, map(type, objs), repeat(dict)), bool, m)
    return [o if type(o) is dict else {} for o in objs], is_dict


def column(objs: Sequence[dict], name: str) -> list:
    """``obj.get(name)`` of every object (``None``: absent or JSON null)."""
    return list(map(dict.get, objs, repeat(name)))


def is_absent(col: list) -> np.ndarray:
    """Where ``col`` holds ``None``."""
    return np.fromiter(map(operator.is_, col, repeat(None)), bool, len(col))


def int_column(col: list, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ok)``: ``ok`` where the value is a JSON integer (not a float, not a
    boolean) within ``[lo, hi]`` (``lo``, ``hi`` within int64); values int64, 0 where not ok."""
    m = len(col)
    if set(map(type, col)) == _INT_TYPE:
        try:
            a = np.array(col, np.int64)
        except OverflowError:  # an integer beyond int64 (orjson reads up to 2^64 - 1)
            pass
        else:
            return a, (a >= lo) & (a <= hi)
    ok = np.fromiter((type(v) is int and lo <= v <= hi for v in col), bool, m)
    a = np.fromiter((v if good else 0 for v, good in zip(col, ok, strict=True)), np.int64, m)
    return a, ok


def _as_float(v: Any) -> float:
    if type(v) in _NUMBER_TYPES:
        try:
            return float(v)
        except OverflowError:  # an integer beyond a double: not finite
            return math.inf
    return math.nan


def float_column(col: list, lo: float, hi: float, *, lo_open: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ok)``: ``ok`` where the value is a JSON number (not a boolean), finite,
    within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); values float64."""
    m = len(col)
    a = None
    if set(map(type, col)) <= _NUMBER_TYPES:
        try:
            a = np.array(col, np.float64)
        except OverflowError:
            a = None
    if a is None:
        a = np.fromiter(map(_as_float, col), np.float64, m)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(a) & (a <= hi) & ((a > lo) if lo_open else (a >= lo))
    return a, ok


def optional_float_column(col: list, lo: float, hi: float, default: float, *,
                          lo_open: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`float_column` of an optional field: absent (None) is ok and reads ``default``."""
    none = col.count(None)
    if none == len(col):
        return np.full(len(col), default), np.ones(len(col), bool)
    a, ok = float_column(col, lo, hi, lo_open=lo_open)
    if none:
        absent = is_absent(col)
        a[absent] = default
        ok |= absent
    return a, ok


def choice_codes(col: list, codes: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, ok)`` of an optional string field: ok where absent (code -1) or one of
    ``codes``' keys; int8 codes, -1 where not ok."""
    m = len(col)
    if col.count(None) == m:
        return np.full(m, -1, np.int8), np.ones(m, bool)
    ok = choice_ok(col, frozenset((*codes, None)))
    a = np.fromiter((codes.get(v, -1) if good else -1 for v, good in zip(col, ok, strict=True)),
                    np.int8, m)
    return a, ok


def choice_ok(col: list, allowed_or_absent: frozenset) -> np.ndarray:
    """Where the value is absent or one of the allowed strings."""
    try:
        return np.fromiter(map(allowed_or_absent.__contains__, col), bool, len(col))
    except TypeError:  # an unhashable value (array, object): never allowed
        return np.fromiter((v is None or (type(v) is str and v in allowed_or_absent)
                            for v in col), bool, len(col))


def parse_fixes(objs: Sequence[Any]) -> FixColumns:
    """Validate many fix objects (parsed JSON) at once, as :func:`ingest.decode.parse_fix`
    validates one: required ``ts`` (integer epoch ms, 2000..2200), ``lat`` (-90..90),
    ``lon`` (-180..180); optional ``acc`` (metres, > 0, default 50), ``src``,
    ``coord_sys`` (default wgs84), ``seq`` (integer 0..2^63-1); JSON null is absent;
    other fields are ignored. Returns :class:`FixColumns`."""
    dicts, ok = objects(objs)
    m = len(dicts)
    ts, good = int_column(column(dicts, "ts"), MIN_TS_MS, MAX_TS_MS)
    ok &= good
    lat, good = float_column(column(dicts, "lat"), -90.0, 90.0)
    ok &= good
    lon, good = float_column(column(dicts, "lon"), -180.0, 180.0)
    ok &= good
    acc, good = optional_float_column(column(dicts, "acc"), 0.0, math.inf, DEFAULT_ACC_M,
                                      lo_open=True)
    ok &= good
    src = column(dicts, "src")
    if src.count(None) != m:
        ok &= choice_ok(src, _SOURCES_OR_ABSENT)
    cs = column(dicts, "coord_sys")
    if cs.count(None) == m:
        coord = np.full(m, _COORD_CODE[None], np.uint8)
    else:
        good = choice_ok(cs, _COORD_OR_ABSENT)
        ok &= good
        coord = np.fromiter((_COORD_CODE[v] if g else 0 for v, g in zip(cs, good, strict=True)),
                            np.uint8, m)
    seq = column(dicts, "seq")
    if seq.count(None) != m:
        ok &= int_column(seq, 0, MAX_SEQ)[1] | is_absent(seq)
    return FixColumns(ok, ts, lat, lon, acc, coord)


class StatusColumns(NamedTuple):
    """Status fields of ``n`` objects; ``ok[i]``: ``parse_status(objs[i])`` accepts it, and
    then the other columns hold its values."""

    ok: np.ndarray           # bool
    ts_ms: np.ndarray        # int64, epoch ms
    battery_pct: np.ndarray  # float64, percent, NaN absent
    strap: np.ndarray        # int8, contract.STRAP_CODES, -1 absent
    power: np.ndarray        # int8, contract.POWER_CODES, -1 absent


_BOOL_OR_ABSENT = {bool, type(None)}


def parse_statuses(objs: Sequence[Any]) -> StatusColumns:
    """Validate many status objects at once, as :func:`ingest.decode.parse_status`
    validates one: required ``ts``; optional ``battery`` (0..100), ``strap``, ``charging``
    (boolean), ``power``. Returns :class:`StatusColumns`."""
    dicts, ok = objects(objs)
    ts, good = int_column(column(dicts, "ts"), MIN_TS_MS, MAX_TS_MS)
    ok &= good
    battery, good = optional_float_column(column(dicts, "battery"), 0.0, 100.0, math.nan)
    ok &= good
    strap, good = choice_codes(column(dicts, "strap"), STRAP_CODES)
    ok &= good
    charging = column(dicts, "charging")
    if not set(map(type, charging)) <= _BOOL_OR_ABSENT:
        ok &= np.fromiter((v is None or type(v) is bool for v in charging), bool, len(dicts))
    power, good = choice_codes(column(dicts, "power"), POWER_CODES)
    ok &= good
    return StatusColumns(ok, ts, battery, strap, power)
