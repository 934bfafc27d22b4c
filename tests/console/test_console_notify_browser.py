"""In a real Chromium: a notification's link (``#alarm=<alarm_id>``) opens that alarm's
detail after the login, and the detail lists who was told and how that went."""

from __future__ import annotations

import pytest
from console_helpers import raised
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from alarms.notify import Recipient
from alarms.notify_people import people_planner
from tests.console.test_console_browser import (  # noqa: F401 (fixtures)
    WAIT_S,
    browser,
    log_in,
    model,
    now_ms,
    severe_console_messages,
    world,
)

pytestmark = pytest.mark.browser


def test_the_link_opens_the_alarm_with_its_notifications(world, browser):  # noqa: F811
    server, store = world
    li = Recipient("P-7", "李", phone="13800000007")
    store._planner = people_planner(lambda cur, ev, level: [li], ["sms"])
    t = now_ms()
    store.record_events([raised(f"a-{i}", "411303", at=t - i * 1000, subject="S-1",
                                device="B-1") for i in range(3)], t)
    [row] = store.notifications_due(t + 1, channels=["sms"], limit=1)
    store.mark_notification_retry(row["id"], t + 600_000, "HTTP 503")
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + f"/#alarm={row['alarm_id']}")
    log_in(d, wait, "alice")
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-fields"),
                                                row["alarm_id"]))
    lines = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#detail .d-notify")]
    assert len(lines) == 1 and "notified P-7 · sms · level 1 · raised · pending" in lines[0]
    assert "retrying, 1 attempts: HTTP 503" in lines[0]
    # another link, in the same page
    d.execute_script("location.hash = '#alarm=a-2'")
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-fields"),
                                                "a-2"))
    assert severe_console_messages(d) == []
