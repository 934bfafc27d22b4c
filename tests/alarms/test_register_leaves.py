"""Leave, curfews and suspensions in the register on SQLite and PostgreSQL: the leave
workflow held against a plain dict model (hypothesis), every bad request named with
nothing half-applied, and what the engine is given (approved leaves only, as they were
at each moment)."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from register_helpers import DAY, T0, setup_zones, subject, table_counts

from alarms import RegisterError
from engine import load_registry
from geofence import compile_zones, load_zones

HOUR = 3_600_000


@pytest.fixture
def enrolled(reg):
    setup_zones(reg)
    reg.create_subject(subject("S-1", devices=("B-1",)), actor="dora", now_ms=T0)
    reg.create_subject(subject("S-2", region="411302", inclusion=("411302",), devices=("B-2",)),
                       actor="dora", now_ms=T0)
    return reg


def _request(reg, sid="S-1", start=T0 + DAY, end=T0 + 3 * DAY, zones=("411321",),
             actor="dora", now_ms=T0 + 1, **kw):
    return reg.request_leave(sid, zones=list(zones), start_ms=start, end_ms=end,
                             reason="探亲", actor=actor, now_ms=now_ms, **kw)


def test_request_approve_active_return_and_what_the_engine_is_given(enrolled):
    reg = enrolled
    leave = _request(reg, now_ms=T0 + 10)
    assert (leave["state"], leave["subject_id"], leave["zones"]) == ("requested", "S-1",
                                                                      ["411321"])
    assert (leave["start"], leave["end"], leave["requested_by"], leave["requested_at"]) == (
        T0 + DAY, T0 + 3 * DAY, "dora", T0 + 10)
    queue = reg.list_leaves(state="requested", now_ms=T0 + 20)
    assert [q["leave_id"] for q in queue] == [leave["leave_id"]]
    assert (queue[0]["region"], queue[0]["subject_name"]) == ("411303", "张三")
    assert reg.list_leaves(state="requested", regions={"411302"}, now_ms=T0 + 20) == []
    approved = reg.approve_leave(leave["leave_id"], actor="sue", role="supervisor",
                                 now_ms=T0 + 100)
    assert (approved["state"], approved["decided_by"]) == ("approved", "sue")
    states = {t: reg.list_leaves(now_ms=t)[0]["state"]
              for t in (T0 + DAY - 1, T0 + DAY, T0 + 3 * DAY, T0 + 3 * DAY + 1)}
    assert states == {T0 + DAY - 1: "approved", T0 + DAY: "active", T0 + 3 * DAY: "active",
                      T0 + 3 * DAY + 1: "ended"}
    back = reg.return_leave(leave["leave_id"], actor="dora", now_ms=T0 + 2 * DAY)
    assert (back["state"], back["returned"]) == ("returned", T0 + 2 * DAY)
    given_to_engine = {
        t: reg.snapshot(t)[1]["subjects"][0]["leaves"]
        for t in (T0 + 99, T0 + 100, T0 + 2 * DAY - 1, T0 + 2 * DAY)}
    plain = {"leave_id": leave["leave_id"], "start": T0 + DAY, "end": T0 + 3 * DAY,
             "zones": ["411321"]}
    assert given_to_engine == {T0 + 99: [], T0 + 100: [plain], T0 + 2 * DAY - 1: [plain],
                               T0 + 2 * DAY: [{**plain, "returned": T0 + 2 * DAY}]}
    zones, subjects = reg.snapshot()
    load_registry(subjects, compile_zones(load_zones(zones)))
    past = reg.get_subject("S-1", at_ms=T0 + 50)["leave_requests"]
    assert [lv["state"] for lv in past] == ["requested"]


def test_bad_requests_are_named_and_nothing_is_half_applied(enrolled, store):
    reg = enrolled
    first = _request(reg, start=T0 + 10 * DAY, end=T0 + 12 * DAY)
    reg.approve_leave(first["leave_id"], actor="sue", role="supervisor", now_ms=T0 + 2)
    before, seq = table_counts(store), reg.change_seq()
    cases = [
        ({"end": T0 + DAY + 30 * DAY + 1}, 400, "end"),
        ({"end": T0 + DAY + 7 * DAY, "max_days": 7 - 1}, 400, "end"),
        ({"end": T0 + DAY}, 400, "end"),
        ({"end": T0 + DAY - 1}, 400, "end"),
        ({"start": "2026-06-01T08:00:00"}, 400, "start"),
        ({"zones": ("411321", "nowhere")}, 400, "zones[1]"),
        ({"zones": ()}, 400, "zones"),
        ({"start": T0 + 11 * DAY, "end": T0 + 13 * DAY}, 409, "start"),
        ({"start": T0 + 8 * DAY, "end": T0 + 10 * DAY}, 409, "start"),
        ({"sid": "S-404"}, 404, None),
        ({"sid": "S-2", "regions": {"411303"}}, 404, None),
    ]
    for kw, status, field in cases:
        with pytest.raises(RegisterError) as err:
            _request(reg, **kw)
        assert (err.value.status, err.value.field) == (status, field), kw
    assert table_counts(store) == before and reg.change_seq() == seq
    # the longest leave allowed is allowed
    ok = _request(reg, start=T0 + 20 * DAY, end=T0 + 50 * DAY)
    assert ok["state"] == "requested"


def test_who_may_decide_and_in_which_state(enrolled, store):
    reg = enrolled
    a = _request(reg, actor="sue")  # a supervisor may request, but not decide her own
    b = _request(reg, start=T0 + 2 * DAY, end=T0 + 4 * DAY)  # overlaps a
    before = table_counts(store)
    refusals = [
        (lambda: reg.approve_leave(a["leave_id"], actor="olga", role="operator",
                                   now_ms=T0 + 5), 403),
        (lambda: reg.approve_leave(a["leave_id"], actor="sue", role="supervisor",
                                   now_ms=T0 + 5), 403),
        (lambda: reg.refuse_leave(a["leave_id"], actor="olga", role="operator",
                                  now_ms=T0 + 5), 403),
        (lambda: reg.return_leave(a["leave_id"], actor="dora", now_ms=T0 + 5), 409),
        (lambda: reg.approve_leave("L-404", actor="ada", role="admin", now_ms=T0 + 5), 404),
        (lambda: reg.approve_leave(a["leave_id"], actor="ada", role="admin", now_ms=T0 + 5,
                                   regions={"411302"}), 404),
    ]
    for call, status in refusals:
        with pytest.raises(RegisterError) as err:
            call()
        assert err.value.status == status
    assert table_counts(store) == before
    reg.approve_leave(a["leave_id"], actor="ada", role="admin", now_ms=T0 + 6)
    with pytest.raises(RegisterError) as err:  # b now overlaps an approved leave
        reg.approve_leave(b["leave_id"], actor="sue", role="supervisor", now_ms=T0 + 7)
    assert err.value.status == 409
    refused = reg.refuse_leave(b["leave_id"], actor="sue", role="supervisor", now_ms=T0 + 8,
                               reason="与已批准的请假重叠")
    assert (refused["state"], refused["decision_note"]) == ("refused", "与已批准的请假重叠")
    for call in (lambda: reg.approve_leave(a["leave_id"], actor="ada", role="admin",
                                           now_ms=T0 + 9),
                 lambda: reg.refuse_leave(b["leave_id"], actor="ada", role="admin",
                                          now_ms=T0 + 9)):
        with pytest.raises(RegisterError) as err:
            call()
        assert err.value.status == 409
    actions = [r["action"] for r in store.audit_log(target=a["leave_id"])]
    assert actions == ["register.leave.approve", "register.leave.request"]
    detail = store.audit_log(target=a["leave_id"])[0]["detail"]
    assert (detail["before"]["state"], detail["after"]["state"]) == ("requested", "approved")


_subject_ids = itertools.count()
OPS = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 20), st.integers(-1, 35),
              st.sampled_from(["dora", "sue"])),
    st.tuples(st.just("approve"), st.integers(0, 9), st.sampled_from(["dora", "sue", "ada"]),
              st.sampled_from(["operator", "supervisor", "admin"])),
    st.tuples(st.just("refuse"), st.integers(0, 9), st.sampled_from(["dora", "sue", "ada"]),
              st.sampled_from(["operator", "supervisor", "admin"])),
    st.tuples(st.just("return"), st.integers(0, 9)),
)


def _window_end(lv) -> int:
    return min(lv["end"], lv["returned"]) if lv["returned"] is not None else lv["end"]


def _model_step(model: list[dict], op: tuple, now: int, max_days: int) -> int | None:
    """Apply ``op`` to the plain model; the status it is refused with, or None."""
    if op[0] == "request":
        start, end = T0 + op[1] * DAY, T0 + op[1] * DAY + op[2] * DAY + HOUR * (op[2] < 0)
        if end <= start or end - start > max_days * DAY:
            return 400
        if any(lv["state"] in ("approved", "returned") and lv["start"] <= end
               and _window_end(lv) >= start for lv in model):
            return 409
        model.append({"start": start, "end": end, "by": op[3], "state": "requested",
                      "returned": None})
        return None
    if op[0] != "return" and op[3] == "operator":
        return 403  # refused before the leave is even looked up
    if op[1] >= len(model):
        return 404
    lv = model[op[1]]
    if op[0] == "return":
        if lv["state"] != "approved":
            return 409
        lv["state"], lv["returned"] = "returned", now
        return None
    if op[2] == lv["by"]:
        return 403
    if lv["state"] != "requested":
        return 409
    if op[0] == "approve" and any(
            o is not lv and o["state"] in ("approved", "returned") and o["start"] <= lv["end"]
            and _window_end(o) >= lv["start"] for o in model):
        return 409
    lv["state"] = "approved" if op[0] == "approve" else "refused"
    return None


def _model_view(lv: dict, now: int) -> str:
    if lv["state"] != "approved":
        return lv["state"]
    return "approved" if now < lv["start"] else "active" if now <= lv["end"] else "ended"


def _store_step(reg, sid: str, ids: list[str], op: tuple, now: int, max_days: int) -> None:
    if op[0] == "request":
        start = T0 + op[1] * DAY
        end = start + op[2] * DAY + HOUR * (op[2] < 0)
        ids.append(reg.request_leave(sid, zones=["411321"], start_ms=start, end_ms=end,
                                     reason=None, actor=op[3], now_ms=now,
                                     max_days=max_days)["leave_id"])
        return
    leave_id = ids[op[1]] if op[1] < len(ids) else f"L-none-{op[1]}"
    if op[0] == "return":
        reg.return_leave(leave_id, actor="dora", now_ms=now)
    elif op[0] == "approve":
        reg.approve_leave(leave_id, actor=op[2], role=op[3], now_ms=now)
    else:
        reg.refuse_leave(leave_id, actor=op[2], role=op[3], now_ms=now)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=14), max_days=st.sampled_from([7, 30]))
def test_the_leave_workflow_matches_a_plain_model(enrolled, ops, max_days):
    reg = enrolled
    sid = f"M-{next(_subject_ids)}"
    reg.create_subject(subject(sid, devices=(f"D-{sid}",)), actor="dora", now_ms=T0)
    model: list[dict] = []
    ids: list[str] = []
    for k, op in enumerate(ops):
        now = T0 + k * 2 * DAY  # the register's clock moves through the leaves' windows
        expected = _model_step(model, op, now, max_days)
        try:
            _store_step(reg, sid, ids, op, now, max_days)
            status = None
        except RegisterError as exc:
            status = exc.status
        assert status == expected, (op, model)
        listed = reg.list_leaves(subject_id=sid, now_ms=now)
        assert sorted((lv["start"], lv["end"], lv["state"]) for lv in listed) == sorted(
            (lv["start"], lv["end"], _model_view(lv, now)) for lv in model)
        engine = reg.get_subject(sid)["leaves"]
        assert sorted((lv["start"], lv["end"], lv.get("returned")) for lv in engine) == sorted(
            (lv["start"], lv["end"], lv["returned"]) for lv in model
            if lv["state"] in ("approved", "returned"))


def test_curfews_and_suspensions(enrolled, store):
    reg = enrolled
    curfew = reg.add_curfew("S-1", {"start": "22:00", "end": "06:00", "zone": "victim-1",
                                    "days": ["sun", "mon"], "reason": "居家"},
                            actor="dora", now_ms=T0 + 5)
    assert curfew == {"curfew_id": curfew["curfew_id"], "start": "22:00", "end": "06:00",
                      "zone": "victim-1", "days": ["mon", "sun"], "reason": "居家"}
    suspension = reg.add_suspension("S-1", {"type": "offline", "start": T0 + DAY,
                                            "end": T0 + 4 * DAY, "reason": "住院"},
                                    actor="sue", role="supervisor", now_ms=T0 + 6)
    assert (suspension["type"], suspension["by"]) == ("offline", "sue")
    before = table_counts(store)
    bad = [
        (lambda: reg.add_curfew("S-1", {"start": "24:00", "end": "06:00", "zone": "victim-1"},
                                actor="dora", now_ms=T0 + 7), 400, "start"),
        (lambda: reg.add_curfew("S-1", {"start": "22:00", "end": "06:00", "zone": "nowhere"},
                                actor="dora", now_ms=T0 + 7), 400, "zone"),
        (lambda: reg.add_curfew("S-1", {"start": "22:00", "end": "06:00", "zone": "victim-1",
                                        "days": ["someday"]}, actor="dora", now_ms=T0 + 7),
         400, "days"),
        (lambda: reg.add_suspension("S-1", {"type": "offline", "start": T0, "end": T0 + DAY,
                                            "reason": "住院"}, actor="olga", role="operator",
                                    now_ms=T0 + 7), 403, None),
        (lambda: reg.add_suspension("S-1", {"type": "offline", "start": T0,
                                            "end": T0 + 31 * DAY, "reason": "住院"},
                                    actor="sue", role="supervisor", now_ms=T0 + 7), 400, "end"),
        (lambda: reg.add_suspension("S-1", {"type": "offline", "start": T0, "end": T0 + DAY},
                                    actor="sue", role="supervisor", now_ms=T0 + 7), 400,
         "reason"),
        (lambda: reg.add_suspension("S-1", {"type": "bored", "start": T0, "end": T0 + DAY,
                                            "reason": "x"}, actor="sue", role="supervisor",
                                    now_ms=T0 + 7), 400, "type"),
    ]
    for call, status, field in bad:
        with pytest.raises(RegisterError) as err:
            call()
        assert (err.value.status, err.value.field) == (status, field)
    assert table_counts(store) == before
    entry = reg.snapshot()[1]["subjects"][0]
    assert entry["curfews"] == [curfew]
    assert entry["suspensions"] == [{"suspension_id": suspension["suspension_id"],
                                     "type": "offline", "start": T0 + DAY, "end": T0 + 4 * DAY,
                                     "reason": "住院"}]
    assert reg.snapshot(T0 + 5)[1]["subjects"][0]["suspensions"] == []
    zones, subjects = reg.snapshot()
    load_registry(subjects, compile_zones(load_zones(zones)))


def test_racing_approvals_of_overlapping_leaves_let_exactly_one_through(enrolled):
    reg = enrolled
    ids = [_request(reg, start=T0 + DAY + k * HOUR, end=T0 + 2 * DAY + k * HOUR)["leave_id"]
           for k in range(6)]
    barrier = threading.Barrier(len(ids))
    outcomes: list[str] = []

    def approve(leave_id: str, k: int) -> None:
        barrier.wait()
        try:
            reg.approve_leave(leave_id, actor=f"sup-{k}", role="supervisor", now_ms=T0 + 10)
            outcomes.append("approved")
        except RegisterError as exc:
            outcomes.append(str(exc.status))

    threads = [threading.Thread(target=approve, args=(leave_id, k))
               for k, leave_id in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["409"] * 5 + ["approved"]
    assert len(reg.snapshot()[1]["subjects"][0]["leaves"]) == 1


def test_cancel_a_request_lift_a_curfew_and_withdraw_a_suspension(enrolled, store):
    reg = enrolled
    leave = _request(reg)
    cancelled = reg.cancel_leave(leave["leave_id"], actor="dora", now_ms=T0 + 2,
                                 reason="行程取消")
    assert (cancelled["state"], cancelled["decision_note"]) == ("cancelled", "行程取消")
    with pytest.raises(RegisterError) as err:
        reg.cancel_leave(leave["leave_id"], actor="dora", now_ms=T0 + 3)
    assert err.value.status == 409
    curfew = reg.add_curfew("S-1", {"start": "22:00", "end": "06:00", "zone": "victim-1"},
                            actor="dora", now_ms=T0 + 10)
    suspension = reg.add_suspension("S-1", {"type": "curfew", "start": T0, "end": T0 + DAY,
                                            "reason": "住院"}, actor="sue", role="supervisor",
                                    now_ms=T0 + 10)
    before = table_counts(store)
    for call, status in (
            (lambda: reg.end_suspension(suspension["suspension_id"], actor="olga",
                                        role="operator", now_ms=T0 + 20), 403),
            (lambda: reg.end_curfew(curfew["curfew_id"], actor="eve", now_ms=T0 + 20,
                                    regions={"411302"}), 404),
            (lambda: reg.end_curfew("C-404", actor="dora", now_ms=T0 + 20), 404)):
        with pytest.raises(RegisterError) as err:
            call()
        assert err.value.status == status
    assert table_counts(store) == before
    lifted = reg.end_curfew(curfew["curfew_id"], actor="dora", now_ms=T0 + 20)
    assert (lifted["subject_id"], lifted["ended_at"]) == ("S-1", T0 + 20)
    reg.end_suspension(suspension["suspension_id"], actor="sue", role="supervisor",
                       now_ms=T0 + 30)
    seen = {t: (len(s["curfews"]), len(s["suspensions"]))
            for t in (T0 + 10, T0 + 20, T0 + 29, T0 + 30)
            for s in reg.snapshot(t)[1]["subjects"] if s["subject_id"] == "S-1"}
    assert seen == {T0 + 10: (1, 1), T0 + 20: (0, 1), T0 + 29: (0, 1), T0 + 30: (0, 0)}
    with pytest.raises(RegisterError) as err:
        reg.end_curfew(curfew["curfew_id"], actor="dora", now_ms=T0 + 40)
    assert err.value.status == 404
    assert store.audit_log(target=curfew["curfew_id"])[0]["action"] == "register.curfew.end"
