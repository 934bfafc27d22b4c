"""Zone files: formats, coordinate systems, repairs and named errors."""

from __future__ import annotations

import copy
import gzip
import json
import warnings

import geofence_reference as ref
import numpy as np
import pyproj
import pytest
import shapely

from geofence import Zone, ZoneError, ZoneWarning, load_zones
from geofence.data import henan_counties_path, load_henan_counties
from geofence.gcj02 import gcj02_to_wgs84

SQUARE = [[113.0, 34.0], [113.1, 34.0], [113.1, 34.1], [113.0, 34.1], [113.0, 34.0]]
HOLE = [[113.02, 34.02], [113.02, 34.05], [113.05, 34.05], [113.05, 34.02], [113.02, 34.02]]


def fc(*features, **top):
    return {"type": "FeatureCollection", **top, "features": list(features)}


def feat(geometry, fid=None, **props):
    f = {"type": "Feature", "properties": props, "geometry": geometry}
    if fid is not None:
        f["id"] = fid
    return f


def poly(*rings):
    return {"type": "Polygon", "coordinates": [list(r) for r in rings]}


def test_polygon_multipolygon_and_circle():
    zones = load_zones(fc(
        feat(poly(SQUARE, HOLE), zone_id="county", kind="inclusion"),
        feat({"type": "MultiPolygon",
              "coordinates": [[SQUARE], [[[114, 35], [114.1, 35], [114.1, 35.1], [114, 35]]]]},
             fid="two"),
        feat({"type": "Point", "coordinates": [113.05, 34.05]}, zone_id="home", radius_m=250),
    ))
    assert [z.zone_id for z in zones] == ["county", "two", "home"]
    county, two, home = zones
    assert isinstance(county, Zone) and county.circle is None and county.source_crs == "wgs84"
    assert county.geometry.geom_type == "Polygon" and len(county.geometry.interiors) == 1
    assert county.properties == {"zone_id": "county", "kind": "inclusion"}
    assert two.geometry.geom_type == "MultiPolygon" and len(two.geometry.geoms) == 2
    assert home.circle == (113.05, 34.05, 250.0)
    # The drawing polygon of a circle has its vertices on the circle.
    x, y = np.asarray(home.geometry.exterior.coords).T
    d = pyproj.Geod(ellps="WGS84").inv(np.full_like(x, 113.05), np.full_like(y, 34.05), x, y)[2]
    np.testing.assert_allclose(d, 250.0, rtol=1e-9)


def test_zone_id_rules_and_numeric_ids():
    zones = load_zones(fc(feat(poly(SQUARE), fid="from-id"),
                          feat(poly(SQUARE), fid="ignored", zone_id=411303)))
    assert [z.zone_id for z in zones] == ["from-id", "411303"]


def test_coord_sys_precedence_feature_then_collection_then_wgs84():
    # The collection's default applies to a file where no feature says its own; once one
    # does, every feature must (test_mixed_file_needs_each_features_coord_sys).
    (inherited,) = load_zones(fc(feat(poly(SQUARE), fid="a"), coord_sys="gcj02"))
    own = load_zones(fc(feat(poly(SQUARE), fid="b", coord_sys="wgs84"),
                        feat(poly(SQUARE), fid="d", coord_sys="gcj02"), coord_sys="gcj02"))
    gcj = [inherited, own[0]]
    plain = load_zones(fc(feat(poly(SQUARE), fid="c")))
    assert [z.source_crs for z in gcj + plain + own[1:]] == ["gcj02", "wgs84", "wgs84", "gcj02"]
    # The zones are WGS-84 now: coord_sys is not kept where it could be applied again.
    assert "coord_sys" not in gcj[1].properties
    lon, lat = gcj02_to_wgs84(np.array(SQUARE)[:, 0], np.array(SQUARE)[:, 1])
    got = {tuple(p) for p in np.asarray(gcj[0].geometry.exterior.coords).round(12)}
    # Every corner moved by the inverse GCJ-02 (long edges gained collinear points).
    assert set(zip(lon.round(12), lat.round(12))) <= got
    assert shapely.equals_exact(gcj[1].geometry, plain[0].geometry, 0)


def test_mixed_file_needs_each_features_coord_sys():
    """A zone added by hand to a GCJ-02 file beside one saying wgs84 must say its own."""
    mixed = fc(feat(poly(SQUARE), fid="county", coord_sys="gcj02"),
               feat(poly(SQUARE), fid="victim-home"), coord_sys="gcj02")
    with pytest.raises(ZoneError, match=r"features victim-home have no properties.coord_sys "
                                        r"while others have one"):
        load_zones(mixed)


def test_real_gcj02_county_is_moved_to_wgs84():
    raw = ref.county_collection(["330723"])
    (zone,) = load_zones(raw)
    ring = np.array(raw["features"][0]["geometry"]["coordinates"][0][0])
    lon, lat = gcj02_to_wgs84(ring[:, 0], ring[:, 1])
    got = {tuple(p)
           for p in np.asarray(shapely.get_parts(zone.geometry)[0].exterior.coords).round(10)}
    assert {tuple(p) for p in np.column_stack([lon, lat]).round(10)} <= got
    # GCJ-02 in Zhejiang is a few hundred metres off WGS-84.
    assert 0.001 < np.abs(ring[:, 0] - lon).max() < 0.01


def test_pyproj_crs_cgcs2000_geographic_and_gauss_kruger():
    wgs = shapely.Polygon(SQUARE)
    to_gk = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:4547", always_xy=True)
    gk = shapely.transform(wgs, lambda c: np.column_stack(to_gk.transform(c[:, 0], c[:, 1])))
    zones = load_zones(fc(
        feat(poly(SQUARE), fid="cgcs2000", coord_sys="EPSG:4490"),
        feat(shapely.geometry.mapping(gk), fid="gk", coord_sys="EPSG:4547"),
    ))
    assert [z.source_crs for z in zones] == ["EPSG:4490", "EPSG:4547"]
    for z in zones:
        # CGCS2000 and WGS-84 agree to centimetres; the GK round trip to sub-millimetre.
        assert shapely.hausdorff_distance(z.geometry, wgs) < 1e-7
    # Metres in, degrees out.
    assert zones[1].geometry.bounds[0] == pytest.approx(113.0, abs=1e-7)


def test_gzip_file_and_path(tmp_path):
    p = tmp_path / "zones.geojson.gz"
    p.write_bytes(gzip.compress(json.dumps(fc(feat(poly(SQUARE), fid="a"))).encode()))
    assert load_zones(p)[0].zone_id == "a"
    assert load_zones(str(p))[0].zone_id == "a"


def test_repairs_unclosed_ring_orientation_and_self_intersection():
    unclosed_clockwise = [[113.0, 34.0], [113.0, 34.1], [113.1, 34.1], [113.1, 34.0]]
    (z,) = load_zones(fc(feat(poly(unclosed_clockwise, HOLE[::-1]), fid="u")))
    assert z.geometry.exterior.is_ccw and not z.geometry.interiors[0].is_ccw
    assert z.geometry.exterior.coords[0] == z.geometry.exterior.coords[-1]
    assert z.geometry.area == pytest.approx(0.01 - 0.0009)
    bowtie = [[113.0, 34.0], [113.1, 34.1], [113.1, 34.0], [113.0, 34.1], [113.0, 34.0]]
    with pytest.warns(ZoneWarning, match=r"zone 'bow'.*Self-intersection.*make_valid"):
        (b,) = load_zones(fc(feat(poly(bowtie), fid="bow")))
    assert b.geometry.is_valid and b.geometry.area == pytest.approx(0.005)
    assert b.geometry.geom_type == "MultiPolygon"


def test_long_edges_are_split_without_changing_the_shape():
    big = [[100.0, 20.0], [110.0, 20.0], [110.0, 30.0], [100.0, 30.0], [100.0, 20.0]]
    (z,) = load_zones(fc(feat(poly(big), fid="big")))
    coords = np.asarray(z.geometry.exterior.coords)
    assert np.hypot(*np.diff(coords, axis=0).T).max() <= 0.01 + 1e-12
    assert shapely.equals(z.geometry, shapely.Polygon(big))


def test_valid_input_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_zones(ref.county_collection(["411321", "411303"]))


SWAPPED = [[34.0, 113.0], [34.0, 113.1], [34.1, 113.1], [34.1, 113.0], [34.0, 113.0]]


@pytest.mark.parametrize(
    ("collection", "zone_id", "reason"),
    [
        (fc(feat(poly([]), fid="e")), "e", "empty geometry"),
        (fc(feat({"type": "Polygon", "coordinates": []}, fid="e")), "e", "empty geometry"),
        (fc(feat(None, fid="n")), "n", "empty geometry"),
        (fc(feat(poly(SQUARE), fid="c", coord_sys="EPSG:999999")), "c",
         "unknown coordinate system 'EPSG:999999'"),
        (fc(feat(poly(SQUARE), fid="c", coord_sys="mars")), "c", "unknown coordinate system"),
        (fc(feat(poly([[113, 34], [213, 34], [113, 35], [113, 34]]), fid="r")), "r",
         r"\[213, 34\] is out of range"),
        (fc(feat(poly(SWAPPED), fid="s"), coord_sys="gcj02"), "s", r"look like \[lat, lon\]"),
        (fc(feat(poly(SWAPPED), fid="s")), "s", r"look like \[lat, lon\]"),
        (fc(feat(poly(SQUARE), fid="d"), feat(poly(SQUARE), fid="x"), feat(poly(SQUARE), fid="d")),
         "d", r"duplicate zone id \(features #0 and #2\)"),
        (fc(feat({"type": "Point", "coordinates": [113, 34]}, fid="p", radius_m=0)), "p",
         "radius_m must be > 0"),
        (fc(feat({"type": "Point", "coordinates": [113, 34]}, fid="p", radius_m=-5)), "p",
         "radius_m must be > 0"),
        (fc(feat({"type": "Point", "coordinates": [113, 34]}, fid="p", radius_m="50")), "p",
         "finite number of metres"),
        (fc(feat({"type": "Point", "coordinates": [113, 34]}, fid="p")), "p",
         "needs properties.radius_m"),
        (fc(feat({"type": "LineString", "coordinates": SQUARE}, fid="l")), "l",
         "'LineString' is not a zone"),
        (fc(feat(poly([[113, 34], [113.1, 34], [113, 34]]), fid="t")), "t",
         "at least 3 distinct points"),
        (fc(feat(poly([[113, 34], ["a", 34], [113, 35], [113, 34]]), fid="t")), "t",
         "number pairs"),
        (fc(feat(poly(SQUARE))), None, "feature #0 has no zone id"),
        (fc(feat(poly(SQUARE), zone_id="")), None, "feature #0 has no zone id"),
        (fc(feat(poly(SQUARE), fid="g", coord_sys="EPSG:4547")), "g",
         "outside EPSG:4547's area of use"),
        (fc(feat(poly([[2.35, 48.85], [2.36, 48.85], [2.36, 48.86], [2.35, 48.85]]),
                 fid="paris", coord_sys="EPSG:4490")),
         "paris", "area of use"),
    ],
)
def test_errors_name_the_zone_and_the_problem(collection, zone_id, reason):
    with pytest.raises(ZoneError, match=reason) as info:
        load_zones(collection)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.zone_id == zone_id and err.source == "<dict>"
    if zone_id is not None:
        assert f"zone {zone_id!r}" in str(err)


def test_a_real_county_with_swapped_coordinates_is_reported_as_a_swap():
    raw = ref.county_collection(["330723"])
    bad = copy.deepcopy(raw)
    bad["features"][0]["geometry"]["coordinates"] = [
        [[[lat, lon] for lon, lat in ring] for ring in part]
        for part in raw["features"][0]["geometry"]["coordinates"]
    ]
    with pytest.raises(ZoneError, match=r"zone '330723': coordinates look like \[lat, lon\]"):
        load_zones(bad)


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.geojson"
    with pytest.raises(ZoneError, match="nope.geojson: cannot read"):
        load_zones(missing)
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(ZoneError, match="broken.geojson: not valid JSON") as info:
        load_zones(broken)
    assert info.value.source == str(broken)
    wrong = tmp_path / "wrong.geojson"
    wrong.write_text('{"type": "Topology"}')
    with pytest.raises(ZoneError, match="expected a GeoJSON FeatureCollection"):
        load_zones(wrong)


def test_bundled_henan_counties():
    assert henan_counties_path().is_file()
    zones = load_henan_counties()
    assert len(zones) == 157
    assert all(z.zone_id.startswith("41") and len(z.zone_id) == 6 for z in zones)
    assert {z.source_crs for z in zones} == {"gcj02"}
    by_id = {z.zone_id: z for z in zones}
    assert by_id["410102"].properties["name"] == "中原区"
    # Zhengzhou city centre (WGS-84) lies in one of Zhengzhou's urban districts.
    hits = [z.zone_id for z in zones if z.geometry.contains(shapely.Point(113.6253, 34.7466))]
    assert len(hits) == 1 and hits[0].startswith("4101")


def test_an_empty_collection_loads_and_compiles_to_nothing():
    from geofence import compile_zones

    zones = load_zones(fc())
    assert zones == []
    cz = compile_zones(zones)
    assert len(cz) == 0
    offsets, zidx = cz.candidates([113.0], [34.0])
    assert offsets.tolist() == [0, 0] and zidx.size == 0
    with pytest.raises(ValueError, match="out of range for 0 zones"):
        cz.contains([113.0], [34.0], 0)


def test_overlapping_parts_are_merged_so_the_even_odd_rule_holds():
    """Two overlapping parts would cancel out under the even-odd rule; make_valid merges them."""
    a = [[113.0, 34.0], [113.1, 34.0], [113.1, 34.1], [113.0, 34.1], [113.0, 34.0]]
    b = [[113.05, 34.05], [113.15, 34.05], [113.15, 34.15], [113.05, 34.15], [113.05, 34.05]]
    with pytest.warns(ZoneWarning, match="zone 'm'"):
        (z,) = load_zones(fc(feat({"type": "MultiPolygon", "coordinates": [[a], [b]]}, fid="m")))
    assert z.geometry.area == pytest.approx(0.01 + 0.01 - 0.0025)
    from geofence import compile_zones

    cz = compile_zones([z])
    assert cz.contains([113.075], [34.075], 0)[0]  # in the overlap
