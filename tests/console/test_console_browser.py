"""End to end in headless Chromium: log in, see an alarm appear live, acknowledge and
close it in the page, and find the actions in the store.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``make test`` installs
them) and selenium.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from browser_helpers import (
    BROWSER_TZ,
    WAIT_S,
    click,
    log_in,
    log_in_chinese,
    severe_console_messages,
    start_chromium,
    type_time,
)
from console_helpers import Server, add_accounts, cleared, county_and_circle, raised
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from alarms.store import open_store
from console import create_app
from emfence.config import Config
from engine import load_registry
from geofence import compile_zones, load_zones

pytestmark = pytest.mark.browser

# Fonts the console's CSS names for Chinese text (console/static/app.css).
CJK_FAMILIES = ("PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", "WenQuanYi Micro Hei")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def model():
    """A county and an exclusion zone, and one subject using them."""
    fc = county_and_circle()
    zones = compile_zones(load_zones(fc))
    registry = load_registry({"subjects": [
        {"subject_id": "S-1", "region": "411303", "level": "strict",
         "devices": [{"device_id": "B-1"}, {"device_id": "P-1", "kind": "phone"}],
         "inclusion": ["411303"], "exclusion": ["victim-17"]}]}, zones)
    return zones, registry


@pytest.fixture
def world(tmp_path, model):
    """A store with accounts and a subject's recent track, and the console serving it."""
    zones, registry = model
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    t = now_ms()
    store.record_fixes([
        {"device_id": "B-1", "subject_id": "S-1", "region": "411303", "ts": t - k * 60_000,
         "lat": 33.01 + k * 0.0004, "lon": 112.52 + k * 0.0006, "acc": 12.0, "src": "gps",
         "received_at": t - k * 60_000}
        for k in range(20, -1, -1)])
    server = Server(create_app(store=store, config=Config(), zones=zones, registry=registry,
                               secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()


@pytest.fixture
def browser(tmp_path):
    driver = start_chromium(tmp_path, extra=("--autoplay-policy=no-user-gesture-required",))
    yield driver
    driver.quit()


def test_operator_sees_an_alarm_live_then_acknowledges_and_closes_it(world, browser, tmp_path):
    server, store = world
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")

    log_in(d, wait, "alice")
    wait.until(EC.text_to_be_present_in_element((By.ID, "feed-state"), "live"))
    assert "alice (operator)" in d.find_element(By.ID, "who").text
    # the map drew the county and the exclusion circle from their own geometry
    wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#map path.zone-inclusion"))
    [circle] = d.find_elements(By.CSS_SELECTOR, "#map path.zone-exclusion")
    assert float(circle.get_attribute("data-radius-m")) == 500.0
    # drawn to scale: the circle's width on screen is 1000 m on the ground (within 2 %)
    assert abs(drawn_width_m(d, circle) - 1000.0) < 20.0
    assert d.find_elements(By.CSS_SELECTOR, "#map path.device")

    # an alarm is recorded while the page is open: it must appear without a reload
    t = now_ms()
    store.record_events([raised("e2e-1", "411303", kind="exclusion", at=t - 5000,
                                subject="S-1", device="B-1", lat=33.0101, lon=112.5201)], t)
    row_sel = (By.CSS_SELECTOR, 'tr[data-alarm-id="e2e-1"]')
    row = wait.until(EC.presence_of_element_located(row_sel))
    assert "fresh" in row.get_attribute("class")
    assert "exclusion" in row.text and "S-1" in row.text

    # filters: another type hides it, condition "active" shows it again
    Select(d.find_element(By.ID, "f-type")).select_by_value("tamper")
    wait.until(EC.invisibility_of_element_located(row_sel))
    assert d.find_element(By.ID, "alarm-empty").is_displayed()
    Select(d.find_element(By.ID, "f-type")).select_by_value("")
    Select(d.find_element(By.ID, "f-state")).select_by_value("active")
    wait.until(EC.presence_of_element_located(row_sel))

    # select it: details, history and the subject's track on the map
    click(wait, row_sel)
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail h2"), "S-1"))
    wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#map path.track"))
    assert len(d.find_elements(By.CSS_SELECTOR, "#map path.fix")) == 21
    assert d.find_elements(By.CSS_SELECTOR, "#map path.alarm-point")
    d.save_screenshot(str(tmp_path / "console-selected.png"))

    # acknowledge with a note
    d.find_element(By.CSS_SELECTOR, "#detail .ack-note").send_keys("calling the subject")
    d.find_element(By.CSS_SELECTOR, "#detail .ack-btn").click()
    close_form = wait.until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, "#detail .close-form")))
    assert not d.find_element(By.CSS_SELECTOR, "#detail .ack-form").is_displayed()

    # close: a disposition is required
    close_form.find_element(By.CSS_SELECTOR, ".close-btn").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-error"),
                                                "Choose a disposition"))
    Select(close_form.find_element(By.CSS_SELECTOR, ".close-disp")).select_by_value("gps_drift")
    close_form.find_element(By.CSS_SELECTOR, ".close-note").send_keys("multipath near tower")
    close_form.find_element(By.CSS_SELECTOR, ".close-btn").click()
    wait.until(EC.text_to_be_present_in_element(row_sel, "closed"))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-history"),
                                                "close by alice"))
    history = d.find_element(By.CSS_SELECTOR, "#detail .d-history").text
    assert "acknowledge by alice" in history and "close by alice" in history
    assert "GPS drift" in history and "multipath near tower" in history

    # a note after closing goes on the record too
    d.find_element(By.CSS_SELECTOR, "#detail .note-text").send_keys("supervisor informed")
    click(wait, (By.CSS_SELECTOR, "#detail .note-btn"))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-history"),
                                                "supervisor informed"))

    # the store has the actions, by alice, and the audit trail has them and the track view
    actions = store.actions("e2e-1")
    assert [(a["what"], a["who"], a["note"], a["disposition"]) for a in actions] == [
        ("acknowledge", "alice", "calling the subject", None),
        ("close", "alice", "multipath near tower", "gps_drift"),
        ("note", "alice", "supervisor informed", None)]
    alarm = store.get_alarm("e2e-1")
    assert alarm["workflow"] == "closed" and alarm["closed_by"] == "alice"
    audited = {r["action"] for r in store.audit_log(who="alice")}
    assert {"login.ok", "alarm.acknowledge", "alarm.close", "track.view"} <= audited

    # an escalated alarm stands out
    store.record_events([raised("e2e-2", "411303", kind="outbound", at=now_ms() - 1000,
                                subject="S-1", device="B-1")], now_ms() - 400_000)
    store.escalate_due(now_ms(), 300_000)
    esc = wait.until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, 'tr.escalated[data-alarm-id="e2e-2"]')))
    assert "ESCALATED" in esc.text
    assert d.find_element(By.ID, "banner").is_displayed()
    assert d.title == "(1) emfence console"  # e2e-1 is closed, e2e-2 waits
    d.save_screenshot(str(tmp_path / "console-escalated.png"))
    # nothing the page did was refused by its own Content-Security-Policy or failed
    assert severe_console_messages(d) == []


def test_supervisor_view_shows_statistics(world, browser, tmp_path):
    server, store = world
    t = now_ms()
    store.record_events([raised(f"s{i}", "411303", kind=("outbound", "tamper")[i % 2],
                                at=t - i * 60_000, subject="S-1", device="B-1")
                         for i in range(4)], t - 300_000)
    store.acknowledge("s0", "sue", None, t - 200_000)
    store.close_alarm("s0", "sue", "gps_drift", "drift", t - 100_000)
    d = browser
    wait = WebDriverWait(d, WAIT_S)
    d.get(server.url + "/")
    log_in(d, wait, "sue")
    wait.until(EC.element_to_be_clickable((By.ID, "tab-stats"))).click()
    wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#stats-body .card")))
    text = d.find_element(By.ID, "stats-body").text
    assert "Alarms per region" in text and "411303" in text
    assert "median time to acknowledge" in text and "1 min 40 s" in text
    assert "100.0%" in text  # the one closed alarm was a false alarm (gps drift)
    wait.until(EC.text_to_be_present_in_element((By.ID, "stats-body"), "Audit trail"))
    trail = d.find_element(By.ID, "stats-body").text
    assert "alarm closed" in trail and "GPS drift" in trail  # the action in words
    d.save_screenshot(str(tmp_path / "console-supervisor.png"))
    assert severe_console_messages(d) == []
    # at 1280x720 every card holds its table and bars, the longest disposition included
    store.acknowledge("s1", "sue", None, t - 200_000)
    store.close_alarm("s1", "sue", "approved_leave_not_recorded", "leave was agreed", t - 90_000)
    d.set_window_size(1280, 720)
    d.find_element(By.CSS_SELECTOR, "#stats-form button").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "stats-body"), "approved leave"))
    overflow = d.execute_script("""
        return [...document.querySelectorAll('#stats-body .card')]
          .filter((c) => c.scrollWidth > c.clientWidth)
          .map((c) => c.querySelector('h2').textContent);""")
    d.save_screenshot(str(tmp_path / "console-supervisor-1280.png"))
    assert overflow == []


def test_older_alarms_load_page_by_page(world, browser):
    server, store = world
    t = now_ms()
    n = 501  # one more than the page holds
    store.record_events([raised(f"old-{i:04d}", "411303", at=t - i * 1000, subject="S-1",
                                device="B-1") for i in range(n)], t)
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")
    log_in(d, wait, "alice")
    rows = (By.CSS_SELECTOR, "#alarm-rows tr")
    wait.until(lambda drv: len(drv.find_elements(*rows)) == 500)
    first = d.find_elements(*rows)[0].get_attribute("data-alarm-id")
    assert first == "old-0000"  # newest first
    click(wait, (By.ID, "load-older"))
    wait.until(lambda drv: len(drv.find_elements(*rows)) == n)
    assert d.find_elements(*rows)[-1].get_attribute("data-alarm-id") == f"old-{n - 1:04d}"
    assert not d.find_element(By.ID, "load-older").is_displayed()


def test_after_a_console_restart_the_page_asks_to_log_in_and_misses_nothing(
        tmp_path, model, browser):
    zones, registry = model
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)

    def start(port: int = 0) -> Server:
        return Server(create_app(store=store, config=Config(), zones=zones, registry=registry,
                                 secure_cookies=False), port=port).start()

    server = start()
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    try:
        d.get(server.url + "/")
        log_in(d, wait, "alice")
        wait.until(EC.text_to_be_present_in_element((By.ID, "feed-state"), "live"))
        # The console goes away (sessions live in its memory) ...
        server.stop()
        wait.until(EC.text_to_be_present_in_element((By.ID, "feed-state"), "reconnecting"))
        # ... an alarm is raised meanwhile (the engine keeps writing to the store) ...
        t = now_ms()
        store.record_events([raised("during-restart", "411303", at=t, subject="S-1",
                                    device="B-1")], t)
        # ... and it comes back on the same address: the page notices the session is
        # gone and asks for the login instead of sitting there silently.
        server = start(server.port)
        wait.until(EC.visibility_of_element_located((By.ID, "login-view")))
        assert "session has ended" in d.find_element(By.ID, "login-error").text
        log_in(d, wait, "alice")
        wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, 'tr[data-alarm-id="during-restart"]')))
        wait.until(EC.text_to_be_present_in_element((By.ID, "feed-state"), "live"))
    finally:
        server.stop()
        store.close_store()


def test_admin_filters_by_the_regions_the_data_shows(world, browser):
    server, store = world
    t = now_ms()
    store.record_events([raised("far-1", "411321", at=t, subject="S-9", device="B-9")], t)
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")
    wait.until(EC.visibility_of_element_located((By.ID, "login-name"))).send_keys("root")
    d.find_element(By.ID, "login-password").send_keys("not the password")
    d.find_element(By.ID, "login-submit").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "login-error"), "wrong name or password"))
    d.find_element(By.ID, "login-password").clear()
    log_in(d, wait, "root")
    region = (By.CSS_SELECTOR, "#f-region option")
    wait.until(lambda drv: len(drv.find_elements(*region)) == 3)
    assert [o.get_attribute("value") for o in d.find_elements(*region)] == ["", "411303", "411321"]
    Select(d.find_element(By.ID, "f-region")).select_by_value("411303")
    wait.until(EC.invisibility_of_element_located(
        (By.CSS_SELECTOR, 'tr[data-alarm-id="far-1"]')))
    assert severe_console_messages(d) == []


def test_first_visit_is_calm_and_the_list_names_devices_regions_and_late_alarms(
        world, browser, tmp_path):
    """A new user's first look: no "session has ended" and no red "offline" before anyone
    logged in; rows name the device and the county (卧龙区), and a late exclusion alarm
    stays on top, marked LATE, instead of sinking under newer rows by its fix time."""
    server, store = world
    t = now_ms()
    # Two devices of one subject, both offline: two rows that must tell them apart.
    # The engine names each device's kind (device_kind) on every alarm event.
    store.record_events([{**raised("off-bracelet", "411303", kind="offline", at=t - 60_000,
                                   subject="S-1", device="B-1"), "device_kind": "bracelet"},
                         {**raised("off-phone", "411303", kind="offline", at=t - 59_000,
                                   subject="S-1", device="P-1"), "device_kind": "phone"}],
                        t - 59_000)
    store.record_events([raised(f"new-{i}", "411303", at=t - 30_000 + i * 1000, subject="S-1",
                                device="B-1") for i in range(8)], t - 20_000)
    # A late exclusion: its fix is ten minutes old, it arrived just now.
    late = raised("late-excl", "411303", kind="exclusion", at=t - 600_000, subject="S-1",
                  device="B-1", lat=33.0101, lon=112.5201)
    late["late"] = True
    store.record_events([late], t)
    # its condition cleared (five minutes ago) before anyone acknowledged it
    store.record_events([{**cleared("late-excl", "411303", kind="exclusion", at=t - 300_000,
                                    subject="S-1", device="B-1"), "late": True}], t)
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")
    # This browser asks for English; the operator here chose 中文 (kept by the page).
    d.execute_script("localStorage.setItem('emfence.lang', 'zh')")
    d.refresh()
    wait.until(EC.visibility_of_element_located((By.ID, "login-name")))
    d.save_screenshot(str(tmp_path / "console-first-visit.png"))
    print("screenshots in", tmp_path)
    assert d.find_element(By.ID, "login-error").text == ""
    assert not d.find_element(By.ID, "feed-state").is_displayed()
    log_in(d, wait, "alice")
    wait.until(EC.text_to_be_present_in_element((By.ID, "feed-state"), "实时"))
    rows = (By.CSS_SELECTOR, "#alarm-rows tr")
    wait.until(lambda drv: len(drv.find_elements(*rows)) == 11)
    first = d.find_elements(*rows)[0]
    assert first.get_attribute("data-alarm-id") == "late-excl"
    assert "补报" in first.text
    bracelet = d.find_element(By.CSS_SELECTOR, 'tr[data-alarm-id="off-bracelet"]').text
    phone = d.find_element(By.CSS_SELECTOR, 'tr[data-alarm-id="off-phone"]').text
    assert "B-1" in bracelet and "P-1" in phone and bracelet != phone
    # ...and say which is the bracelet (腕带) and which the phone (手机), in words
    kinds = [d.find_element(By.CSS_SELECTOR, f'tr[data-alarm-id="{a}"] td.device .kind').text
             for a in ("off-bracelet", "off-phone")]
    assert kinds == ["腕带", "手机"], kinds
    assert "卧龙区" in bracelet
    # at 1280x720 the list fits its column: nothing (such as "ESCALATED") is cut off
    d.set_window_size(1280, 720)
    store.escalate_due(now_ms(), 0)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr.escalated")))
    d.save_screenshot(str(tmp_path / "console-list.png"))
    widths = d.execute_script(
        "const l = document.getElementById('left'); return [l.scrollWidth, l.clientWidth];")
    assert widths[0] <= widths[1], widths
    # once acknowledged, the late alarm takes its place by fix time
    click(wait, (By.CSS_SELECTOR, 'tr[data-alarm-id="late-excl"]'))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-fields"), "卧龙区"))
    d.find_element(By.CSS_SELECTOR, "#detail .ack-btn").click()
    wait.until(lambda drv:
               drv.find_elements(*rows)[0].get_attribute("data-alarm-id") != "late-excl")
    # layout and wording of the detail: history in time order, datum and zone said
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-history"),
                                                "alice 接手"))
    history = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#detail .d-history li")]
    assert [h.split(" ", 3)[3] for h in history] == [
        "告警产生", "状况解除", "system 升级", "alice 接手"]
    fields = d.find_element(By.CSS_SELECTOR, "#detail .d-fields").text
    assert "WGS-84" in fields and "GCJ-02" in fields and "UTC+08:00" in fields
    assert d.find_element(By.CSS_SELECTOR, "#detail .close-btn").text == "结案"
    assert "UTC+08:00" in d.find_element(By.ID, "th-time").text
    d.save_screenshot(str(tmp_path / "console-detail.png"))
    assert d.find_elements(*rows)[-1].get_attribute("data-alarm-id") == "late-excl"
    assert severe_console_messages(d) == []


def drawn_width_m(d, node) -> float:
    """The ground distance, metres, across the drawn outline of the map element ``node``
    (its geometry's box, stroke left out), measured by Leaflet between the two container
    points at its centre after zooming in on it (so pixel rounding is far below 1 %)."""
    return d.execute_script("""
const m = state.map.map, node = arguments[0];
const across = () => {
  const bb = node.getBBox(), k = node.getScreenCTM(), c = m.getContainer().getBoundingClientRect();
  const x0 = k.a * bb.x + k.e - c.left, x1 = k.a * (bb.x + bb.width) + k.e - c.left;
  const y = k.d * (bb.y + bb.height / 2) + k.f - c.top;
  return [m.containerPointToLatLng([x0, y]), m.containerPointToLatLng([x1, y])];
};
const [a, b] = across();
m.setView(L.latLng((a.lat + b.lat) / 2, (a.lng + b.lng) / 2), 16, { animate: false });
const [p, q] = across();
return m.distance(p, q);""", node)


def test_the_map_draws_the_selected_subjects_zones_with_its_point_clear_of_the_edge(
        tmp_path, browser):
    """Another subject's leave zone is not drawn over this one's map (nor for everyone
    when nothing is selected), the legend names leave zones, and the alarm's point sits
    inside the map with a margin."""
    fc = county_and_circle()
    fc["features"].append({"type": "Feature", "id": "hospital-2",
                           "geometry": {"type": "Point", "coordinates": [112.56, 33.02]},
                           "properties": {"radius_m": 800}})
    zones = compile_zones(load_zones(fc))
    registry = load_registry({"subjects": [
        {"subject_id": "S-1", "region": "411303", "level": "strict",
         "devices": [{"device_id": "B-1"}], "inclusion": ["411303"], "exclusion": ["victim-17"]},
        {"subject_id": "S-2", "region": "411303", "level": "ordinary",
         "devices": [{"device_id": "B-2"}], "inclusion": ["411303"],
         "leaves": [{"start": 0, "end": 4102444800000, "zones": ["hospital-2"]}]}]}, zones)
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    t = now_ms()
    store.record_events([raised("x-1", "411303", kind="exclusion", at=t, subject="S-1",
                                device="B-1", lat=33.0101, lon=112.5201)], t)
    # the track runs away from the point to the north-east: the point is at its corner
    store.record_fixes([
        {"device_id": "B-1", "subject_id": "S-1", "region": "411303", "ts": t - k * 60_000,
         "lat": 33.0101 + k * 0.001, "lon": 112.5201 + k * 0.0015, "acc": 12.0, "src": "gps",
         "received_at": t - k * 60_000} for k in range(20, -1, -1)])
    server = Server(create_app(store=store, config=Config(), zones=zones, registry=registry,
                               secure_cookies=False)).start()
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    try:
        d.set_window_size(1280, 720)
        d.get(server.url + "/")
        log_in(d, wait, "alice")
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#map path.zone-inclusion"))
        assert not d.find_elements(By.CSS_SELECTOR, "#map .zone-leave")
        assert "leave" in d.find_element(By.ID, "map-legend").text
        click(wait, (By.CSS_SELECTOR, 'tr[data-alarm-id="x-1"]'))
        point = wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, "#map path.alarm-point")))
        assert not d.find_elements(By.CSS_SELECTOR, "#map .zone-leave")
        assert d.find_elements(By.CSS_SELECTOR, "#map path.zone-exclusion")
        d.save_screenshot(str(tmp_path / "console-map.png"))
        print("screenshots in", tmp_path)
        p, m = point.rect, d.find_element(By.ID, "map").rect
        margin = 0.1 * min(m["width"], m["height"])
        assert m["x"] + margin <= p["x"] and p["x"] + p["width"] <= m["x"] + m["width"] - margin
        assert m["y"] + margin <= p["y"] and p["y"] + p["height"] <= m["y"] + m["height"] - margin
        assert severe_console_messages(d) == []
    finally:
        server.stop()
        store.close_store()


def shanghai(ms: int) -> str:
    """``ms`` (epoch ms) as the page must show it: Asia/Shanghai's wall clock and offset."""
    t = datetime.fromtimestamp(ms / 1000, tz=ZoneInfo("Asia/Shanghai"))
    return t.strftime("%Y-%m-%d %H:%M:%S") + " UTC+08:00"


def test_times_are_the_command_centres_with_their_offset_whatever_the_browsers_zone(
        world, browser, tmp_path):
    """The browser runs in New York; the console (console.timezone, default
    Asia/Shanghai) shows every time in Shanghai with "UTC+08:00": the list, the details,
    the history, the map, the statistics' days and the audit trail."""
    server, store = world
    # 17:30:05 UTC on 14 January: already the 15th in Shanghai, still the 14th in New York.
    at = int(datetime(2026, 1, 14, 17, 30, 5, tzinfo=UTC).timestamp() * 1000)
    store.record_events([raised("tz-1", "411303", kind="exclusion", at=at, subject="S-1",
                                device="B-1", lat=33.0101, lon=112.5201)], at + 2000)
    ack_at = at + 95_000
    store.acknowledge("tz-1", "sue", "seen", ack_at)
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")
    zone, offset_min = d.execute_script(
        "return [Intl.DateTimeFormat().resolvedOptions().timeZone,"
        f" new Date({at}).getTimezoneOffset()];")
    assert (zone, offset_min) == (BROWSER_TZ, 300)  # the browser really is elsewhere
    log_in(d, wait, "sue")

    # the list: the header says the offset, a row shows the Shanghai date and time
    row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-alarm-id="tz-1"]')))
    assert d.find_element(By.ID, "th-time").text == "time (UTC+08:00)"
    cell = row.find_element(By.CSS_SELECTOR, "td")
    assert cell.get_attribute("title") == shanghai(at) == "2026-01-15 01:30:05 UTC+08:00"
    assert cell.text == "01-15 01:30"

    # the details and the history, each time with its mark
    click(wait, (By.CSS_SELECTOR, 'tr[data-alarm-id="tz-1"]'))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-fields"),
                                                shanghai(at)))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-history"),
                                                f"{shanghai(ack_at)} acknowledge by sue"))
    history = d.find_element(By.CSS_SELECTOR, "#detail .d-history").text
    assert f"{shanghai(at)} raised" in history

    # the map: a device's last position says when, in Shanghai time
    last = store.track("B-1")[-1]["ts"]
    titles = d.execute_script(
        "return [...document.querySelectorAll('#map path.device title')]"
        ".map((t) => t.textContent);")
    assert f"B-1 (S-1) {shanghai(last)}" in titles
    d.save_screenshot(str(tmp_path / "console-timezone-detail.png"))

    # statistics: the 15th is Shanghai's 15th (the alarm counts), and the audit trail
    d.find_element(By.ID, "tab-stats").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "stats-body"), "Audit trail"))
    type_time(d.find_element(By.ID, "s-from"), "2026-01-15")
    type_time(d.find_element(By.ID, "s-to"), "2026-01-15")
    d.find_element(By.CSS_SELECTOR, "#stats-form button").click()
    per_day = (By.XPATH, "//div[@class='card'][h2[starts-with(., 'Alarms per day')]]")
    wait.until(EC.text_to_be_present_in_element(per_day, "2026-01-15"))
    card = d.find_element(*per_day).text
    assert card.splitlines()[0] == "Alarms per day (Asia/Shanghai, UTC+08:00)"
    assert "2026-01-15 1" in card and "2026-01-14" not in card
    assert d.find_element(By.CSS_SELECTOR, "#stats-body .big").text == "1"
    wait.until(EC.text_to_be_present_in_element((By.ID, "stats-body"), shanghai(ack_at)))
    audit = d.find_element(By.CSS_SELECTOR, "#stats-body .card.wide").text
    # the action in the page's words (the catalogue's audit.action.alarm.acknowledge)
    assert f"{shanghai(ack_at)} sue alarm acknowledged" in audit
    d.save_screenshot(str(tmp_path / "console-timezone-stats.png"))
    print("screenshots in", tmp_path)
    assert severe_console_messages(d) == []


def platform_fonts(d, selector: str) -> dict[str, int]:
    """The fonts Chromium drew the text of the element at ``selector`` with: family name
    -> glyphs drawn with it (DevTools protocol, CSS.getPlatformFontsForNode)."""
    d.execute_cdp_cmd("DOM.enable", {})
    d.execute_cdp_cmd("CSS.enable", {})
    root = d.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = d.execute_cdp_cmd("DOM.querySelector", {"nodeId": root, "selector": selector})
    fonts = d.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node["nodeId"]})
    return {f["familyName"]: f["glyphCount"] for f in fonts["fonts"]}


# Draws each character alone in the page's font and returns its pixels: without a font
# for them, every CJK character is the same empty box ("tofu").
GLYPH_PIXELS = """
const font = getComputedStyle(document.body).font;
return arguments[0].map((ch) => {
  const c = document.createElement("canvas");
  c.width = 40; c.height = 40;
  const g = c.getContext("2d");
  g.font = font.replace(/^\\S*?\\d+px/, "28px");
  g.fillStyle = "#000";
  g.fillText(ch, 4, 32);
  return Array.from(g.getImageData(0, 0, 40, 40).data).join(",");
});
"""


def test_chinese_text_renders_with_a_cjk_font(world, browser, tmp_path):
    """The console is Chinese first (卧龙区, 受害人住所): its text must be drawn with a
    CJK font, not as boxes. Needs a CJK font on the machine (`make system-deps` installs
    fonts-wqy-microhei); the CSS names the usual one of each system."""
    server, store = world
    t = now_ms()
    store.record_events([raised("cjk-1", "411303", at=t, subject="S-1", device="B-1")], t)
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/")
    log_in(d, wait, "alice")
    cell = 'tr[data-alarm-id="cjk-1"] td:nth-child(5)'
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, cell), "卧龙区"))
    fonts = platform_fonts(d, cell)
    cjk = {name: n for name, n in fonts.items() if name in CJK_FAMILIES}
    assert sum(cjk.values()) >= 3, f"卧龙区 drawn with {fonts}, none of {CJK_FAMILIES}"
    wo, long_, qu, box = d.execute_script(GLYPH_PIXELS, ["卧", "龙", "区", "\U0010fffd"])
    assert len({wo, long_, qu}) == 3, "the CJK characters are drawn as identical boxes"
    assert box not in (wo, long_, qu)
    d.save_screenshot(str(tmp_path / "console-cjk.png"))
    print("screenshots in", tmp_path)


def test_every_alarm_type_in_chinese_and_a_warning_shown_as_one_without_the_alarm_sound(
        world, browser, tmp_path):
    """Issue #14's types reach the operator in words (人机分离, 无定位, 接近禁区 ...), the type
    filter offers each, and the approach warning is marked 预警 and does not sound the
    alarm cue that a new exclusion alarm sounds."""
    server, store = world
    t = now_ms()
    store.record_events([raised("sep-1", "411303", kind="separation", at=t - 5000,
                                subject="S-1", device="B-1"),
                         raised("nofix-1", "411303", kind="no_fix", at=t - 4000,
                                subject="S-1", device="P-1")], t - 4000)
    d = browser
    wait = log_in_chinese(d, server.url, "alice")
    wait.until(EC.text_to_be_present_in_element((By.ID, "feed-state"), "实时"))
    pill = 'tr[data-alarm-id="{}"] .pill'
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, pill.format("sep-1")),
                                                "人机分离"))
    assert d.find_element(By.CSS_SELECTOR, pill.format("nofix-1")).text == "无定位"
    offered = [o.text for o in Select(d.find_element(By.ID, "f-type")).options]
    for word in ("越界", "人机分离", "无定位", "关机", "接近被保护人", "违规接触",
                 "接近禁区（预警）"):
        assert word in offered, (word, offered)
    # a live warning: marked, and no alarm cue
    d.execute_script("lastBeep = 0;")
    store.record_events([raised("appr-1", "411303", kind="approach", at=t - 1000,
                                subject="S-2", device="B-2")], now_ms())
    row = 'tr[data-alarm-id="appr-1"]'
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, row)))
    assert "warning" in d.find_element(By.CSS_SELECTOR, row).get_attribute("class")
    assert d.find_element(By.CSS_SELECTOR, pill.format("appr-1")).text == "接近禁区"
    assert d.find_element(By.CSS_SELECTOR, pill.format("appr-1")).get_attribute("title") == "预警"
    assert d.execute_script("return lastBeep;") == 0
    # ...while a live exclusion alarm does sound it
    store.record_events([raised("excl-1", "411303", kind="exclusion", at=t, subject="S-2",
                                device="B-2")], now_ms())
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-alarm-id="excl-1"]')))
    assert d.execute_script("return lastBeep;") > 0
    assert "warning" not in d.find_element(
        By.CSS_SELECTOR, 'tr[data-alarm-id="excl-1"]').get_attribute("class")
    # the filter narrows to one type
    Select(d.find_element(By.ID, "f-type")).select_by_value("separation")
    wait.until(lambda drv: [r.get_attribute("data-alarm-id") for r in
                            drv.find_elements(By.CSS_SELECTOR, "#alarm-rows tr")] == ["sep-1"])
    d.save_screenshot(str(tmp_path / "console-types.png"))
    assert severe_console_messages(d) == []


def test_the_alarm_detail_shows_who_was_notified_and_the_supervisor_sees_failures(
        world, browser, tmp_path):
    """Issue #15, "Visible": the detail lists each notification (channel, recipient,
    level, state in words) and the supervisor's page flags deliveries that are retrying."""
    from alarms.notify import webhook_planner

    server, _ = world
    engine_store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}",
                              notification_planner=webhook_planner)
    try:
        t = now_ms()
        engine_store.record_events([raised("notif-1", "411303", at=t - 2000, subject="S-1",
                                           device="B-1")], t - 2000)
        (due,) = engine_store.notifications_due(now_ms())
        engine_store.mark_notification_retry(due["id"], t + 600_000, "HTTP 503 Service Unavailable")
    finally:
        engine_store.close_store()
    d = browser
    wait = log_in_chinese(d, server.url, "sue")
    click(wait, (By.CSS_SELECTOR, 'tr[data-alarm-id="notif-1"]'))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-notify-title"),
                                                "通知"))
    row = d.find_element(By.CSS_SELECTOR, "#detail .d-notify tr.n-retrying")
    assert row.get_attribute("data-delivery-id") == due["delivery_id"]
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[1:6] == ["系统对接 · 告警", "webhook", "1", "重试中", "1"], cells
    assert "HTTP 503" in cells[6]
    d.save_screenshot(str(tmp_path / "console-notifications.png"))
    wait.until(EC.element_to_be_clickable((By.ID, "tab-stats"))).click()
    card = (By.CSS_SELECTOR, "#stats-body .notify-card")
    wait.until(EC.presence_of_element_located(card))
    assert "attention" in d.find_element(*card).get_attribute("class")
    text = d.find_element(*card).text
    assert "通知投递" in text and "重试中 1" in text and "失败 0" in text, text
    assert severe_console_messages(d) == []
