"""`emfence simulate --generate`: real counties, valid subjects, deterministic."""

from __future__ import annotations

import orjson
import pytest
import shapely
from shapely.geometry import Point, shape
from sim_helpers import START_MS

from emfence.cli import main as emfence_main
from engine.registry import load_registry
from geofence import compile_zones, load_zones
from simulators.generate import (
    DEFAULT_COUNTY,
    GenerateError,
    bundled_counties,
    county_neighbours,
    generate_fleet,
)


def test_generated_files_load_in_geofence_and_the_registry(tmp_path):
    gen = generate_fleet(120, seed=7, start_ms=START_MS)
    zp, sp = gen.write(tmp_path)
    zones = load_zones(str(zp))
    compiled = compile_zones(zones)
    registry = load_registry(str(sp), compiled)
    # the subjects' devices, then the protected persons' (issue #14)
    assert len(registry.device_ids) == sum(
        len(s["devices"]) for s in gen.subjects["subjects"] + gen.subjects.get("protected", []))
    ids = {z.zone_id for z in zones}
    # Every zone a subject names exists, and every county is a real bundled one.
    counties = {f["properties"]["zone_id"]: f for f in bundled_counties()["features"]}
    for s in gen.subjects["subjects"]:
        assert s["level"] in ("strict", "ordinary", "lenient")
        assert s["inclusion"] == [s["region"]] and s["region"] in counties
        for z in s.get("exclusion", []) + [z for lv in s.get("leaves", []) for z in lv["zones"]]:
            assert z in ids
        for lv in s.get("leaves", []):
            assert lv["end"] > lv["start"]
            assert lv["zones"][0] in county_neighbours(bundled_counties(), s["region"])
    for f in gen.zones["features"]:
        if f["properties"].get("kind") == "county":
            assert f["geometry"] == counties[f["properties"]["zone_id"]]["geometry"]


def test_default_counties_are_wolong_and_its_neighbours():
    gen = generate_fleet(200, seed=1, start_ms=START_MS)
    regions = {s["region"] for s in gen.subjects["subjects"]}
    assert DEFAULT_COUNTY in regions
    assert regions <= {DEFAULT_COUNTY, *county_neighbours(bundled_counties(), DEFAULT_COUNTY)}
    # The neighbours really share a border with Wolong (shapely on the raw GCJ-02 data).
    fc = {f["properties"]["zone_id"]: shape(f["geometry"]) for f in bundled_counties()["features"]}
    for c in county_neighbours(bundled_counties(), DEFAULT_COUNTY):
        assert shapely.distance(fc[c], fc[DEFAULT_COUNTY]) < 0.005
    assert "411302" in county_neighbours(bundled_counties(), DEFAULT_COUNTY)  # Wancheng


def test_exclusion_circles_lie_in_their_subjects_county():
    gen = generate_fleet(150, seed=3, counties=["411302", "411321"], start_ms=START_MS)
    feats = {f["properties"]["zone_id"]: f for f in gen.zones["features"]}
    assert {s["region"] for s in gen.subjects["subjects"]} == {"411302", "411321"}
    n_victims = 0
    for s in gen.subjects["subjects"]:
        county = shape(feats[s["region"]]["geometry"])
        for z in s.get("exclusion", []):
            f = feats[z]
            assert f["geometry"]["type"] == "Point"
            assert 80 <= f["properties"]["radius_m"] <= 500
            assert county.contains(Point(f["geometry"]["coordinates"]))  # both GCJ-02
            n_victims += z.startswith("victim-")
    assert n_victims > 20  # about a third of 150


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_fleet(60, seed=11, start_ms=START_MS)
    b = generate_fleet(60, seed=11, start_ms=START_MS)
    c = generate_fleet(60, seed=12, start_ms=START_MS)
    assert orjson.dumps(a.zones) == orjson.dumps(b.zones)
    assert orjson.dumps(a.subjects) == orjson.dumps(b.subjects)
    assert orjson.dumps(a.subjects) != orjson.dumps(c.subjects)


def test_cli_generate_writes_both_files_and_is_deterministic(tmp_path):
    args = ["simulate", "--generate", "25", "--seed", "5", "--start", str(START_MS),
            "--counties", "411303"]
    assert emfence_main(args + ["-o", str(tmp_path / "a")]) == 0
    assert emfence_main(args + ["-o", str(tmp_path / "b")]) == 0
    for name in ("zones.geojson", "subjects.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    subjects = orjson.loads((tmp_path / "a" / "subjects.json").read_bytes())["subjects"]
    assert len(subjects) == 25 and subjects[0]["subject_id"] == "S-0001"


def test_bad_requests_are_named(capsys):
    with pytest.raises(GenerateError, match="999999"):
        generate_fleet(5, seed=0, counties=["999999"], start_ms=START_MS)
    with pytest.raises(GenerateError, match="at least 1"):
        generate_fleet(0, seed=0, start_ms=START_MS)
    assert emfence_main(["simulate", "--generate", "5", "-o", "/tmp/x",
                         "--counties", "123456"]) == 1
    assert "123456" in capsys.readouterr().err
