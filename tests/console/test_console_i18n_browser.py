"""Every view of the console page in headless Chromium, in English and in Chinese: each
visible text and each placeholder, title, aria-label and option must come from that
language's catalogue (static/i18n/<lang>.json), less the data shown (ids, names, times,
numbers). An English browser gets the English login page; the 中文 button switches and
is kept. Screenshots of every view in both languages are saved under tests/artifacts/."""

from __future__ import annotations

import json
import re
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
from console_helpers import CNMAPS, T0, Server, add_accounts, raised
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from alarms.store import open_store
from console import create_app
from emfence.config import Config

pytestmark = pytest.mark.browser

CATALOGUES = Path(__file__).resolve().parents[2] / "console" / "static" / "i18n"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "i18n"

# What the page shows that is data, not words: the fixture's ids, names and notes, the
# zone name of the times, the brand.
DATA = ["emfence", "Asia/Shanghai", "张三", "李四", "王五", "值班员", "卧龙区", "宛城区",
        "探亲", "受害人住所", "victim-17", "alice", "sue", "root", "olga", "13800000000",
        "411303", "411302", "S-1", "S-2", "B-S-1", "B-S-2", "VP-1", "V-1", "R-1", "P-7"]
DATA_PATTERNS = [
    r"\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?", r"\d{2}-\d{2} \d{2}:\d{2}",
    r"\d{2}:\d{2}(:\d{2})?", r"UTC[+-]\d{2}:\d{2}",
    r"[A-Za-z]+-\d+(-[a-z0-9]+)*",                    # alarm and leave ids (a-0, L-4)
    r"[a-z]+(\.[a-z_]+)+",                            # audit action codes (alarm.view)
    r"[±+-]?\d[\d,.]*\s?(%|km|m|公里|米)?(?![A-Za-z])",  # numbers, distances (Intl)
]

# Collect, in the page, every visible text node and every attribute a person reads.
COLLECT = """
const out = [document.title];
const shown = (e) => e && e.getClientRects().length > 0
  && getComputedStyle(e).visibility !== "hidden";
const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
while (walk.nextNode()) {
  const n = walk.currentNode, p = n.parentElement;
  if (!n.nodeValue.trim() || !p || p.closest("template, script, style, option, svg")) continue;
  if (shown(p)) out.push(n.nodeValue);
}
const attributed = "[placeholder], [title], [aria-label], input[type=submit], input[type=button]";
for (const e of document.querySelectorAll(attributed)) {
  if (!shown(e)) continue;
  for (const a of ["placeholder", "title", "aria-label", "value"]) {
    if (e.hasAttribute(a) && (a !== "value" || e.tagName === "INPUT")) out.push(e.getAttribute(a));
  }
}
for (const s of document.querySelectorAll("select")) {
  if (!shown(s)) continue;
  for (const o of s.options) out.push(o.text);
  for (const g of s.querySelectorAll("optgroup")) out.push(g.label);
}
for (const svg of document.querySelectorAll("svg")) {
  if (shown(svg)) for (const t of svg.querySelectorAll("title")) out.push(t.textContent);
}
return out.map((t) => t.trim()).filter(Boolean);
"""


def catalogue_fragments(lang: str) -> list[str]:
    """The literal pieces of every message of ``lang`` (placeholders cut out), longest
    first."""
    words = json.loads((CATALOGUES / f"{lang}.json").read_text(encoding="utf-8"))
    pieces = {p.strip() for v in words.values() for p in re.split(r"\{\w+\}", v)}
    pieces = {p for p in pieces if re.search(r"[A-Za-z\u4e00-\u9fff]", p)}
    return sorted(pieces, key=len, reverse=True)


def foreign(texts: list[str], fragments: list[str]) -> list[str]:
    """The texts with words left over once the data and the catalogue's pieces are taken
    out: strings the catalogue of this language did not produce."""
    data = [re.escape(d) for d in sorted(DATA, key=len, reverse=True)] + DATA_PATTERNS
    data_re = re.compile("|".join(f"(?:{d})" for d in data))
    # a Latin piece only as whole words ("all" must not eat "small")
    frag_re = re.compile("|".join(
        ("(?<![A-Za-z])" if re.match(r"[A-Za-z]", f) else "") + re.escape(f)
        + ("(?![A-Za-z])" if re.search(r"[A-Za-z]$", f) else "") for f in fragments))
    words = re.compile(r"[A-Za-z\u4e00-\u9fff]")
    # the data first (a name holding a catalogue word: 张三 and 三, Wednesday), or the
    # catalogue first (a message holding a data word: "emfence console")
    return [text for text in texts
            if words.search(data_re.sub(" ", frag_re.sub(" ", text)))
            and words.search(frag_re.sub(" ", data_re.sub(" ", text)))]


# S-1's bracelet for the track playback: a fix a minute for 20 min, silent for 30 min (a
# gap), 10 more; accuracies 10 / 50 / 150 m in turn; fixes 5 and 25 sent 5 min late.
PLAYBACK_TS = [T0 - 3_600_000 + k * 60_000 for k in range(20)] + [
    T0 - 3_600_000 + (50 + k) * 60_000 for k in range(10)]
PLAYBACK_FIXES = [{"device_id": "B-S-1", "subject_id": "S-1", "region": "411303", "ts": ts,
                   "lat": 33.0 + k * 1e-4, "lon": 112.5 + (k % 7) * 1e-4,
                   "acc": (10.0, 50.0, 150.0)[k % 3], "src": "gps",
                   "received_at": ts + (300_000 if k in (5, 25) else 900)}
                  for k, ts in enumerate(PLAYBACK_TS)]


def show_track(d, wait) -> None:
    """On the subject page: the window around the fixture's fixes (typed in the console's
    zone, Asia/Shanghai), then 查询轨迹."""
    import datetime as dt
    import zoneinfo

    zone = zoneinfo.ZoneInfo("Asia/Shanghai")
    wall = [dt.datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M")
            for ms in (T0 - 7_200_000, T0 + 3_600_000)]
    type_time(d.find_element(By.CSS_SELECTOR, ".pb-from"), wall[0])
    type_time(d.find_element(By.CSS_SELECTOR, ".pb-to"), wall[1])
    click(wait, (By.CSS_SELECTOR, ".pb-load"))
    wait.until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, ".pb-fix")) == 30)


@pytest.fixture
def world(tmp_path):
    """Alarms of several types (one a warning, one handled to the end, one cleared), the
    register (subjects, leave waiting for approval, a protected person), a duty roster."""
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    reg = store.register
    reg.adcode_dir = str(CNMAPS)
    reg.import_adcode("411303", actor="root", now_ms=T0)
    for sid, name in (("S-1", "张三"), ("S-2", "李四")):
        reg.create_subject({"subject_id": sid, "name": name, "region": "411303",
                            "level": "strict", "devices": [{"device_id": f"B-{sid}"}],
                            "inclusion": ["411303"]}, actor="alice", now_ms=T0)
    reg.request_leave("S-1", zones=["411303"], start_ms=T0 + 86_400_000,
                      end_ms=T0 + 90_000_000, reason="探亲", actor="alice", now_ms=T0)
    reg.add_protected({"person_id": "VP-1", "name": "王五", "region": "411303",
                       "devices": ["V-1"], "protected_from": ["S-1"]}, actor="sue", now_ms=T0)
    store.roster.put_person({"person_id": "R-1", "region": "411303", "name": "值班员",
                             "role": "duty", "phone": "13800000000"},
                            actor="root", role="admin", now_ms=T0)
    events = [raised(f"a-{k}", kind=kind, subject="S-1", device="B-S-1", at=T0 + k * 60_000)
              for k, kind in enumerate(("outbound", "exclusion", "approach", "tamper", "offline"))]
    store.record_events(events, T0 + 600_000)
    store.record_events([{"event": "cleared", "alarm_id": "a-4", "type": "offline",
                          "subject_id": "S-1", "device_id": "B-S-1", "zone_id": None,
                          "region": "411303", "at": T0 + 700_000, "late": False}], T0 + 700_000)
    store.record_fixes(PLAYBACK_FIXES)
    store.acknowledge("a-0", "sue", "探亲", T0 + 800_000)
    store.close_alarm("a-0", "sue", "gps_drift", "探亲", T0 + 900_000)
    server = Server(create_app(store=store, config=Config(), secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()


# Each view: its tab (None: the alarms view), and what shows that it has drawn.
VIEWS = [("alarms", None, "#detail .d-history li"),
         ("board", "tab-board", '#board-rows .board-row[data-subject-id="S-1"]'),
         ("stats", "tab-stats", "#stats-body .card.wide"),
         ("subjects", "tab-subjects", '#subj-list tr[data-subject-id="S-1"]'),
         ("subject", None, "#subject-devices"),
         ("leaves", "tab-leaves", "#queue tr[data-leave-id]"),
         ("zones", "tab-zones", "#zone-library tr"),
         ("roster", "tab-roster", '#roster-table tr[data-person-id="R-1"]'),
         ("protected", "tab-protected", '#protected-list tr[data-person-id="VP-1"]')]


def open_view(d, wait, name: str, tab: str | None, ready: str) -> None:
    if name == "alarms":
        click(wait, (By.ID, "tab-alarms"))
        click(wait, (By.CSS_SELECTOR, 'tr[data-alarm-id="a-0"]'))
    elif name == "subject":
        click(wait, (By.CSS_SELECTOR, '#subj-list tr[data-subject-id="S-1"]'))
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ready)))
        show_track(d, wait)  # the playback's words (summary, legend, tooltips) too
    else:
        click(wait, (By.ID, tab))
    wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ready)))


def check_views(d, wait, lang: str) -> dict[str, list[str]]:
    """Open every view, save its screenshot, and return the strings of each that the
    catalogue of ``lang`` did not produce."""
    fragments = catalogue_fragments(lang)
    problems = {}
    for name, tab, ready in VIEWS:
        open_view(d, wait, name, tab, ready)
        # a view shown before in the other language redraws on opening: wait for it
        try:
            WebDriverWait(d, 5).until(
                lambda drv: not foreign(drv.execute_script(COLLECT), fragments))
        except TimeoutException:
            problems[name] = foreign(d.execute_script(COLLECT), fragments)
        assert len(d.execute_script(COLLECT)) > 10, name
        d.save_screenshot(str(ARTIFACTS / f"{lang}-{name}.png"))
    return problems


def test_every_view_speaks_only_its_catalogue(world, tmp_path):
    server, _store = world
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print("screenshots in", ARTIFACTS)
    zh, en = catalogue_fragments("zh-CN"), catalogue_fragments("en")
    # the check can fail: an English word on the Chinese page, and the reverse
    assert foreign(["Close alarm", "越界 · S-1"], zh) == ["Close alarm"]
    assert foreign(["结案", "left permitted area · S-1 2026-01-15 01:30"], en) == ["结案"]
    d = start_chromium(tmp_path, lang="en-US", window="1400,1000")
    try:
        wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        d.get(server.url + "/")
        # nothing chosen yet: the login page follows the browser's language
        wait.until(EC.text_to_be_present_in_element((By.ID, "login-submit"), "Log in"))
        assert d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
        d.save_screenshot(str(ARTIFACTS / "en-login.png"))
        assert foreign(d.execute_script(COLLECT), en) == []
        log_in(d, wait, "sue")
        problems = {"en": check_views(d, wait, "en")}
        click(wait, (By.ID, "lang"))  # 中文, kept for the next visit
        wait.until(EC.text_to_be_present_in_element((By.ID, "tab-alarms"), "告警"))
        problems["zh-CN"] = check_views(d, wait, "zh-CN")
        assert problems == {"en": {}, "zh-CN": {}}
        assert d.find_element(By.ID, "tab-stats").text == "主管统计"
        click(wait, (By.ID, "logout"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "login-submit"), "登录"))
        d.save_screenshot(str(ARTIFACTS / "zh-CN-login.png"))
        assert foreign(d.execute_script(COLLECT), zh) == []
        assert severe_console_messages(d) == []
    finally:
        d.quit()


def test_track_playback_shows_gaps_late_fixes_and_plays(world, tmp_path):
    """A subject's track of a chosen window: one line per run of fixes (the 30-minute
    silence is a gap, not a line), every fix a point coloured by its accuracy, the two
    late ones ringed; play moves the marker forward in event time; the read is audited."""
    server, store = world
    d = start_chromium(tmp_path, lang="zh-CN", window="1400,1000")
    try:
        wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        d.get(server.url + "/")
        log_in(d, wait, "alice")
        click(wait, (By.ID, "tab-subjects"))
        click(wait, (By.CSS_SELECTOR, '#subj-list tr[data-subject-id="S-1"]'))
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".pb-load")))
        show_track(d, wait)
        count = lambda css: len(d.find_elements(By.CSS_SELECTOR, css))
        assert (count(".pb-line"), count(".pb-fix.pb-late")) == (2, 2)
        assert (count(".pb-fix.acc-good"), count(".pb-fix.acc-fair"),
                count(".pb-fix.acc-poor")) == (10, 10, 10)
        assert d.find_element(By.CSS_SELECTOR, ".pb-summary").text == (
            "30 个定位点，1 处中断，2 个补报")
        first = d.find_element(By.CSS_SELECTOR, ".pb-clock").text
        assert first.endswith("UTC+08:00")
        d.execute_script("document.querySelector('.pb-speed').value = '600';")
        click(wait, (By.CSS_SELECTOR, ".pb-play"))
        wait.until(lambda drv: int(drv.find_element(By.CSS_SELECTOR, ".pb-time")
                                   .get_attribute("value")) >= 3)
        click(wait, (By.CSS_SELECTOR, ".pb-play"))  # pause
        assert d.find_element(By.CSS_SELECTOR, ".pb-play").text == "播放"
        assert d.find_element(By.CSS_SELECTOR, ".pb-clock").text != first
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "zh-CN-playback.png"))
        assert severe_console_messages(d) == []
    finally:
        d.quit()
    [row] = [r for r in store.audit_log(action="track.view") if r["who"] == "alice"]
    assert (row["target"], row["detail"]["fixes"]) == ("S-1", 30)


FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: "same-origin"})
  .then((r) => r.arrayBuffer()
    .then((b) => done([r.status, r.headers.get("content-type"), b.byteLength])))
  .catch((e) => done([0, String(e), 0]));
"""


def test_the_page_links_the_register_the_evidence_pack_and_the_monthly_report(world, tmp_path):
    """The three downloads of filing from the page: the alarm register of the chosen
    region and period (CSV, PDF; no link until one region is chosen), an alarm's evidence
    pack, a subject's monthly report; each link answers with its file."""
    server, store = world
    d = start_chromium(tmp_path, lang="zh-CN", window="1400,1000")
    try:
        wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        d.set_script_timeout(30)
        d.get(server.url + "/")
        log_in(d, wait, "sue")

        def fetched(css: str) -> tuple[str, list]:
            href = d.find_element(By.CSS_SELECTOR, css).get_attribute("href")
            return href, d.execute_async_script(FETCH, href)

        click(wait, (By.ID, "tab-stats"))
        wait.until(EC.visibility_of_element_located((By.ID, "s-register-hint")))
        assert not d.find_element(By.ID, "s-register-csv").is_displayed()
        d.execute_script("document.querySelector('#s-region').value = '411303';")
        click(wait, (By.CSS_SELECTOR, "#stats-form button[type=submit]"))
        wait.until(EC.visibility_of_element_located((By.ID, "s-register-pdf")))
        for fmt, media in (("csv", "text/csv"), ("pdf", "application/pdf")):
            href, (status, ctype, size) = fetched(f"#s-register-{fmt}")
            assert "region=411303" in href and "lang=zh" in href, href
            assert (status, ctype.split(";")[0]) == (200, media) and size > 100, (href, ctype)
        click(wait, (By.ID, "tab-alarms"))
        click(wait, (By.CSS_SELECTOR, 'tr[data-alarm-id="a-0"]'))
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#detail .evidence-link")))
        href, (status, ctype, size) = fetched("#detail .evidence-link")
        assert href.endswith("/api/alarms/a-0/evidence.zip")
        assert (status, ctype, size > 100) == (200, "application/zip", True), (ctype, size)
        click(wait, (By.ID, "tab-subjects"))
        click(wait, (By.CSS_SELECTOR, '#subj-list tr[data-subject-id="S-1"]'))
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".report-link")))
        d.execute_script("const m = document.querySelector('.report-month');"
                         "m.value = '2025-11'; m.dispatchEvent(new Event('change'));")
        href, (status, ctype, size) = fetched(".report-link")
        assert href.endswith("/api/subjects/S-1/report.pdf?month=2025-11&lang=zh"), href
        assert (status, ctype, size > 1000) == (200, "application/pdf", True), (ctype, size)
        assert severe_console_messages(d) == []
    finally:
        d.quit()
    actions = {r["action"] for r in store.audit_log()}
    assert {"alarms.export", "alarms.evidence", "subject.report"} <= actions
