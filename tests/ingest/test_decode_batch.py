"""The vectorised validator (ingest.decode_batch) is the one validator of the wire
contract over many fixes at once: it accepts exactly what ``parse_fix`` / ``parse_status``
accept, with the same values, on valid and hostile objects; and ``emfence replay``, which
reads its lines in blocks through it, writes exactly what the line-by-line reader wrote
(tests/ingest/replay_reference.py): the same alarm bytes, the same summary, the same
rejected lines with the same reasons."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from replay_reference import reference_replay
from test_decode_fuzz import (
    RX,
    fuzz,
    near_valid_fix,
    near_valid_status,
    near_valid_values,
    python_values,
    replay_lines,
)

from contract.records import COORD_SYS_CODES, POWER_CODES, STRAP_CODES
from emfence.config import Config
from ingest.decode import PayloadError, load_json, parse_fix, parse_status
from ingest.decode_batch import parse_fixes, parse_statuses


def _parsed(text: str):
    try:
        return load_json(text.encode("utf-8", "surrogatepass"))
    except PayloadError:
        return None


# Parsed JSON as the replay sees it (orjson, or the standard library for 1e400), and any
# Python value (huge ints, NaN, infinities, bools, nested containers).
objects = st.one_of(python_values, near_valid_values(), near_valid_fix().map(_parsed),
                    near_valid_status().map(_parsed))


def _same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a)
                                                 == math.copysign(1, b))


def _verdicts(objs, parse):
    out = []
    for o in objs:
        try:
            out.append(parse(o))
        except PayloadError:
            out.append(None)
    return out


CLEAN = {"ts": RX, "lat": 28.97, "lon": 118.89, "acc": 8.5}


@example([CLEAN, {**CLEAN, "ts": 2**64 - 1}])
@example([CLEAN, {**CLEAN, "lat": True}])
@example([CLEAN, {**CLEAN, "acc": 2**1100}, {**CLEAN, "acc": float("nan")}])
@example([CLEAN, {**CLEAN, "src": ["gps"]}, {**CLEAN, "coord_sys": "gcj02"}])
@example([CLEAN, {**CLEAN, "seq": 2**63}, {**CLEAN, "seq": -1}, {**CLEAN, "seq": 1.0}])
@example([{**CLEAN, "lat": 90, "lon": -180, "acc": None, "src": None}, [CLEAN], None])
@fuzz(400)
@given(st.lists(st.one_of(st.just(CLEAN), objects), max_size=12))
def test_parse_fixes_accepts_what_parse_fix_accepts(objs):
    cols = parse_fixes(objs)
    for i, (obj, want) in enumerate(zip(objs, _verdicts(objs, parse_fix), strict=True)):
        assert bool(cols.ok[i]) == (want is not None), (obj, want)
        if want is not None:
            assert int(cols.ts_ms[i]) == want.ts_ms
            for got, expected in ((cols.lat[i], want.lat), (cols.lon[i], want.lon),
                                  (cols.acc_m[i], want.acc_m)):
                assert _same_float(float(got), expected), (obj, got, expected)
            assert int(cols.coord_sys[i]) == COORD_SYS_CODES[want.coord_sys]


STATUS = {"ts": RX, "battery": 80, "strap": "ok"}


@example([STATUS, {**STATUS, "battery": False}, {**STATUS, "charging": 1}])
@example([STATUS, {**STATUS, "strap": {"a": 1}}, {**STATUS, "power": "off", "battery": None}])
@fuzz(300)
@given(st.lists(st.one_of(st.just(STATUS), objects), max_size=12))
def test_parse_statuses_accepts_what_parse_status_accepts(objs):
    cols = parse_statuses(objs)
    for i, (obj, want) in enumerate(zip(objs, _verdicts(objs, parse_status), strict=True)):
        assert bool(cols.ok[i]) == (want is not None), (obj, want)
        if want is not None:
            assert int(cols.ts_ms[i]) == want.ts_ms
            battery = math.nan if want.battery_pct is None else want.battery_pct
            assert _same_float(float(cols.battery_pct[i]), battery)
            assert int(cols.strap[i]) == {None: -1, **STRAP_CODES}[want.strap]
            assert int(cols.power[i]) == {None: -1, **POWER_CODES}[want.power]


@pytest.fixture(scope="module")
def replay_model():
    """Zones and register of one subject with a bracelet B-1 (as test_decode_fuzz's)."""
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


def _line(obj: dict) -> bytes:
    return orjson.dumps(obj)


valid_lines = st.one_of(
    st.builds(lambda dt, lat, lon, rx: _line({
        "device_id": "B-1", "ts": RX + dt, "lat": lat, "lon": lon, "acc": 10,
        **({"rx": RX + dt + rx} if rx is not None else {})}),
        st.integers(-600_000, 600_000), st.floats(28.5, 29.5), st.floats(118.5, 120.5),
        st.one_of(st.none(), st.integers(-1000, 120_000))),
    st.builds(lambda dt, strap: _line({"device_id": "B-1", "ts": RX + dt, "strap": strap,
                                       "battery": 15}),
              st.integers(-600_000, 600_000), st.sampled_from(["ok", "open"])),
)


def _replay_both(replay_model, lines, until_ms, block, batch):
    import emfence.replay as replay_module
    from engine.engine import Engine

    zones, registry = replay_model
    config = Config()
    outs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay_module, "BLOCK_LINES", block)
        mp.setattr(replay_module, "BATCH_RECORDS", batch)
        for fn in (replay_module.replay, reference_replay):
            out = io.BytesIO()
            extra = {"batch_records": batch} if fn is reference_replay else {}
            stats = fn(iter(lines), Engine(zones, registry, config), out, config=config,
                       until_ms=until_ms, **extra)
            outs.append((out.getvalue(), stats.summary(), stats.rejected))
    return outs


@example(lines=[b'{"device_id":"B-1","ts":1763799998123,"lat":29,"lon":119,"x":1e400}',
                b"", b"null", b'{"device_id":"B-1","ts":1763799998123,"battery":101}'],
         until=None, block=2, batch=1)
@fuzz(150)
@given(lines=st.lists(st.one_of(valid_lines, replay_lines), max_size=16),
       until=st.one_of(st.none(), st.integers(RX - 300_000, RX + 900_000)),
       block=st.integers(1, 5), batch=st.integers(1, 6))
def test_block_replay_writes_what_the_line_by_line_replay_wrote(replay_model, lines, until,
                                                                block, batch):
    new, old = _replay_both(replay_model, lines, until, block, batch)
    assert new == old


def test_block_replay_on_a_longer_file_with_bad_lines(replay_model):
    rng = np.random.default_rng(7)
    lines = []
    for i in range(3000):
        r = rng.random()
        if r < 0.02:
            lines.append(b'{"device_id":"B-1","ts":"1763799998123","lat":29,"lon":119}')
        elif r < 0.03:
            lines.append(b"{not json")
        elif r < 0.08:
            lines.append(_line({"device_id": "B-1", "ts": RX + 1000 * i, "strap": "open"}))
        else:
            lon = 119.0 + (1.5 if i % 500 > 450 else 0.0)
            lines.append(_line({"device_id": "B-1", "ts": RX + 1000 * i, "lat": 29.0,
                                "lon": lon, "acc": 12.5, "rx": RX + 1000 * i + 400}))
    new, old = _replay_both(replay_model, lines, None, 256, 700)
    assert new == old
    assert len(new[2]) > 30 and new[0].count(b"\n") > 0
    assert json.loads(new[0].splitlines()[0])["device_id"] == "B-1"
