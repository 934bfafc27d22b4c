"""A checkpoint's arrays, from a file or already in memory, read alike (engine.state,
engine.relations)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class _ReadArrays(dict):
    """A checkpoint's arrays already in memory, read like an opened ``.npz``."""

    @property
    def files(self) -> list[str]:
        return list(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def open_arrays(source):
    """``np.load`` of a checkpoint (a path, a file object), or its arrays as they are."""
    if isinstance(source, Mapping):
        return _ReadArrays(source)
    return np.load(source, allow_pickle=False)
