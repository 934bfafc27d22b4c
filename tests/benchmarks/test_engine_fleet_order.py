"""``--order random`` of the engine benchmarks (benchmarks.engine_fleet.arrival_order):
each round's fixes in a random device order, a device's own fixes still in ts order, the
same fixes (a permutation) and the same permutation for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.engine_fleet import arrival_order, build_fleet, make_fixes


@pytest.mark.parametrize("n_fixes", [0, 60, 75])
def test_rounds_permuted_each_devices_fixes_in_order(n_fixes):
    _, _, pools, county_of, circle_xy, circle_of = build_fleet(20, 2, pool_size=20)
    fixes = make_fixes(n_fixes, 20, pools, county_of, circle_xy, circle_of, False)
    out = arrival_order(fixes, 20)
    dev, ts = out[0], out[1]
    assert len(dev) == n_fixes
    key = lambda f: sorted(zip(*(a.tolist() for a in f), strict=True))
    assert key(out) == key(fixes)  # the same fixes, each whole
    for d in range(20):
        assert np.all(np.diff(ts[dev == d]) > 0)  # a device's fixes in ts order
    for r in range(0, n_fixes, 20):  # each round holds the devices of that round
        assert sorted(dev[r:r + 20].tolist()) == sorted(fixes[0][r:r + 20].tolist())
    if n_fixes >= 40:
        assert not np.array_equal(dev, fixes[0])  # not device order any more
    again = arrival_order(fixes, 20)
    assert all(np.array_equal(a, b) for a, b in zip(out, again, strict=True))
