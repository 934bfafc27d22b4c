"""The register as the source of `emfence run` in process: the command line (both files
or neither), the service built on an empty register, the change-sequence poll handing a
new model to the reload path, and a store that cannot be read being an outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import shapely
import shapely.geometry

from alarms.store import open_store
from emfence.run.cli import Service, build_parser, build_service_args, main

CNMAPS = Path(__file__).resolve().parents[1] / "data" / "cnmaps"
HOME = "411303"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ccw(path: Path) -> dict:
    """A county boundary of tests/data/cnmaps with its rings in RFC 7946 order (the data
    has clockwise exteriors; the register takes only what RFC 7946 says)."""
    geom = shapely.geometry.shape(orjson.loads(path.read_bytes()))
    return shapely.geometry.mapping(shapely.orient_polygons(geom))


def county() -> dict:
    return {"type": "Feature",
            "properties": {"zone_id": HOME, "name": "卧龙区", "coord_sys": "gcj02"},
            "geometry": ccw(CNMAPS / f"{HOME}.geojson")}


def subject(sid: str, device: str) -> dict:
    return {"subject_id": sid, "name": "张三", "region": HOME, "level": "ordinary",
            "devices": [{"device_id": device, "kind": "bracelet"}],
            "inclusion": [HOME], "exclusion": []}


@pytest.mark.parametrize("given, missing", [("--zones", "--subjects"),
                                            ("--subjects", "--zones")])
def test_one_of_zones_and_subjects_is_an_error_naming_the_other(tmp_path, capsys, given,
                                                                missing):
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    assert main([given, str(tmp_path / "x.json"), "--store", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"emfence run: {missing} is missing"), err
    assert "register" in err and "Traceback" not in err


def _service(url: str) -> Service:
    return Service(**build_service_args(build_parser().parse_args(["--store", url])))


async def test_an_empty_register_starts_and_a_change_is_handed_to_the_reload(store_url):
    service = _service(store_url)
    store = service.store
    try:
        assert service.source.from_register and service.watch is not None
        assert len(service.registry.device_ids) == 0 and len(service.zones.zone_ids) == 0
        assert service.opts.regions is None  # subscribes to every region: "+"
        assert not await service.watch.poll_once()  # nothing changed since the start
        assert service.work.qsize() == 0

        reg = store.register
        reg.create_zone(county(), actor="dora", now_ms=now_ms())
        reg.create_subject(subject("S-1", "B-1"), actor="dora", now_ms=now_ms())
        assert await service.watch.poll_once()
        kind, (zones, registry) = service.work.get_nowait()
        assert kind == "reload"
        assert list(registry.device_ids) == ["B-1"] and list(zones.zone_ids) == [HOME]
        service._apply_reload(zones, registry)
        assert service.registry.device_index("B-1") == 0
        assert not await service.watch.poll_once()  # the same sequence: no second reload

        reg.create_subject(subject("S-2", "B-2"), actor="dora", now_ms=now_ms())
        assert await service.watch.poll_once()
        _, (_, registry) = service.work.get_nowait()
        assert sorted(registry.device_ids) == ["B-1", "B-2"]
    finally:
        store.close_store()


async def test_a_store_that_cannot_be_read_is_an_outage_and_the_change_waits(tmp_path):
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    service = _service(url)
    try:
        other = open_store(url)
        other.register.create_zone(county(), actor="dora", now_ms=now_ms())
        other.close_store()
        # The watch reads through a store that fails from now on.
        broken = open_store(url)
        broken.close_store()
        service.source.store = broken
        assert not await service.watch.poll_once()
        assert service.outages.store.active and service.work.qsize() == 0
        service.source.store = service.store  # back: the waiting change is applied
        assert await service.watch.poll_once()
        assert not service.outages.store.active
        kind, (zones, _) = service.work.get_nowait()
        assert kind == "reload" and list(zones.zone_ids) == [HOME]
    finally:
        service.store.close_store()


async def test_a_model_that_does_not_compile_is_one_log_line_and_the_current_one_kept(
        tmp_path, caplog):
    zones, subjects = tmp_path / "zones.geojson", tmp_path / "subjects.json"
    zones.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": [county()]}))
    subjects.write_bytes(orjson.dumps({"subjects": [subject("S-1", "B-1")]}))
    service = Service(**build_service_args(build_parser().parse_args([
        "--zones", str(zones), "--subjects", str(subjects),
        "--store", f"sqlite:///{tmp_path / 'alarms.db'}"])))
    try:
        assert not service.source.from_register and service.watch is None
        bad = subject("S-1", "B-1") | {"inclusion": ["nowhere"]}
        subjects.write_bytes(orjson.dumps({"subjects": [bad]}))
        caplog.clear()
        assert await service._reload("SIGHUP")  # judged: nothing to retry
        assert service.work.qsize() == 0 and list(service.registry.device_ids) == ["B-1"]
        [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert line.startswith("SIGHUP: reload failed, keeping the current zones and subjects")
        assert "nowhere" in line and "\n" not in line
    finally:
        service.store.close_store()


async def test_an_order_taking_effect_later_is_applied_when_its_period_begins(store_url):
    service = _service(store_url)
    store = service.store
    try:
        reg = store.register
        t = now_ms()
        reg.create_zone(county(), actor="dora", now_ms=t)
        reg.create_zone({"type": "Feature", "properties": {
            "zone_id": "victim-1", "name": "受害人住所", "radius_m": 300, "coord_sys": "wgs84"},
            "geometry": {"type": "Point", "coordinates": [112.5, 33.0]}}, actor="dora", now_ms=t)
        begins = t + 1500  # a prohibition order effective from then: no transaction then
        reg.create_subject(subject("S-1", "B-1") | {"exclusion": [
            {"zone_id": "victim-1", "reason": "(2025)豫1303刑初1号", "from": begins}]},
            actor="dora", now_ms=t)
        assert await service.watch.poll_once()
        _, (zones, registry) = service.work.get_nowait()
        service._apply_reload(zones, registry)
        assert registry.subjects[0].exclusion == ()  # not in force yet
        assert not await service.watch.poll_once()
        while now_ms() <= begins:
            await asyncio.sleep(0.05)
        assert await service.watch.poll_once()  # the sequence did not move; the period did
        _, (_, registry) = service.work.get_nowait()
        assert registry.subjects[0].exclusion == ("victim-1",)
        assert not await service.watch.poll_once()
    finally:
        store.close_store()


async def test_relations_enrolled_while_running_reach_the_engine(store_url):
    service = _service(store_url)
    store = service.store
    try:
        reg = store.register
        reg.create_zone(county(), actor="dora", now_ms=now_ms())
        for sid, dev in (("S-1", "B-1"), ("S-2", "B-2")):
            reg.create_subject(subject(sid, dev), actor="dora", now_ms=now_ms())
        assert await service.watch.poll_once()
        service._apply_reload(*service.work.get_nowait()[1])
        assert service.engine.relations.cont_subj.shape[0] == 0
        reg.set_contacts("S-1", ["S-2"], actor="dora", now_ms=now_ms())
        reg.add_protected({"person_id": "VP-1", "region": HOME, "devices": ["V-1"],
                           "protected_from": ["S-2"]}, actor="sup", now_ms=now_ms())
        assert await service.watch.poll_once()
        kind, (zones, registry) = service.work.get_nowait()
        assert kind == "reload"
        assert [(p.person_id, p.device_ids, p.protected_from) for p in registry.protected] == [
            ("VP-1", ("V-1",), ("S-2",))]
        service._apply_reload(zones, registry)
        rel = service.engine.relations
        ids = service.engine.registry.device_ids
        assert rel.cont_subj.tolist() == [[0, 1]]
        assert [ids[d] for d in rel.person_dev.tolist()] == ["V-1"]
    finally:
        store.close_store()
