"""The kernel benchmark program runs and reports what it promises (no timing asserted)."""

from __future__ import annotations

import json

from benchmarks import kernel


def test_run_reports_matching_answers_on_real_counties():
    r = kernel.run(points=4000, min_vertices=1000, mixed_points=3000, mixed_zones=12, repeats=1)
    for key in ("points", "zones", "emfence_points_per_s", "shapely_points_per_s", "ratio",
                "mismatches"):
        assert key in r and key in r["mixed"]
    assert r["vertices_min"] >= 1000 and r["zones"] >= 10
    assert r["mismatches"] == 0 and r["mixed"]["mismatches"] == 0
    assert r["mixed"]["points"] == 3000 and r["mixed"]["zones"] == 12
    assert 0.2 < r["inside_fraction"] < 0.9
    assert r["emfence_points_per_s"] > 0 and r["shapely_points_per_s"] > 0


def test_json_on_the_last_line(capsys):
    assert kernel.main(["--json", "--points", "2000", "--mixed-points", "1000",
                        "--mixed-zones", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("case")
    data = json.loads(out[-1])
    assert data["benchmark"] == "kernel" and data["mixed"]["zones"] == 5
