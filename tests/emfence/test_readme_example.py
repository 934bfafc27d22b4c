"""The README's "Running it for real" works on its own files: the example subjects file
loads against the counties step 1 imports, and the two fixes step 9 publishes as device
B-0001 raise an outbound alarm (what the README promises the new user will see)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson

from emfence.config import Config
from engine import Engine, load_registry
from geofence import compile_zones, load_zones

ROOT = Path(__file__).resolve().parents[2]
CNMAPS = ROOT / "tests" / "data" / "cnmaps"


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Running it for real")
    return text[start:text.index("```\n", text.index("```sh", start) + 5)]


def _counties(codes: list[str]) -> dict:
    """The zone file `emfence zones import-adcode` writes for ``codes``."""
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": code, "properties": {"zone_id": code, "coord_sys": "gcj02"},
         "geometry": orjson.loads((CNMAPS / f"{code}.geojson").read_bytes())}
        for code in codes]}


def test_the_readme_example_raises_the_alarm_it_promises():
    block = _readme_block()
    [codes] = re.findall(r"emfence zones import-adcode ([\d ]+) -o", block)
    assert "cp deploy/subjects.example.json /etc/emfence/subjects.json" in block
    zones = compile_zones(load_zones(_counties(codes.split())))
    subjects = orjson.loads((ROOT / "deploy" / "subjects.example.json").read_bytes())
    registry = load_registry(subjects, zones)
    assert "B-0001" in registry.device_ids
    # step 9: mosquitto_pub as B-0001 on its topic, two fixes at one position
    [topic] = re.findall(r"-u B-0001 .*?-t (\S+)", block)
    assert topic == f"emfence/v1/{registry.device_region(registry.device_index('B-0001'))}" \
                    "/B-0001/fix"
    fixes = re.findall(r'\\"lat\\": ([\d.]+), \\"lon\\": ([\d.]+)', block)
    assert len(fixes) == 2
    lat = np.array([float(f[0]) for f in fixes])
    lon = np.array([float(f[1]) for f in fixes])
    engine = Engine(zones, registry, Config())
    t = 1_795_856_527_000
    d = registry.device_index("B-0001")
    events = engine.process_fixes(np.array([d, d], np.int32), np.array([t - 60_000, t]), lat,
                                  lon, np.array([50.0, 50.0]), np.zeros(2, np.uint8),
                                  np.array([t, t]))
    assert [(e["event"], e["type"], e["device_id"]) for e in events] == [
        ("raised", "outbound", "B-0001")]
    assert events[0]["distance_m"] > 20_000  # "30 km outside Wolong District"
