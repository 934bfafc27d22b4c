"""Track rows of `emfence run`: each accepted fix is kept at the WGS-84 position the rule
kernel ruled on. A GCJ-02 fix is converted once, by the kernel, and the track writer
takes the engine's numbers (``Engine.process(..., positions=...)``) instead of
converting a second time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from emfence.run.batches import Batch
from emfence.run.cli import Service, build_parser, build_service_args
from geofence.kernels import gcj02_to_wgs84_point
from ingest.decode import Fix, Status

CNMAPS = Path(__file__).resolve().parents[1] / "data" / "cnmaps"
REGION = "411303"
T0 = 1_763_600_000_000  # 2025-11-20T00:53:20Z


def _service(tmp_path: Path, protected: list | None = None) -> Service:
    geometry = orjson.loads((CNMAPS / f"{REGION}.geojson").read_bytes())
    zones = tmp_path / "zones.geojson"
    zones.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"zone_id": REGION, "coord_sys": "gcj02"},
         "geometry": geometry}]}))
    subjects = tmp_path / "subjects.json"
    subjects.write_bytes(orjson.dumps({"subjects": [
        {"subject_id": "S-1", "region": REGION, "level": "strict",
         "devices": [{"device_id": "B-1"}, {"device_id": "P-1", "kind": "phone"}],
         "inclusion": [REGION]}], "protected": protected or []}))
    args = build_service_args(build_parser().parse_args([
        "--zones", str(zones), "--subjects", str(subjects),
        "--store", f"sqlite:///{tmp_path / 'alarms.db'}"]))
    return Service(**args)


async def test_track_rows_are_the_kernels_conversion_exactly(tmp_path, monkeypatch):
    service = _service(tmp_path)
    rng = np.random.default_rng(11)
    sent = []  # (device, ts, lat, lon, coord_sys)
    b = Batch()
    for k in range(24):
        device = ("B-1", "P-1")[k % 2]
        coord_sys = ("wgs84", "gcj02")[(k // 2) % 2]
        ts = T0 + k * 10_000
        lat, lon = 33.0 + rng.uniform(-0.05, 0.05), 112.5 + rng.uniform(-0.05, 0.05)
        b.add_fix(device, Fix(ts, lat, lon, 12.0, "gps", coord_sys, None), ts + 300)
        sent.append((device, ts, lat, lon, coord_sys))
    late = T0 + 5_000  # before the device's newest fix: late, still a track row
    b.add_fix("B-1", Fix(late, 33.0, 112.5, 12.0, "gps", "gcj02", None), late + 400_000)
    sent.append(("B-1", late, 33.0, 112.5, "gcj02"))
    b.add_fix("X-9", Fix(T0, 33.0, 112.5, 12.0, "gps", "gcj02", None), T0)  # not registered
    b.messages = len(b.device)

    # The track writer must not convert again: any second conversion fails the test.
    import geofence.gcj02

    def refuse(*_a, **_k):
        raise AssertionError("GCJ-02 converted a second time for the track rows")

    monkeypatch.setattr(geofence.gcj02, "gcj02_to_wgs84", refuse)
    await service._process_batch(b)
    await service.tracks.flush()
    store = service.store
    try:
        for device in ("B-1", "P-1"):
            rows = store.track(device)
            expected = []
            for d, ts, lat, lon, coord_sys in sent:
                if d != device:
                    continue
                if coord_sys == "gcj02":
                    lon, lat = gcj02_to_wgs84_point(lon, lat)
                expected.append((ts, lat, lon))
            got = [(r["ts"], r["lat"], r["lon"]) for r in rows]
            assert sorted(got) == sorted(expected)  # bit for bit, no tolerance
        assert {r["device_id"] for r in store.track(["B-1", "P-1", "X-9"])} == {"B-1", "P-1"}
        gcj_rows = [r for r in store.track("B-1") if r["ts"] == T0 + 20_000]
        assert abs(gcj_rows[0]["lon"] - sent[2][3]) > 1e-4  # really moved (~500 m)
    finally:
        store.close_store()


async def test_a_protected_persons_fixes_are_no_track_rows(tmp_path):
    """A victim's device reports so the proximity rule can work, but its positions are
    never shown to operators: no track row, no position on the console's map."""
    service = _service(tmp_path, protected=[
        {"person_id": "V-1", "region": REGION, "devices": [{"device_id": "V-1p",
                                                             "kind": "victim"}],
         "protected_from": ["S-1"]}])
    b = Batch()
    for k, device in enumerate(("B-1", "V-1p", "V-1p")):
        ts = T0 + k * 10_000
        b.add_fix(device, Fix(ts, 33.0, 112.5 + k * 0.001, 12.0, "gps", "wgs84", None), ts)
    b.messages = len(b.device)
    await service._process_batch(b)
    await service.tracks.flush()
    store = service.store
    try:
        assert service.engine.counters["fixes"] == 3  # the engine saw all three
        assert [r["device_id"] for r in store.track(["B-1", "V-1p"])] == ["B-1"]
        assert [p["device_id"] for p in store.last_positions()] == ["B-1"]
    finally:
        store.close_store()


async def test_statuses_keep_each_devices_newest_battery_and_strap_for_the_board(tmp_path):
    """The status board's battery, strap, power and last receive time come from the
    engine worker's own path: statuses reduced to the newest per device and written with
    the track flush (alarms.device_status); a field a status lacks keeps the stored one."""
    service = _service(tmp_path)
    b = Batch()
    b.add_fix("B-1", Fix(T0, 33.0, 112.5, 12.0, "gps", "wgs84", None), T0 + 200)
    b.add_status("B-1", Status(T0 + 30_000, 80.0, "ok", None, "on"), T0 + 30_100)
    b.add_status("B-1", Status(T0 + 60_000, 41.5, "open", None, None), T0 + 60_100)
    b.add_status("B-1", Status(T0 + 10_000, 99.0, "ok", None, "off"), T0 + 70_000)  # late
    b.add_status("X-9", Status(T0, 50.0, "ok", None, None), T0)  # not registered
    b.messages = len(b.device)
    await service._process_batch(b)
    await service.tracks.flush()
    store = service.store
    try:
        assert service.tracks.status == {}
        # the worker here reads its subjects from a file: enrol S-1 in the register too
        store.register.adcode_dir = str(CNMAPS)
        store.register.import_adcode(REGION, actor="root", now_ms=T0)
        store.register.create_subject({"subject_id": "S-1", "name": "张三", "region": REGION,
                                       "level": "strict", "inclusion": [REGION], "devices": [
                                           {"device_id": "B-1"},
                                           {"device_id": "P-1", "kind": "phone"}]},
                                      actor="root", now_ms=T0)
        [row] = store.board(None, T0 + 120_000)
        b1 = next(d for d in row["devices"] if d["device_id"] == "B-1")
        assert (b1["battery_pct"], b1["strap"], b1["power"]) == (41.5, "open", "on")
        assert b1["last_rx_ms"] == T0 + 70_000 and b1["last_fix_ts_ms"] == T0
        assert b1["online"] is True and row["zone_state"] in ("inside", "outside")
        p1 = next(d for d in row["devices"] if d["device_id"] == "P-1")
        assert (p1["online"], p1["battery_pct"], p1["last_rx_ms"]) == (None, None, None)
        assert [s["device_id"] for s in store.device_status()] == ["B-1"]
        # a later flush with an older status moves nothing back
        store.record_device_status([("B-1", REGION, T0 + 1, 5.0, "ok", "off", T0 + 2)])
        st = store.device_status([REGION])[0]
        assert (st["ts"], st["battery_pct"], st["received_at"]) == (T0 + 60_000, 41.5, T0 + 70_000)
        assert store.device_status(["411302"]) == []
    finally:
        store.close_store()


async def test_a_status_write_the_store_refuses_is_kept_and_written_later(tmp_path):
    """The store fails the status write (its table is away): nothing is lost, a newer
    status queued meanwhile is merged over the one kept (its fields win where it has
    them), and the next flush writes the result."""
    import sqlite3

    service = _service(tmp_path)
    db = sqlite3.connect(tmp_path / "alarms.db")
    db.execute("ALTER TABLE device_status RENAME TO device_status_away")
    db.commit()
    b = Batch()
    b.add_status("B-1", Status(T0 + 30_000, 80.0, "open", None, "on"), T0 + 30_100)
    b.messages = len(b.device)
    await service._process_batch(b)
    await service.tracks.flush()
    store = service.store
    try:
        assert service.counters["store_errors"] == 1
        assert service.tracks.status["B-1"][2:] == (T0 + 30_000, 80.0, "open", "on", T0 + 30_100)
        b = Batch()
        b.add_status("B-1", Status(T0 + 60_000, 41.5, None, None, None), T0 + 60_100)
        b.messages = len(b.device)
        await service._process_batch(b)
        db.execute("ALTER TABLE device_status_away RENAME TO device_status")
        db.commit()
        await service.tracks.flush()
        assert service.tracks.status == {}
        [st] = store.device_status()
        assert (st["ts"], st["battery_pct"], st["strap"], st["power"], st["received_at"]) == (
            T0 + 60_000, 41.5, "open", "on", T0 + 60_100)
    finally:
        db.close()
        store.close_store()
