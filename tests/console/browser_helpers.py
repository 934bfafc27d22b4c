"""What the console's browser tests share: headless Chromium in another time zone than
the command centre's, clicking through a page that redraws, logging in (in Chinese as
an operator would choose), the page's own error log, and its date/time inputs (datetime.js)."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from console_helpers import PASSWORD
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

# How long the page may take to react (a safety net for a loaded CI machine, not a
# performance assertion: a working page reacts within a second).
WAIT_S = 30

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# The browser's own zone is not the command centre's (console.timezone, Asia/Shanghai by
# default): the page must show the centre's times whatever the computer it runs on says.
BROWSER_TZ = "America/New_York"
def start_chromium(tmp_path, *, lang: str | None = None, window: str = "1400,900",
                   extra: tuple[str, ...] = ()):
    """Headless Chromium with its own profile under ``tmp_path``, in the time zone
    BROWSER_TZ (not the command centre's); ``lang`` ("zh-CN") sets its language."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver; `make test` does it)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", *extra,
                 f"--window-size={window}", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    env = {**os.environ, "TZ": BROWSER_TZ}
    if lang:
        opts.add_argument(f"--lang={lang}")
        opts.add_experimental_option("prefs", {"intl.accept_languages": f"{lang},zh"})
        env["LANGUAGE"] = lang.replace("-", "_")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, env=env)
    return webdriver.Chrome(options=opts, service=service)


def click(wait: WebDriverWait, locator: tuple[str, str]) -> None:
    """Click what ``locator`` finds; the page redraws the list as events arrive, so an
    element found a moment ago may have been replaced: find it again and retry."""

    def attempt(driver) -> bool:
        driver.find_element(*locator).click()
        return True

    wait.until(attempt)


def severe_console_messages(driver) -> list[str]:
    """Errors the page logged, less the expected 401s: the session probe before login,
    and a login with a wrong password."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and not (("/api/session" in e["message"] or "/api/login" in e["message"])
                     and "401" in e["message"])]


def log_in_chinese(d, url: str, name: str) -> WebDriverWait:
    """Open the console at ``url``, choose 中文 as an operator would (kept by the page)
    and log in as ``name``; the wait to use afterwards."""
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(url + "/")
    d.execute_script("localStorage.setItem('emfence.lang', 'zh')")
    d.refresh()
    log_in(d, wait, name)
    return wait


def log_in(d, wait, name: str) -> None:
    """Log in through the page, wait for the status board (every role starts there; a
    notification's #alarm= link goes on to the alarms view), then open the alarms view."""
    field = wait.until(EC.visibility_of_element_located((By.ID, "login-name")))
    field.clear()
    field.send_keys(name)
    d.find_element(By.ID, "login-password").send_keys(PASSWORD)
    d.find_element(By.ID, "login-submit").click()
    wait.until(EC.any_of(EC.visibility_of_element_located((By.ID, "board-view")),
                         EC.visibility_of_element_located((By.ID, "alarms-view"))))
    if not d.find_element(By.ID, "alarms-view").is_displayed():
        click(wait, (By.ID, "tab-alarms"))
    wait.until(EC.visibility_of_element_located((By.ID, "alarms-view")))


def log_out(wait: WebDriverWait) -> None:
    click(wait, (By.ID, "logout"))
    wait.until(EC.visibility_of_element_located((By.ID, "login-name")))


def set_value(d, element, value: str) -> None:
    """Set an input's value from script (a number input's, without typing)."""
    d.execute_script("arguments[0].value = arguments[1]", element, value)


def type_time(element, text: str) -> None:
    """Type ``text`` ("2026-06-01 23:30", a date "2026-06-01") into one of the page's
    date/time inputs (datetime.js) as an operator would: the same keys whatever the
    browser's locale. Escape closes its calendar; the picker reads the text when the
    input loses focus (the next click), and the page reads the text itself."""
    element.click()
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(text)
    element.send_keys(Keys.ESCAPE)


def shanghai_local(ms: int) -> str:
    """``ms`` as the page's date/time text in Asia/Shanghai (UTC+8, no summer time):
    "2026-06-01 23:30"."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime((ms + 8 * 3_600_000) / 1000))
