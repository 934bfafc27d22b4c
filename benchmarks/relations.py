"""Relation rules benchmark (issue #14): throughput with the relations on against the
same fleet and fixes with them off, in one run.

    python -m benchmarks.relations --json

The fleet of ``benchmarks.engine`` (Henan's 157 counties, one exclusion circle per
subject, two devices per subject), with the issue's mix of relations:

- 20 % of subjects keep their second device as a *phone* (a separation pair), carried:
  its fixes are the bracelet's plus ~10 m of noise (no separation alarm);
- 5 % of subjects have a protected person whose device reports ~2 km from the subject;
- 2 % of subjects list the next subject as a prohibited contact.

*Off* is the same devices and fixes without a relation: every second device a bracelet,
no contacts, and the protected persons' devices registered as subjects without zones.
Reported: fixes/s of each (``Engine.process_fixes``, batches of 2 000, best of
``--repeat``, walking and scattered tracks as in ``benchmarks.engine``) and their ratio;
the issue asks on/off >= 0.8.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import json
import sys

import numpy as np

from benchmarks.engine import bench_batch, build_fleet, make_fixes


def mixed_subjects(subjects: dict, *, on: bool) -> tuple[dict, list[int]]:
    """(the subjects document, the subject indices that got a protected person)."""
    out = []
    victims = []
    protected = []
    for s, subj in enumerate(subjects["subjects"]):
        subj = dict(subj)
        b, p = subj["devices"]
        pair = on and s % 5 == 0
        subj["devices"] = [b, {"device_id": p["device_id"], "kind": "phone" if pair
                               else "bracelet"}]
        if on and s % 50 == 0 and s + 1 < len(subjects["subjects"]):
            subj["contacts"] = [f"S-{s + 1}"]
        out.append(subj)
        if s % 20 == 0:
            victims.append(s)
            dev = {"device_id": f"V-{s}", "kind": "victim"}
            if on:
                protected.append({"person_id": f"VP-{s}", "region": subj["region"],
                                  "devices": [dev], "protected_from": [subj["subject_id"]]})
            else:
                protected.append({"subject_id": f"VP-{s}", "region": subj["region"],
                                  "level": "strict", "devices": [{"device_id": f"V-{s}"}]})
    doc = {"subjects": out + ([] if on else protected)}
    if on:
        doc["protected"] = protected
    return doc, victims


def mixed_fixes(fixes, victims: list[int], n_devices: int):
    """The fixes (make_fixes carries the phones with the bracelets) and a victim fix
    ~2 km from each victim's subject's bracelet fix, in ts order."""
    dev, ts, lat, lon, acc, coord, rx = fixes
    victim_dev = {2 * s: n_devices + k for k, s in enumerate(victims)}
    rows = np.flatnonzero(np.isin(dev, list(victim_dev)))
    vdev = np.array([victim_dev[int(d)] for d in dev[rows]], dtype=dev.dtype)
    parts = [(dev, ts, lat, lon, acc, coord, rx),
             (vdev, ts[rows] + 1, lat[rows], lon[rows] + 0.02, acc[rows], coord[rows],
              rx[rows] + 1)]
    merged = [np.concatenate([p[i] for p in parts]) for i in range(7)]
    order = np.argsort(merged[1], kind="stable")
    return tuple(a[order] for a in merged)


def run(args: argparse.Namespace) -> dict:
    zones, subjects, pools, county_of, circle_xy, circle_of = build_fleet(args.devices,
                                                                          args.circles)
    lines = [z.geometry.boundary for z in zones.zones[: len(pools)]]
    tracks = {"walking": make_fixes(args.fixes, args.devices, pools, county_of, circle_xy,
                                    circle_of, True, lines),
              "scattered": make_fixes(args.fixes, args.devices, pools, county_of, circle_xy,
                                      circle_of, False)}
    on_doc, victims = mixed_subjects(subjects, on=True)
    off_doc, _ = mixed_subjects(subjects, on=False)
    out = {"benchmark": "relations", "devices": args.devices, "victims": len(victims),
           "cases": []}
    for label, fx in tracks.items():
        fixes = mixed_fixes(fx, victims, args.devices)
        case = {"tracks": label}
        for rnd in range(args.rounds):  # alternate off and on
            for name, doc in (("off", off_doc), ("on", on_doc)):
                r = bench_batch(zones, doc, fixes, 2000, args.repeat, label)
                case.setdefault(name, []).append(r["fixes_per_s"])
                case[f"{name}_events"] = r["events"]
                case[f"{name}_bytes_per_device"] = r["bytes_per_device"]
        case["ratio_on_off"] = round(max(case["on"]) / max(case["off"]), 3)
        out["cases"].append(case)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.relations", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--fixes", type=int, default=1_000_000)
    p.add_argument("--circles", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    result = run(args)
    for c in result["cases"]:
        print(f"{c['tracks']:<9} off {max(c['off']) / 1e6:5.2f} M fixes/s, "
              f"on {max(c['on']) / 1e6:5.2f} M fixes/s: on/off {c['ratio_on_off']:.2f}  "
              f"(events {c['off_events']} / {c['on_events']}, bytes/device "
              f"{c['off_bytes_per_device']} / {c['on_bytes_per_device']})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
