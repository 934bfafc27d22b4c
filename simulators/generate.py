"""``emfence simulate --generate N -o DIR``: a test fleet on real county boundaries.

Writes ``DIR/zones.geojson`` and ``DIR/subjects.json`` (the subjects format of
``docs/replay.md``), deterministic for a given ``--seed`` and ``--start``:

- counties from the bundled Henan set (GCJ-02, as Chinese map services publish them;
  ``zone_id`` = adcode). Default: Wolong District, Nanyang (411303) and its neighbours.
- exclusion circles, GCJ-02 like the county data (a victim's address geocoded on a
  Chinese map): one victim's home (radius 200-500 m) for about a third of the subjects,
  and a few prohibited venues per county (schools, bars, internet cafes; 80-300 m)
  forbidden to some subjects.
- approved leaves to a neighbouring county for about a tenth of the subjects, with
  windows around ``--start`` (some over, some open, some to come).
- issue #14 relations: a protected person (``V-0001``, one victim device
  ``V-0001-phone``, ``protected_from`` the subject) for about half of the victims' homes,
  and co-defendants listed as prohibited ``contacts`` of each other (pairs in one county,
  about 10 % of the subjects). Drawn from a generator of their own, after everything else,
  so the subjects, zones and leaves of a seed are the same as before they existed.

Location data is personal data: everything generated here is synthetic.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import shapely
from shapely.geometry import shape

from contract.errors import EmfenceError
from simulators.geo import sample_points_in

BUNDLED_FILE = "counties-41.geojson.gz"
DEFAULT_COUNTY = "411303"  # Wolong District, Nanyang, Henan
LEVEL_WEIGHTS = {"strict": 0.25, "ordinary": 0.5, "lenient": 0.25}
SHARE_VICTIM = 0.35  # subjects with a victim's home to keep away from
SHARE_VENUES = 0.2  # subjects forbidden one or two venues of their county
SHARE_PHONE = 0.4  # subjects who also carry a positioning phone
SHARE_LEAVE = 0.1  # subjects with an approved leave to a neighbouring county
SHARE_PROTECTED = 0.5  # victims' homes whose victim carries a victim device (proximity)
SHARE_CONTACTS = 0.1  # subjects in a co-defendant pair (listed contacts)
VENUES_PER_COUNTY = 4
VENUE_KINDS = ("school", "bar", "internet_cafe", "ktv")
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class GenerateError(EmfenceError, ValueError):
    """Bad generation request (unknown county, bad count); the message names it."""


def bundled_counties() -> dict:
    """The bundled county boundaries (Henan, GCJ-02) as a parsed GeoJSON FeatureCollection."""
    spec = importlib.util.find_spec("geofence")
    if spec is None or not spec.submodule_search_locations:
        raise GenerateError("the geofence package (with its bundled county data) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / BUNDLED_FILE
    return orjson.loads(gzip.decompress(path.read_bytes()))


def county_neighbours(fc: dict, adcode: str, *, tolerance_deg: float = 0.005) -> list[str]:
    """Adcodes of the counties sharing a border with ``adcode`` (within ~500 m), sorted."""
    feats = {f["properties"]["zone_id"]: f for f in fc["features"]}
    if adcode not in feats:
        raise GenerateError(f"county {adcode} is not in the bundled set")
    ids = list(feats)
    geoms = np.array([shape(feats[i]["geometry"]) for i in ids], dtype=object)
    me = geoms[ids.index(adcode)].buffer(tolerance_deg)
    tree = shapely.STRtree(geoms)
    hits = tree.query(me, predicate="intersects")
    return sorted(ids[i] for i in hits if ids[i] != adcode)


@dataclass(frozen=True)
class GeneratedFleet:
    zones: dict  # GeoJSON FeatureCollection (GCJ-02)
    subjects: dict  # {"subjects": [...]}

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        zp, sp = out / "zones.geojson", out / "subjects.json"
        zp.write_bytes(orjson.dumps(self.zones))
        sp.write_bytes(orjson.dumps(self.subjects, option=orjson.OPT_INDENT_2))
        return zp, sp


def _circle(zone_id: str, lon: float, lat: float, radius_m: float, **props) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [round(float(lon), 6), round(float(lat), 6)]},
        "properties": {"zone_id": zone_id, "radius_m": float(radius_m), **props},
    }


def generate_fleet(n_subjects: int, *, seed: int = 0, counties: list[str] | None = None,
                   start_ms: int, source: dict | None = None) -> GeneratedFleet:
    """``n_subjects`` subjects spread over ``counties`` (default: 411303 and its neighbours,
    half of the subjects in the first county). ``start_ms`` anchors the leave windows.
    ``source`` is the county FeatureCollection (default: the bundled Henan set)."""
    if n_subjects < 1:
        raise GenerateError(f"the number of subjects must be at least 1, got {n_subjects}")
    fc = bundled_counties() if source is None else source
    feats = {f["properties"]["zone_id"]: f for f in fc["features"]}
    home_counties = _home_counties(fc, feats, counties)
    rng = np.random.default_rng(seed)
    geoms = {c: shape(feats[c]["geometry"]) for c in home_counties}

    # Leave destinations: a neighbour of the subject's county (outside it, by definition).
    neighbours = {c: county_neighbours(fc, c) for c in home_counties}
    venue_features, venues = _venues(home_counties, geoms, rng)
    county_of = _county_of(home_counties, n_subjects, rng)
    width = max(4, len(str(n_subjects)))
    victim_features: list[dict] = []
    subjects = []
    leave_zones: set[str] = set()
    for i in range(n_subjects):
        county = county_of[i]
        subject, victim_home = _subject(f"{i + 1:0{width}d}", county, rng, geoms[county],
                                        venues[county], neighbours[county], start_ms)
        if victim_home is not None:
            victim_features.append(victim_home)
        for leave in subject.get("leaves", ()):
            leave_zones.update(leave["zones"])
        subjects.append(subject)

    protected = _relations(subjects, np.random.default_rng([seed, 0x14]))
    county_ids = list(dict.fromkeys(home_counties + sorted(leave_zones - set(home_counties))))
    zones = {
        "type": "FeatureCollection",
        "coord_sys": "gcj02",
        "source": fc.get("source", "bundled county boundaries"),
        "features": _county_features(feats, county_ids) + victim_features + venue_features,
    }
    return GeneratedFleet(zones=zones, subjects={"subjects": subjects, "protected": protected})


def _relations(subjects: list[dict], rng: np.random.Generator) -> list[dict]:
    """Add co-defendant ``contacts`` to ``subjects`` (in place) and return the protected
    persons: the victim of a subject's ``victim-NNN`` home, carrying a victim device."""
    protected = []
    for s in subjects:
        homes = [z for z in s.get("exclusion", ()) if z.startswith("victim-")]
        if homes and rng.random() < SHARE_PROTECTED:
            num = homes[0].removeprefix("victim-")
            protected.append({"person_id": f"V-{num}", "region": s["region"],
                              "devices": [{"device_id": f"V-{num}-phone", "kind": "victim"}],
                              "protected_from": [s["subject_id"]]})
    by_county: dict[str, list[dict]] = {}
    for s in subjects:
        by_county.setdefault(s["region"], []).append(s)
    for county in sorted(by_county):
        members = by_county[county]
        k = round(SHARE_CONTACTS * len(members) / 2)
        if k < 1 or len(members) < 2:
            continue
        picked = rng.choice(len(members), size=2 * k, replace=False)
        for a, b in zip(picked[0::2], picked[1::2]):
            members[a]["contacts"] = [members[b]["subject_id"]]
            members[b]["contacts"] = [members[a]["subject_id"]]
    return protected


def _home_counties(fc: dict, feats: dict, counties: list[str] | None) -> list[str]:
    """The counties asked for (each once), or the default county and its neighbours."""
    if not counties:
        return [DEFAULT_COUNTY] + county_neighbours(fc, DEFAULT_COUNTY)
    unknown = [c for c in counties if c not in feats]
    if unknown:
        raise GenerateError(f"unknown county adcode(s): {', '.join(unknown)} "
                            f"(the bundled set has {len(feats)} Henan counties, 41xxxx)")
    return list(dict.fromkeys(counties))


def _venues(home_counties: list[str], geoms: dict, rng: np.random.Generator
            ) -> tuple[list[dict], dict[str, list[str]]]:
    """Prohibited venues, per county: their circle features and, per county, their ids."""
    venue_features: list[dict] = []
    venues: dict[str, list[str]] = {}
    for c in home_counties:
        pts = sample_points_in(geoms[c], VENUES_PER_COUNTY, rng)
        venues[c] = []
        for k, (lon, lat) in enumerate(pts, start=1):
            zid = f"venue-{c}-{k}"
            kind = VENUE_KINDS[(k - 1) % len(VENUE_KINDS)]
            radius = float(rng.integers(8, 31) * 10)
            venue_features.append(_circle(zid, lon, lat, radius, kind="venue", venue=kind,
                                          name=f"{kind} {k}"))
            venues[c].append(zid)
    return venue_features, venues


def _county_of(home_counties: list[str], n_subjects: int, rng: np.random.Generator) -> list[str]:
    """Each subject's county: half in the first county, the rest spread evenly over the
    others."""
    if len(home_counties) == 1:
        return [home_counties[0]] * n_subjects
    first = rng.random(n_subjects) < 0.5
    others = rng.integers(1, len(home_counties), n_subjects)
    return [home_counties[0] if f else home_counties[o] for f, o in zip(first, others)]


def _subject(num: str, county: str, rng: np.random.Generator, county_geom, county_venues,
             leave_destinations: list[str], start_ms: int) -> tuple[dict, dict | None]:
    """One subject of ``county`` (numbered ``num``), and its victim's home circle if any."""
    levels = list(LEVEL_WEIGHTS)
    level_p = np.array(list(LEVEL_WEIGHTS.values()))
    subject = {
        "subject_id": f"S-{num}",
        "region": county,
        "level": levels[int(rng.choice(3, p=level_p))],
        "devices": [{"device_id": f"B-{num}", "kind": "bracelet"}],
        "inclusion": [county],
    }
    if rng.random() < SHARE_PHONE:
        subject["devices"].append({"device_id": f"P-{num}", "kind": "phone"})
    exclusion = []
    victim_home = None
    if rng.random() < SHARE_VICTIM:
        (lon, lat), = sample_points_in(county_geom, 1, rng)
        zid = f"victim-{num}"
        radius = float(rng.integers(20, 51) * 10)
        victim_home = _circle(zid, lon, lat, radius, kind="victim_home")
        exclusion.append(zid)
    if rng.random() < SHARE_VENUES:
        k = int(rng.integers(1, 3))
        exclusion += sorted(rng.choice(county_venues, size=k, replace=False).tolist())
    if exclusion:
        subject["exclusion"] = exclusion
    if leave_destinations and rng.random() < SHARE_LEAVE:
        dest = str(rng.choice(leave_destinations))
        # Windows spread from two days before to two days after the start.
        begin = start_ms + int(rng.integers(-2 * DAY_MS, 2 * DAY_MS) // HOUR_MS) * HOUR_MS
        length = int(rng.integers(4, 72)) * HOUR_MS
        subject["leaves"] = [{"start": begin, "end": begin + length, "zones": [dest]}]
    return subject, victim_home


def _county_features(feats: dict, county_ids: list[str]) -> list[dict]:
    """The county features (inclusion zones and leave destinations), GCJ-02 as bundled."""
    county_features = []
    for c in county_ids:
        f = feats[c]
        props = {"zone_id": c, "kind": "county"}
        for key in ("name", "city", "province"):
            if key in f["properties"]:
                props[key] = f["properties"][key]
        county_features.append({"type": "Feature", "geometry": f["geometry"],
                                "properties": props})
    return county_features
