"""Calling a compiled kernel without numba's dispatcher (see :func:`entry_point`)."""

from __future__ import annotations

from typing import Any


def entry_point(dispatcher: Any, args: tuple) -> Any:
    """The native entry point numba compiled (or loaded from its cache) for exactly the
    types of ``args``; the plain function itself when JIT is disabled.

    A call through a dispatcher first types every argument to pick the compiled version:
    ~12-17 us for the rule kernel's (three NamedTuples of 48 arrays), more than 100 fixes.
    A caller whose argument types never change between calls (its own arrays; columns
    coerced to one dtype each, 1-D, C order) resolves the entry point once and calls it
    directly. The entry point does not check types: an argument of another type than the
    one it was resolved for is misread, so only such a caller may use one.
    """
    typeof = getattr(dispatcher, "typeof_pyval", None)
    if typeof is None:  # NUMBA_DISABLE_JIT=1: kernels are plain Python functions
        return dispatcher
    return dispatcher.compile(tuple(typeof(a) for a in args))
