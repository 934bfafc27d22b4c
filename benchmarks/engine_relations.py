"""Engine benchmark, issue #14's case: the new rules on against off, in the same run.

    python -m benchmarks.engine_relations --json

A fleet on real county boundaries (the 157 counties of Henan, as ``benchmarks.engine``),
one exclusion circle per subject, where **20 %** of the subjects wear a bracelet and
carry a phone (the phone's fix a few metres from the bracelet's: a subject who keeps
both), **5 %** have a protected person whose own device (kind ``victim``) reports from
elsewhere in the county, and **2 %** are listed prohibited contacts in pairs. Every
device reports every 10 s, walking (``benchmarks.engine.make_fixes``' walk: ~30 m steps,
5 % starting near their circle, 5 % on the county line).

The same devices and the same fixes go through ``Engine.process_fixes`` twice, in
alternating runs (``--repeat`` pairs, the best of each kept):

- **on**: the subjects file as described: separation, proximity, contact and one alarm
  per subject all apply (the approach warning and the device rules are on in both);
- **off**: the same devices, relations stripped: each phone is its own subject (same
  zones), no contacts, and each protected person is protected only from subject ``S-0``
  (``protected_from`` must name someone), so the victims' devices still report and are
  still looked up, but no subject's fix meets them.

``ratio`` = on ÷ off fixes/s; issue #14 asks for at least 0.8. Also the state bytes per
device of each (relation slots and side tables included).
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import json
import sys
import time

import numpy as np

from benchmarks.engine import build_fleet, make_fixes

BOTH_SHARE, VICTIM_SHARE, CONTACT_SHARE = 0.20, 0.05, 0.02


def relation_fleet(n_subjects: int, n_circles: int, seed: int = 3):
    """(zones, on subjects doc, off subjects doc, fixes): see the module docstring."""
    zones, doc, pools, county_of, circle_xy, circle_of = build_fleet(2 * n_subjects,
                                                                    n_circles, seed)
    rng = np.random.default_rng(seed)
    subjects = doc["subjects"]
    n_both = int(BOTH_SHARE * n_subjects)
    for s in subjects[n_both:]:  # 80 %: the bracelet only
        s["devices"] = s["devices"][:1]
    n_contact = int(CONTACT_SHARE * n_subjects) // 2 * 2
    contacts = rng.choice(n_subjects, n_contact, replace=False).tolist()
    for a, b in zip(contacts[0::2], contacts[1::2], strict=True):
        subjects[a]["contacts"] = [subjects[b]["subject_id"]]
    n_victims = int(VICTIM_SHARE * n_subjects)
    protected_subj = rng.choice(n_subjects, n_victims, replace=False).tolist()
    protected = [{"person_id": f"V-{k}", "region": subjects[s]["region"],
                  "devices": [{"device_id": f"VD-{k}", "kind": "victim"}],
                  "protected_from": [subjects[s]["subject_id"]]}
                 for k, s in enumerate(protected_subj)]
    on = {"subjects": subjects, "protected": protected}
    # the devices in registry order: subjects' devices, then the protected persons'
    dev_subject = [i for i, s in enumerate(subjects) for _ in s["devices"]]
    is_phone = [k == 1 for s in subjects for k in range(len(s["devices"]))]
    n_dev = len(dev_subject) + n_victims
    d_subj = np.array(dev_subject + protected_subj)
    d_county = county_of[2 * d_subj]
    d_circle = circle_of[2 * d_subj]
    lines = [z.geometry.boundary for z in zones.zones[: len(pools)]]
    # bracelets, victims and contacts walk on their own; a phone follows its bracelet
    dev, ts, lat, lon, acc, coord, rx = make_fixes(
        40 * n_dev, n_dev, pools, d_county, circle_xy, d_circle, True, lines, seed=seed + 1)
    phone = np.flatnonzero(np.array(is_phone + [False] * n_victims))
    for p in phone.tolist():  # the bracelet is the device before the phone
        mine, theirs = dev == p, dev == p - 1
        lat[mine] = lat[theirs] + rng.normal(0, 1e-4, mine.sum())
        lon[mine] = lon[theirs] + rng.normal(0, 1e-4, mine.sum())
    return zones, on, _off(on), (dev, ts, lat, lon, acc, coord, rx)


def _off(on: dict) -> dict:
    """The same devices in the same order, relations stripped (see the docstring)."""
    subjects = []
    for s in on["subjects"]:
        base = {k: v for k, v in s.items() if k != "contacts"}
        subjects.append({**base, "devices": base["devices"][:1]})
        for dv in base["devices"][1:]:
            subjects.append({**base, "subject_id": f"{s['subject_id']}-{dv['device_id']}",
                             "devices": [dv]})
    protected = [{**p, "protected_from": [subjects[0]["subject_id"]]} for p in on["protected"]]
    return {"subjects": subjects, "protected": protected}


def bench(zones, doc: dict, fixes, batch: int) -> dict:
    """One timed pass (after an untimed first round of every device)."""
    from emfence.config import Config
    from engine import Engine, load_registry

    registry = load_registry(doc, zones)
    dev, ts, lat, lon, acc, coord, rx = fixes
    n = len(dev)
    warm = min(registry.n_devices, n // 2)
    engine = Engine(zones, registry, Config())
    engine.process_fixes(dev[:warm], ts[:warm], lat[:warm], lon[:warm], acc[:warm],
                         coord[:warm], rx[:warm])
    events = 0
    t = time.perf_counter()
    for i in range(warm, n, batch):
        j = min(i + batch, n)
        events += len(engine.process_fixes(dev[i:j], ts[i:j], lat[i:j], lon[i:j], acc[i:j],
                                           coord[i:j], rx[i:j]))
    dt = time.perf_counter() - t
    return {"fixes": n - warm, "seconds": round(dt, 4), "fixes_per_s": round((n - warm) / dt),
            "events": events, "bytes_per_device": round(engine.bytes_per_device(), 1)}


def run(args: argparse.Namespace) -> dict:
    t = time.perf_counter()
    zones, on, off, fixes = relation_fleet(args.subjects, args.circles)
    setup_s = round(time.perf_counter() - t, 1)
    result: dict = {"benchmark": "engine_relations", "subjects": args.subjects,
                    "devices": int(fixes[0].max()) + 1, "fixes": len(fixes[0]),
                    "shares": {"both_devices": BOTH_SHARE, "victim": VICTIM_SHARE,
                               "contacts": CONTACT_SHARE},
                    "setup_s": setup_s, "cases": []}
    for batch in (2000, 100_000):
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        for _ in range(args.repeat):  # alternating pairs
            for label, doc in (("off", off), ("on", on)):
                runs[label].append(bench(zones, doc, fixes, batch))
        best = {k: max(v, key=lambda r: r["fixes_per_s"]) for k, v in runs.items()}
        result["cases"].append({
            "batch": batch, "on": best["on"], "off": best["off"],
            "on_runs": [r["fixes_per_s"] for r in runs["on"]],
            "off_runs": [r["fixes_per_s"] for r in runs["off"]],
            "ratio": round(best["on"]["fixes_per_s"] / best["off"]["fixes_per_s"], 3)})
    result["ratio_min"] = min(c["ratio"] for c in result["cases"])
    result["target"] = {"ratio_min": 0.8, "met": result["ratio_min"] >= 0.8}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine_relations",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--subjects", type=int, default=50_000)
    p.add_argument("--circles", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3, help="alternating on/off pairs")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for c in result["cases"]:
            print(f"batch {c['batch']:>6}: on {c['on']['fixes_per_s'] / 1e6:.2f} M fixes/s, "
                  f"off {c['off']['fixes_per_s'] / 1e6:.2f} M fixes/s, ratio {c['ratio']} "
                  f"(bytes/device on {c['on']['bytes_per_device']}, "
                  f"off {c['off']['bytes_per_device']})")
        print(f"target on/off >= 0.8: {result['target']['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
