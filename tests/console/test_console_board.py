"""The status board (issue #16): ``GET /api/board`` over 10 000 subjects — region
scoping, the ``board.read`` audit row, rows that match the store, a fixed number of
queries whatever the number of subjects — and its page, a virtualised list, in headless
Chromium in English and Chinese (screenshots in tests/artifacts/board/); the curfew
state from the register's curfew windows (across midnight), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from browser_helpers import WAIT_S, click, log_in, start_chromium
from console_helpers import CNMAPS, Server, add_accounts, audit_rows, http_log_in, raised
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from alarms.store import open_store
from console import create_app
from emfence.config import Config

pytest_plugins = ["console_helpers"]  # any_console: SQLite and PostgreSQL

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "board"
N = 10_000
NOW = int(time.time() * 1000)  # the console's clock is the wall clock
LEVELS = ("strict", "ordinary", "lenient")


def _sid(k: int) -> str:
    return f"S-{k:05d}"


def _region(k: int) -> str:
    return "411302" if k % 10 == 0 else "411303"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """10 000 subjects (every tenth in 宛城区 411302, the rest in 卧龙区 411303), a fix
    and a status for each bracelet, open alarms for a few, S-00001 on approved leave."""
    tmp = tmp_path_factory.mktemp("board")
    store = open_store(f"sqlite:///{tmp / 'alarms.db'}")
    add_accounts(store)
    reg = store.register
    reg.adcode_dir = str(CNMAPS)
    for code in ("411303", "411302"):
        reg.import_adcode(code, actor="root", now_ms=NOW - 7_200_000)
    subjects = [{"subject_id": _sid(k), "name": f"对象{k}", "region": _region(k),
                 "level": LEVELS[k % 3], "officer": f"民警{k % 7}",
                 "devices": [{"device_id": f"B-{k:05d}"}], "inclusion": [_region(k)]}
                for k in range(N)]
    reg.import_files({"type": "FeatureCollection", "features": []}, {"subjects": subjects},
                     actor="root", now_ms=NOW - 7_200_000)
    store.record_fixes([(f"B-{k:05d}", _sid(k), _region(k), NOW - k * 1000, 33.0, 112.5,
                         10.0, "gps", NOW - k * 1000 + 50) for k in range(N)])
    store.record_device_status([(f"B-{k:05d}", _region(k), NOW - k * 1000, float(k % 101),
                                 "open" if k % 50 == 1 else "ok", "on", NOW - k * 1000 + 60)
                                for k in range(N)])
    store.record_events([raised("a-out", "411303", kind="outbound", subject=_sid(3),
                                device="B-00003", at=NOW - 60_000),
                         raised("a-tam", "411303", kind="tamper", subject=_sid(3),
                                device="B-00003", at=NOW - 50_000),
                         raised("a-off", "411303", kind="offline", subject=_sid(7),
                                device="B-00007", at=NOW - 40_000)], NOW - 30_000)
    leave = reg.request_leave(_sid(1), zones=["411303"], start_ms=NOW - 1_800_000,
                              end_ms=NOW + 86_400_000, reason="探亲", actor="alice",
                              now_ms=NOW - 3_600_000)
    reg.approve_leave(leave["leave_id"], actor="sue", role="supervisor", now_ms=NOW - 3_500_000)
    server = Server(create_app(store=store, config=Config(), secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()


def _count_queries(store) -> tuple[list, int]:
    """Rows of store.board(None) and the SELECTs it ran (this thread's connections)."""
    seen: list[str] = []
    conns = {id(c): c for c in (store._db.conn(), store._tracks_db.conn())}
    for c in conns.values():
        c.set_trace_callback(seen.append)
    try:
        rows = store.board(None, NOW)
    finally:
        for c in conns.values():
            c.set_trace_callback(None)
    return rows, sum(1 for s in seen if s.lstrip().upper().startswith("SELECT"))


def test_board_answers_every_subject_of_my_regions_from_the_store(world):
    server, store = world
    rows, selects = _count_queries(store)
    assert len(rows) == N
    assert selects <= 6, selects  # never one per subject
    alice = http_log_in(server.url, "alice")
    before = max(r["id"] for r in audit_rows(store))
    resp = alice.get("/api/board", headers={"Accept-Encoding": "gzip"})
    assert resp.status_code == 200, resp.text
    # 9 000 subjects' rows travel compressed (about an eighth of the JSON's bytes)
    assert resp.headers["content-encoding"] == "gzip"
    assert int(resp.headers["content-length"]) * 4 < len(resp.content), len(resp.content)
    mine = resp.json()["subjects"]
    assert len(mine) == N - N // 10 and {r["region"] for r in mine} == {"411303"}
    by_id = {r["subject_id"]: r for r in mine}
    for k in (1, 2, 3, 7, 4321, 9999):
        r, dev = by_id[_sid(k)], by_id[_sid(k)]["devices"][0]
        assert (r["name"], r["level"], r["officer"]) == (f"对象{k}", LEVELS[k % 3], f"民警{k % 7}")
        assert dev["device_id"] == f"B-{k:05d}" and dev["last_fix_ts_ms"] == NOW - k * 1000
        assert dev["battery_pct"] == float(k % 101) and dev["last_rx_ms"] == NOW - k * 1000 + 60
        assert dev["strap"] == ("open" if k % 50 == 1 else "ok") and dev["power"] == "on"
    assert (by_id[_sid(3)]["open_alarms"], by_id[_sid(3)]["top_alarm"]) == (2, "tamper")
    assert by_id[_sid(3)]["zone_state"] == "outside"
    assert by_id[_sid(1)]["zone_state"] == "on_leave" and by_id[_sid(2)]["zone_state"] == "inside"
    assert by_id[_sid(7)]["devices"][0]["online"] is False
    assert by_id[_sid(2)]["devices"][0]["online"] is True
    [row] = [r for r in audit_rows(store) if r["id"] > before]
    assert (row["who"], row["action"]) == ("alice", "board.read")
    # region scoping: another region answers 403, and nothing of it is read or audited
    resp = alice.get("/api/board?region=411302")
    assert resp.status_code == 403 and resp.json()["field"] == "region"
    assert [r["action"] for r in audit_rows(store) if r["id"] > before] == ["board.read"]
    # filters and sort, and clear 400s
    got = alice.get("/api/board?state=offline").json()["subjects"]
    assert [r["subject_id"] for r in got] == [_sid(7)]
    got = alice.get("/api/board?state=alarm&sort=-open_alarms").json()["subjects"]
    assert [r["subject_id"] for r in got] == [_sid(3), _sid(7)]
    got = alice.get("/api/board?q=对象999&level=strict&sort=-last_fix").json()["subjects"]
    assert [r["subject_id"] for r in got] == [_sid(999), _sid(9993), _sid(9996), _sid(9999)]
    for bad in ("state=lost", "level=high", "sort=shoe"):
        resp = alice.get(f"/api/board?{bad}")
        assert resp.status_code == 400 and bad.split("=")[0] in resp.json()["message"]
    sue = http_log_in(server.url, "sue")
    assert len(sue.get("/api/board").json()["subjects"]) == N
    assert len(sue.get("/api/board?region=411302").json()["subjects"]) == N // 10


def test_board_answers_while_the_map_waits_for_the_register(world):
    """The map's register model is rebuilt after every register change (seconds with
    10 000 subjects); its /api/zones calls waiting for it must not hold the store's
    threads, or the first screen's board waits behind the map."""
    server, _store = world
    console = server._app.state.console
    gateway, lock = console.gateway, console.register_map._lock
    entered: list[int] = []
    real = gateway.register_map

    async def counted(model):
        entered.append(1)
        return await real(model)

    gateway.register_map = counted
    alice = http_log_in(server.url, "alice")
    n = console.settings.store_threads + 1  # more than the store has threads
    lock.acquire()  # a rebuild under way
    try:
        with ThreadPoolExecutor(n) as pool:
            waiting = [pool.submit(http_log_in(server.url, "alice").get, "/api/zones")
                       for _ in range(n)]
            WebDriverWait(None, WAIT_S, poll_frequency=0.05).until(lambda _: len(entered) == n)
            resp = alice.get("/api/board?state=alarm", timeout=WAIT_S)
            assert resp.status_code == 200
            assert [r["subject_id"] for r in resp.json()["subjects"]] == [_sid(3), _sid(7)]
            assert not any(f.done() for f in waiting)  # still waiting for the model
            lock.release()
            lock = None
            assert [f.result(WAIT_S).status_code for f in waiting] == [200] * n
    finally:
        gateway.register_map = real
        if lock is not None:
            lock.release()


def _rows_in_dom(d) -> list[str]:
    return d.execute_script("return [...document.querySelectorAll('#board-rows .board-row')]"
                            ".map((r) => r.dataset.subjectId)")


def test_board_page_is_a_virtualised_list_in_both_languages(world, tmp_path):
    server, _store = world
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d = start_chromium(tmp_path, lang="en-US", window="1400,900")
    try:
        wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        d.get(server.url + "/")
        log_in(d, wait, "sue")
        for lang, words in (("en", ("Status board", "min ago")), ("zh-CN", ("状态看板", "分钟前"))):
            if lang == "zh-CN":
                click(wait, (By.ID, "lang"))
                wait.until(EC.text_to_be_present_in_element((By.ID, "tab-board"), words[0]))
            click(wait, (By.ID, "tab-board"))
            wait.until(EC.text_to_be_present_in_element((By.ID, "board-count"), f"{N:,}"))
            assert d.find_element(By.ID, "tab-board").text == words[0]
            first = _rows_in_dom(d)
            assert first[0] == _sid(0) and 10 < len(first) < 80, len(first)  # not 10 000
            assert words[1] in d.find_element(By.ID, "board-rows").text
            d.save_screenshot(str(ARTIFACTS / f"{lang}-board.png"))
            d.execute_script("const s = document.getElementById('board-scroll');"
                             "s.scrollTop = s.scrollHeight;")
            wait.until(lambda drv: _sid(N - 1) in _rows_in_dom(drv))
            assert len(_rows_in_dom(d)) < 80
            d.save_screenshot(str(ARTIFACTS / f"{lang}-board-bottom.png"))
            d.execute_script("document.getElementById('board-scroll').scrollTop = 0;")
        # a row opens the subject's page
        wait.until(lambda drv: _sid(0) in _rows_in_dom(drv))
        click(wait, (By.CSS_SELECTOR, f'.board-row[data-subject-id="{_sid(0)}"]'))
        wait.until(EC.visibility_of_element_located((By.ID, "subject-devices")))
        assert d.find_element(By.ID, "board-view").get_attribute("hidden") is not None
    finally:
        d.quit()


# Monday 2025-11-24 01:30 in Asia/Shanghai (register.timezone by default), epoch ms
MON_0130 = 1_763_919_000_000
NIGHT = {"start": "22:00", "end": "06:00", "zone": "411303"}
CURFEWS = {  # subject -> (its curfews, whether one covers Monday 01:30)
    "C-1": ([NIGHT], True),  # every night: Sunday 22:00 -> Monday 06:00
    "C-2": ([{**NIGHT, "days": ["sun"]}], True),  # started Sunday, ends on a day not listed
    "C-3": ([{**NIGHT, "days": ["mon"]}], False),  # Monday's window begins at 22:00
    "C-4": ([{**NIGHT, "start": "02:00", "end": "05:00"}], False),  # not yet
    "C-5": ([{**NIGHT, "start": "23:00", "end": "01:00"}], False),  # over at 01:00
    "C-6": ([NIGHT], True),  # in the window, with an open curfew alarm: a violation
    "C-7": ([NIGHT], True),  # in the window, never located
}


def test_board_curfew_state_comes_from_the_register_windows(any_console):
    c = any_console
    c.clock.now_ms = MON_0130
    reg = c.store.register
    reg.adcode_dir = str(CNMAPS)
    reg.import_adcode("411303", actor="root", now_ms=MON_0130 - 7_200_000)
    subjects = [{"subject_id": sid, "name": f"对象{sid}", "region": "411303",
                 "level": "ordinary", "devices": [{"device_id": f"B-{sid}"}],
                 "inclusion": ["411303"], "curfews": curfews}
                for sid, (curfews, _) in CURFEWS.items()]
    reg.import_files({"type": "FeatureCollection", "features": []}, {"subjects": subjects},
                     actor="root", now_ms=MON_0130 - 7_200_000)
    c.store.record_fixes([(f"B-{sid}", sid, "411303", MON_0130 - 60_000, 33.0, 112.5, 10.0,
                           "gps", MON_0130 - 59_000) for sid in CURFEWS if sid != "C-7"])
    c.store.record_events([raised("a-cur", kind="curfew", subject="C-6", device="B-C-6",
                                  at=MON_0130 - 30_000)], MON_0130 - 29_000)
    assert c.login("alice").status_code == 200
    resp = c.get("/api/board")
    assert resp.status_code == 200, resp.text
    by_id = {r["subject_id"]: r for r in resp.json()["subjects"]}
    assert {sid: r["zone_state"] for sid, r in by_id.items()} == {
        "C-1": "curfew", "C-2": "curfew", "C-3": "inside", "C-4": "inside",
        "C-5": "inside", "C-6": "curfew", "C-7": "unknown"}
    # the violation keeps its alarm beside the state; a window alone raises nothing
    assert (by_id["C-6"]["open_alarms"], by_id["C-6"]["top_alarm"]) == (1, "curfew")
    assert (by_id["C-1"]["open_alarms"], by_id["C-1"]["top_alarm"]) == (0, None)
    got = c.get("/api/board?state=curfew").json()["subjects"]
    assert [r["subject_id"] for r in got] == ["C-1", "C-2", "C-6"]
    # an hour later than the longest window: nobody is in curfew, the violation still is
    c.clock.now_ms = MON_0130 + 5 * 3_600_000
    assert c.login("alice").status_code == 200  # the session of 01:30 has timed out
    by_id = {r["subject_id"]: r for r in c.get("/api/board").json()["subjects"]}
    assert [sid for sid, r in by_id.items() if r["zone_state"] == "curfew"] == ["C-6"]
