"""The WGS-84 positions the engine ruled on, handed back per batch (numpy only: the
application imports it without loading numba)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Positions(NamedTuple):
    """The WGS-84 positions the rules ran on, one element per record of a batch: ``lat``,
    ``lon`` float64 degrees. :meth:`Engine.process` fills the element of every fix of a
    known device (a GCJ-02 fix converted, once, by the kernel); the others keep what they
    held (NaN from :meth:`nan`)."""

    lat: np.ndarray
    lon: np.ndarray

    @classmethod
    def nan(cls, n: int) -> Positions:
        """``n`` elements, every one NaN (not a fix of a known device until filled)."""
        return cls(np.full(n, np.nan), np.full(n, np.nan))

    def select(self, index: slice) -> Positions:
        """Views of the elements at ``index`` (a slice): what the engine writes into them
        lands in this one (for running a batch record by record)."""
        return Positions(self.lat[index], self.lon[index])

    def check(self, n: int) -> None:
        """``ValueError`` naming the column unless both are writable, C-contiguous 1-D
        float64 arrays of ``n`` elements (what the kernel is compiled to write into)."""
        for name, a in zip(self._fields, self, strict=True):
            if not (isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 1
                    and a.flags.c_contiguous and a.flags.writeable):
                raise ValueError(f"positions.{name} must be a writable, contiguous 1-D "
                                 f"float64 array")
            if a.shape[0] != n:
                raise ValueError(f"positions.{name} has {a.shape[0]} elements, expected {n} "
                                 f"(one per record of the batch)")
