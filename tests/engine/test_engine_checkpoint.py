"""Checkpoint / restore continues the same episodes; reload keeps surviving devices."""

from __future__ import annotations

import os

import numpy as np
import pytest
from engine_helpers import T0, Feed, brief, compiled, make_engine, offset
from test_engine_rules import FEATURES, INSIDE, east, subject

from emfence.config import config_from_dict
from engine import Engine, load_registry
from engine.state import CACHE_FIELDS, NONE_MS, CheckpointError

pytestmark = pytest.mark.kernel


def open_everything(f: Feed) -> dict[str, str]:
    """Open one episode of every type for B-1; returns alarm ids by type."""
    ids = {}
    f.fix("B-1", T0, *east(500))
    ids["outbound"] = f.fix("B-1", T0 + 1000, *east(500))[0]["alarm_id"]
    ids["exclusion"] = f.fix("B-1", T0 + 2000, 120.03, 30.03)[0]["alarm_id"]  # also clears out
    f.events.clear()
    ids["tamper"] = f.status("B-1", T0 + 3000, battery=5, strap="open")[0]["alarm_id"]
    ids["low_battery"] = f.events[-1]["alarm_id"]
    return ids


def test_restart_mid_episode_continues_the_same_alarms(tmp_path):
    subj = [subject(devices=("B-1", "P-1"))]
    f = Feed(make_engine(FEATURES, subj))
    f.fix("B-1", T0, *east(500))
    out_id = f.fix("B-1", T0 + 1000, *east(500))[0]["alarm_id"]
    excl_id = f.fix("P-1", T0 + 1000, 120.03, 30.03)[0]["alarm_id"]
    tamper_id = f.status("B-1", T0 + 1500, strap="open")[0]["alarm_id"]
    off_id = f.sweep(T0 + 1000 + 601_000)
    assert [(e["device_id"], e["at"]) for e in off_id] == [("B-1", T0 + 1500 + 600_000),
                                                           ("P-1", T0 + 1000 + 600_000)]
    off_ids = {e["device_id"]: e["alarm_id"] for e in off_id}
    path = tmp_path / "state.npz"
    f.engine.checkpoint(path)
    before = f.engine.counters

    e2 = Engine.restore(path, f.engine.zones, f.engine.registry, f.engine.config)
    assert e2.counters == before
    assert sorted(a["alarm_id"] for a in e2.open_alarms()) == sorted(
        a["alarm_id"] for a in f.engine.open_alarms())
    g = Feed(e2)
    assert g.sweep(T0 + 10**7) == []  # offline already open: no second raised
    ev = g.fix("B-1", T0 + 700_000, *east(600))  # still out: no second raised
    assert brief(ev) == [("cleared", "offline", "B-1", None, T0 + 700_000, False)]
    assert ev[0]["alarm_id"] == off_ids["B-1"]
    cleared = g.fix("B-1", T0 + 701_000, *INSIDE)
    assert brief(cleared) == [("cleared", "outbound", "B-1", "home", T0 + 701_000, False)]
    assert cleared[0]["alarm_id"] == out_id
    ev = g.fix("P-1", T0 + 702_000, *INSIDE)
    assert [(e["type"], e["event"], e["alarm_id"]) for e in ev] == [
        ("offline", "cleared", off_ids["P-1"]), ("exclusion", "cleared", excl_id)]
    assert g.status("B-1", T0 + 703_000, strap="ok")[0]["alarm_id"] == tamper_id
    # Older than the newest status, no tamper open: a past episode on its own ts.
    assert brief(g.status("B-1", T0 + 1500, strap="open")) == [
        (e, "tamper", "B-1", None, T0 + 1500, True) for e in ("raised", "cleared")]
    assert g.fix("B-1", T0 + 500, *east(900)) == []  # late fix, state was restored
    assert e2.counters["late_fixes"] == 1
    # The restored engine's later offline deadlines come from the restored receive times.
    assert [e["at"] for e in g.sweep(T0 + 703_000 + 600_001)] == [T0 + 703_000 + 600_000,
                                                                 T0 + 702_000 + 600_000]


def test_checkpoint_is_atomic_and_leaves_no_temporary_files(tmp_path):
    f = Feed(make_engine(FEATURES, [subject()]))
    open_everything(f)
    path = tmp_path / "state.npz"
    f.engine.checkpoint(path)
    first = path.read_bytes()
    f.fix("B-1", T0 + 9000, *INSIDE)
    f.engine.checkpoint(path)  # replaces the old one
    assert path.read_bytes() != first
    assert os.listdir(tmp_path) == ["state.npz"]


def test_restore_rejects_a_broken_file(tmp_path):
    e = make_engine(FEATURES, [subject()])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.npz"):
        Engine.restore(bad, e.zones, e.registry, e.config)
    with pytest.raises(CheckpointError, match="cannot read"):
        Engine.restore(tmp_path / "missing.npz", e.zones, e.registry, e.config)


def test_restore_onto_a_changed_registry_maps_by_id(tmp_path):
    f = Feed(make_engine(FEATURES, [subject(devices=("B-1", "P-1"))]))
    ids = open_everything(f)
    f.fix("P-1", T0, 120.03, 30.03)
    path = tmp_path / "state.npz"
    f.engine.checkpoint(path)
    # New registry: a new subject first (so every dense index moves), P-1 gone, B-1 stays;
    # exclusion gains "school" before "victim" (slot order changes).
    zones = compiled(FEATURES)
    subjects = [subject("S-0", devices=("N-1",)),
                subject("S-1", devices=("B-1",), exclusion=["school", "victim"])]
    registry = load_registry({"subjects": subjects}, zones)
    e2 = Engine.restore(path, zones, registry, f.engine.config)
    got = {(a["type"], a["device_id"]): a["alarm_id"] for a in e2.open_alarms()}
    assert got == {("exclusion", "B-1"): ids["exclusion"], ("tamper", "B-1"): ids["tamper"],
                   ("low_battery", "B-1"): ids["low_battery"]}
    ev = Feed(e2).fix("B-1", T0 + 10_000, *INSIDE)
    assert [(e["type"], e["zone_id"], e["alarm_id"]) for e in ev] == [
        ("exclusion", "victim", ids["exclusion"])]


def test_reload_keeps_surviving_devices_and_applies_new_levels():
    f = Feed(make_engine(FEATURES, [subject(devices=("B-1", "P-1"))]))
    f.fix("B-1", T0, *east(500))
    out_id = f.fix("B-1", T0 + 1000, *east(500))[0]["alarm_id"]
    f.fix("P-1", T0 + 1000, *INSIDE)
    zones = compiled(FEATURES)
    registry = load_registry({"subjects": [subject(level="lenient", devices=("B-1", "X-1"))]},
                             zones)
    stats = f.engine.reload(zones, registry)
    assert stats["devices_kept"] == 1 and stats["devices_dropped"] == 1
    assert stats["devices_new"] == 1
    # Lenient now: 3600 s from B-1's last receive, not 600.
    assert f.sweep(T0 + 1000 + 601_000) == []
    assert [e["device_id"] for e in f.sweep(T0 + 1000 + 3_600_001)] == ["B-1"]
    ev = f.fix("B-1", T0 + 4_000_000, *INSIDE)
    assert [(e["type"], e["alarm_id"]) for e in ev][1] == ("outbound", out_id)
    with pytest.raises(ValueError, match="other zones"):
        f.engine.reload(compiled(FEATURES[:3]), registry)


def test_reload_with_new_config_changes_the_rules():
    e = make_engine(FEATURES, [subject()])
    f = Feed(e)
    f.fix("B-1", T0, *INSIDE)
    e.reload(e.zones, e.registry, config_from_dict({"rules": {"offline_after_s": 30}}))
    assert brief(f.sweep(T0 + 30_001)) == [("raised", "offline", "B-1", None, T0 + 30_000, False)]


def test_restored_state_arrays_equal_the_saved_ones(tmp_path):
    f = Feed(make_engine(FEATURES, [subject(devices=("B-1", "P-1"))]))
    open_everything(f)
    f.fix("P-1", T0 + 5, *offset(*INSIDE, 10, 10))
    path = tmp_path / "s.npz"
    f.engine.checkpoint(path)
    e2 = Engine.restore(path, f.engine.zones, f.engine.registry, f.engine.config)
    for name, arr in f.engine.state._asdict().items():
        if name not in ("floor_ms",) + CACHE_FIELDS:
            np.testing.assert_array_equal(getattr(e2.state, name), arr, err_msg=name)
    # The settled-device cache is rebuilt from the next fix, never restored.
    assert (f.engine.state.safe_m > 0).any() and (e2.state.safe_m < 0).all()
    # The sweep floor is only a lower bound of the deadlines; a restore makes it exact.
    assert f.engine.state.floor_ms[0] <= f.engine.state.deadline_ms.min()
    assert e2.state.floor_ms[0] == e2.state.deadline_ms.min()
    assert (e2.state.last_rx_ms != NONE_MS).all()


def test_a_failed_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    f = Feed(make_engine(FEATURES, [subject()]))
    open_everything(f)
    path = tmp_path / "state.npz"
    f.engine.checkpoint(path)
    good = path.read_bytes()
    saved = sorted(a["alarm_id"] for a in f.engine.open_alarms())
    assert len(saved) == 3  # exclusion, tamper, low_battery (the exclusion fix cleared outbound)
    f.fix("B-1", T0 + 9000, *INSIDE)  # clears the exclusion: not in the old checkpoint

    def disk_full(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        f.engine.checkpoint(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["state.npz"]
    monkeypatch.undo()
    e2 = Engine.restore(path, f.engine.zones, f.engine.registry, f.engine.config)
    assert sorted(a["alarm_id"] for a in e2.open_alarms()) == saved


def test_a_snapshot_is_the_state_when_taken_whenever_it_is_written(tmp_path):
    """The live service copies the state on its processor and writes the copy later, while
    the engine goes on: the file must hold the state of the moment of the copy."""
    from engine.state import write_checkpoint

    f = Feed(make_engine(FEATURES, [subject()]))
    ids = open_everything(f)
    snap = f.engine.snapshot()
    at_snapshot = f.engine.counters
    # the engine goes on: the outbound and exclusion episodes close, more is counted
    cleared = f.fix("B-1", T0 + 9000, *INSIDE)
    assert {e["alarm_id"] for e in cleared} == {ids["exclusion"]}
    f.fix("B-1", T0 + 10_000, *INSIDE)
    assert f.engine.counters != at_snapshot
    later, now = tmp_path / "later.npz", tmp_path / "now.npz"
    write_checkpoint(later, snap)
    f.engine.checkpoint(now)
    e_snap = Engine.restore(later, f.engine.zones, f.engine.registry, f.engine.config)
    assert e_snap.counters == at_snapshot
    assert {a["alarm_id"] for a in e_snap.open_alarms()} == set(ids.values()) - {ids["outbound"]}
    e_now = Engine.restore(now, f.engine.zones, f.engine.registry, f.engine.config)
    assert ids["exclusion"] not in {a["alarm_id"] for a in e_now.open_alarms()}


def test_checkpoint_bytes_restore_like_the_file(tmp_path):
    """The bytes kept in the store are the file's format: restoring either gives the
    same state and the same open alarms."""
    from engine.state import checkpoint_bytes

    f = Feed(make_engine(FEATURES, [subject(devices=("B-1", "P-1"))]))
    open_everything(f)
    path = tmp_path / "s.npz"
    snap = f.engine.snapshot()
    data = checkpoint_bytes(snap)
    f.engine.checkpoint(path)
    from_file = Engine.restore(path, f.engine.zones, f.engine.registry, f.engine.config)
    from_bytes = Engine.restore_bytes(data, f.engine.zones, f.engine.registry, f.engine.config)
    assert sorted(a["alarm_id"] for a in from_bytes.open_alarms()) == sorted(
        a["alarm_id"] for a in f.engine.open_alarms())
    assert from_bytes.counters == from_file.counters == f.engine.counters
    for name, arr in from_file.state._asdict().items():
        np.testing.assert_array_equal(getattr(from_bytes.state, name), arr, err_msg=name)


@pytest.mark.parametrize("data", [b"", b"not a checkpoint", b"PK\x03\x04 half a zip"])
def test_restore_bytes_rejects_broken_bytes_naming_where(data):
    e = make_engine(FEATURES, [subject()])
    with pytest.raises(CheckpointError, match="^the store's row 'w': cannot read checkpoint"):
        Engine.restore_bytes(data, e.zones, e.registry, e.config, where="the store's row 'w'")


def test_a_checkpoint_from_before_the_late_runs_restores_them_fresh(tmp_path):
    """A checkpoint written before late messages were judged (no late fields, ext rows of
    8 columns) restores with no late run; a run mid-way in the engine restores as it was."""
    from engine.state import LATE_FIELDS, X_LATE_CF_RUN

    f = Feed(make_engine(FEATURES, [subject()]))
    f.fix("B-1", T0 + 10_000, *INSIDE)
    assert f.fix("B-1", T0 + 1000, *east(500)) == []  # a late run of one out fix
    path = tmp_path / "new.npz"
    f.engine.checkpoint(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k not in LATE_FIELDS}
    arrays["ext"] = arrays["ext"][:, :X_LATE_CF_RUN]
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    zones, registry, config = f.engine.zones, f.engine.registry, f.engine.config
    restored = Feed(Engine.restore(path, zones, registry, config))
    assert len(restored.fix("B-1", T0 + 2000, *east(500))) == 2  # the run went on
    fresh = Feed(Engine.restore(old, zones, registry, config))
    assert fresh.engine.state.ext.shape == restored.engine.state.ext.shape
    assert fresh.fix("B-1", T0 + 2000, *east(500)) == []  # a new run: its first out fix
    assert len(fresh.fix("B-1", T0 + 3000, *east(500))) == 2
