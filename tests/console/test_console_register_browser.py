"""The register's pages in headless Chromium with a Chinese (zh-CN) browser: enrolment,
a leave request, its approval by a supervisor in the approval queue, the return (销假);
and the zone page (a county by adcode, a circle placed by clicking the map). The
results are read back from the store."""

from __future__ import annotations

import time

import pytest
from browser_helpers import (
    WAIT_S,
    click,
    log_in,
    log_out,
    set_value,
    severe_console_messages,
    shanghai_local,
    start_chromium,
    type_time,
)
from console_helpers import CNMAPS, Server, add_accounts
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from alarms.store import open_store
from console import create_app
from emfence.config import Config

pytestmark = pytest.mark.browser

DAY = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def world(tmp_path):
    """A store with accounts and the zone library (two counties, a victim's home), and
    the console serving it."""
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    reg, t = store.register, now_ms()
    reg.adcode_dir = str(CNMAPS)  # the real county boundaries of tests/data/cnmaps
    for code in ("411303", "411302"):
        reg.import_adcode(code, actor="root", now_ms=t)
    reg.create_zone({"type": "Feature",
                     "geometry": {"type": "Point", "coordinates": [112.52, 33.01]},
                     "properties": {"zone_id": "victim-17", "name": "受害人住所",
                                    "coord_sys": "wgs84", "radius_m": 500}},
                    actor="root", now_ms=t)
    server = Server(create_app(store=store, config=Config(), secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()


@pytest.fixture
def zh_browser(tmp_path):
    """Headless Chromium whose language is Chinese (zh-CN) and whose zone is not the
    command centre's."""
    driver = start_chromium(tmp_path, lang="zh-CN", window="1400,1000")
    yield driver
    driver.quit()


def library_row(zone_id: str) -> tuple[str, str]:
    return (By.CSS_SELECTOR, f'#zone-library tr[data-zone-id="{zone_id}"]')


def enrol(d, wait) -> None:
    """alice enrols 王五 with a bracelet, the county and the victim's home."""
    click(wait, (By.ID, "tab-subjects"))
    click(wait, (By.ID, "enrol-open"))
    wait.until(EC.visibility_of_element_located((By.ID, "enrol-form")))
    d.find_element(By.ID, "en-id").send_keys("S-7")
    d.find_element(By.ID, "en-name").send_keys("王五")
    Select(d.find_element(By.ID, "en-level")).select_by_value("strict")
    d.find_element(By.ID, "en-device").send_keys("B-7")
    Select(d.find_element(By.CSS_SELECTOR, ".en-inclusion")).select_by_value("411303")
    Select(d.find_element(By.CSS_SELECTOR, ".en-exclusion")).select_by_value("victim-17")
    click(wait, (By.ID, "en-submit"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "subject-title"), "王五 S-7"))


def test_enrol_request_leave_approve_in_the_queue_and_return(world, zh_browser, tmp_path):
    server, store = world
    d = zh_browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")
    log_in(d, wait, "alice")
    # Chinese first: the register's tabs speak Chinese in a zh-CN browser
    assert d.find_element(By.ID, "tab-subjects").text == "监管对象"
    assert not d.find_element(By.ID, "tab-leaves").is_displayed()  # operators do not approve
    enrol(d, wait)
    zones = d.find_element(By.ID, "subject-zones").text
    assert "卧龙区" in zones and "受害人住所" in zones and "victim-17" not in zones
    assert "B-7" in d.find_element(By.ID, "subject-devices").text
    assert "腕带" in d.find_element(By.ID, "subject-devices").text
    wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#subject-map path.zone-exclusion"))
    s = store.register.get_subject("S-7")
    assert (s["name"], s["officer"], s["inclusion"], s["exclusion"]) == (
        "王五", "alice", ["411303"], ["victim-17"])
    d.save_screenshot(str(tmp_path / "register-enrolled.png"))

    # request leave to the neighbouring county, tomorrow 08:00 to the day after, 20:00
    start = (now_ms() // DAY + 1) * DAY
    Select(d.find_element(By.CSS_SELECTOR, ".lv-zones")).select_by_value("411302")
    type_time(d.find_element(By.CSS_SELECTOR, ".lv-start"), shanghai_local(start))
    end = start + DAY + 12 * 3_600_000
    type_time(d.find_element(By.CSS_SELECTOR, ".lv-end"), shanghai_local(end))
    d.find_element(By.CSS_SELECTOR, ".lv-reason").send_keys("探望住院的母亲")
    click(wait, (By.CSS_SELECTOR, ".lv-submit"))
    row = (By.CSS_SELECTOR, "#subject-leaves tr[data-leave-id]")
    wait.until(EC.text_to_be_present_in_element(row, "待审批"))
    [lv] = store.register.list_leaves(state="requested", now_ms=now_ms())
    assert (lv["start"], lv["end"], lv["zones"]) == (start, end, ["411302"])
    assert not d.find_elements(By.CSS_SELECTOR, "#subject-leaves .leave-approve")
    log_out(wait)

    # the supervisor approves it from the approval queue
    log_in(d, wait, "sue")
    click(wait, (By.ID, "tab-leaves"))
    qrow = (By.CSS_SELECTOR, f'#queue tr[data-leave-id="{lv["leave_id"]}"]')
    wait.until(EC.presence_of_element_located(qrow))
    text = d.find_element(*qrow).text
    assert "S-7" in text and "宛城区" in text and "探望住院的母亲" in text
    assert "UTC+08:00" in text and shanghai_local(start) in text
    d.save_screenshot(str(tmp_path / "register-queue.png"))
    click(wait, (By.CSS_SELECTOR, f'{qrow[1]} .leave-approve'))
    wait.until(EC.visibility_of_element_located((By.ID, "queue-empty")))
    assert [x["state"] for x in store.register.list_leaves(subject_id="S-7", now_ms=now_ms())] == [
        "approved"]
    log_out(wait)

    # back from leave: the officer registers the return (销假)
    log_in(d, wait, "alice")
    click(wait, (By.ID, "tab-subjects"))
    # the list's search: a name nobody has finds nobody, 王五 finds him
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-subject-id="S-7"]')))
    d.find_element(By.ID, "subj-q").send_keys("赵六")
    d.find_element(By.ID, "subj-q").submit()
    wait.until(EC.text_to_be_present_in_element((By.ID, "subj-list"), "没有符合条件的对象"))
    d.find_element(By.ID, "subj-q").clear()
    d.find_element(By.ID, "subj-q").send_keys("王五")
    d.find_element(By.ID, "subj-q").submit()
    wait.until(EC.text_to_be_present_in_element((By.ID, "subj-list"), "卧龙区"))
    assert "严管" in d.find_element(By.ID, "subj-list").text
    click(wait, (By.CSS_SELECTOR, 'tr[data-subject-id="S-7"]'))
    wait.until(EC.text_to_be_present_in_element(row, "已批准"))
    click(wait, (By.CSS_SELECTOR, "#subject-leaves .leave-return"))
    wait.until(EC.text_to_be_present_in_element(row, "已销假"))
    [back] = store.register.list_leaves(subject_id="S-7", now_ms=now_ms())
    assert back["state"] == "returned"
    d.save_screenshot(str(tmp_path / "register-returned.png"))
    assert severe_console_messages(d) == []


def test_zone_page_imports_a_county_and_places_a_circle(world, zh_browser, tmp_path):
    server, store = world
    d = zh_browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")
    log_in(d, wait, "alice")
    click(wait, (By.ID, "tab-zones"))
    wait.until(EC.presence_of_element_located(library_row("victim-17")))
    assert "受害人住所" in d.find_element(By.ID, "zone-library").text
    d.find_element(By.ID, "zone-adcode").send_keys("411321")
    click(wait, (By.ID, "import-btn"))
    wait.until(EC.presence_of_element_located(library_row("411321")))
    assert store.register.get_zone("411321")["name"] == "南召县"
    # a circle: click the map, type the radius, name it
    d.find_element(By.CSS_SELECTOR, ".circle-id").send_keys("home-S-7")
    d.find_element(By.CSS_SELECTOR, ".circle-name").send_keys("王五住所")
    radius = d.find_element(By.ID, "circle-radius")
    radius.clear()
    radius.send_keys("250")
    click(wait, (By.ID, "circle-btn"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "zones-error"), "请先在地图上点击圆心"))
    click(wait, (By.ID, "zone-map"))
    wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#zone-map path.zone-new"))
    lat, lon = (float(x) for x in d.find_element(By.ID, "circle-centre").text.split(","))
    d.save_screenshot(str(tmp_path / "register-circle.png"))
    click(wait, (By.ID, "circle-btn"))
    wait.until(EC.presence_of_element_located(library_row("home-S-7")))
    zone = store.register.get_zone("home-S-7")
    assert zone["name"] == "王五住所" and zone["radius_m"] == 250 and zone["kind"] == "circle"
    lon_z, lat_z = zone["feature"]["geometry"]["coordinates"][:2]
    assert abs(lon_z - lon) < 1e-5 and abs(lat_z - lat) < 1e-5
    # English is a click away, and remembered
    click(wait, (By.ID, "lang"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "zone-library"), "Zone library"))
    assert d.find_element(By.ID, "tab-subjects").text == "Subjects"
    d.refresh()
    wait.until(EC.text_to_be_present_in_element((By.ID, "tab-subjects"), "Subjects"))
    assert severe_console_messages(d) == []


def test_contacts_on_the_subject_page_and_protected_persons_for_the_supervisor(
        world, zh_browser, tmp_path):
    server, store = world
    d = zh_browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    reg = store.register
    for sid in ("S-8", "S-9"):
        reg.create_subject({"subject_id": sid, "name": "同案", "region": "411303",
                            "level": "strict", "devices": [{"device_id": f"B-{sid}"}],
                            "inclusion": ["411303"]}, actor="alice", now_ms=now_ms())
    d.get(server.url + "/")
    log_in(d, wait, "alice")
    assert not d.find_element(By.ID, "tab-protected").is_displayed()  # operators: no
    enrol(d, wait)
    part = (By.ID, "subject-contacts")
    assert "禁止接触对象" in d.find_element(*part).text
    d.find_element(By.CSS_SELECTOR, ".ct-ids").send_keys("S-8， S-9")  # a Chinese comma too
    d.find_element(By.CSS_SELECTOR, ".ct-reason").send_keys("同案犯")
    click(wait, (By.CSS_SELECTOR, "#subject-contacts button[type=submit]"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "contacts-list"), "S-8, S-9"))
    assert reg.contacts("S-7") == ["S-8", "S-9"]
    # the device's commands (the downlink): queued from the subject page, listed there
    panel = '.device-commands[data-device="B-7"]'
    assert "设备指令" in d.find_element(By.CSS_SELECTOR, panel).text
    assert store.audit_log(action="device.commands.view") == []  # nothing read until asked
    click(wait, (By.CSS_SELECTOR, f"{panel} .cmd-vibrate"))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, f"{panel} .cmd-list"), "待发送"))
    set_value(d, d.find_element(By.CSS_SELECTOR, f"{panel} .cmd-every"), "15")
    set_value(d, d.find_element(By.CSS_SELECTOR, f"{panel} .cmd-minutes"), "20")
    click(wait, (By.CSS_SELECTOR, f"{panel} .cmd-interval"))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, f"{panel} .cmd-list"),
                                                "加密定位 每 15 秒，持续 20 分钟"))
    assert [(c["cmd"], c["args"], c["state"], c["created_by"])
            for c in store.device_commands("B-7")] == [
        ("interval", {"interval_s": 15, "duration_s": 1200}, "pending", "alice"),
        ("vibrate", {}, "pending", "alice")]
    log_out(wait)

    log_in(d, wait, "sue")
    click(wait, (By.ID, "tab-protected"))
    wait.until(EC.visibility_of_element_located((By.ID, "protected-empty")))
    assert d.find_element(By.ID, "tab-protected").text == "被保护人"
    for cls, value in (("person", "VP-7"), ("name", "赵六"), ("devices", "V-7"),
                       ("from", "S-7"), ("note", "人身安全保护令")):
        d.find_element(By.CSS_SELECTOR, f".pr-{cls}").send_keys(value)
    Select(d.find_element(By.CSS_SELECTOR, ".pr-region")).select_by_value("411303")
    click(wait, (By.CSS_SELECTOR, "#protected-view form button[type=submit]"))
    row = (By.CSS_SELECTOR, '#protected-list tr[data-person-id="VP-7"]')
    wait.until(EC.presence_of_element_located(row))
    assert "赵六" in d.find_element(*row).text and "卧龙区" in d.find_element(*row).text
    assert reg.get_protected("VP-7")["protected_from"] == ["S-7"]
    click(wait, (By.CSS_SELECTOR, f"{row[1]} .pr-where"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "protected-position"), "尚无定位"))
    store.record_protected_positions([("V-7", "VP-7", now_ms(), 33.00123, 112.53456, 12.0,
                                       now_ms())])
    click(wait, (By.CSS_SELECTOR, f"{row[1]} .pr-where"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "protected-position"),
                                                "33.00123, 112.53456 ±12米"))
    assert "UTC+08:00" in d.find_element(By.ID, "protected-position").text
    assert store.audit_log(action="protected.position.view")[0]["who"] == "sue"
    d.save_screenshot(str(tmp_path / "register-protected.png"))
    assert severe_console_messages(d) == []
