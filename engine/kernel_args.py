"""The rule kernel's long-lived arguments as one object passed by reference.

:func:`engine.kernels.process_batch` reads the state, registry, zone and relation
arrays (five NamedTuples, ~80 arrays) and a few configuration arrays on every call.
Passed as they are, each array is unboxed on every call (~70 ns each: ~7 us of a
one-fix call of ~9.5 us, measured in benchmarks/README.md). They change only when the
engine rebinds (a reload, a restore, a new curfew horizon), so the engine builds them
once into a numba *structref* (:func:`kernel_args`) and hands the kernel that one
reference: unboxing it is one pointer. The arrays are shared, not copied: what the
engine writes into them in place (an adopted state, a checkpoint restored) the kernel
sees.

With ``NUMBA_DISABLE_JIT=1`` the kernels are plain Python and get :class:`KernelArgs`,
a NamedTuple with the same fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numba
import numpy as np
from numba import config as numba_config
from numba import njit, types
from numba.core.extending import overload
from numba.experimental import structref


class KernelArgs(NamedTuple):
    """The fields (and, without JIT, the object itself)."""

    st: Any  # engine.state.DeviceState
    ra: Any  # engine.registry.RegistryArrays (with the curfew windows of Engine._cover)
    za: Any  # geofence's ZoneArrays
    rr: Any  # engine.relations.RelationArrays
    rs: Any  # engine.relations.RelationState
    offline_after_ms: np.ndarray  # int64[level]
    no_fix_after_ms: np.ndarray  # int64[level]
    warn_m: np.ndarray  # float64[2]: approach_m, border_warn_m
    apad: np.ndarray  # float64[n_zones, 2]: engine.kernels.approach_pads
    rel_cfg: np.ndarray  # float64[N_REL_CFG]
    counters: np.ndarray  # int64[N_COUNTERS]


@structref.register
class KernelArgsType(types.StructRef):
    """The numba type of :class:`KernelArgsRef` (one per set of field types)."""


class KernelArgsRef(structref.StructRefProxy):
    """What Python holds of the compiled object (opaque: only the kernels read it)."""


structref.define_boxing(KernelArgsType, KernelArgsRef)


def _new(st, ra, za, rr, rs, offline_after_ms, no_fix_after_ms, warn_m, apad, rel_cfg,
         counters):
    raise NotImplementedError("compiled only")


@overload(_new)
def _new_typed(st, ra, za, rr, rs, offline_after_ms, no_fix_after_ms, warn_m, apad, rel_cfg,
               counters):
    typ = KernelArgsType(list(zip(KernelArgs._fields, (
        st, ra, za, rr, rs, offline_after_ms, no_fix_after_ms, warn_m, apad, rel_cfg,
        counters), strict=True)))

    def impl(st, ra, za, rr, rs, offline_after_ms, no_fix_after_ms, warn_m, apad, rel_cfg,
             counters):
        k = structref.new(typ)
        k.st = st
        k.ra = ra
        k.za = za
        k.rr = rr
        k.rs = rs
        k.offline_after_ms = offline_after_ms
        k.no_fix_after_ms = no_fix_after_ms
        k.warn_m = warn_m
        k.apad = apad
        k.rel_cfg = rel_cfg
        k.counters = counters
        return k

    return impl


@njit(cache=True)
def _new_ref(st, ra, za, rr, rs, offline_after_ms, no_fix_after_ms, warn_m, apad, rel_cfg,
             counters):
    return _new(st, ra, za, rr, rs, offline_after_ms, no_fix_after_ms, warn_m, apad, rel_cfg,
                counters)


def kernel_args(*fields: Any) -> Any:
    """The kernel's long-lived arguments (:class:`KernelArgs`' fields, in order) as one
    compiled reference; a plain :class:`KernelArgs` without JIT."""
    if numba_config.DISABLE_JIT:
        return KernelArgs(*fields)
    return _new_ref(*fields)


def args_type(k: Any) -> Any:
    """The numba type of :func:`kernel_args`' result (the compiled entry point is for
    exactly one); None without JIT."""
    if numba_config.DISABLE_JIT:
        return None
    return numba.typeof(k)
