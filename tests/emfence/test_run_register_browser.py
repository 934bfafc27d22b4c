"""Issue #13 end to end, through the page: `emfence run --store URL --http HOST:PORT`
(a real mosquitto, the engine as a subprocess serving its own console, SQLite and
PostgreSQL), a zh-CN headless Chromium doing every register step an officer does
(enrolment, the leave request, the supervisor's approval in the queue, the return 销假),
fixes published by a real MQTT client and alarms read on the alarm topics."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_run_register import (
    FAST,
    HOME,
    LIVE_S,
    NEIGHBOUR,
    ROOT,
    Client,
    Engine,
    county_feature,
    fix,
    inner_point,
    now_ms,
    of,
    stamps,
)

from alarms.store import open_store

# the console tests' helpers (accounts, Chromium, logging in) live beside them
sys.path.insert(0, str(ROOT / "tests" / "console"))
from browser_helpers import (
    click,
    log_in,
    log_out,
    severe_console_messages,
    shanghai_local,
    start_chromium,
    type_time,
)
from console_helpers import add_accounts

pytestmark = [pytest.mark.mqtt, pytest.mark.browser]

DAY_MS = 86_400_000
PAGE_S = 30  # how long the page may take to react: a guard for a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServingEngine(Engine):
    """`python -m emfence run --store URL --http 127.0.0.1:PORT`: the engine serving the
    console from its own process."""

    def __init__(self, root: Path, broker_url: str, store_url: str):
        (root / "engine.toml").write_text(FAST)
        self.port = free_port()
        self.log_path = root / "engine.log"
        args = [sys.executable, "-m", "emfence", "run", "--broker", broker_url,
                "--store", store_url, "--name", "worker-1", "--config", str(root / "engine.toml"),
                "--http", f"127.0.0.1:{self.port}"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=ROOT,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


LEAVE_ROW = (By.CSS_SELECTOR, "#subject-leaves tr[data-leave-id]")


def enrol_in_page(d, wait) -> None:
    """alice enrols 张三 (S-1) with the bracelet B-1, kept inside 卧龙区."""
    click(wait, (By.ID, "tab-subjects"))
    click(wait, (By.ID, "enrol-open"))
    wait.until(EC.visibility_of_element_located((By.ID, "enrol-form")))
    d.find_element(By.ID, "en-id").send_keys("S-1")
    d.find_element(By.ID, "en-name").send_keys("张三")
    Select(d.find_element(By.ID, "en-level")).select_by_value("strict")
    d.find_element(By.ID, "en-device").send_keys("B-1")
    Select(d.find_element(By.CSS_SELECTOR, ".en-inclusion")).select_by_value(HOME)
    click(wait, (By.ID, "en-submit"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "subject-title"), "张三 S-1"))
    assert "腕带" in d.find_element(By.ID, "subject-devices").text


def request_leave_in_page(d, wait) -> None:
    """From S-1's page: leave to 宛城区, from a minute ago (the form has minutes) to
    tomorrow."""
    t = now_ms()
    Select(d.find_element(By.CSS_SELECTOR, ".lv-zones")).select_by_value(NEIGHBOUR)
    type_time(d.find_element(By.CSS_SELECTOR, ".lv-start"), shanghai_local(t - 60_000))
    type_time(d.find_element(By.CSS_SELECTOR, ".lv-end"), shanghai_local(t + DAY_MS))
    d.find_element(By.CSS_SELECTOR, ".lv-reason").send_keys("探亲")
    click(wait, (By.CSS_SELECTOR, ".lv-submit"))
    wait.until(EC.text_to_be_present_in_element(LEAVE_ROW, "待审批"))


def approve_in_queue(d, wait, engine: ServingEngine, shots: Path) -> None:
    """sue approves the one request in the approval queue; the running engine has the
    approved leave within LIVE_S of the click."""
    click(wait, (By.ID, "tab-leaves"))
    qrow = (By.CSS_SELECTOR, "#queue tr[data-leave-id]")
    wait.until(EC.presence_of_element_located(qrow))
    text = d.find_element(*qrow).text
    assert "S-1" in text and "宛城区" in text and "探亲" in text
    d.save_screenshot(str(shots / "e2e-queue.png"))
    mark = len(engine.log())
    clicked = time.monotonic()
    click(wait, (By.CSS_SELECTOR, "#queue tr[data-leave-id] .leave-approve"))
    wait.until(EC.visibility_of_element_located((By.ID, "queue-empty")))
    assert engine.wait_log("reloaded: 2 devices", after=mark) - clicked < LIVE_S


def return_in_page(d, wait, engine: ServingEngine) -> int:
    """alice registers the return (销假) on S-1's page; the wall time of the click."""
    click(wait, (By.ID, "tab-subjects"))
    click(wait, (By.CSS_SELECTOR, 'tr[data-subject-id="S-1"]'))
    wait.until(EC.text_to_be_present_in_element(LEAVE_ROW, "请假中"))  # approved, begun
    mark = len(engine.log())
    clicked, returned_ms = time.monotonic(), now_ms()
    click(wait, (By.CSS_SELECTOR, "#subject-leaves .leave-return"))
    wait.until(EC.text_to_be_present_in_element(LEAVE_ROW, "已销假"))
    assert engine.wait_log("reloaded: 2 devices", after=mark) - clicked < LIVE_S
    return returned_ms


def prepare_store(store_url: str) -> None:
    """The county zones, the accounts (alice: operator of 卧龙区, sue: supervisor) and a
    control subject S-2 (phone P-2, kept inside 卧龙区), enrolled before the engine
    starts."""
    store = open_store(store_url)
    try:
        add_accounts(store)
        for code in (HOME, NEIGHBOUR):
            store.register.create_zone(county_feature(code), actor="root", now_ms=now_ms())
        store.register.create_subject(
            {"subject_id": "S-2", "name": "李四", "region": HOME, "level": "strict",
             "devices": [{"device_id": "P-2", "kind": "phone"}],
             "inclusion": [HOME], "exclusion": []}, actor="root", now_ms=now_ms())
    finally:
        store.close_store()


@pytest.fixture
def zh_browser(tmp_path):
    driver = start_chromium(tmp_path, lang="zh-CN", window="1400,1000")
    yield driver
    driver.quit()


def test_enrol_leave_approve_and_return_in_the_page_reach_the_running_engine(
        tmp_path, store_url, mosquitto, zh_browser):
    # one piece: the story of issue #13 in order, each step depending on the last
    prepare_store(store_url)
    home, neighbour = inner_point(HOME), inner_point(NEIGHBOUR)
    engine = ServingEngine(tmp_path, mosquitto.url, store_url)
    watcher, device = Client(mosquitto.port), Client(mosquitto.port)
    d = zh_browser
    wait = WebDriverWait(d, PAGE_S, ignored_exceptions=[StaleElementReferenceException])
    try:
        engine.wait_log("console listening on")
        engine.wait_log("connected to")
        assert "starting: 1 devices, 2 zones" in engine.log()
        watcher.subscribe("emfence/v1/+/alarms/+")
        d.get(engine.url + "/")
        log_in(d, wait, "alice")

        # enrolment in the page reaches the running engine
        mark = len(engine.log())
        enrol_in_page(d, wait)
        engine.wait_log("reloaded: 2 devices, 2 zones", after=mark)
        d.save_screenshot(str(tmp_path / "e2e-enrolled.png"))

        # out of 卧龙区: outbound; back home: cleared
        ts = stamps(4)
        for k, p in enumerate([home, neighbour, neighbour]):
            device.publish(f"emfence/v1/{HOME}/B-1/fix", fix(ts[k], p))
        got = watcher.alarms_until(lambda ev: of(ev, "B-1", "outbound"))
        [raised] = of(got, "B-1", "outbound")
        assert (raised["event"], raised["zone_id"], raised["device_kind"]) == (
            "raised", HOME, "bracelet")
        device.publish(f"emfence/v1/{HOME}/B-1/fix", fix(ts[3], home))
        got = watcher.alarms_until(lambda ev: of(ev, "B-1"))
        assert [(e["type"], e["event"]) for e in of(got, "B-1")] == [("outbound", "cleared")]

        # the leave: requested by alice, approved by sue in the queue
        request_leave_in_page(d, wait)
        log_out(wait)
        log_in(d, wait, "sue")
        approve_in_queue(d, wait, engine, tmp_path)
        log_out(wait)

        # honoured: S-1 in 宛城区 raises nothing, while the control P-2's fixes there,
        # published after them, do raise (so S-1's fixes were ruled on)
        for t in stamps(3):
            device.publish(f"emfence/v1/{HOME}/B-1/fix", fix(t, neighbour))
        for t in stamps(3):
            device.publish(f"emfence/v1/{HOME}/P-2/fix", fix(t, neighbour))
        got = watcher.alarms_until(lambda ev: of(ev, "P-2", "outbound"))
        assert [(e["type"], e["event"]) for e in of(got, "P-2")] == [("outbound", "raised")]
        assert of(got, "B-1") == [], got

        # the return (销假) in the page: still in 宛城区, S-1 is overdue
        log_in(d, wait, "alice")
        returned_ms = return_in_page(d, wait, engine)
        d.save_screenshot(str(tmp_path / "e2e-returned.png"))
        for t in stamps(2):
            device.publish(f"emfence/v1/{HOME}/B-1/fix", fix(t, neighbour))
        got = watcher.alarms_until(lambda ev: of(ev, "B-1"))
        [overdue] = of(got, "B-1")
        assert (overdue["type"], overdue["event"], overdue["zone_id"]) == (
            "leave_overdue", "raised", HOME)
        assert returned_ms - 1000 <= overdue["at"] <= now_ms()
        assert severe_console_messages(d) == []
        assert engine.stop() == 0
    finally:
        engine.kill()
        watcher.close()
        device.close()
