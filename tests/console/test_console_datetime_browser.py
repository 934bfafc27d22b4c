"""The page's date and date-time inputs (datetime.js, vendored flatpickr) in headless
Chromium with an en-US and a zh-CN browser, both in New York time: 24-hour
"YYYY-MM-DD HH:mm" text with the command centre's offset beside it whatever the
browser's locale, typed or chosen on the calendar, read in the centre's zone
(Asia/Shanghai): the track playback asks for exactly the range shown, a leave across
midnight is stored as typed, bad text gets the forms' error, and the page's CSP
(script-src 'self', style-src 'self') sees no violation."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from pathlib import Path

import pytest
from browser_helpers import (
    WAIT_S,
    click,
    log_in,
    severe_console_messages,
    start_chromium,
    type_time,
)
from console_helpers import CNMAPS, T0, Server, add_accounts
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_console_i18n_browser import PLAYBACK_FIXES

from alarms.store import open_store
from console import create_app
from emfence.config import Config

pytestmark = pytest.mark.browser

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "datetime"
TEXT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$")


def shanghai_ms(text: str) -> int:
    """Epoch ms of "2025-11-22 14:26" on a Shanghai wall clock."""
    wall = dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=SHANGHAI)
    return int(wall.timestamp() * 1000)


@pytest.fixture
def world(tmp_path):
    """S-1 in 卧龙区 (411303) with the i18n test's 30 fixes before T0, and 宛城区
    (411302) for leave."""
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    reg = store.register
    reg.adcode_dir = str(CNMAPS)
    reg.import_adcode("411303", actor="root", now_ms=T0)
    reg.import_adcode("411302", actor="root", now_ms=T0)
    reg.create_subject({"subject_id": "S-1", "name": "张三", "region": "411303", "level": "strict",
                        "devices": [{"device_id": "B-S-1"}], "inclusion": ["411303"]},
                       actor="alice", now_ms=T0)
    store.record_fixes(PLAYBACK_FIXES)
    server = Server(create_app(store=store, config=Config(), secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()


def choose_day(wait, element, day: int) -> None:
    """Open ``element``'s calendar and click ``day`` of the month it shows."""
    element.click()
    # the calendar fades in: click a day once it is there to be clicked
    wait.until(lambda drv: drv.execute_script(
        "const c = document.querySelector('.flatpickr-calendar.open');"
        "return c !== null && getComputedStyle(c).opacity === '1';"))
    cell = (By.XPATH, ("//div[contains(@class, 'flatpickr-calendar') and contains(@class, 'open')]"
            "//span[contains(@class, 'flatpickr-day') and not(contains(@class, 'prevMonthDay'))"
            f" and not(contains(@class, 'nextMonthDay')) and normalize-space(.)='{day}']"))
    click(wait, cell)
    element.send_keys(Keys.ESCAPE)


def weekday_heads(d, element) -> str:
    """The weekday row of ``element``'s calendar (its language), closed again after."""
    element.click()
    open_calendar = ".flatpickr-calendar.open .flatpickr-weekdaycontainer"
    # its text content: the calendar fades in, and a fading element has no .text yet
    heads = d.find_element(By.CSS_SELECTOR, open_calendar).get_attribute("textContent")
    element.send_keys(Keys.ESCAPE)
    return heads


def playback(d, wait, store, lang: str) -> None:
    """The range inputs show 24-hour text and the offset; a typed and a chosen end load
    the track of exactly that window; text that is no time is named."""
    pb_from = d.find_element(By.CSS_SELECTOR, ".pb-from")
    pb_to = d.find_element(By.CSS_SELECTOR, ".pb-to")
    for box in (pb_from, pb_to):
        assert TEXT.match(box.get_attribute("value")), box.get_attribute("value")
    zones = [z.text for z in d.find_elements(By.CSS_SELECTOR, ".track-playback .dt-zone")]
    assert zones == ["UTC+08:00", "UTC+08:00"]
    # the default window ends now, on the Shanghai clock (not New York's, not 12-hour)
    assert abs(shanghai_ms(pb_to.get_attribute("value")) - store_now()) < 120_000
    type_time(pb_from, "2025-11-22 14:26")
    type_time(pb_to, "2025-11-21 17:05")
    pb_to.send_keys(Keys.ENTER)  # the picker takes the text (as on leaving the box)
    choose_day(wait, pb_to, 22)  # the calendar keeps the time typed
    click(wait, (By.CSS_SELECTOR, ".pb-load"))
    wait.until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, ".pb-fix")) == 30)
    assert (pb_from.get_attribute("value"), pb_to.get_attribute("value")) == (
        "2025-11-22 14:26", "2025-11-22 17:05")
    [row] = store.audit_log(action="track.view")
    assert (row["detail"]["from_ms"], row["detail"]["to_ms"]) == (
        shanghai_ms("2025-11-22 14:26"), shanghai_ms("2025-11-22 17:05"))
    d.save_screenshot(str(ARTIFACTS / f"{lang}-playback.png"))
    # 13th month: the forms' own words, the text kept for the operator to mend
    type_time(pb_from, "2025-13-22 14:26")
    click(wait, (By.CSS_SELECTOR, ".pb-load"))
    words = {"en": "bad parameter from_ms", "zh-CN": "参数 from_ms 无效"}[lang]
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".pb-summary"), words))
    assert pb_from.get_attribute("value") == "2025-13-22 14:26"
    assert pb_from.get_attribute("aria-invalid") == "true"
    assert len(store.audit_log(action="track.view")) == 1
    # 02:30 on 8 March 2026 is no time in New York (its clocks skip the hour), but it is
    # in Shanghai: the box keeps it as typed and the page asks for it
    type_time(pb_from, "2026-03-08 02:30")
    type_time(pb_to, "2026-03-08 04:00")
    click(wait, (By.CSS_SELECTOR, ".pb-load"))
    wait.until(lambda drv: len(store.audit_log(action="track.view")) == 2)
    row = store.audit_log(action="track.view")[0]  # newest first
    assert (row["detail"]["from_ms"], row["detail"]["to_ms"]) == (
        shanghai_ms("2026-03-08 02:30"), shanghai_ms("2026-03-08 04:00"))
    assert pb_from.get_attribute("value") == "2026-03-08 02:30"
    assert pb_from.get_attribute("aria-invalid") is None


def store_now() -> int:
    return int(dt.datetime.now(tz=dt.UTC).timestamp() * 1000)


def leave_across_midnight(d, wait, store) -> None:
    """23:30 to 00:45 the next day on the Shanghai clock, stored and shown as typed."""
    day = (dt.datetime.now(SHANGHAI) + dt.timedelta(days=1)).date()
    start, end = f"{day} 23:30", f"{day + dt.timedelta(days=1)} 00:45"
    Select(d.find_element(By.CSS_SELECTOR, ".lv-zones")).select_by_value("411302")
    type_time(d.find_element(By.CSS_SELECTOR, ".lv-start"), start)
    type_time(d.find_element(By.CSS_SELECTOR, ".lv-end"), end)
    d.find_element(By.CSS_SELECTOR, ".lv-reason").send_keys("探亲")
    click(wait, (By.CSS_SELECTOR, ".lv-submit"))
    row = (By.CSS_SELECTOR, "#subject-leaves tr[data-leave-id]")
    wait.until(EC.presence_of_element_located(row))
    [lv] = store.register.list_leaves(subject_id="S-1", now_ms=store_now())
    assert (lv["start"], lv["end"]) == (shanghai_ms(start), shanghai_ms(end))
    text = d.find_element(*row).text
    assert f"{start}:00 UTC+08:00" in text and f"{end}:00 UTC+08:00" in text


@pytest.mark.parametrize("lang", ["en-US", "zh-CN"])
def test_date_time_inputs_are_24_hour_in_the_centres_zone(tmp_path, world, lang):
    server, store = world
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page_lang = "en" if lang == "en-US" else "zh-CN"
    d = start_chromium(tmp_path, lang=lang, window="1280,900")
    try:
        wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        d.get(server.url + "/")
        log_in(d, wait, "alice")
        assert d.execute_script("return i18n.lang()") == page_lang  # the browser's language
        click(wait, (By.ID, "tab-subjects"))
        click(wait, (By.CSS_SELECTOR, '#subj-list tr[data-subject-id="S-1"]'))
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, ".pb-load"))
        playback(d, wait, store, page_lang)
        leave_across_midnight(d, wait, store)
        # the calendar speaks the page's language, and follows a switch
        pb_from = d.find_element(By.CSS_SELECTOR, ".pb-from")
        heads = {page_lang: weekday_heads(d, pb_from)}
        click(wait, (By.ID, "lang"))
        other = "zh-CN" if page_lang == "en" else "en"
        wait.until(EC.staleness_of(pb_from))  # the subject page redrawn in the other language
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, ".pb-from"))
        assert d.execute_script("return i18n.lang()") == other
        heads[other] = weekday_heads(d, d.find_element(By.CSS_SELECTOR, ".pb-from"))
        assert "Sun" in heads["en"] and "周日" in heads["zh-CN"], heads
        assert severe_console_messages(d) == []
    finally:
        d.quit()
