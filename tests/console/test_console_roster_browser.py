"""The duty roster page in headless Chromium with a Chinese (zh-CN) browser: a supervisor
adds a night-shift duty operator and a squadron leader, sees who an alarm reaches, the
English toggle, and the results read back from the store; an operator has no tab."""

from __future__ import annotations

import pytest
from browser_helpers import (
    WAIT_S,
    click,
    log_in,
    log_out,
    severe_console_messages,
    start_chromium,
    type_time,
)
from console_helpers import Server, add_accounts
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from alarms.store import open_store
from console import create_app
from emfence.config import Config

pytestmark = pytest.mark.browser


@pytest.fixture
def served(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    server = Server(create_app(store=store, config=Config(), secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()


@pytest.fixture
def zh_browser(tmp_path):
    driver = start_chromium(tmp_path, lang="zh-CN", window="1400,1000")
    yield driver
    driver.quit()


def add_person(d, wait, pid, name, role, shifts=""):
    fill(wait, pid, name, role, shifts)
    wait.until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, f'#roster-table tr[data-person-id="{pid}"]')))


def fill(wait, pid, name, role, shifts):
    """Fill the person form and save."""
    form = wait.until(EC.visibility_of_element_located((By.ID, "roster-form")))
    for fid, value in (("rp-id", pid), ("rp-name", name), ("rp-region", "411303"),
                       ("rp-phone", "13800000000")):
        box = form.find_element(By.ID, fid)
        box.clear()
        box.send_keys(value)
    Select(form.find_element(By.ID, "rp-role")).select_by_value(role)
    form.find_element(By.ID, "rp-shifts").clear()
    if shifts:
        form.find_element(By.ID, "rp-shifts").send_keys(shifts)
    click(wait, (By.ID, "rp-save"))


def test_a_supervisor_keeps_the_roster_on_the_page(served, zh_browser, tmp_path):
    server, store = served
    d = zh_browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")
    log_in(d, wait, "alice")
    assert not d.find_element(By.ID, "tab-roster").is_displayed()  # operators: no roster
    log_out(wait)
    log_in(d, wait, "sue")
    tab = d.find_element(By.ID, "tab-roster")
    assert tab.is_displayed() and tab.text == "值班表"  # Chinese first
    click(wait, (By.ID, "tab-roster"))
    wait.until(EC.visibility_of_element_located((By.ID, "roster-empty")))
    add_person(d, wait, "NIGHT", "值班员王五", "duty", "mon,tue,wed,thu,fri 22:00-08:00")
    add_person(d, wait, "SQ", "中队长李四", "squadron")
    row = d.find_element(By.CSS_SELECTOR, '#roster-table tr[data-person-id="NIGHT"]')
    assert "值班员" in row.text and "22:00–08:00（次日）" in row.text
    # a bad shift is refused with the field named, and nothing is stored
    fill(wait, "BAD", "某人", "duty", "mon 22:00-25:00")
    wait.until(EC.text_to_be_present_in_element((By.ID, "roster-error"), "shifts[0].end"))
    # who an alarm reaches on a Monday night (Asia/Shanghai)
    region = d.find_element(By.ID, "told-region")
    region.clear()
    region.send_keys("411303")
    type_time(d.find_element(By.ID, "told-at"), "2026-06-01 23:30")
    click(wait, (By.CSS_SELECTOR, "#told-form button[type=submit]"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "told-out"), "值班员王五"))
    levels = [p.text for p in d.find_elements(By.CSS_SELECTOR, "#told-out .told-level")]
    assert levels[0].startswith("第 1 级") and "值班员王五" in levels[0]
    assert "中队长李四" in levels[1] and "无人" in levels[2]
    d.save_screenshot(str(tmp_path / "roster-zh.png"))
    click(wait, (By.ID, "lang"))  # English
    wait.until(EC.text_to_be_present_in_element((By.ID, "tab-roster"), "Duty roster"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "roster-table"), "duty operator"))
    assert "(next day)" in d.find_element(By.ID, "roster-table").text
    # the one error the page logged is the refused shift's 400
    assert all("/api/roster/BAD" in m and "400" in m for m in severe_console_messages(d))
    people = {p["person_id"]: p for p in store.roster.people()}
    assert set(people) == {"NIGHT", "SQ"}
    assert people["NIGHT"]["shifts"] == [{"days": ["mon", "tue", "wed", "thu", "fri"],
                                          "start": "22:00", "end": "08:00"}]
    assert [a["who"] for a in store.audit_log(action="roster.put")] == ["sue", "sue"]
