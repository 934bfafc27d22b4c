"""Shared helpers for the simulator tests: small generated fleets on real counties."""

from __future__ import annotations

from functools import lru_cache

from emfence.config import config_from_dict

START_MS = 1_763_800_000_000  # 2025-11-22T08:26:40Z

# Offline thresholds compressed so that a run of a minute or two can show offline alarms.
# The separation window shrunk to 1 ms: in these time-compressed runs an injected detour
# (simulators/events.py, a few km in max(2 intervals, 4 s) of event time) moves a subject
# hundreds of metres between its bracelet's fix and its phone's even 1 s apart, which the
# separation rule rightly reads as two devices far apart. The separation scenarios (issue
# #14) bring their own config.
FAST_CONFIG = {"rules": {"offline_after_s": {"strict": 10, "ordinary": 15, "lenient": 20},
                         "separation_window_s": 0.001}}
FAST_TOML = ("[rules]\nseparation_window_s = 0.001\n"
             "[rules.offline_after_s]\nstrict = 10\nordinary = 15\nlenient = 20\n")


def fast_config():
    return config_from_dict(FAST_CONFIG)


@lru_cache(maxsize=8)
def fleet(n: int, seed: int, counties: tuple[str, ...] | None = None):
    """(GeneratedFleet, zones from geofence.load_zones, simulators Fleet), cached per args."""
    from geofence import load_zones
    from simulators.generate import generate_fleet
    from simulators.movement import Fleet

    gen = generate_fleet(n, seed=seed, counties=list(counties) if counties else None,
                         start_ms=START_MS)
    zones = load_zones(gen.zones)
    return gen, zones, Fleet.build(gen.subjects, zones)
