"""Property-based fuzz target for the wire-contract decoder and everything that calls it.

The rule: every input either decodes into values that keep the contract's invariants,
or raises :class:`PayloadError` whose code is one of the codes documented in
docs/wire-protocol.md and whose message is one line; nothing raises anything else. The
same holds for the topic parser, the replay line parser and the dead-letter record the
live MQTT intake builds from a refused message (which must never raise at all).

CI runs a few thousand examples in total. For a deep run (about 100 times as many):

    EMFENCE_DECODE_FUZZ=deep python -m pytest -q tests/ingest/test_decode_fuzz.py
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emfence.config import Config, IngestConfig
from ingest.decode import (
    COORD_SYS_CODES,
    DEADLETTER_PREFIX_BYTES,
    ID_RE,
    MAX_SEQ,
    MAX_TS_MS,
    MIN_TS_MS,
    REASON_CODES,
    SOURCES,
    STRAP_CODES,
    Fix,
    PayloadError,
    Status,
    deadletter_record,
    decode_fix_payload,
    decode_status_payload,
    load_json,
    parse_topic,
)

ROOT = Path(__file__).resolve().parents[2]
RX = 1_763_800_000_000
# Small limits so that the fuzzer reaches them (the defaults are 64 KiB and 1000 fixes).
CFG = IngestConfig(max_payload_bytes=4096, max_fixes_per_payload=8)
SCALE = 100 if os.environ.get("EMFENCE_DECODE_FUZZ") == "deep" else 1


def fuzz(examples: int):
    """Settings of one fuzz test: ``examples`` in CI, ``SCALE`` times more in a deep run."""
    return settings(max_examples=examples * SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def documented_codes() -> set[str]:
    """The reason codes of the table in docs/wire-protocol.md's section "Dead letters"."""
    text = (ROOT / "docs" / "wire-protocol.md").read_text()
    section = text.split("\n## Dead letters\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


DOCUMENTED = documented_codes()


def test_every_reason_code_is_documented():
    assert set(REASON_CODES) <= DOCUMENTED, set(REASON_CODES) - DOCUMENTED
    assert DOCUMENTED <= set(REASON_CODES), DOCUMENTED - set(REASON_CODES)


def check_refusal(exc: PayloadError) -> None:
    assert exc.code in DOCUMENTED, exc.reason
    assert exc.reason.startswith(exc.code + ": ") or exc.reason == exc.code, exc.reason
    assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)
    assert re.fullmatch(r"(\[\d+\])?", exc.where), exc.where


def check_fix(fix: Fix) -> None:
    assert type(fix) is Fix
    assert type(fix.ts_ms) is int and MIN_TS_MS <= fix.ts_ms <= RX + CFG.max_future_ms
    assert type(fix.lat) is float and -90.0 <= fix.lat <= 90.0
    assert type(fix.lon) is float and -180.0 <= fix.lon <= 180.0
    assert type(fix.acc_m) is float and 0.0 < fix.acc_m < math.inf
    assert fix.src in SOURCES and fix.coord_sys in COORD_SYS_CODES
    assert fix.seq is None or (type(fix.seq) is int and 0 <= fix.seq <= MAX_SEQ)


def check_status(status: Status) -> None:
    assert type(status) is Status
    assert type(status.ts_ms) is int and MIN_TS_MS <= status.ts_ms <= RX + CFG.max_future_ms
    assert status.battery_pct is None or (type(status.battery_pct) is float
                                          and 0.0 <= status.battery_pct <= 100.0)
    assert status.strap is None or status.strap in STRAP_CODES
    assert status.charging is None or type(status.charging) is bool
    assert status.power is None or status.power in ("on", "off")


def decode_all(payload: bytes) -> None:
    """Run every payload decoder over ``payload`` and check the rule for each."""
    try:
        fixes = decode_fix_payload(payload, rx_ms=RX, config=CFG)
    except PayloadError as exc:
        check_refusal(exc)
        fixes = None
    else:
        assert fixes
        for fix in fixes:
            check_fix(fix)
    rejects: list[PayloadError] = []
    try:
        lenient = decode_fix_payload(payload, rx_ms=RX, config=CFG, rejects=rejects)
    except PayloadError as exc:
        check_refusal(exc)
        assert exc.where == ""  # only payload-level faults refuse the whole message
        assert fixes is None
    else:
        for fix in lenient:
            check_fix(fix)
        for exc in rejects:
            check_refusal(exc)
            assert exc.where.startswith("[")
        if fixes is not None:  # strict decoding succeeded: the lenient one agrees
            assert lenient == fixes and not rejects
        data = load_json(payload)
        if isinstance(data, list):
            assert len(lenient) + len(rejects) == len(data)
            assert [int(e.where[1:-1]) for e in rejects] == sorted({int(e.where[1:-1])
                                                                    for e in rejects})
    try:
        status = decode_status_payload(payload, rx_ms=RX, config=CFG)
    except PayloadError as exc:
        check_refusal(exc)
    else:
        check_status(status)


# --- JSON text with what orjson never writes: huge numbers, 1e400, NaN, duplicate keys,
# escapes, lone surrogates, odd spacing. A value is drawn as its JSON text directly.

def _string_literal(s: str, ascii_only: bool) -> str:
    return json.dumps(s, ensure_ascii=ascii_only)


number_literals = st.one_of(
    st.integers().map(str),
    st.integers(-2**80, 2**80).map(str),
    st.sampled_from(["2" + "0" * 19, "18446744073709551616", "1180591620717411303424",
                     "9223372036854775808", "-9223372036854775809", "1e400", "-1e400",
                     "1e-400", "1E+2", "-0", "-0.0", "0e0", "1.5", "1" * 400, "1" * 5000,
                     "1e308", "1.7976931348623157e308", "4.9e-324", "NaN", "Infinity",
                     "-Infinity", "01", "1.", ".5", "+1", "0x10"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
string_literals = st.one_of(
    st.tuples(st.text(max_size=12), st.booleans()).map(lambda t: _string_literal(*t)),
    st.sampled_from(['"gps"', '"wifi"', '"cell"', '"wgs84"', '"gcj02"', '"ok"', '"open"',
                     '"on"', '"off"', '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"a\\nb"',
                     '"\\x"', '"unterminated']),
)
scalar_literals = st.one_of(number_literals, string_literals,
                            st.sampled_from(["true", "false", "null", "nul", "True"]))
FIELDS = ["ts", "lat", "lon", "acc", "src", "coord_sys", "seq", "battery", "strap",
          "charging", "power", "device_id", "rx", "x", "", "\u00e9", "ts "]


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


json_literals = st.recursive(
    scalar_literals,
    lambda children: st.one_of(
        st.lists(children, max_size=5).map(lambda xs: "[" + ",".join(xs) + "]"),
        # Lists of pairs, not dicts: duplicate keys stay in the text.
        st.lists(st.tuples(st.sampled_from(FIELDS), children), max_size=8).map(_object),
    ),
    max_leaves=25,
)


def _valid_fix_pairs() -> list[tuple[str, str]]:
    return [("ts", "1763799998123"), ("lat", "28.97"), ("lon", "118.89"), ("acc", "8.5"),
            ("src", '"gps"'), ("coord_sys", '"wgs84"'), ("seq", "41207")]


@st.composite
def near_valid_fix(draw) -> str:
    """A fix object a step or two from valid: fields dropped, duplicated, replaced."""
    pairs = _valid_fix_pairs()
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "replace", "duplicate", "add"]))
        i = draw(st.integers(0, len(pairs) - 1)) if pairs else 0
        if action == "drop" and pairs:
            pairs.pop(i)
        elif action == "replace" and pairs:
            pairs[i] = (pairs[i][0], draw(json_literals))
        elif action == "duplicate" and pairs:
            pairs.append((pairs[i][0], draw(scalar_literals)))
        else:
            pairs.append((draw(st.sampled_from(FIELDS)), draw(json_literals)))
    ts = draw(st.one_of(st.none(), st.integers(MIN_TS_MS - 2, RX + CFG.max_future_ms + 2),
                        st.integers(MAX_TS_MS - 2, MAX_TS_MS + 2)))
    if ts is not None:
        pairs.append(("ts", str(ts)))
    return _object(pairs)


@st.composite
def near_valid_status(draw) -> str:
    pairs = [("ts", str(draw(st.integers(MIN_TS_MS - 2, RX + CFG.max_future_ms + 2))))]
    for name, values in (("battery", number_literals), ("strap", string_literals),
                         ("charging", scalar_literals), ("power", string_literals)):
        if draw(st.booleans()):
            pairs.append((name, draw(values)))
    return _object(pairs)


def _spaced(text: str, space: str) -> bytes:
    return (space + text + space).encode("utf-8", "surrogatepass")


payloads = st.one_of(
    st.binary(max_size=200),
    st.builds(_spaced, json_literals, st.sampled_from(["", " ", "\n", "\t", "\ufeff"])),
    near_valid_fix().map(str.encode),
    near_valid_status().map(str.encode),
    st.lists(st.one_of(near_valid_fix(), json_literals), min_size=0, max_size=10)
    .map(lambda xs: ("[" + ",".join(xs) + "]").encode("utf-8", "surrogatepass")),
    # Deep nesting around a fix, up to beyond orjson's limit of 1024.
    st.tuples(st.integers(1, 1500), st.sampled_from(["[", '{"a":'])).map(
        lambda t: (t[1] * t[0] + '{"ts":1763799998123,"lat":1,"lon":2}'
                   + ("]" if t[1] == "[" else "}") * t[0]).encode()),
    # Over the size limit, and just under it.
    st.integers(CFG.max_payload_bytes - 2, CFG.max_payload_bytes + 2).map(
        lambda n: (b'{"ts":1763799998123,"lat":1,"lon":2,"x":"' + b"a" * n)[:n - 2] + b'"}'),
)


@example(b'{"ts":1763799998123,"lat":28.9,"lon":118.8,"seq":18446744073709551616}')
@example(b'{"ts":1180591620717411303424,"lat":28.9,"lon":118.8}')
@example(b'{"ts":1763799998123,"lat":1e400,"lon":118.8}')
@example(b'[{"ts":1763799998123,"lat":1,"lon":2},{"ts":1763799998123,"lat":1,"lon":1e400}]')
@example(b'{"ts":1763799998123,"lat":1,"lon":2,"x":1e400,"y":"\\ud800"}')
@example(b'{"ts":1763799998123,"lat":1,"lon":2,"x":1e400,"y":' + b"1" * 5000 + b"}")
@example(b"[" * 2000 + b"1e400" + b"]" * 2000)
@example(b'{"ts":1763799999000,"battery":1e400}')
@fuzz(1000)
@given(payloads)
def test_payload_decoders_decode_or_refuse_with_a_documented_code(payload):
    decode_all(payload)


# --- parsed values (any Python JSON value, including what only other parsers produce)

python_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**1100, 2**1100),
              st.floats(), st.text(max_size=8),
              st.sampled_from(["gps", "wifi", "cell", "wgs84", "gcj02", "ok", "open"])),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS), children, max_size=8)),
    max_leaves=20,
)


python_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**1100, 2**1100),
    st.floats(), st.text(max_size=4))


@st.composite
def near_valid_values(draw) -> dict:
    """A parsed fix or status with a field or two replaced by any scalar."""
    obj = {"ts": RX, "lat": 28.97, "lon": 118.89, "acc": 8.5, "src": "gps",
           "coord_sys": "wgs84", "seq": 41207, "battery": 50.0, "strap": "ok",
           "charging": False, "power": "off"}
    for name in draw(st.lists(st.sampled_from(sorted(obj)), min_size=1, max_size=2)):
        obj[name] = draw(python_scalars)
    return obj


# Found by this test: parse_fix's fast path converted an acc beyond a double to float
# and raised OverflowError.
@example({"ts": RX, "lat": 28.97, "lon": 118.89, "acc": 2**1000, "src": "gps"})
@fuzz(600)
@given(st.one_of(python_values, near_valid_values()))
def test_parsers_of_parsed_values_decode_or_refuse(value):
    from ingest.decode import parse_fix, parse_fix_checked, parse_status

    for parse, check in ((parse_fix, check_fix), (parse_fix_checked, check_fix),
                         (parse_status, check_status)):
        try:
            result = parse(value)
        except PayloadError as exc:
            check_refusal(exc)
        else:
            if result.ts_ms <= RX + CFG.max_future_ms:  # no future check at this level
                check(result)


# --- topics

id_like = st.one_of(st.from_regex(ID_RE, fullmatch=True), st.text(max_size=70),
                    st.sampled_from(["", "+", "#", "..", "a/b", "\x00", "\ud800", "a" * 65]))


@example("emfence/v1/330723/BR-1/fix\ud800")
@example("emfence/v1/\udcff/BR-1/fix")
@fuzz(500)
@given(st.one_of(
    st.text(max_size=120),
    st.builds(lambda p, r, d, k: f"{p}/{r}/{d}/{k}",
              st.sampled_from(["emfence/v1", "emfence/v2", "emfence", "", "emfence/v1/x"]),
              id_like, id_like,
              st.one_of(st.sampled_from(["fix", "status", "cmd", "deadletter", "fix/"]),
                        st.text(max_size=8))),
))
def test_parse_topic_splits_or_refuses(topic):
    try:
        region, device_id, kind = parse_topic(topic)
    except PayloadError as exc:
        check_refusal(exc)
        assert exc.code == "bad_topic"
    else:
        assert ID_RE.fullmatch(region) and ID_RE.fullmatch(device_id)
        assert kind in ("fix", "status")
        assert topic == f"emfence/v1/{region}/{device_id}/{kind}"


# --- the live intake: raw message -> decoder -> dead-letter record (emfence.run.receive
# Receiver.on_message and deadletter, without the broker and the registry)

def live_path(topic: str | bytes, payload: bytes) -> list[tuple[str, bytes]]:
    """The dead letters the service would publish for one message."""
    letters: list[tuple[str, bytes]] = []

    def refuse(exc: PayloadError) -> None:
        letters.append(deadletter_record(topic, payload, exc, rx_ms=RX, engine="worker-1"))

    try:
        text = topic if isinstance(topic, str) else topic.decode("utf-8", "backslashreplace")
        _, _, kind = parse_topic(text)
        if kind == "fix":
            rejects: list[PayloadError] = []
            decode_fix_payload(payload, rx_ms=RX, config=CFG, rejects=rejects)
            for r in rejects:
                refuse(r)
        else:
            decode_status_payload(payload, rx_ms=RX, config=CFG)
    except PayloadError as exc:
        refuse(exc)
    return letters


def check_deadletter(topic, payload: bytes, region: str, record_bytes: bytes) -> None:
    record = orjson.loads(record_bytes)  # valid UTF-8 JSON, whatever the input
    assert region == "unknown" or ID_RE.fullmatch(region)
    assert record["code"] in DOCUMENTED and record["reason"].startswith(record["code"])
    assert record["payload_bytes"] == len(payload)
    prefix = base64.b64decode(record["payload_prefix_b64"])
    assert prefix == payload[:DEADLETTER_PREFIX_BYTES]
    assert record["rx_ms"] == RX and record["engine"] == "worker-1"
    if isinstance(topic, str) and not re.search("[\ud800-\udfff]", topic):
        assert record["topic"] == topic
    elif isinstance(topic, bytes):
        assert record["topic"] == topic.decode("utf-8", "backslashreplace")


topics = st.one_of(
    st.builds(lambda r, d, k: f"emfence/v1/{r}/{d}/{k}", id_like, id_like,
              st.sampled_from(["fix", "status", "x"])),
    st.text(max_size=60),
    st.binary(max_size=60),  # a broker that does not check UTF-8 could hand over bytes
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Lo", "Nd"]), max_size=20)
    .map(lambda s: f"emfence/v1/{s}/BR-1/fix"),
)


# A topic with a lone surrogate (not UTF-8) made the service's dead-letter builder raise
# (orjson cannot write it); so would topic bytes from a broker that does not check UTF-8.
@example("emfence/v1/330723/BR-1/fix\udcff", b"{")
@example(b"emfence/v1/330723/BR-\xff/fix", b"{")
@example("emfence/v1/330723/BR-1/fix", b"[" + b"x" * 70_000)
@fuzz(400)
@given(topics, st.one_of(payloads, st.binary(min_size=250, max_size=5000)))
def test_the_live_path_to_a_dead_letter_never_raises(topic, payload):
    for region, record in live_path(topic, payload):
        check_deadletter(topic, payload, region, record)


@fuzz(300)
@given(topics, st.binary(max_size=600), st.text(max_size=80), st.text(max_size=8))
def test_deadletter_record_never_raises(topic, payload, detail, where):
    code = REASON_CODES[len(detail) % len(REASON_CODES)]
    region, record = deadletter_record(topic, payload, PayloadError(f"{code}: {detail}", where),
                                       rx_ms=RX, engine="worker-1")
    check_deadletter(topic, payload, region, record)


# --- the replay line parser (emfence.replay.replay, the entry of `emfence replay`)

@pytest.fixture(scope="module")
def replay_engine():
    from engine.registry import load_registry
    from geofence import compile_zones, load_zones

    zones = compile_zones(load_zones({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"zone_id": "box"},
         "geometry": {"type": "Polygon", "coordinates": [[[118, 28], [120, 28], [120, 30],
                                                          [118, 30], [118, 28]]]}}]}))
    registry = load_registry({"subjects": [
        {"subject_id": "S-1", "region": "330723", "level": "strict",
         "devices": [{"device_id": "B-1", "kind": "bracelet"}], "inclusion": ["box"]}]}, zones)
    return zones, registry


replay_lines = st.one_of(
    payloads,
    near_valid_fix().map(lambda s: ('{"device_id":"B-1",' + s[1:] if s != "{}"
                                    else '{"device_id":"B-1"}').encode("utf-8", "surrogatepass")),
    near_valid_status().map(lambda s: ('{"device_id":"B-1",' + s[1:]).encode()),
    st.tuples(near_valid_fix(), number_literals).map(
        lambda t: ('{"device_id":"B-1","rx":' + t[1] + "," + t[0][1:]).encode()),
    st.sampled_from([b"", b"   ", b'{"device_id":"Z-9"}', b'{"device_id":["B-1"]}',
                     b'{"device_id":{"a":1}}']),
)


@example([b'{"device_id":"B-1","ts":1763799998123,"lat":29,"lon":119,"x":1e400}'])
@example([b'{"device_id":"B-1","ts":1763799998123,"lat":29,"lon":119,"rx":1e400}'])
@example([b'{"device_id":"B-1","ts":1763799998123,"lat":29,"lon":119,"seq":1e400}'])
@fuzz(300)
@given(st.lists(replay_lines, min_size=1, max_size=6))
def test_replay_lines_are_replayed_or_reported(replay_engine, lines):
    from emfence.replay import replay
    from engine.engine import Engine

    zones, registry = replay_engine
    config = Config()
    out = _Sink()
    stats = replay(lines, Engine(zones, registry, config), out, config=config)
    assert stats.lines == len(lines)
    assert stats.records + stats.blank + stats.rejected_total + stats.after_until == len(lines)
    assert stats.records == stats.counters.get("fixes", 0) + stats.counters.get("statuses", 0)
    for lineno, reason in stats.rejected:
        code = reason.split(":", 1)[0]
        assert code in DOCUMENTED and "\n" not in reason, reason
        # The diagnosis always finds the fault the fast path refused the line for.
        assert reason != "bad_value: refused", (lines[lineno - 1], reason)


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, b: bytes) -> None:
        self.data += b
