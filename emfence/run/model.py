"""Where `emfence run` takes its zones and subjects from: the two files (``--zones``,
``--subjects``, reloaded on SIGHUP) or the register in the store (``--store`` alone:
``store.register.snapshot()``, reloaded when the register changes and on SIGHUP).

Both give the same thing: the compiled zones and the engine's registry. A snapshot of
the register is the zones file and the subjects file as dicts (docs/replay.md), so the
register is compiled exactly as the files are.
"""

from __future__ import annotations

from typing import Any


def compile_model(zones: Any, subjects: Any):
    """``(compiled zones, registry)`` from a zones FeatureCollection and a subjects
    document, each a path or a dict (as the files or ``register.snapshot()`` give them)."""
    from engine import load_registry
    from geofence import compile_zones, load_zones

    compiled = compile_zones(load_zones(zones))
    return compiled, load_registry(subjects, compiled)


class ModelSource:
    """The source of the model: ``files(zones_path, subjects_path)`` or
    ``register(store)``. ``load()`` reads and compiles it (blocking: run it in a thread
    from the event loop); ``change_seq()`` is the register's change sequence (None for
    files, which change only on SIGHUP)."""

    def __init__(self, *, zones_path: str = "", subjects_path: str = "", store=None):
        self.zones_path = zones_path
        self.subjects_path = subjects_path
        self.store = store

    @classmethod
    def files(cls, zones_path: str, subjects_path: str) -> ModelSource:
        return cls(zones_path=zones_path, subjects_path=subjects_path)

    @classmethod
    def register(cls, store) -> ModelSource:
        return cls(store=store)

    @property
    def from_register(self) -> bool:
        return self.store is not None

    def describe(self) -> str:
        """For the log: where zones and subjects come from."""
        if self.from_register:
            return "the register in the store"
        return f"zones {self.zones_path} and subjects {self.subjects_path}"

    def change_seq(self) -> int | None:
        """The register's change sequence now (raises the store's errors); None for files."""
        if not self.from_register:
            return None
        return int(self.store.register.change_seq())

    def change_times(self, from_ms: int, to_ms: int) -> list[int]:
        """When the register changed in [from_ms, to_ms]: its transactions and where an
        assignment's own effective period begins or ends (raises the store's errors)."""
        return [int(t) for t in self.store.register.change_times(from_ms, to_ms)]

    def load(self, at_ms: int | None = None):
        """``(compiled zones, registry)`` now (or, from the register, as it was at
        ``at_ms``). Raises ZoneError / RegistryError naming what is wrong, OSError for an
        unreadable file, the store's errors when the store cannot be read."""
        if not self.from_register:
            return compile_model(self.zones_path, self.subjects_path)
        zones_fc, subjects = self.store.register.snapshot(at_ms)
        return compile_model(zones_fc, subjects)
