"""The register's subjects and devices on SQLite and PostgreSQL: enrolment, changes,
end of supervision, device issue and return, regions, audit, the change sequence, and
effective dating (the register read back as it was at past moments, in the formats the
engine reads)."""

from __future__ import annotations

import itertools

import pytest
from alarms_helpers import raised
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from register_helpers import DAY, T0, circle, setup_zones, subject, table_counts

from alarms import RegisterError
from engine import load_registry
from geofence import compile_zones, load_zones


def _engine_reads(zones, subjects):
    """The snapshot through the engine's own loaders (raises if they refuse it)."""
    return load_registry(subjects, compile_zones(load_zones(zones)))


def test_enrol_read_list_and_the_engine_reads_the_snapshot(reg, store):
    setup_zones(reg)
    store.add_user("dora", "not-a-real-hash", "operator", ["411303"], T0)
    doc = subject("S-1", devices=("B-1", "P-1"), exclusion=("victim-1",), officer="dora",
                  note="判决书 (2026) 豫1303刑初1号")
    entry = reg.create_subject(doc, actor="dora", now_ms=T0 + 1)
    assert entry["state"] == "active" and entry["name"] == "张三"
    assert entry["devices"] == [{"device_id": "B-1", "kind": "bracelet"},
                                {"device_id": "P-1", "kind": "phone"}]
    assert (entry["inclusion"], entry["exclusion"]) == (["411303"], ["victim-1"])
    assert entry["created_at"] == T0 + 1 and entry["ended_at"] is None
    assert reg.get_subject("S-1") == entry
    reg.create_subject(subject("S-2", name="李四", region="411302", inclusion=("411302",),
                               devices=("B-2",)), actor="dora", now_ms=T0 + 2)
    assert [s["subject_id"] for s in reg.list_subjects()] == ["S-1", "S-2"]
    assert [s["subject_id"] for s in reg.list_subjects(q="李")] == ["S-2"]
    assert [s["subject_id"] for s in reg.list_subjects(regions={"411303"})] == ["S-1"]

    zones, subjects = reg.snapshot()
    registry = _engine_reads(zones, subjects)
    assert registry.device_ids == ["B-1", "P-1", "B-2"]
    assert [d["kind"] for s in subjects["subjects"] for d in s["devices"]] == [
        "bracelet", "phone", "bracelet"]
    assert {f["properties"]["zone_id"]: f["properties"]["name"] for f in zones["features"]} \
        == {"411303": "卧龙区", "411302": "宛城区", "411321": "南召县", "victim-1": "受害人住所"}


def test_bad_input_is_named_and_nothing_is_half_applied(reg, store):
    setup_zones(reg)
    reg.create_subject(subject("S-1", devices=("B-1",)), actor="dora", now_ms=T0)
    before = table_counts(store)
    seq = reg.change_seq()
    cases = [
        (subject("S-1", devices=("B-9",)), 409, "subject_id"),
        (subject("S-2", devices=("B-7", "B-1")), 409, "devices[1].device_id"),
        (subject("S-2", inclusion=("411303", "nowhere")), 400, "inclusion[1]"),
        (subject("S-2", exclusion=("nowhere",)), 400, "exclusion[0]"),
        (subject("S-2", level="loose"), 400, "level"),
        (subject("S 2"), 400, "subject_id"),
        ({**subject("S-2"), "name": ""}, 400, "name"),
        ({**subject("S-2"), "officer": "nobody"}, 400, "officer"),
        ({**subject("S-2"), "devices": [{"device_id": "B-8", "kind": "watch"}]}, 400,
         "devices[0].kind"),
    ]
    for doc, status, field in cases:
        with pytest.raises(RegisterError) as err:
            reg.create_subject(doc, actor="dora", now_ms=T0 + 5)
        assert (err.value.status, err.value.field) == (status, field), doc
    assert table_counts(store) == before and reg.change_seq() == seq
    with pytest.raises(RegisterError) as err:
        reg.create_subject(subject("S-3", region="411302"), actor="dora", now_ms=T0 + 5,
                           regions={"411303"})
    assert (err.value.status, err.value.field) == (403, "region")
    with pytest.raises(RegisterError) as err:
        reg.get_subject("S-1", regions={"411302"})
    assert err.value.status == 404
    with pytest.raises(RegisterError) as err:
        reg.get_subject("S-404")
    assert err.value.status == 404


def test_every_change_is_audited_with_before_and_after_and_bumps_the_sequence(reg, store):
    setup_zones(reg)
    seqs = [reg.change_seq()]
    reg.create_subject(subject("S-1", devices=("B-1",)), actor="dora", now_ms=T0 + 10)
    seqs.append(reg.change_seq())
    reg.patch_subject("S-1", {"level": "ordinary", "exclusion": ["victim-1"]}, actor="dora",
                      now_ms=T0 + 20)
    seqs.append(reg.change_seq())
    reg.issue_device("S-1", "P-1", "phone", actor="dora", now_ms=T0 + 30)
    seqs.append(reg.change_seq())
    assert seqs == sorted(set(seqs)) and len(seqs) == 4
    rows = store.audit_log(target="S-1")
    patch = next(r for r in rows if r["action"] == "register.subject.patch")
    assert patch["who"] == "dora" and patch["at"] == T0 + 20
    assert patch["detail"]["before"]["level"] == "strict"
    assert patch["detail"]["after"]["level"] == "ordinary"
    assert patch["detail"]["after"]["exclusion"] == ["victim-1"]
    issue = store.audit_log(target="P-1")[0]
    assert issue["action"] == "register.device.issue"
    assert issue["detail"]["after"]["subject_id"] == "S-1"
    assert reg.change_times(T0 + 10, T0 + 25) == [T0 + 10, T0 + 20]


def test_devices_are_issued_once_returned_and_reissued_with_history(reg, store):
    setup_zones(reg)
    reg.create_subject(subject("S-1", devices=("B-1",)), actor="dora", now_ms=T0)
    reg.create_subject(subject("S-2"), actor="dora", now_ms=T0)
    before = table_counts(store)
    with pytest.raises(RegisterError) as err:
        reg.issue_device("S-2", "B-1", "bracelet", actor="dora", now_ms=T0 + 1)
    assert (err.value.status, err.value.field) == (409, "device_id")
    assert "S-1" in err.value.reason
    assert table_counts(store) == before
    with pytest.raises(RegisterError) as err:
        reg.return_device("B-404", actor="dora", now_ms=T0 + 1)
    assert err.value.status == 404
    with pytest.raises(RegisterError) as err:  # S-1 is not in the caller's regions
        reg.return_device("B-1", actor="eve", now_ms=T0 + 1, regions={"411302"})
    assert err.value.status == 404
    back = reg.return_device("B-1", actor="dora", now_ms=T0 + DAY)
    assert (back["subject_id"], back["returned_at"]) == ("S-1", T0 + DAY)
    reg.issue_device("S-2", "B-1", "bracelet", actor="dora", now_ms=T0 + 2 * DAY)
    history = reg.device_history("B-1")
    assert [(h["subject_id"], h["issued_at"], h["returned_at"]) for h in history] == [
        ("S-1", T0, T0 + DAY), ("S-2", T0 + 2 * DAY, None)]
    # effective dating: the device was S-1's, then nobody's, then S-2's
    owner = {}
    for at in (T0, T0 + DAY - 1, T0 + DAY, T0 + 2 * DAY):
        owner[at] = {s["subject_id"] for s in reg.snapshot(at)[1]["subjects"]
                     if "B-1" in [d["device_id"] for d in s["devices"]]}
    assert owner == {T0: {"S-1"}, T0 + DAY - 1: {"S-1"}, T0 + DAY: set(),
                     T0 + 2 * DAY: {"S-2"}}


def test_the_register_reads_back_as_it_was(reg):
    setup_zones(reg)
    reg.create_zone(circle("school", lon=112.54, name="学校"), actor="admin", now_ms=T0)
    reg.create_subject(subject("S-1", devices=("B-1",)), actor="dora", now_ms=T0 + 100)
    reg.patch_subject("S-1", {"name": "张三丰", "exclusion": ["victim-1"]}, actor="dora",
                      now_ms=T0 + 200)
    reg.patch_subject("S-1", {"exclusion": ["school"], "level": "lenient"}, actor="dora",
                      now_ms=T0 + 300)
    seen = {}
    for at in (T0 + 99, T0 + 100, T0 + 199, T0 + 200, T0 + 300, None):
        subjects = reg.snapshot(at)[1]["subjects"]
        seen[at] = [(s["name"], s["level"], s["exclusion"]) for s in subjects]
    assert seen == {
        T0 + 99: [], T0 + 100: [("张三", "strict", [])], T0 + 199: [("张三", "strict", [])],
        T0 + 200: [("张三丰", "strict", ["victim-1"])],
        T0 + 300: [("张三丰", "lenient", ["school"])],
        None: [("张三丰", "lenient", ["school"])]}
    assert reg.get_subject("S-1", at_ms=T0 + 250)["exclusion"] == ["victim-1"]
    with pytest.raises(RegisterError) as err:
        reg.get_subject("S-1", at_ms=T0 + 50)
    assert err.value.status == 404
    for at in (T0 + 100, T0 + 200, T0 + 300):
        _engine_reads(*reg.snapshot(at))
    assert reg.change_times(T0 + 100, T0 + 300) == [T0 + 100, T0 + 200, T0 + 300]


def test_an_assignment_counts_within_its_own_effective_period(reg):
    setup_zones(reg)
    order = {"zone_id": "victim-1", "reason": "禁止令 (2026) 豫1303刑初7号",
             "from": T0 + DAY, "to": T0 + 3 * DAY}
    reg.create_subject(subject("S-1", devices=("B-1",), exclusion=(order,)), actor="dora",
                       now_ms=T0)
    got = {at: reg.snapshot(at)[1]["subjects"][0]["exclusion"]
           for at in (T0, T0 + DAY, T0 + 3 * DAY - 1, T0 + 3 * DAY)}
    assert got == {T0: [], T0 + DAY: ["victim-1"], T0 + 3 * DAY - 1: ["victim-1"],
                   T0 + 3 * DAY: []}
    a = reg.get_subject("S-1")["assignments"]
    assert [(x["zone_id"], x["reason"], x["from"], x["to"]) for x in a] == [
        ("victim-1", order["reason"], T0 + DAY, T0 + 3 * DAY), ("411303", None, None, None)]
    assert reg.change_times(T0, T0 + 5 * DAY) == [T0, T0 + DAY, T0 + 3 * DAY]


def test_patch_refuses_unknown_keys_and_bad_values(reg, store):
    setup_zones(reg)
    reg.create_subject(subject("S-1", devices=("B-1",)), actor="dora", now_ms=T0)
    before = table_counts(store)
    for changes, field in (({"devices": []}, "devices"), ({"level": "x"}, "level"),
                           ({"officer": "nobody"}, "officer"),
                           ({"inclusion": ["nowhere"]}, "inclusion[0]"),
                           ({"name": " "}, "name")):
        with pytest.raises(RegisterError) as err:
            reg.patch_subject("S-1", changes, actor="dora", now_ms=T0 + 1)
        assert (err.value.status, err.value.field) == (400, field)
    with pytest.raises(RegisterError) as err:
        reg.patch_subject("S-1", {"region": "411302"}, actor="dora", now_ms=T0 + 1,
                          regions={"411303"})
    assert err.value.status == 403
    assert table_counts(store) == before


def test_end_of_supervision_returns_devices_and_files_open_alarms(reg, store):
    setup_zones(reg)
    reg.create_subject(subject("S-1", devices=("B-1", "P-1")), actor="dora", now_ms=T0)
    reg.create_subject(subject("S-2", devices=("B-2",)), actor="dora", now_ms=T0)
    leave = reg.request_leave("S-1", zones=["411321"], start_ms=T0 + 5 * DAY,
                              end_ms=T0 + 6 * DAY, reason="探亲", actor="dora", now_ms=T0 + 1)
    store.record_events([raised("A-new", at=T0 + 10, subject_id="S-1", device_id="B-1"),
                         raised("A-ack", at=T0 + 20, subject_id="S-1", device_id="P-1"),
                         raised("A-done", at=T0 + 30, subject_id="S-1", device_id="B-1",
                                type="tamper"),
                         raised("A-other", at=T0 + 40, subject_id="S-2", device_id="B-2")],
                        now_ms=T0 + 50)
    store.acknowledge("A-ack", "sue", None, T0 + 60)
    store.acknowledge("A-done", "sue", None, T0 + 60)
    store.close_alarm("A-done", "sue", "device_fault", "strap replaced", T0 + 70)
    ended = reg.end_subject("S-1", actor="dora", now_ms=T0 + DAY, reason="刑满解矫")
    assert ended["state"] == "ended" and ended["ended_at"] == T0 + DAY
    assert ended["devices"] == [] and ended["alarms_closed"] == ["A-new", "A-ack"]
    for alarm_id in ("A-new", "A-ack"):
        a = store.get_alarm(alarm_id)
        assert (a["workflow"], a["disposition"], a["closed_by"]) == (
            "closed", "supervision_ended", "dora")
    assert store.get_alarm("A-done")["disposition"] == "device_fault"
    assert store.get_alarm("A-other")["workflow"] == "new"
    assert reg.list_leaves(subject_id="S-1", now_ms=T0 + DAY)[0]["state"] == "cancelled"
    assert leave["leave_id"] == reg.list_leaves(now_ms=T0)[0]["leave_id"]
    assert [s["subject_id"] for s in reg.snapshot()[1]["subjects"]] == ["S-2"]
    assert [s["subject_id"] for s in reg.snapshot(T0 + DAY - 1)[1]["subjects"]] == ["S-1",
                                                                                   "S-2"]
    assert [s["subject_id"] for s in reg.list_subjects(state="ended")] == ["S-1"]
    assert [s["subject_id"] for s in reg.list_subjects(state="active")] == ["S-2"]
    with pytest.raises(RegisterError) as err:
        reg.list_subjects(state="gone")
    assert (err.value.status, err.value.field) == (400, "state")
    with pytest.raises(RegisterError) as err:
        reg.end_subject("S-1", actor="dora", now_ms=T0 + DAY + 1, reason="again")
    assert err.value.status == 409
    reg.issue_device("S-2", "B-1", "bracelet", actor="dora", now_ms=T0 + DAY + 2)
    assert [d["device_id"] for d in reg.get_subject("S-2")["devices"]] == ["B-2", "B-1"]


_sids = itertools.count()
CHANGES = st.one_of(
    st.tuples(st.just("level"), st.sampled_from(["strict", "ordinary", "lenient"])),
    st.tuples(st.just("exclusion"), st.lists(st.sampled_from(["victim-1", "school"]),
                                             unique=True, max_size=2)),
    st.tuples(st.just("issue"), st.integers(0, 2)),
    st.tuples(st.just("return"), st.integers(0, 2)),
)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(CHANGES, min_size=1, max_size=10), gaps=st.lists(
    st.integers(0, 3), min_size=10, max_size=10))
def test_every_past_moment_reads_back_as_a_plain_history_says(reg, changes, gaps):
    """After a random run of changes, the register at each moment (including moments
    when two changes shared a millisecond) is what a plain list of states says."""
    if not reg.list_zones():
        setup_zones(reg)
        reg.create_zone(circle("school", lon=112.54, name="学校"), actor="admin", now_ms=T0)
    sid = f"H-{next(_sids)}"
    devices = [f"{sid}-D{k}" for k in range(3)]
    t = T0 + 1_000 * next(_sids)
    reg.create_subject(subject(sid, devices=(devices[0],)), actor="dora", now_ms=t)
    state = {"level": "strict", "exclusion": [], "devices": [devices[0]]}
    history = [(t, dict(state))]
    for change, gap in zip(changes, gaps, strict=False):
        t += gap  # 0: the same millisecond as the previous change
        what, value = change
        try:
            if what in ("level", "exclusion"):
                reg.patch_subject(sid, {what: value}, actor="dora", now_ms=t)
                state = {**state, what: value}
            elif what == "issue":
                reg.issue_device(sid, devices[value], "bracelet", actor="dora", now_ms=t)
                state = {**state, "devices": [*state["devices"], devices[value]]}
            else:
                reg.return_device(devices[value], actor="dora", now_ms=t)
                state = {**state, "devices": [d for d in state["devices"] if d != devices[value]]}
        except RegisterError as exc:  # issuing one already issued, returning one not issued
            assert exc.status == (409 if what == "issue" else 404)
            assert (devices[value] in state["devices"]) == (what == "issue")
            continue
        history.append((t, dict(state)))
    expected_at = {}
    for when, st_ in history:  # the last state written at each millisecond wins
        expected_at[when] = st_
    for when, st_ in expected_at.items():
        got = [s for s in reg.snapshot(when)[1]["subjects"] if s["subject_id"] == sid]
        if not st_["devices"]:
            assert got == []
            continue
        assert (got[0]["level"], got[0]["exclusion"],
                sorted(d["device_id"] for d in got[0]["devices"])) == (
            st_["level"], st_["exclusion"], sorted(st_["devices"]))
        assert reg.get_subject(sid, at_ms=when)["level"] == st_["level"]
