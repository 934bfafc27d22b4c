"""emfence: electronic-monitoring and geofence engine for community-corrections offices.

This package holds what spans the boxes: the command line (`emfence.cli`) and the one
typed configuration table (`emfence.config`). The boxes themselves are the top-level
packages `geofence`, `engine`, `ingest`, `alarms`, `simulators` and `console`.
"""

__version__ = "0.1.0"
