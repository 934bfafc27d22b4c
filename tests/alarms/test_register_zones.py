"""The register's zone library on SQLite and PostgreSQL: counties by adcode (real
boundaries), drawn polygons and circles, and the geometry checks held against a plain
reference (segment crossings and the shoelace sign, written out below) on rings cut
from real county boundaries."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from register_helpers import T0, circle, square, table_counts

from alarms import RegisterError

_ids = itertools.count()


def _county_ring(cnmaps_dir, code: str) -> list[list[float]]:
    """The exterior ring of the largest part of a real county boundary (GCJ-02)."""
    geom = orjson.loads((cnmaps_dir / f"{code}.geojson").read_bytes())
    polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
    return max((p[0] for p in polys), key=len)


def _orient(a, b, c) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(a, b, p) -> bool:
    return (min(a[0], b[0]) <= p[0] <= max(a[0], b[0])
            and min(a[1], b[1]) <= p[1] <= max(a[1], b[1]))


def _segments_meet(p1, p2, q1, q2) -> bool:
    d1, d2 = _orient(q1, q2, p1), _orient(q1, q2, p2)
    d3, d4 = _orient(p1, p2, q1), _orient(p1, p2, q2)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and 0 not in (d1, d2, d3, d4):
        return True
    return any(d == 0 and _on_segment(a, b, p) for d, a, b, p in (
        (d1, q1, q2, p1), (d2, q1, q2, p2), (d3, p1, p2, q1), (d4, p1, p2, q2)))


def reference_verdict(ring: list[list[float]], swapped: bool) -> str:
    """What a plain reading of the ring says: swapped, self-intersecting, ring order
    (clockwise exterior by the shoelace sign) or ok."""
    if swapped:
        return "lat/lon swapped"
    n = len(ring) - 1
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a vertex
            if _segments_meet(ring[i], ring[i + 1], ring[j], ring[j + 1]):
                return "self-intersecting"
    area2 = sum(ring[i][0] * ring[i + 1][1] - ring[i + 1][0] * ring[i][1] for i in range(n))
    return "ring order" if area2 < 0 else "ok"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.sampled_from(["411303", "411302", "411321", "330723"]),
       n=st.integers(4, 24), offset=st.integers(0, 10_000),
       exchange=st.one_of(st.none(), st.tuples(st.integers(0, 23), st.integers(0, 23))),
       reverse=st.booleans(), swap=st.booleans())
def test_drawn_polygons_are_judged_as_the_plain_reference_judges_them(
        reg, store, cnmaps_dir, code, n, offset, exchange, reverse, swap):
    full = _county_ring(cnmaps_dir, code)[:-1]
    step = len(full) / n
    ring = [full[(offset + int(i * step)) % len(full)] for i in range(n)]
    if exchange is not None:  # two vertices trade places: often a bow tie
        i, j = exchange[0] % n, exchange[1] % n
        ring[i], ring[j] = ring[j], ring[i]
    if reverse:
        ring.reverse()
    if len({tuple(p) for p in ring}) < n:
        return
    ring = [*ring, ring[0]]
    expected = reference_verdict(ring, swap)
    coords = [[p[1], p[0]] for p in ring] if swap else ring
    zone_id = f"z-{next(_ids)}"
    feature = {"type": "Feature", "properties": {"zone_id": zone_id, "name": "画的",
                                                 "coord_sys": "gcj02"},
               "geometry": {"type": "Polygon", "coordinates": [coords]}}
    before = table_counts(store)
    try:
        made = reg.create_zone(feature, actor="dora", now_ms=T0)
    except RegisterError as exc:
        assert (exc.status, exc.field) == (400, "geometry.coordinates"), exc
        assert exc.reason.startswith(expected), (expected, exc.reason)
        assert table_counts(store) == before
        return
    assert expected == "ok"
    assert made["feature"]["geometry"]["coordinates"] == [coords]
    assert (made["kind"], made["coord_sys"], made["source"]) == ("polygon", "gcj02", "drawn")


def test_circles_and_polygons_and_their_mistakes(reg, store):
    reg.create_zone(circle("home-1", name="住所"), actor="dora", now_ms=T0)
    reg.create_zone(square("school-1"), actor="dora", now_ms=T0 + 1, source="upload")
    assert [(z["zone_id"], z["kind"], z.get("radius_m"), z["source"])
            for z in reg.list_zones()] == [("home-1", "circle", 300.0, "drawn"),
                                           ("school-1", "polygon", None, "upload")]
    assert reg.list_zones(at_ms=T0) == [z for z in reg.list_zones() if z["zone_id"] == "home-1"]
    assert reg.get_zone("home-1")["feature"]["properties"]["name"] == "住所"
    before = table_counts(store)
    hole = square("holed")
    hole["geometry"]["coordinates"].append(square("h", d=0.001)["geometry"]["coordinates"][0])
    bow = square("bow")
    ring = bow["geometry"]["coordinates"][0]
    ring[1], ring[2] = ring[2], ring[1]
    cases = [
        (circle("c0", radius_m=0), "geometry", "radius_m must be > 0"),
        ({**circle("c1"), "properties": {"zone_id": "c1", "name": "x"}}, "geometry",
         "needs properties.radius_m"),
        (circle("c2", lon=33.0, lat=112.53), "geometry.coordinates", "lat/lon swapped"),
        (square("p1", ccw=False), "geometry.coordinates", "ring order"),
        (hole, "geometry.coordinates", "ring order"),
        (bow, "geometry.coordinates", "self-intersecting"),
        (square("p2", coord_sys="bd09"), "properties.coord_sys", "'bd09' is not one of"),
        ({**square("p3"), "properties": {"zone_id": "p3"}}, "properties.name", "is required"),
        ({"type": "Feature", "properties": {"zone_id": "l", "name": "线"},
          "geometry": {"type": "LineString", "coordinates": [[1, 2], [3, 4]]}}, "geometry",
         "must be a Polygon"),
        ({"type": "FeatureCollection"}, "feature", "must be a GeoJSON Feature"),
    ]
    for feature, field, reason in cases:
        with pytest.raises(RegisterError) as err:
            reg.create_zone(feature, actor="dora", now_ms=T0 + 2)
        assert (err.value.status, err.value.field) == (400, field), feature
        assert reason in err.value.reason, (reason, err.value.reason)
    with pytest.raises(RegisterError) as err:
        reg.create_zone(circle("home-1"), actor="dora", now_ms=T0 + 2)
    assert err.value.status == 409
    with pytest.raises(RegisterError) as err:
        reg.get_zone("nowhere")
    assert err.value.status == 404
    assert table_counts(store) == before


def test_a_county_is_imported_by_adcode_with_its_name(reg, store, cnmaps_dir):
    zone = reg.import_adcode("411303", actor="admin", now_ms=T0)
    assert (zone["zone_id"], zone["name"], zone["source"], zone["coord_sys"]) == (
        "411303", "卧龙区", "adcode", "gcj02")
    raw = orjson.loads((cnmaps_dir / "411303.geojson").read_bytes())
    assert zone["feature"]["geometry"] == (raw.get("geometry") or raw)
    before = table_counts(store)
    for code, reason in (("410000", "province"), ("411300", "city"), ("4113", "6-digit"),
                         ("419999", "unknown adcode")):
        with pytest.raises(RegisterError) as err:
            reg.import_adcode(code, actor="admin", now_ms=T0 + 1)
        assert (err.value.status, err.value.field) == (400, "adcode")
        assert reason in err.value.reason
    with pytest.raises(RegisterError) as err:
        reg.import_adcode("411303", actor="admin", now_ms=T0 + 1)
    assert err.value.status == 409
    assert table_counts(store) == before
    assert store.audit_log(target="411303")[0]["action"] == "register.zone.import_adcode"
