"""The separation rule decides a pair far apart in latitude without the exact distance
(engine.relation_kernels: a lower bound of metres per degree of latitude): held here
against the same rule step on the exact distance, for pairs on both sides of the far
threshold, every episode state and run, at China's latitudes. Only the distance's
computation is skipped: the run, the action and a raise's evidence must be the same."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import relation_kernels as RK
from engine.state import P_ACC, P_LAT, P_LON

pytestmark = pytest.mark.kernel

NONE_MS = RK.NONE_MS
T = 1_700_000_000_000
CFG = np.zeros(RK.N_CFG)
CFG[RK.CFG_SEP_WINDOW_MS] = 300_000
CFG[RK.CFG_SEP_M] = 500.0
CFG[RK.CFG_SEP_CONFIRM] = 2


def exact(ep, run, lon, lat, acc, qlon, qlat, qacc):
    """The rule's step on the exact distance (as before the bound): (run, action, dist)."""
    near = CFG[RK.CFG_SEP_M]
    dist = RK.pair_distance_m(lon, lat, qlon, qlat)
    run, act = RK.separation_step(ep, run, dist, near + acc + qacc, near,
                                  int(CFG[RK.CFG_SEP_CONFIRM]))
    return run, act, dist


@settings(max_examples=400, deadline=None)
@given(lat=st.floats(18.0, 54.0), lon=st.floats(73.0, 135.0),
       # Around the far threshold in latitude (500 m plus accuracies, /110 570 m a degree)
       dlat_m=st.floats(-4000.0, 4000.0), dlon_m=st.floats(-3000.0, 3000.0),
       acc=st.floats(0.0, 1500.0), qacc=st.floats(0.0, 1500.0),
       open_=st.booleans(), run=st.integers(0, 3), d_first=st.booleans())
def test_the_latitude_bound_decides_as_the_exact_distance(lat, lon, dlat_m, dlon_m, acc, qacc,
                                                         open_, run, d_first):
    qlat = lat + dlat_m / 110_574.0
    qlon = lon + dlon_m / (111_320.0 * math.cos(math.radians(lat)))
    d, q = (0, 1) if d_first else (1, 0)
    sep_dev = np.array([[0, 1]], dtype=np.int32)
    last_pos = np.zeros((2, 3))
    last_pos[q, P_LAT], last_pos[q, P_LON], last_pos[q, P_ACC] = qlat, qlon, qacc
    last_fix = np.array([T - 60_000, T - 60_000], dtype=np.int64)
    ep = T - 600_000 if open_ else NONE_MS
    sep = np.array([[ep, 0, run]], dtype=np.int64)
    ev_i = np.zeros((4, 8), dtype=np.int64)
    ev_f = np.zeros((4, 7))
    n = RK.separation_rule(sep_dev, last_pos, last_fix, sep, CFG, 0, d, T, lon, lat, acc,
                           ev_i, ev_f, 0)
    want_run, act, dist = exact(ep, run, lon, lat, acc, qlon, qlat, qacc)
    assert sep[0, 2] == want_run
    assert n == (1 if act else 0)
    if act:
        assert ev_f[0, 2] == dist  # the raise's (or clear's) evidence: the exact distance
