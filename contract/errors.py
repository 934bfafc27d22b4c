"""The root of emfence's errors.

Every structured error emfence raises on bad input or a failing part (a config key, a zone
file, a payload, a register, a checkpoint, the store, the broker set-up, a login) derives
from :class:`EmfenceError`, and keeps its older base (``ValueError``, ``ConnectionError``,
``RuntimeError``) so that existing ``except`` clauses still catch it. A caller that wants
"anything emfence refused" catches ``EmfenceError``; the message names what and where.

The console's ``ApiError`` is not one: it is an HTTP response (status, code, message)
carried as an exception, not an error of the caller's input.
"""

from __future__ import annotations


class EmfenceError(Exception):
    """Something emfence refused or could not do; ``str(err)`` is the one-line message."""
