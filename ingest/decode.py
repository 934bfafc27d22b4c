"""Pure decoding and validation of the device-facing wire contract (v1).

Bytes or parsed JSON in, validated named tuples out; nothing here touches the network,
a clock or a file. Every rejection raises :class:`PayloadError` whose ``reason`` starts
with a short stable code (``bad_json``, ``missing_field``, ``out_of_range`` ...) followed
by ``": "`` and a human detail, and whose ``where`` says which element of the payload
(``"[3].lat"``) or which line of a file it was. The codes are the device-facing contract
documented in ``docs/wire-protocol.md``; the MQTT service counts rejections by code.

Shared by the live MQTT intake (``emfence.run.receive``) and ``emfence replay``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
from typing import Any, NamedTuple

import orjson

from contract import COORD_SYS_CODES, POWER_CODES, STRAP_CODES, TOPIC_PREFIX
from contract.errors import EmfenceError
from emfence.config import IngestConfig

# Stable rejection codes (the part of ``PayloadError.reason`` before the colon).
REASON_CODES = (
    "too_large",  # payload longer than ingest.max_payload_bytes
    "empty",  # zero-length payload
    "bad_json",  # not valid UTF-8 JSON
    "not_object",  # a fix/status (or an array element) that is not a JSON object
    "empty_array",  # store-and-forward array with no element
    "too_many_fixes",  # array longer than ingest.max_fixes_per_payload
    "missing_field",  # a required field is absent
    "bad_type",  # a field has the wrong JSON type
    "bad_value",  # a field is not one of its allowed values
    "out_of_range",  # a number outside its range, or not finite
    "future_ts",  # ts further ahead of the receive time than ingest.max_future_ms
    "bad_topic",  # topic is not emfence/v1/{region}/{device_id}/fix|status
    "unknown_device",  # the topic's device is not registered (service level)
    "wrong_region",  # the device is registered under another region (service level)
    "engine_error",  # the rule engine failed on this record (service level; a bug to report)
    "unknown_command",  # a reply to no command sent to that device in that region
)

SOURCES = ("gps", "wifi", "cell")

DEFAULT_ACC_M = 50.0
DEFAULT_SRC = "gps"
DEFAULT_COORD_SYS = "wgs84"

# Epoch-ms sanity window: before 2000-01-01 is almost always a firmware that sends
# seconds instead of milliseconds (or an unset RTC); after 2200 is garbage.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 7_258_118_400_000
# seq is a device counter; bounded so it always fits the engine's int64 arrays.
MAX_SEQ = 2**63 - 1
# The largest finite double: a Python int below it converts to float without overflow.
_MAX_DOUBLE = sys.float_info.max
# Bytes of the refused payload a dead-letter record carries (base64).
DEADLETTER_PREFIX_BYTES = 256

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
KINDS = ("fix", "status")


class PayloadError(EmfenceError, ValueError):
    """A message that breaks the wire contract.

    ``reason``: ``"<code>: <detail>"`` (e.g. ``"missing_field: lat"``), ``code``: the part
    before the colon (one of :data:`REASON_CODES`), ``where``: the element path inside the
    payload or the file position (``""`` when the whole payload is at fault).
    """

    def __init__(self, reason: str, where: str = ""):
        self.reason = reason
        self.where = where
        super().__init__(f"{where}: {reason}" if where else reason)

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]


class Fix(NamedTuple):
    """One validated location fix.

    ``ts_ms`` event time (epoch ms UTC, from the device), ``lat``/``lon`` degrees in
    ``coord_sys`` (``"wgs84"`` or ``"gcj02"``: conversion is the engine's business),
    ``acc_m`` horizontal accuracy in metres, ``src`` ``gps|wifi|cell``, ``seq`` the
    device's message counter or ``None``.
    """

    ts_ms: int
    lat: float
    lon: float
    acc_m: float = DEFAULT_ACC_M
    src: str = DEFAULT_SRC
    coord_sys: str = DEFAULT_COORD_SYS
    seq: int | None = None


class Status(NamedTuple):
    """One validated heartbeat / status message; ``None`` means the field was absent.

    ``ts_ms`` epoch ms UTC, ``battery_pct`` 0..100 percent, ``strap`` ``"ok"|"open"``,
    ``charging`` bool, ``power`` ``"on"|"off"`` (``"off"``: the firmware's last word
    before it shuts down).
    """

    ts_ms: int
    battery_pct: float | None = None
    strap: str | None = None
    charging: bool | None = None
    power: str | None = None


def _is_number(v: Any) -> bool:
    # bool is an int subclass in Python; JSON true/false is never a number here.
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _require_object(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict):
        raise PayloadError(f"not_object: expected a JSON object, got {_type_name(obj)}", where)
    return obj


# Integer fields check their range before their integer-ness: orjson hands over an
# integer beyond 64 bits (2^70) as a float, and such a number is out of range, not of the
# wrong type. A float within the range is still refused as bad_type.

def epoch_ms(v: Any, name: str, where: str) -> int:
    """Check a timestamp field's value: an integer, epoch ms, within 2000..2200.

    Raises :class:`PayloadError` (``bad_type`` or ``out_of_range``) naming ``name``.
    """
    if not _is_number(v):
        raise PayloadError(f"bad_type: {name} must be an integer (epoch ms), got "
                           f"{_type_name(v)} {_short(v)}", where)
    if isinstance(v, float) and math.isnan(v):  # only from parsers other than orjson
        raise PayloadError(f"out_of_range: {name}=nan is not finite", where)
    if v < MIN_TS_MS:
        hint = " (seconds instead of milliseconds?)" if v > MIN_TS_MS // 1000 else ""
        raise PayloadError(f"out_of_range: {name}={_short(v)} is before 2000-01-01{hint}", where)
    if v > MAX_TS_MS:
        raise PayloadError(f"out_of_range: {name}={_short(v)} is after 2200-01-01", where)
    if isinstance(v, float):
        raise PayloadError(f"bad_type: {name} must be an integer (epoch ms), got number "
                           f"{_short(v)}", where)
    return v


def _ts(obj: dict, where: str) -> int:
    if "ts" not in obj:
        raise PayloadError("missing_field: ts", where)
    return epoch_ms(obj["ts"], "ts", where)


def _seq(v: Any, where: str) -> int:
    if not _is_number(v):
        raise PayloadError(f"bad_type: seq must be an integer, got {_type_name(v)} {_short(v)}",
                           where)
    if not (0 <= v <= MAX_SEQ):  # also NaN, which fails every comparison
        raise PayloadError(f"out_of_range: seq={_short(v)} not in [0, 2^63-1]", where)
    if isinstance(v, float):
        raise PayloadError(f"bad_type: seq must be an integer, got number {_short(v)}", where)
    return v


def _number(obj: dict, name: str, where: str, lo: float, hi: float, *, required: bool,
            default: float | None = None, lo_open: bool = False) -> float | None:
    v = obj.get(name)
    if v is None:  # absent, or JSON null: both mean "not given"
        if required:
            raise PayloadError(f"missing_field: {name}", where)
        return default
    if not _is_number(v):
        raise PayloadError(f"bad_type: {name} must be a number, got {_type_name(v)} {_short(v)}",
                           where)
    try:
        f = float(v)
    except OverflowError:  # an integer too big for a double (from a parser other than orjson)
        raise PayloadError(f"out_of_range: {name}={_short(v)} is not finite", where) from None
    if not math.isfinite(f):
        raise PayloadError(f"out_of_range: {name}={f!r} is not finite", where)
    if f < lo or f > hi or (lo_open and f == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise PayloadError(f"out_of_range: {name}={f!r} not in {bound}", where)
    return f


def _choice(obj: dict, name: str, where: str, allowed: tuple[str, ...] | dict,
            default: str | None) -> str | None:
    v = obj.get(name)
    if v is None:
        return default
    if not isinstance(v, str):
        raise PayloadError(f"bad_type: {name} must be a string, got {_type_name(v)} {_short(v)}",
                           where)
    if v not in allowed:
        raise PayloadError(f"bad_value: {name}={_short(v)}; allowed: {', '.join(allowed)}", where)
    return v


_SOURCES = frozenset(SOURCES)
_COORD_SYSTEMS = frozenset(COORD_SYS_CODES)


def parse_fix(obj: Any, *, where: str = "") -> Fix:
    """Validate one fix object (already parsed JSON) and return a :class:`Fix`.

    Same contract as :func:`parse_fix_checked`, with a fast path for the common case of
    a well-formed fix (plain types, in range); anything else goes through the checked
    path, which names the fault.
    """
    if type(obj) is dict:
        ts = obj.get("ts")
        lat = obj.get("lat")
        lon = obj.get("lon")
        acc = obj.get("acc")
        src = obj.get("src")
        cs = obj.get("coord_sys")
        seq = obj.get("seq")
        # NaN fails every comparison and +-inf every range, so both take the slow path; so
        # does an acc too big for a double (an int from a parser other than orjson).
        if (type(ts) is int and MIN_TS_MS <= ts <= MAX_TS_MS
                and (type(lat) is float or type(lat) is int) and -90.0 <= lat <= 90.0
                and (type(lon) is float or type(lon) is int) and -180.0 <= lon <= 180.0
                and (acc is None or ((type(acc) is float or type(acc) is int)
                                     and 0.0 < acc < _MAX_DOUBLE))
                and (src is None or (type(src) is str and src in _SOURCES))
                and (cs is None or (type(cs) is str and cs in _COORD_SYSTEMS))
                and (seq is None or (type(seq) is int and 0 <= seq <= MAX_SEQ))):
            return Fix(ts, float(lat), float(lon), DEFAULT_ACC_M if acc is None else float(acc),
                       src or DEFAULT_SRC, cs or DEFAULT_COORD_SYS, seq)
    return parse_fix_checked(obj, where=where)


def parse_fix_checked(obj: Any, *, where: str = "") -> Fix:
    """Validate one fix object (already parsed JSON) and return a :class:`Fix`.

    Required: ``ts`` (integer epoch ms), ``lat`` (-90..90), ``lon`` (-180..180), finite
    numbers. Optional: ``acc`` (metres, > 0, default 50), ``src`` (default ``gps``),
    ``coord_sys`` (default ``wgs84``), ``seq`` (integer >= 0). A JSON ``null`` in an
    optional field means "absent". Unknown fields are ignored (forward compatibility).
    The future-time check needs the receive time and lives in :func:`decode_fix_payload`.
    """
    obj = _require_object(obj, where)
    ts = _ts(obj, where)
    lat = _number(obj, "lat", where, -90.0, 90.0, required=True)
    lon = _number(obj, "lon", where, -180.0, 180.0, required=True)
    acc = _number(obj, "acc", where, 0.0, math.inf, required=False, default=DEFAULT_ACC_M,
                  lo_open=True)
    src = _choice(obj, "src", where, SOURCES, DEFAULT_SRC)
    coord_sys = _choice(obj, "coord_sys", where, tuple(COORD_SYS_CODES), DEFAULT_COORD_SYS)
    seq = obj.get("seq")
    if seq is not None:
        seq = _seq(seq, where)
    return Fix(ts, lat, lon, acc, src, coord_sys, seq)


def parse_status(obj: Any, *, where: str = "") -> Status:
    """Validate one status object and return a :class:`Status`.

    Required: ``ts``. Optional: ``battery`` (percent, 0..100), ``strap`` (``ok|open``),
    ``charging`` (boolean), ``power`` (``on|off``). A status with only ``ts`` is a plain
    heartbeat.
    """
    obj = _require_object(obj, where)
    ts = _ts(obj, where)
    battery = _number(obj, "battery", where, 0.0, 100.0, required=False)
    strap = _choice(obj, "strap", where, tuple(STRAP_CODES), None)
    charging = obj.get("charging")
    if charging is not None and not isinstance(charging, bool):
        raise PayloadError(f"bad_type: charging must be a boolean, got {_type_name(charging)} "
                           f"{_short(charging)}", where)
    power = _choice(obj, "power", where, tuple(POWER_CODES), None)
    return Status(ts, battery, strap, charging, power)


def _load(payload: bytes, config: IngestConfig) -> Any:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    n = len(payload)
    if n > config.max_payload_bytes:
        raise PayloadError(f"too_large: {n} bytes > {config.max_payload_bytes}")
    if n == 0:
        raise PayloadError("empty: zero-length payload")
    return load_json(payload)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_int(text: str) -> int | float:
    # As orjson does: an integer beyond 64 bits becomes a double (the field checks call
    # it out of range), never a 10 000-digit int to convert.
    return int(text) if len(text) <= 20 else float(text)


def load_json(payload: bytes) -> Any:
    """Parse one JSON document (UTF-8 bytes); :class:`PayloadError` ``bad_json`` if it is not.

    orjson refuses a number beyond a double (``1e400``) although JSON allows it; such a
    document is read again by the standard library, where the number becomes infinity,
    so the field check names the field (``out_of_range``) and, in a store-and-forward
    array, only that element is lost. NaN and Infinity are not JSON and stay ``bad_json``.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        error = exc
    if "infinity" in str(error):
        try:
            return json.loads(bytes(payload).decode("utf-8"), parse_constant=_refuse_constant,
                              parse_int=_json_int)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            pass
    raise PayloadError(f"bad_json: {error}")


def _check_future(ts_ms: int, rx_ms: int, config: IngestConfig, where: str) -> None:
    ahead = ts_ms - rx_ms
    if ahead > config.max_future_ms:
        raise PayloadError(f"future_ts: ts={ts_ms} is {ahead} ms ahead of the receive time "
                           f"(limit {config.max_future_ms} ms)", where)


def decode_fix_payload(payload: bytes, *, rx_ms: int, config: IngestConfig,
                       rejects: list[PayloadError] | None = None) -> list[Fix]:
    """Decode a fix topic's payload: one fix object, or an array of them (store-and-forward).

    ``rx_ms`` is the receive time (epoch ms) the future-time limit is measured from.
    Payload-level faults (size, JSON, array length) always raise :class:`PayloadError`.
    For a bad element of an array: if ``rejects`` is ``None`` the first one raises;
    otherwise each bad element's error (``where="[i]"``) is appended to ``rejects`` and
    the good fixes are returned, so one corrupt record does not throw away a whole
    store-and-forward batch.
    """
    data = _load(payload, config)
    if isinstance(data, list):
        if not data:
            raise PayloadError("empty_array: a fix array needs at least one element")
        if len(data) > config.max_fixes_per_payload:
            raise PayloadError(f"too_many_fixes: {len(data)} > {config.max_fixes_per_payload}")
        fixes: list[Fix] = []
        for i, item in enumerate(data):
            where = f"[{i}]"
            try:
                fix = parse_fix(item, where=where)
                _check_future(fix.ts_ms, rx_ms, config, where)
            except PayloadError as exc:
                if rejects is None:
                    raise
                rejects.append(exc)
                continue
            fixes.append(fix)
        return fixes
    fix = parse_fix(data)
    _check_future(fix.ts_ms, rx_ms, config, "")
    return [fix]


def decode_status_payload(payload: bytes, *, rx_ms: int, config: IngestConfig) -> Status:
    """Decode a status topic's payload (one object); same size/JSON/future checks as fixes."""
    status = parse_status(_load(payload, config))
    _check_future(status.ts_ms, rx_ms, config, "")
    return status


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split ``emfence/v1/{region}/{device_id}/{fix|status}`` into ``(region, device_id, kind)``.

    ``region`` and ``device_id`` must match ``[A-Za-z0-9_-]{1,64}``.
    """
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_PREFIX:
        raise PayloadError(f"bad_topic: expected {TOPIC_PREFIX}/{{region}}/{{device_id}}/"
                           f"fix|status, got {_short(topic)}")
    region, device_id, kind = parts[2], parts[3], parts[4]
    if not ID_RE.fullmatch(region):
        raise PayloadError(f"bad_topic: region {_short(region)} is not [A-Za-z0-9_-]{{1,64}}")
    if not ID_RE.fullmatch(device_id):
        raise PayloadError(f"bad_topic: device_id {_short(device_id)} is not "
                           "[A-Za-z0-9_-]{1,64}")
    if kind not in KINDS:
        raise PayloadError(f"bad_topic: kind {_short(kind)} is not fix or status")
    return region, device_id, kind


def deadletter_record(topic: str | bytes, payload: bytes, exc: PayloadError, *, rx_ms: int,
                      engine: str) -> tuple[str, bytes]:
    """The dead letter of a refused message as ``(region, JSON bytes)``; never raises.

    ``region`` is the topic's region when that is a valid id, else ``"unknown"``. The
    record carries the topic, ``exc``'s reason, code and place, the payload's length and
    its first :data:`DEADLETTER_PREFIX_BYTES` bytes (base64), and the ``engine``'s name
    (docs/wire-protocol.md). Text that is not valid UTF-8 (topic bytes from a lax broker,
    a str with lone surrogates) is written with backslash escapes.
    """
    if not isinstance(topic, str):
        topic = bytes(topic).decode("utf-8", "backslashreplace")
    parts = topic.split("/")
    region = parts[2] if len(parts) > 2 and ID_RE.fullmatch(parts[2]) else "unknown"
    record = {
        "topic": topic, "reason": exc.reason, "code": exc.code, "where": exc.where,
        "rx_ms": rx_ms, "payload_bytes": len(payload),
        "payload_prefix_b64": base64.b64encode(payload[:DEADLETTER_PREFIX_BYTES]).decode(),
        "engine": engine,
    }
    try:
        return region, orjson.dumps(record)
    except orjson.JSONEncodeError:  # a str with lone surrogates is not UTF-8
        for key in ("topic", "reason", "code", "where", "engine"):
            record[key] = _utf8_text(record[key])
        return region, orjson.dumps(record)


def _utf8_text(text: Any) -> str:
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")
