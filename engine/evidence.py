"""The evidence of the device alarms (docs/rules.md, "Evidence of the device alarms"):
from the kernels' event row to the alarm event's ``extra`` keys."""

from __future__ import annotations

import math
from typing import Any

# The device alarms' evidence (docs/rules.md): the last known position (lat, lon, acc; left
# out when the device never sent a fix), then the type's own keys.
DEVICE_EVIDENCE = ("offline", "tamper", "low_battery", "no_fix", "power_off")


def device_evidence(type_name: str, raised: bool, row: list[float]) -> dict[str, Any]:
    """The ``extra`` evidence of a device alarm from its event row's floats (lat, lon,
    aux, acc: see engine.kernels); key order as in docs/rules.md."""
    lat, lon, aux, acc = row
    out: dict[str, Any] = {}
    if type_name == "low_battery":
        out["battery_pct"] = aux
        return out
    if not math.isnan(lat):  # the device was fixed once
        out["lat"] = lat
        out["lon"] = lon
        out["acc"] = acc
    if type_name == "offline":
        out["last_rx_ms"] = int(aux)
    elif type_name == "no_fix" and not math.isnan(aux):
        out["last_fix_rx_ms"] = int(aux)
    elif type_name == "tamper":
        out["strap"] = "open" if raised else "ok"
    return out
