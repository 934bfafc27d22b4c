"""The late messages' per-device state (docs/rules.md, "Duplicates and late messages"):
part of :class:`engine.state.DeviceState`, 9 bytes a device."""

from __future__ import annotations

import numpy as np

# The late messages (docs/rules.md, "Duplicates and late messages"). A late fix
# continues the device's late run when it is newer than the run's previous late fix and
# no in-order fix came in between; a late message with the ts of the device's previous
# late message of its kind is a duplicate (delivered again), as one with the newest ts
# is. Kept in 9 bytes, to keep the state within its 256-byte budget beside the device
# row: the previous late fix as late_back_ms = the newest in-order ts - its ts (0: none,
# or more than LATE_BACK_MAX ms), set to 0 by every in-order fix (engine.kernels.
# late_prev_ts); the previous late status as its ts's low 31 bits, late_status_lo (-1:
# none), so a late status whose ts differs from that one's by a multiple of 2**31 ms
# (24.8 days) to the millisecond is taken for it (a duplicate).
LATE_BACK_MAX = 2**31 - 1  # ms (24.8 days)
LATE_STATUS_MASK = 2**31 - 1  # late_status_lo = ts & LATE_STATUS_MASK

# The late runs, added with late fixes judged on their own ts: fresh in an older checkpoint.
LATE_FIELDS = ("late_status_lo", "late_back_ms", "late_run")


def late_fields(n_devices: int) -> dict[str, np.ndarray]:
    """Fresh late runs (also for a checkpoint written before them): none."""
    return {"late_status_lo": np.full(n_devices, -1, dtype=np.int32),
            "late_back_ms": np.zeros(n_devices, dtype=np.int32),
            "late_run": np.zeros(n_devices, dtype=np.int8)}
