"""Every structured error emfence raises derives from the one root, ``EmfenceError``.

The error classes are found by reading every module of the packages with ``ast`` (so a
new one cannot be forgotten), then imported and checked: a subclass of ``EmfenceError``
that still is whatever it was before (``ValueError`` ...), so older ``except`` clauses
keep working.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from contract import EmfenceError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract", "geofence", "engine", "ingest", "alarms", "console", "simulators",
            "emfence")
# An HTTP response carried as an exception (status, code, message), not an error of input.
NOT_ERRORS = {("console.http", "ApiError")}


def _error_classes() -> list[tuple[str, str]]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Failure")):
                    found.append((module, node.name))
    return found


ERRORS = _error_classes()


def test_the_scan_finds_the_known_errors():
    names = {name for _, name in ERRORS}
    assert {"ConfigError", "ZoneError", "RegistryError", "PayloadError", "StoreError",
            "AlarmActionError", "UserError", "AuthError", "BrokerConfigError"} <= names
    assert len(ERRORS) >= 17


@pytest.mark.parametrize(("module", "name"), [e for e in ERRORS if e not in NOT_ERRORS])
def test_error_derives_from_the_root(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, EmfenceError), f"{module}.{name} does not derive from EmfenceError"


def test_older_bases_are_kept():
    from alarms.store import AlarmActionError, StoreError
    from emfence.config import ConfigError
    from ingest.mosquitto import MosquittoError
    from simulators.mqttwire import WireError

    assert issubclass(ConfigError, ValueError)
    assert issubclass(AlarmActionError, ValueError)
    assert issubclass(MosquittoError, RuntimeError)
    assert issubclass(WireError, ConnectionError)
    assert not issubclass(StoreError, ValueError)


def test_a_caller_catches_bad_input_with_the_root(tmp_path):
    from geofence.zones import load_zones

    bad = tmp_path / "zones.geojson"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(EmfenceError, match="zones.geojson"):
        load_zones(bad)
