"""The console language follows the account, not the browser (issue #16), in headless
Chromium: a choice made in one browser is the account's in another; the login page keeps
the browser's language; an account with no choice gets the browser's."""

from __future__ import annotations

import time

import pytest
from browser_helpers import WAIT_S, click, log_in, severe_console_messages, start_chromium
from console_helpers import Server, add_accounts
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from alarms.store import open_store
from console import create_app
from emfence.config import Config

pytestmark = pytest.mark.browser

# Records, the moment the status board is first shown, the page's language and the
# board tab's words: what the operator sees first after logging in.
WATCH_FIRST_VIEW = """
window.firstView = null;
const board = document.getElementById("board-view");
new MutationObserver((changes, observer) => {
  if (board.hidden) return;
  const tab = document.getElementById("tab-board").textContent;
  window.firstView = [document.documentElement.lang, tab];
  observer.disconnect();
}).observe(board, { attributes: true, attributeFilter: ["hidden"] });
"""


@pytest.fixture
def served(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    server = Server(create_app(store=store, config=Config(), secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()


def page_lang(d) -> str:
    return d.find_element(By.TAG_NAME, "html").get_attribute("lang")


def kept_lang(store, name: str, want: str | None) -> bool:
    """Whether the account's stored language is ``want`` yet (polled: the page's PUT
    answers after the page has redrawn)."""
    for _ in range(int(WAIT_S / 0.05)):  # a guard against a hang, not a time limit
        if store.get_user(name)["lang"] == want:
            return True
        time.sleep(0.05)
    return False


def test_the_accounts_language_follows_it_to_another_browser(served, tmp_path):
    server, store = served
    # Browser 1 (Chinese): alice chooses English with the page's button.
    (tmp_path / "one").mkdir()
    d = start_chromium(tmp_path / "one", lang="zh-CN")
    try:
        wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        d.get(server.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "login-submit"), "登录"))
        log_in(d, wait, "alice")
        assert d.find_element(By.ID, "tab-alarms").text == "告警"  # no choice yet
        click(wait, (By.ID, "lang"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "tab-alarms"), "Alarms"))
        assert kept_lang(store, "alice", "en")
        assert d.execute_script("return localStorage.getItem('emfence.lang')") == "en"
        assert severe_console_messages(d) == []
    finally:
        d.quit()
    [row] = store.audit_log(action="session.lang")
    assert (row["who"], row["detail"]) == ("alice", {"lang": "en"})

    # Browser 2, fresh, Chinese: the login page is Chinese; alice's page is English from
    # its first view on; after her logout the login page is Chinese again, and sue (no
    # choice of her own) gets Chinese.
    (tmp_path / "two").mkdir()
    d = start_chromium(tmp_path / "two", lang="zh-CN")
    try:
        wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        d.get(server.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "login-submit"), "登录"))
        assert page_lang(d) == "zh-CN"
        d.execute_script(WATCH_FIRST_VIEW)
        log_in(d, wait, "alice")
        assert d.execute_script("return window.firstView") == ["en", "Status board"]
        assert (page_lang(d), d.find_element(By.ID, "tab-alarms").text) == ("en", "Alarms")
        assert d.find_element(By.ID, "lang").text == "中文"
        # the account's language is not this browser's choice
        assert d.execute_script("return localStorage.getItem('emfence.lang')") is None
        click(wait, (By.ID, "logout"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "login-submit"), "登录"))
        assert (page_lang(d), d.find_element(By.ID, "login-error").text) == ("zh-CN", "已退出。")
        log_in(d, wait, "sue")
        assert (page_lang(d), d.find_element(By.ID, "tab-alarms").text) == ("zh-CN", "告警")
        assert severe_console_messages(d) == []
    finally:
        d.quit()
    assert store.get_user("sue")["lang"] is None
    assert len(store.audit_log(action="session.lang")) == 1  # applying it is not choosing
