"""ShapelyEngine (shapely + plain Python, for the benchmark comparison) against Engine."""

from __future__ import annotations

import io

import orjson
import pytest
from test_engine_vs_reference import ZONES, generate

from emfence.config import Config
from emfence.replay import replay
from engine import Engine, load_registry
from engine.shapely_core import ShapelyEngine


def run(cls, subj, records, until):
    engine = cls(ZONES, load_registry(subj, ZONES), Config())
    out = io.BytesIO()
    replay((orjson.dumps(r) for r in records), engine, out, config=Config(), until_ms=until)
    return [orjson.loads(x) for x in out.getvalue().splitlines()], engine.counters


@pytest.mark.parametrize("seed, walk, device_rules", [(0, False, False), (1, False, False),
                                                      (2, True, False), (3, False, True),
                                                      (4, True, True)])
def test_shapely_engine_gives_the_same_events(seed, walk, device_rules):
    subj, records, until = generate(seed, 300 if not device_rules else 500, walk=walk,
                                    device_rules=device_rules)
    want, want_counts = run(Engine, subj, records, until)
    got, got_counts = run(ShapelyEngine, subj, records, until)
    assert len(want) > 5
    if device_rules:  # the scenario must exercise them
        assert {"no_fix", "power_off"} <= {e["type"] for e in want}
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert list(g) == list(w)
        gd, wd = g.pop("distance_m", None), w.pop("distance_m", None)
        assert (gd is None) == (wd is None)
        if gd is not None:  # two metric frames: agree to well under a metre
            assert abs(gd - wd) <= 0.5
        if g["type"] in ("offline", "tamper", "no_fix", "power_off") and "lat" in g:
            # The last known position: two GCJ-02 conversions agree to far below 1e-9 deg.
            for k in ("lat", "lon"):
                assert abs(g.pop(k) - w.pop(k)) < 1e-9
        assert g == w
    for key in ("fixes", "statuses", "duplicates", "late"):
        assert got_counts[key] == want_counts[key]


@pytest.mark.parametrize("rules", [{"border_warn_m": 400.0},
                                   {"border_warn_m": 250.0, "alarm_per": "device"}])
def test_shapely_engine_gives_the_same_warnings(rules):
    """The approach warnings (the border's too) and the subject fold, as Engine has them."""
    from emfence.config import config_from_dict
    config = config_from_dict({"rules": rules})
    subj, records, until = generate(3, 300, ref_kwargs=rules)
    got_want = []
    for cls in (Engine, ShapelyEngine):
        engine = cls(ZONES, load_registry(subj, ZONES), config)
        out = io.BytesIO()
        replay((orjson.dumps(r) for r in records), engine, out, config=config, until_ms=until)
        got_want.append([orjson.loads(x) for x in out.getvalue().splitlines()])
    want, got = got_want
    assert any(e["type"] == "approach" and e["zone_id"] in ("411302", "411321") for e in want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        gd, wd = g.pop("distance_m", None), w.pop("distance_m", None)
        assert (gd is None) == (wd is None)
        if gd is not None:
            assert abs(gd - wd) <= 0.5
        assert g == w


@pytest.mark.parametrize("which, seed", [("proximity", 0), ("proximity", 3), ("contact", 1),
                                         ("contact", 2)])
def test_shapely_engine_gives_the_same_relation_events(which, seed):
    """Proximity and contact (engine.shapely_relations) agree with the kernels."""
    import test_engine_contact
    import test_engine_proximity

    gen = {"proximity": test_engine_proximity, "contact": test_engine_contact}[which].generate
    subj, records, until = gen(seed, 300)
    want, _ = run(Engine, subj, records, until)
    got, _ = run(ShapelyEngine, subj, records, until)
    assert any(e["type"] == which for e in want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        gd, wd = g.pop("distance_m", None), w.pop("distance_m", None)
        assert (gd is None) == (wd is None) and (gd is None or abs(gd - wd) <= 0.5)
        assert g == w
