"""`emfence replay --store URL --from T --to T --fixes F`: a day with a leave requested,
approved mid-day and returned, and a curfew, replayed from the register (real SQLite and
PostgreSQL) gives the alarms of a replay with hand-written subjects files for each part
of the day (the reference: the subjects-file format of docs/replay.md, swapped at the
same moments), and the alarms the day calls for."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import shapely
import shapely.geometry
from pyproj import Geod

from alarms.store import open_store
from emfence.config import Config
from emfence.replay import ReplayStats, _feed, _Run
from emfence.replay_store import main, replay_register, split_at_changes
from emfence.run.model import compile_model
from engine.engine import Engine
from engine.registry import parse_time_ms
from geofence import load_zones

CNMAPS = Path(__file__).resolve().parents[1] / "data" / "cnmaps"
HOME, NEIGHBOUR = "411303", "411302"
NAMES = {HOME: "卧龙区", NEIGHBOUR: "宛城区"}
GEOD = Geod(ellps="WGS84")


def at(hhmm: str) -> int:
    """Epoch ms of a local time (Asia/Shanghai) on the replayed day."""
    return parse_time_ms(f"2025-11-20T{hhmm}:00+08:00", "test")


def ccw(path: Path) -> dict:
    """A county boundary of tests/data/cnmaps with its rings in RFC 7946 order (the data
    has clockwise exteriors; the register takes only what RFC 7946 says)."""
    geom = shapely.geometry.shape(orjson.loads(path.read_bytes()))
    return shapely.geometry.mapping(shapely.orient_polygons(geom))


def county(code: str) -> dict:
    return {"type": "Feature",
            "properties": {"zone_id": code, "name": NAMES[code], "coord_sys": "gcj02"},
            "geometry": ccw(CNMAPS / f"{code}.geojson")}


def places() -> dict[str, tuple[float, float]]:
    """WGS-84 points: home (inside 卧龙区), 2 km east of it (still inside, outside the
    500 m home circle), and inside 宛城区."""
    zones = {z.zone_id: z.geometry for z in load_zones(
        {"type": "FeatureCollection", "features": [county(HOME), county(NEIGHBOUR)]})}
    h = zones[HOME].buffer(-0.03).representative_point()
    lon, lat, _ = GEOD.fwd(h.x, h.y, 90.0, 2000.0)
    n = zones[NEIGHBOUR].buffer(-0.01).representative_point()
    assert zones[HOME].buffer(-0.01).contains(shapely.Point(lon, lat))
    return {"home": (h.x, h.y), "away": (lon, lat), "neighbour": (n.x, n.y)}


def home_circle(p) -> dict:
    return {"type": "Feature", "properties": {"zone_id": "home-S-1", "name": "住所",
                                              "radius_m": 500, "coord_sys": "wgs84"},
            "geometry": {"type": "Point", "coordinates": list(p)}}


# Where B-1 is, from each local time on (every 5 minutes, from 08:05 to 23:55).
ITINERARY = [("08:05", "home"), ("11:00", "neighbour"),   # before the approval: outbound
             ("11:30", "home"), ("13:00", "neighbour"),   # on approved leave: nothing
             ("15:05", "neighbour"),                      # returned at 15:00: overdue
             ("15:30", "home"), ("22:30", "away"),        # curfew 22:00-06:00 at home
             ("23:00", "home")]


def fixes(p: dict) -> list[bytes]:
    out = []
    t, end = at("08:05"), at("23:55")
    while t <= end:
        where = [w for hhmm, w in ITINERARY if at(hhmm) <= t][-1]
        lon, lat = p[where]
        out.append(orjson.dumps({"device_id": "B-1", "ts": t, "lat": lat, "lon": lon,
                                 "acc": 10}))
        t += 300_000
    return out


def build_day(reg, p) -> str:
    """The register's history of the day; returns the leave's id."""
    for f in (county(HOME), county(NEIGHBOUR), home_circle(p["home"])):
        reg.create_zone(f, actor="dora", now_ms=at("07:00"))
    reg.create_subject({"subject_id": "S-1", "name": "张三", "region": HOME, "level": "strict",
                        "devices": [{"device_id": "B-1", "kind": "bracelet"}],
                        "inclusion": [HOME], "exclusion": []}, actor="dora",
                       now_ms=at("08:00"))
    reg.add_curfew("S-1", {"start": "22:00", "end": "06:00", "zone": "home-S-1"},
                   actor="dora", now_ms=at("09:00"))
    leave = reg.request_leave("S-1", zones=[NEIGHBOUR], start_ms=at("12:00"),
                              end_ms=at("20:00"), reason="探亲", actor="dora",
                              now_ms=at("10:00"))
    reg.approve_leave(leave["leave_id"], actor="sam", role="supervisor", now_ms=at("12:30"))
    reg.return_leave(leave["leave_id"], actor="dora", now_ms=at("15:00"))
    return leave["leave_id"]


def reference(p, lines: list[bytes]) -> list[dict]:
    """A file replay with hand-written subjects for each part of the day."""
    zones = {"type": "FeatureCollection",
             "features": [county(HOME), county(NEIGHBOUR), home_circle(p["home"])]}
    base = {"subject_id": "S-1", "region": HOME, "level": "strict",
            "devices": [{"device_id": "B-1", "kind": "bracelet"}],
            "inclusion": [HOME], "exclusion": [],
            "curfews": [{"start": "22:00", "end": "06:00", "zone": "home-S-1"}]}
    leave = {"start": at("12:00"), "end": at("20:00"), "zones": [NEIGHBOUR]}
    parts = [(at("09:00"), {"subjects": [{**base, "curfews": []}]}),
             (at("12:30"), {"subjects": [base]}),
             (at("15:00"), {"subjects": [{**base, "leaves": [leave]}]}),
             (None, {"subjects": [{**base, "leaves": [{**leave, "returned": at("15:00")}]}]})]
    out = io.BytesIO()
    engine = None
    run = None
    rest = list(lines)
    stats = ReplayStats()
    for until, subjects in parts:
        model = compile_model(zones, subjects)
        if engine is None:
            engine = Engine(*model, Config())
            run = _Run(engine, out, stats)
        else:
            run.flush()
            engine.reload(*model)
        now = [ln for ln in rest if until is None or orjson.loads(ln)["ts"] < until]
        rest = rest[len(now):]
        _feed(now, run, Config().ingest.max_future_ms, at("23:59"))
    run.finish(at("23:59"))
    return [orjson.loads(ln) for ln in out.getvalue().splitlines()]


def key(ev: dict) -> tuple:
    return (ev["type"], ev["event"], ev["device_id"], ev["zone_id"], ev["at"])


def test_a_day_replayed_from_the_register_matches_the_files_of_each_part(store_url,
                                                                          tmp_path):
    p = places()
    store = open_store(store_url)
    try:
        build_day(store.register, p)
        lines = fixes(p)
        out = io.BytesIO()
        stats = replay_register(lines, store.register, out, config=Config(),
                                from_ms=at("08:00"), to_ms=at("23:59"))
    finally:
        store.close_store()
    got = [orjson.loads(ln) for ln in out.getvalue().splitlines()]
    assert [key(e) for e in got] == [key(e) for e in reference(p, lines)]
    assert stats.records == len(lines) and stats.rejected_total == 0

    def first(typ, event):
        return next(e["at"] for e in got if (e["type"], e["event"]) == (typ, event))

    # what the day calls for: outbound before the approval (confirmed at the 2nd fix),
    # nothing on approved leave, overdue after the registered return, the curfew
    assert first("outbound", "raised") == at("11:05")
    assert first("outbound", "cleared") == at("11:30")
    assert not [e for e in got if e["type"] == "outbound" and at("12:30") <= e["at"]]
    # out at the return (15:00) already: raised at the return itself (docs/replay.md)
    assert first("leave_overdue", "raised") == at("15:00")
    assert first("leave_overdue", "cleared") == at("15:30")
    assert first("curfew", "raised") in (at("22:30"), at("22:35"))
    assert first("curfew", "cleared") == at("23:00")
    assert {e["type"] for e in got} <= {"outbound", "leave_overdue", "curfew"}

    # the command line (`emfence replay` with --store) writes the same events
    fx = tmp_path / "day.jsonl"
    fx.write_bytes(b"\n".join(lines) + b"\n")
    cli_out = tmp_path / "alarms.jsonl"
    assert main(["--store", store_url, "--from", "2025-11-20T08:00:00+08:00",
                 "--to", str(at("23:59")), "--fixes", str(fx), "--out", str(cli_out)]) == 0
    assert [key(orjson.loads(ln)) for ln in cli_out.read_bytes().splitlines()] == \
        [key(e) for e in got]


def test_changes_apply_before_the_first_record_at_or_after_them():
    lines = [orjson.dumps({"ts": t}) for t in (10, 20, 15, 30, 40)] + [b"not json"]
    chunks = list(split_at_changes(lines, [20, 25, 26, 100]))
    assert [(c, [orjson.loads(ln)["ts"] if ln != b"not json" else None for ln in chunk])
            for c, chunk in chunks] == [
        (None, [10]), (20, [20, 15]), (26, [30, 40, None])]  # 100: never reached


def test_bad_times_are_named(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    assert main(["--store", url, "--from", "yesterday", "--to", "0", "--fixes", "-"]) == 2
    assert "--from" in capsys.readouterr().err
    assert main(["--store", url, "--from", "2000", "--to", "1000", "--fixes", "-"]) == 2
    assert "--to 1000 is before --from 2000" in capsys.readouterr().err
