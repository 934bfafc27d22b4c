"""The engine box: registry, device state, rule kernels, offline sweep and checkpoints
(``emfence replay``, which drives it over a file, is in :mod:`emfence.replay`).

``from engine import Registry, RegistryError, load_registry, Engine, Positions``
"""

from engine.positions import Positions
from engine.registry import Registry, RegistryError, load_registry

__all__ = ["Engine", "Positions", "Registry", "RegistryError", "load_registry"]


def __getattr__(name: str):
    # Engine pulls in numba and the geofence kernels; import it only when asked for, so
    # the registry can be used (and its errors reported) without compiling anything.
    if name == "Engine":
        from engine.engine import Engine

        return Engine
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
