"""The wire contract's decoder: captured firmware payloads, hostile payloads, properties."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emfence.config import IngestConfig
from ingest.decode import (
    MIN_TS_MS,
    REASON_CODES,
    Fix,
    PayloadError,
    Status,
    decode_fix_payload,
    decode_status_payload,
    parse_fix,
    parse_fix_checked,
    parse_status,
    parse_topic,
)

CFG = IngestConfig()
RX = 1_763_800_000_000  # 2025-11-22T08:26:40Z, the receive time of the captures below

# Payloads as bracelet / phone firmware sends them (field order, spacing and number
# formatting as emitted by the device's JSON writer, not re-serialised).
CAPTURED_BRACELET_FIX = (
    b'{"ts":1763799998123,"lat":28.9712345,"lon":118.8934567,"acc":8.5,"src":"gps","seq":41207}'
)
CAPTURED_PHONE_FIX_GCJ = (
    b'{ "ts": 1763799990000, "lat": 28.968801, "lon": 118.898312, "acc": 35, '
    b'"src": "wifi", "coord_sys": "gcj02", "app": "em-phone 3.2.1" }'
)
CAPTURED_STORE_AND_FORWARD = (
    b'[{"ts":1763799000000,"lat":28.95,"lon":118.87,"acc":12.0,"seq":41100},'
    b'{"ts":1763799060000,"lat":28.951,"lon":118.871,"acc":1500,"src":"cell","seq":41101},'
    b'{"ts":1763799120000,"lat":28.952,"lon":118.872,"acc":null,"seq":41102}]'
)
CAPTURED_STATUS = b'{"ts":1763799999000,"battery":14,"strap":"ok","charging":false}'
CAPTURED_TAMPER = b'{"ts":1763799999500,"strap":"open"}'
CAPTURED_HEARTBEAT = b'{"ts":1763799999900}'


def test_captured_bracelet_fix():
    [fix] = decode_fix_payload(CAPTURED_BRACELET_FIX, rx_ms=RX, config=CFG)
    assert fix == Fix(1763799998123, 28.9712345, 118.8934567, 8.5, "gps", "wgs84", 41207)
    assert isinstance(fix.lat, float) and isinstance(fix.ts_ms, int)


def test_captured_phone_fix_in_gcj02_keeps_its_datum_and_ignores_unknown_fields():
    [fix] = decode_fix_payload(CAPTURED_PHONE_FIX_GCJ, rx_ms=RX, config=CFG)
    assert fix.coord_sys == "gcj02" and fix.src == "wifi" and fix.acc_m == 35.0
    assert fix.seq is None


def test_captured_store_and_forward_array_in_order_with_defaults():
    fixes = decode_fix_payload(CAPTURED_STORE_AND_FORWARD, rx_ms=RX, config=CFG)
    assert [f.seq for f in fixes] == [41100, 41101, 41102]
    assert fixes[1].src == "cell" and fixes[1].acc_m == 1500.0
    assert fixes[2].acc_m == 50.0  # null means absent: the default
    assert all(f.coord_sys == "wgs84" for f in fixes)


def test_captured_statuses():
    assert decode_status_payload(CAPTURED_STATUS, rx_ms=RX, config=CFG) == Status(
        1763799999000, 14.0, "ok", False)
    assert decode_status_payload(CAPTURED_TAMPER, rx_ms=RX, config=CFG) == Status(
        1763799999500, None, "open", None)
    assert decode_status_payload(CAPTURED_HEARTBEAT, rx_ms=RX, config=CFG) == Status(
        1763799999900, None, None, None)


def _reason(payload: bytes, **kw) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        decode_fix_payload(payload, rx_ms=RX, config=kw.get("config", CFG))
    assert info.value.code in REASON_CODES
    return info.value


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty: zero-length payload"),
        (b'{"ts":1763799998123,"lat":28.9', "bad_json"),
        (b"\xff\xfe{}", "bad_json"),
        (b"NaN", "bad_json"),
        (b'{"ts":1763799998123,"lat":NaN,"lon":118.8}', "bad_json"),
        (b"[" * 5000 + b"]" * 5000, "bad_json"),
        (b'"hello"', "not_object: expected a JSON object, got string"),
        (b"[]", "empty_array"),
        (b"[1]", "not_object: expected a JSON object, got number"),
        (b'{"lat":28.9,"lon":118.8}', "missing_field: ts"),
        (b'{"ts":1763799998123,"lon":118.8}', "missing_field: lat"),
        (b'{"ts":1763799998123,"lat":28.9}', "missing_field: lon"),
        (b'{"ts":1763799998123,"lat":null,"lon":118.8}', "missing_field: lat"),
        (b'{"ts":"1763799998123","lat":28.9,"lon":118.8}', "bad_type: ts must be an integer"),
        (b'{"ts":1763799998123.5,"lat":28.9,"lon":118.8}', "bad_type: ts must be an integer"),
        (b'{"ts":true,"lat":28.9,"lon":118.8}', "bad_type: ts must be an integer"),
        (b'{"ts":1763799998,"lat":28.9,"lon":118.8}',
         "out_of_range: ts=1763799998 is before 2000-01-01 (seconds instead of milliseconds?)"),
        (b'{"ts":99999999999999,"lat":28.9,"lon":118.8}', "out_of_range: ts=99999999999999"),
        (b'{"ts":1763799998123,"lat":"28.9","lon":118.8}', "bad_type: lat must be a number"),
        (b'{"ts":1763799998123,"lat":true,"lon":118.8}', "bad_type: lat must be a number"),
        (b'{"ts":1763799998123,"lat":123.0,"lon":118.8}',
         "out_of_range: lat=123.0 not in [-90.0, 90.0]"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":-180.5}', "out_of_range: lon=-180.5"),
        # A number beyond a double is valid JSON (orjson alone refuses it): out of range.
        (b'{"ts":1763799998123,"lat":1e999,"lon":118.8}', "out_of_range: lat=inf is not finite"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":-1e400}', "out_of_range: lon=-inf is not finite"),
        # NaN and Infinity are not JSON at all.
        (b'{"ts":1763799998123,"lat":28.9,"lon":Infinity}', "bad_json"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":-Infinity}', "bad_json"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"acc":0}', "out_of_range: acc=0.0"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"acc":-3}', "out_of_range: acc=-3.0"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"acc":[5]}', "bad_type: acc"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"src":"glonass"}',
         "bad_value: src='glonass'; allowed: gps, wifi, cell"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"coord_sys":"bd09"}',
         "bad_value: coord_sys='bd09'"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"coord_sys":1}', "bad_type: coord_sys"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"seq":-1}', "out_of_range: seq=-1"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"seq":"7"}', "bad_type: seq"),
        # orjson reads an integer beyond 64 bits as a float; it is out of range all the same.
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"seq":99999999999999999999}',
         "out_of_range: seq=1e+20 not in [0, 2^63-1]"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"seq":1.5}',
         "bad_type: seq must be an integer, got number 1.5"),
        (b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"seq":-1.5}', "out_of_range: seq=-1.5"),
    ],
)
def test_hostile_payloads_are_rejected_with_a_named_reason(payload, reason):
    assert _reason(payload).reason.startswith(reason)


# Issue #10, item 8c: every integer field out of its range is out_of_range, however
# large, and whether orjson hands it over as an int (up to 2^64-1) or as a float.
@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("seq", b"18446744073709551616"),  # 2^64
        ("seq", b"9223372036854775808"),  # 2^63: one past the engine's int64
        ("seq", b"-18446744073709551616"),
        ("seq", b"1" * 400),
        ("ts", b"1180591620717411303424"),  # 2^70
        ("ts", b"18446744073709551615"),  # 2^64-1, still an int to orjson
        ("ts", b"-1180591620717411303424"),
        ("ts", b"1e30"),
        ("ts", b"1e400"),
        ("acc", b"1e400"),
        ("acc", b"-1180591620717411303424"),
        ("lat", b"1180591620717411303424"),
        ("lon", b"-1e400"),
    ],
)
def test_huge_numbers_are_out_of_range_not_bad_type(field, literal):
    fields = {"ts": b"1763799998123", "lat": b"28.9", "lon": b"118.8", field: literal}
    payload = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    err = _reason(payload)
    assert err.code == "out_of_range" and err.reason.startswith(f"out_of_range: {field}="), err
    # The same number in one element of a store-and-forward batch costs only that element.
    rejects: list[PayloadError] = []
    good = decode_fix_payload(b"[" + CAPTURED_BRACELET_FIX + b"," + payload + b"]", rx_ms=RX,
                              config=CFG, rejects=rejects)
    assert len(good) == 1 and [(e.where, e.code) for e in rejects] == [("[1]", "out_of_range")]


@pytest.mark.parametrize("literal", [b"18446744073709551616", b"1e400", b"-1e400", b"-1"])
def test_huge_battery_is_out_of_range(literal):
    with pytest.raises(PayloadError) as info:
        decode_status_payload(b'{"ts":1763799999000,"battery":%s}' % literal, rx_ms=RX,
                              config=CFG)
    assert info.value.reason.startswith("out_of_range: battery=")


def test_a_huge_unknown_field_does_not_cost_the_fix():
    [fix] = decode_fix_payload(b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"x":1e400}',
                               rx_ms=RX, config=CFG)
    assert fix.lat == 28.9


@pytest.mark.parametrize("obj", [
    {"ts": RX, "lat": 1, "lon": 2, "acc": 10**400},  # the fast path raised OverflowError
    {"ts": RX, "lat": 10**400, "lon": 2},
    {"ts": 10**400, "lat": 1, "lon": 2},
    {"ts": RX, "battery": 10**400},
])
def test_python_ints_beyond_a_double_are_out_of_range(obj):
    parse = parse_status if "battery" in obj else parse_fix
    with pytest.raises(PayloadError) as info:
        parse(obj)
    assert info.value.code == "out_of_range"


def test_lat_error_names_the_value():
    err = _reason(b'{"ts":1763799998123,"lat":123.0,"lon":118.8}')
    assert err.code == "out_of_range" and "lat=123.0" in err.reason and err.where == ""


def test_future_ts_is_measured_from_the_receive_time():
    limit = CFG.max_future_ms
    ok = orjson.dumps({"ts": RX + limit, "lat": 1.0, "lon": 2.0})
    assert decode_fix_payload(ok, rx_ms=RX, config=CFG)[0].ts_ms == RX + limit
    late = orjson.dumps({"ts": RX + limit + 1, "lat": 1.0, "lon": 2.0})
    err = _reason(late)
    assert err.code == "future_ts" and f"{limit + 1} ms ahead" in err.reason
    status = orjson.dumps({"ts": RX + limit + 1})
    with pytest.raises(PayloadError, match="future_ts"):
        decode_status_payload(status, rx_ms=RX, config=CFG)
    # An old fix (store-and-forward after a week in a dead spot) is not rejected here.
    old = orjson.dumps({"ts": RX - 7 * 86_400_000, "lat": 1.0, "lon": 2.0})
    assert decode_fix_payload(old, rx_ms=RX, config=CFG)[0].ts_ms == RX - 7 * 86_400_000


def test_size_and_count_limits_come_from_the_config():
    cfg = IngestConfig(max_payload_bytes=200, max_fixes_per_payload=3)
    one = {"ts": RX, "lat": 1.0, "lon": 2.0}
    three = orjson.dumps([one] * 3)
    assert len(decode_fix_payload(three, rx_ms=RX, config=cfg)) == 3
    err = _reason(orjson.dumps([one] * 4), config=cfg)
    assert err.reason == "too_many_fixes: 4 > 3"
    big = orjson.dumps({**one, "pad": "x" * 300})
    err = _reason(big, config=cfg)
    assert err.reason == f"too_large: {len(big)} bytes > 200"
    # Default limits: 64 KiB and 1000 fixes.
    assert _reason(b" " * 65537).reason == "too_large: 65537 bytes > 65536"
    assert _reason(orjson.dumps([one] * 1001)).code == "too_many_fixes"


def test_one_bad_element_of_a_batch():
    batch = orjson.dumps([
        {"ts": RX - 3000, "lat": 1.0, "lon": 2.0, "seq": 1},
        {"ts": RX - 2000, "lat": 91.0, "lon": 2.0, "seq": 2},
        {"ts": RX - 1000, "lat": 1.5, "lon": 2.5, "seq": 3},
        "garbage",
    ])
    err = _reason(batch)  # strict: the first bad element raises, with its position
    assert err.where == "[1]" and err.code == "out_of_range" and str(err).startswith("[1]: ")
    rejects: list[PayloadError] = []
    good = decode_fix_payload(batch, rx_ms=RX, config=CFG, rejects=rejects)
    assert [f.seq for f in good] == [1, 3]
    assert [(e.where, e.code) for e in rejects] == [("[1]", "out_of_range"), ("[3]", "not_object")]


def test_parse_status_fields():
    assert parse_status({"ts": RX, "battery": 0}) == Status(RX, 0.0, None, None)
    assert parse_status({"ts": RX, "battery": 100.0, "charging": True}).charging is True
    for bad, code in [
        ({"ts": RX, "battery": 101}, "out_of_range"),
        ({"ts": RX, "battery": -0.5}, "out_of_range"),
        ({"ts": RX, "battery": "80%"}, "bad_type"),
        ({"ts": RX, "strap": "cut"}, "bad_value"),
        ({"ts": RX, "charging": 1}, "bad_type"),
        ({"ts": RX, "power": "standby"}, "bad_value"),
        ({"ts": RX, "power": False}, "bad_type"),
        ({"battery": 50}, "missing_field"),
        ([{"ts": RX}], "not_object"),
    ]:
        with pytest.raises(PayloadError) as info:
            parse_status(bad, where="line 7")
        assert info.value.code == code and info.value.where == "line 7"


def test_status_power_off_and_on():
    """The firmware's last word before it shuts down (power_off), and its opposite."""
    assert parse_status({"ts": RX, "power": "off"}) == Status(RX, None, None, None, "off")
    assert parse_status({"ts": RX, "power": "on", "battery": 3}).power == "on"
    assert parse_status({"ts": RX, "power": None}).power is None  # null: absent
    with pytest.raises(PayloadError, match=r"bad_value: power='standby'; allowed: on, off"):
        decode_status_payload(b'{"ts":%d,"power":"standby"}' % RX, rx_ms=RX, config=CFG)


def test_parse_fix_accepts_integers_and_boundaries():
    fix = parse_fix({"ts": RX, "lat": 90, "lon": -180, "acc": 1e-3, "seq": 0})
    assert fix == Fix(RX, 90.0, -180.0, 0.001, "gps", "wgs84", 0)
    assert type(fix.lat) is float and type(fix.lon) is float


@pytest.mark.parametrize(
    "topic, expected",
    [
        ("emfence/v1/330723/BR-000123/fix", ("330723", "BR-000123", "fix")),
        ("emfence/v1/330702/phone_9/status", ("330702", "phone_9", "status")),
        ("emfence/v1/r/" + "d" * 64 + "/fix", ("r", "d" * 64, "fix")),
    ],
)
def test_topics(topic, expected):
    assert parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "emfence/v1/330723/BR-1/alarms",
        "emfence/v1/330723/BR-1/fix/extra",
        "emfence/v2/330723/BR-1/fix",
        "emfence/v1/330723//fix",
        "emfence/v1//BR-1/fix",
        "emfence/v1/330723/" + "d" * 65 + "/fix",
        "emfence/v1/330723/设备1/fix",
        "emfence/v1/330723/BR 1/fix",
        "emfence/v1/330723/BR-1\n/fix",
        "other/v1/330723/BR-1/fix",
        "",
    ],
)
def test_bad_topics(topic):
    with pytest.raises(PayloadError) as info:
        parse_topic(topic)
    assert info.value.code == "bad_topic"


def test_long_values_are_shortened_in_reasons():
    err = _reason(orjson.dumps({"ts": RX, "lat": 1.0, "lon": 2.0, "src": "x" * 10_000}))
    assert err.code == "bad_value" and len(err.reason) < 200


# -- properties ------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(["ts", "lat", "lon", "acc", "src", "coord_sys", "seq",
                                          "battery", "strap", "charging", "x"]),
                        children, max_size=8),
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_payload_error(data):
    for decode in (decode_fix_payload, decode_status_payload):
        try:
            decode(data, rx_ms=RX, config=CFG)
        except PayloadError as exc:
            assert exc.code in REASON_CODES


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_only_payload_error(value):
    try:
        payload = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # ints beyond 64 bits: not JSON orjson writes
        return
    for decode in (decode_fix_payload, decode_status_payload):
        try:
            decode(payload, rx_ms=RX, config=CFG)
        except PayloadError as exc:
            assert exc.code in REASON_CODES


@settings(max_examples=300, deadline=None)
@given(
    ts=st.integers(RX - 10**10, RX + CFG.max_future_ms),
    lat=st.floats(-90, 90), lon=st.floats(-180, 180),
    acc=st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1e6)),
    src=st.sampled_from(["gps", "wifi", "cell"]),
    coord_sys=st.sampled_from(["wgs84", "gcj02"]),
    seq=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
)
def test_every_valid_fix_round_trips(ts, lat, lon, acc, src, coord_sys, seq):
    obj = {"ts": ts, "lat": lat, "lon": lon, "src": src, "coord_sys": coord_sys}
    if acc is not None:
        obj["acc"] = acc
    if seq is not None:
        obj["seq"] = seq
    [fix] = decode_fix_payload(orjson.dumps(obj), rx_ms=RX, config=CFG)
    assert fix.ts_ms == ts and fix.lat == lat and fix.lon == lon
    assert fix.acc_m == (50.0 if acc is None else acc)
    assert (fix.src, fix.coord_sys, fix.seq) == (src, coord_sys, seq)
    assert math.isfinite(fix.lat) and -90 <= fix.lat <= 90


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["ts", "lat", "lon", "acc"]),
                                st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(),
                                          st.text(max_size=3))),
                min_size=1, max_size=20))
def test_lenient_batch_partitions_elements(items):
    payload = orjson.dumps(items)
    try:
        rejects: list[PayloadError] = []
        good = decode_fix_payload(payload, rx_ms=RX, config=CFG, rejects=rejects)
    except PayloadError:
        return  # payload-level fault: nothing partial to check
    assert len(good) + len(rejects) == len(items)
    assert all(e.where.startswith("[") for e in rejects)
    for fix in good:  # every accepted fix obeys the contract
        assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180 and fix.acc_m > 0
        assert fix.ts_ms <= RX + CFG.max_future_ms


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_from_other_parsers_are_rejected(bad):
    # JSON has no NaN, but parse_fix also serves parsers that produce one (replay files
    # written by other tools); it must not let a NaN through to the kernels.
    for field in ("lat", "lon", "acc"):
        obj = {"ts": RX, "lat": 1.0, "lon": 2.0, field: bad}
        with pytest.raises(PayloadError) as info:
            parse_fix(obj, where="line 3")
        assert (info.value.reason.startswith(f"out_of_range: {field}=")
                and "not finite" in info.value.reason)
    with pytest.raises(PayloadError, match="out_of_range: battery="):
        parse_status({"ts": RX, "battery": bad})


fix_field_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(),
    st.sampled_from(["gps", "wifi", "cell", "wgs84", "gcj02", "", "GPS"]),
    st.integers(MIN_TS_MS - 5, MIN_TS_MS + 5), st.integers(RX - 10, RX + 10),
    st.floats(-200, 200), st.lists(st.integers(), max_size=2),
)


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.sampled_from(["ts", "lat", "lon", "acc", "src", "coord_sys", "seq",
                                        "other"]), fix_field_values, max_size=8))
def test_fast_path_agrees_with_the_checked_path(obj):
    """parse_fix's fast path must accept exactly what the checked path accepts, with the
    same result (and leave every rejection, with its reason, to the checked path)."""
    try:
        want = parse_fix_checked(obj)
    except PayloadError as exc:
        with pytest.raises(PayloadError) as info:
            parse_fix(obj)
        assert info.value.reason == exc.reason
        return
    got = parse_fix(obj)
    assert got == want
    assert [type(v) for v in got] == [type(v) for v in want]
