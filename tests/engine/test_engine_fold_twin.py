"""One alarm per subject folded on the event rows (engine.fold: compiled, over a table of
arrays) against its reference twin, the Python fold of engine.per_subject: random event
streams (every folded type, others, late ones, a protected person's device, arbitrary
raise/clear orders) over random registers, in random batches, with the open episodes
checkpointed and restored mid-stream and reconciled to a new register (devices moved
and removed: ids outside the registry). Every event's output and the checkpoint array
are the reference's.

Marked ``kernel``: ``make test`` re-runs it with NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_reload_vs_reference import ZONE_SETS, registers

from contract.alarms import ALARM_TYPES
from engine import kernels as K
from engine import load_registry
from engine.fold.table import FoldTable
from engine.per_subject import SUBJECT_TYPES, SubjectEpisodes, folds

pytestmark = pytest.mark.kernel

# The types drawn: the folded ones (the warning and a violation of the same zone most),
# and two that are not (offline, separation).
TYPES = [ALARM_TYPES.index(t) for t in ("approach", "exclusion", "approach", "exclusion",
                                        "outbound", "leave_overdue", "curfew", "offline",
                                        "separation")]


def draw_events(data, registry, n_zones: int, at0: int) -> list[tuple]:
    """(device, type, zone, raised, at, episode at, late) rows: mostly the first few
    devices, types and zones, so that the devices of a subject meet in the same episodes,
    raise and clear in every order."""
    if not registry.n_devices:
        return []
    rows = []
    for k in range(data.draw(st.integers(0, 40))):
        few = data.draw(st.booleans())
        d = data.draw(st.integers(0, (min(registry.n_devices, 4) if few
                                      else registry.n_devices) - 1))
        rows.append((d, data.draw(st.sampled_from(TYPES)),
                     data.draw(st.sampled_from([0, 0, -1, 1][:2 + min(n_zones, 2)])),
                     int(data.draw(st.booleans())), at0 + k,
                     at0 + k - data.draw(st.integers(0, 3)),
                     int(data.draw(st.integers(0, 9)) == 0)))
    return rows


def reference_out(ref: SubjectEpisodes, registry, zone_ids, alarm_per: str, rows) -> list:
    out = []
    for d, typ, z, raised, at, episode, late in rows:
        if d >= registry.n_subject_devices:
            out.append(0)
            continue
        subject = registry.subjects[int(registry.arrays.device_subject[d])]
        name = ALARM_TYPES[typ]
        if not folds(alarm_per, name, late != 0, len(subject.device_ids)):
            out.append(-1)
            continue
        out.append([(int(up), t, dev, ep_at, devs) for up, t, dev, ep_at, devs in ref.fold(
            raised != 0, name, subject.subject_id, registry.device_ids[d],
            zone_ids[z] if z >= 0 else None, episode, at)] or 0)  # (0: folded into nothing)
    return out


def table_out(table: FoldTable, alarm_per: str, rows) -> list:
    ev_i = np.full((len(rows) + 1, K.N_EV_I), -7, dtype=np.int64)  # (+1: never read)
    if rows:
        ev_i[:len(rows), :7] = rows
    ev_f = np.arange((len(rows) + 1) * K.N_EV_F, dtype=np.float64).reshape(-1, K.N_EV_F)
    nparts, kept_i, kept_f, parts, pool = table.fold(ev_i, ev_f, len(rows),
                                                     alarm_per == "subject")
    # The rows kept are those that become anything, each with its columns and subject.
    kept = np.flatnonzero(nparts[:len(rows)])
    assert kept_i[:, 0].tolist() == kept.tolist()
    assert kept_i[:, 1].tolist() == nparts[kept].tolist()
    assert (kept_i[:, 2:9] == ev_i[kept, :7]).all()
    assert kept_i[:, 9].tolist() == table.registry.arrays.device_subject[ev_i[kept, 0]].tolist()
    assert (kept_f == ev_f[kept, :4]).all()
    out, pi, names = [], 0, table.names
    for m in nparts[:len(rows)].tolist():
        if m <= 0:
            out.append(m)
            continue
        out.append([(up, ALARM_TYPES[t], names[lead], at,
                     [names[x] for x in pool[off:off + count]])
                    for up, t, lead, at, off, count in parts[pi:pi + m]])
        pi += m
    return out


def draw_open(data, ref: SubjectEpisodes, registry, zone_ids) -> list[tuple]:
    """Open device episodes after a reload: some of the reference's open devices that are
    still in the same subject, and some new ones."""
    subject_of = {d: registry.subjects[int(registry.arrays.device_subject[i])].subject_id
                  for i, d in enumerate(registry.device_ids[:registry.n_subject_devices])}
    rows = [(s, d, t, z, ep.at) for (s, t, z), ep in ref.episodes.items() for d in ep.open
            if subject_of.get(d) == s and (z is None or z in zone_ids)
            and data.draw(st.booleans())]
    for _ in range(data.draw(st.integers(0, 4)) if subject_of else 0):
        d = data.draw(st.sampled_from(sorted(subject_of)))
        rows.append((subject_of[d], d, data.draw(st.sampled_from(SUBJECT_TYPES)),
                     data.draw(st.sampled_from([None, *zone_ids[:2]])),
                     data.draw(st.integers(0, 50))))
    return list({r[:4]: r for r in rows}.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(registers(), min_size=1, max_size=3), st.sampled_from(["subject", "device"]),
       st.data())
def test_fold_on_the_rows_equals_the_python_fold(chain, alarm_per, data):
    ref, table, at = SubjectEpisodes(), None, 1000
    for z, subjects_file in chain:
        zones = ZONE_SETS[z]
        registry = load_registry(subjects_file, zones)
        zone_ids = list(zones.zone_ids)
        if table is None:
            table = FoldTable(registry, zone_ids)
        else:  # a reload: the open episodes reconciled to the new register
            rows = draw_open(data, ref, registry, zone_ids)
            folded = {s.subject_id for s in registry.subjects if len(s.device_ids) > 1} \
                if alarm_per == "subject" else set()
            episodes = table.episodes()
            episodes.reconcile(rows, folded)
            ref.reconcile(rows, folded)
            table = FoldTable.of_episodes(episodes, registry, zone_ids)
            assert table.to_array().tolist() == ref.to_array().tolist()
        for _ in range(data.draw(st.integers(1, 4))):
            rows = draw_events(data, registry, len(zone_ids), at)
            at += 100
            assert table_out(table, alarm_per, rows) == reference_out(ref, registry,
                                                                      zone_ids, alarm_per, rows)
            assert table.to_array().tolist() == ref.to_array().tolist()
            assert len(table) == len(ref.episodes)
            if data.draw(st.booleans()):  # a checkpoint, and a restart from it
                table = FoldTable.of_episodes(SubjectEpisodes.from_array(table.to_array()),
                                              registry, zone_ids)
                ref = SubjectEpisodes.from_array(ref.to_array())


def test_the_table_grows_and_keeps_its_episodes():
    """Many episodes at once (the table starts with room for 16, its hash with 32 slots):
    every one is found again, folded and closed, as the reference does."""
    zones = ZONE_SETS[0]
    zone_ids = list(zones.zone_ids)
    subjects = [{"subject_id": f"S-{i}", "region": "R", "level": "strict", "devices": [
        {"device_id": f"S-{i}-a"}, {"device_id": f"S-{i}-b"}], "inclusion": [],
        "exclusion": zone_ids[:3]} for i in range(60)]
    registry = load_registry({"subjects": subjects}, zones)
    table, ref = FoldTable(registry, zone_ids), SubjectEpisodes()
    excl, approach = ALARM_TYPES.index("exclusion"), ALARM_TYPES.index("approach")
    rows = [(d, typ, z, 1, 10 + d, 10 + d, 0) for typ in (approach, excl)
            for z in range(3) for d in range(registry.n_devices)]
    rows += [(d, typ, z, 0, 5000 + d, 10 + d, 0) for typ in (excl, approach)
             for z in range(3) for d in range(registry.n_devices)]
    for lo in range(0, len(rows), 500):
        part = rows[lo:lo + 500]
        got = table_out(table, "subject", part)
        assert got == reference_out(ref, registry, zone_ids, "subject", part)
        assert table.to_array().tolist() == ref.to_array().tolist()
    assert len(table) == 0 and len(table.rint) >= 360
    assert sum(len(x) for x in got if isinstance(x, list)) > 0


def test_a_device_removed_from_the_register_stays_in_its_episode():
    """The lead of an open episode leaves it and is removed from the register: the
    episode (reconciled to the new register) still names it, as lead and in devices."""
    zones = ZONE_SETS[0]
    zone_ids = list(zones.zone_ids)

    def register(devices):
        return load_registry({"subjects": [{
            "subject_id": "S-0", "region": "R", "level": "strict",
            "devices": [{"device_id": d, "kind": k} for d, k in devices],
            "inclusion": [], "exclusion": zone_ids[:1]}]}, zones)

    before = register([("D-0", "bracelet"), ("D-1", "phone"), ("D-2", "phone")])
    table, ref = FoldTable(before, zone_ids), SubjectEpisodes()
    excl = ALARM_TYPES.index("exclusion")
    rows = [(0, excl, 0, 1, 10, 10, 0), (1, excl, 0, 1, 11, 11, 0), (0, excl, 0, 0, 12, 10, 0)]
    assert table_out(table, "subject", rows) == reference_out(ref, before, zone_ids,
                                                              "subject", rows)
    after = register([("D-2", "phone"), ("D-1", "phone")])
    open_rows = [("S-0", "D-1", "exclusion", zone_ids[0], 11)]
    episodes = table.episodes()
    episodes.reconcile(open_rows, {"S-0"})
    ref.reconcile(open_rows, {"S-0"})
    table = FoldTable.of_episodes(episodes, after, zone_ids)
    assert table.extras == ["D-0"]
    rows = [(0, excl, 0, 1, 20, 20, 0), (1, excl, 0, 0, 21, 11, 0), (0, excl, 0, 0, 22, 20, 0)]
    got = table_out(table, "subject", rows)
    assert got == reference_out(ref, after, zone_ids, "subject", rows)
    assert got == [0, 0, [(0, "exclusion", "D-0", 10, ["D-0", "D-1", "D-2"])]]
