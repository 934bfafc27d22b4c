"""The console's JSON API, one module per resource (documented in ``docs/console-api.md``).

Each module holds plain handler functions and a ``ROUTES`` list; ``console.app``
assembles them. Every handler starts with :func:`console.access.signed_in` (login
excepted) and uses the same helpers of :mod:`console.access` for roles, region scope
and the audit trail.
"""
