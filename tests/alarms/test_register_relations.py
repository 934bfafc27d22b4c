"""The register's relations (issue #14) on SQLite and PostgreSQL: prohibited contacts and
protected persons, their checks, versions (the snapshot at a past moment), audit, the
change sequence, import, and the engine reading the snapshot and raising on it."""

from __future__ import annotations

import pytest
from register_helpers import HOME, T0, setup_zones, subject, table_counts

from alarms import RegisterError
from emfence.config import Config
from engine import Engine, load_registry
from geofence import compile_zones, load_zones


def _engine(reg, at_ms=None):
    zones, subjects = reg.snapshot(at_ms)
    z = compile_zones(load_zones(zones))
    return Engine(z, load_registry(subjects, z), Config()), subjects


def _enrol(reg):
    setup_zones(reg)
    for sid, dev in (("S-1", "B-1"), ("S-2", "B-2"), ("S-3", "B-3")):
        reg.create_subject(subject(sid, devices=(dev,)), actor="admin", now_ms=T0)


VICTIM = {"person_id": "VP-1", "name": "王五", "region": "411303", "devices": ["V-1"],
          "protected_from": ["S-1"], "note": "人身安全保护令"}


def test_contacts_are_pairs_versioned_audited_and_in_the_snapshot(reg, store):
    _enrol(reg)
    seq = reg.change_seq()
    assert reg.set_contacts("S-2", ["S-1", "S-3"], actor="dora", now_ms=T0 + 10,
                            reason="同案犯") == ["S-1", "S-3"]
    assert reg.change_seq() > seq  # emfence run --store reloads on it
    assert reg.contacts("S-1") == ["S-2"] and reg.contacts("S-3") == ["S-2"]
    assert reg.get_subject("S-1")["contacts"] == ["S-2"]
    _, subjects = reg.snapshot()
    by_id = {s["subject_id"]: s.get("contacts") for s in subjects["subjects"]}
    assert by_id == {"S-1": ["S-2"], "S-2": ["S-3"], "S-3": None}  # each pair once
    # S-2 and S-3 no longer: the pair ends now, and the past still has it
    assert reg.set_contacts("S-3", [], actor="dora", now_ms=T0 + 20) == []
    assert reg.contacts("S-2") == ["S-1"]
    assert reg.contacts("S-2", at_ms=T0 + 15) == ["S-1", "S-3"]
    engine, _ = _engine(reg)
    assert engine.relations.cont_subj.tolist() == [[0, 1]]  # S-1 and S-2: one pair
    audit = [r for r in reversed(store.audit_log()) if r["action"] == "register.contacts.set"]
    assert [(r["target"], r["detail"]["after"]) for r in audit] == [
        ("S-2", ["S-1", "S-3"]), ("S-3", [])]


@pytest.mark.parametrize(("others", "field", "status"), [
    (["S-1"], "contacts[0]", 400),      # itself
    (["S-9"], "contacts[0]", 404),      # unknown
    (["bad id"], "contacts[0]", 400),   # not an id
    ("S-2", "contacts", 400),           # not a list
])
def test_bad_contacts_are_refused_naming_the_field_and_change_nothing(reg, others, field,
                                                                     status):
    _enrol(reg)
    before = table_counts(reg)
    with pytest.raises(RegisterError) as err:
        reg.set_contacts("S-1", others, actor="dora", now_ms=T0 + 10)
    assert (err.value.field, err.value.status) == (field, status)
    assert table_counts(reg) == before


def test_a_subject_outside_my_regions_is_not_found(reg):
    _enrol(reg)
    with pytest.raises(RegisterError) as err:
        reg.set_contacts("S-1", ["S-2"], actor="dora", now_ms=T0 + 10, regions={"411302"})
    assert err.value.status == 404


def test_a_protected_person_reaches_the_engine_which_raises_proximity(reg, store):
    _enrol(reg)
    p = reg.add_protected(VICTIM, actor="sup", now_ms=T0 + 10)
    assert (p["devices"], p["protected_from"], p["name"]) == (["V-1"], ["S-1"], "王五")
    assert reg.list_protected(regions={"411302"}) == []
    assert [q["person_id"] for q in reg.list_protected(regions={"411303"})] == ["VP-1"]
    engine, subjects = _engine(reg)
    assert subjects["protected"] == [{"person_id": "VP-1", "region": "411303",
                                      "devices": [{"device_id": "V-1", "kind": "victim"}],
                                      "protected_from": ["S-1"]}]
    reg_ = engine.registry
    v, b = reg_.device_index("V-1"), reg_.device_index("B-1")
    lon, lat = HOME
    engine.process_fixes([v], [T0 + 20_000], [lat], [lon], [10.0], [0], [T0 + 20_000])
    events = engine.process_fixes([b], [T0 + 30_000], [lat + 0.001], [lon], [10.0], [0],
                                  [T0 + 30_000])
    assert [(e["type"], e["event"], e["person_id"]) for e in events] == [
        ("proximity", "raised", "VP-1")]
    assert "lat" in events[0] and events[0]["distance_m"] < 200
    # the protection ends: the snapshot no longer has the person; the past still does
    reg.end_protected("VP-1", actor="sup", now_ms=T0 + 40, reason="保护令到期")
    assert "protected" not in reg.snapshot()[1]
    assert reg.snapshot(T0 + 30)[1]["protected"][0]["person_id"] == "VP-1"
    assert [r["action"] for r in reversed(store.audit_log()) if "protected" in r["action"]] == [
        "register.protected.add", "register.protected.end"]


@pytest.mark.parametrize(("change", "field", "status"), [
    ({"person_id": "S-2"}, "person_id", 409),                  # a subject's id
    ({"devices": ["B-2"]}, "devices[0]", 409),                 # a subject's device
    ({"devices": []}, "devices", 400),
    ({"devices": [{"device_id": "V-1", "kind": "phone"}]}, "devices[0].kind", 400),
    ({"protected_from": ["S-9"]}, "protected_from[0]", 404),
    ({"protected_from": []}, "protected_from", 400),
    ({"region": "bad code"}, "region", 400),
])
def test_a_bad_protected_person_is_refused_naming_the_field(reg, change, field, status):
    _enrol(reg)
    before = table_counts(reg)
    with pytest.raises(RegisterError) as err:
        reg.add_protected({**VICTIM, **change}, actor="sup", now_ms=T0 + 10)
    assert (err.value.field, err.value.status) == (field, status)
    assert table_counts(reg) == before


def test_a_device_and_a_person_are_enrolled_once(reg):
    _enrol(reg)
    reg.add_protected(VICTIM, actor="sup", now_ms=T0 + 10)
    with pytest.raises(RegisterError) as err:
        reg.add_protected(VICTIM, actor="sup", now_ms=T0 + 11)
    assert (err.value.field, err.value.status) == ("person_id", 409)
    with pytest.raises(RegisterError) as err:
        reg.add_protected({**VICTIM, "person_id": "VP-2"}, actor="sup", now_ms=T0 + 11)
    assert (err.value.field, err.value.status) == ("devices[0]", 409)
    with pytest.raises(RegisterError) as err:  # nor issued to a subject afterwards
        reg.add_protected({**VICTIM, "person_id": "VP-2"}, actor="sup", now_ms=T0 + 11,
                          regions={"411302"})
    assert err.value.status == 403
    p = reg.update_protected("VP-1", {**VICTIM, "protected_from": ["S-1", "S-2"]},
                             actor="sup", now_ms=T0 + 12)
    assert p["protected_from"] == ["S-1", "S-2"]
    assert reg.get_protected("VP-1", at_ms=T0 + 11)["protected_from"] == ["S-1"]


def test_import_reads_contacts_and_protected_and_a_second_import_keeps_them(reg):
    setup_zones(reg)
    doc = {"subjects": [subject("S-1", devices=("B-1",), contacts=["S-2"]),
                        subject("S-2", devices=("B-2",))],
           "protected": [{"person_id": "VP-1", "region": "411303",
                          "devices": [{"device_id": "V-1", "kind": "victim"}],
                          "protected_from": ["S-2"]}]}
    zones = {"type": "FeatureCollection", "features": []}
    counts = reg.import_files(zones, doc, actor="admin", now_ms=T0)
    assert (counts["contacts_added"], counts["protected_added"]) == (1, 1)
    again = reg.import_files(zones, doc, actor="admin", now_ms=T0 + 1)
    assert (again["contacts_added"], again["protected_added"], again["protected_kept"]) == (
        0, 0, 1)
    _, subjects = reg.snapshot()
    assert subjects["subjects"][0]["contacts"] == ["S-2"]
    assert subjects["protected"][0]["protected_from"] == ["S-2"]
    other = {**doc, "protected": [{**doc["protected"][0], "protected_from": ["S-1"]}]}
    with pytest.raises(RegisterError) as err:
        reg.import_files(zones, other, actor="admin", now_ms=T0 + 2)
    assert (err.value.field, err.value.status) == ("protected[0]", 409)
