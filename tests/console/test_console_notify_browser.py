"""In a real Chromium: a notification's link (``#alarm=<alarm_id>``) opens that alarm's
detail after the login, and a message folded into a storm summary shows as such."""

from __future__ import annotations

import pytest
from browser_helpers import WAIT_S, log_in, severe_console_messages
from console_helpers import raised
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from alarms.notify import Recipient
from alarms.notify_people import people_planner
from alarms.notify_storm import StormLimit
from tests.console.test_console_browser import (  # noqa: F401 (fixtures)
    browser,
    model,
    now_ms,
    world,
)

pytestmark = pytest.mark.browser


def test_the_link_opens_the_alarm_and_a_summarized_message_shows(world, browser):  # noqa: F811
    server, store = world
    li = Recipient("P-7", "李", phone="13800000007")
    store._planner = people_planner(lambda cur, ev, level: [li], ["sms"])
    t = now_ms()
    store.record_events([raised(f"a-{i}", "411303", at=t - i * 1000, subject="S-1",
                                device="B-1") for i in range(3)], t)
    # a limit of 1 per window: all three folded into one summary
    store.due_within_limits("sms", t + 1, 10, None,
                            StormLimit(600_000, 1, lambda items: b'{"to": "x"}'))
    d = browser
    wait = WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    d.get(server.url + "/#alarm=a-1")
    log_in(d, wait, "alice")
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-fields"),
                                                "a-1"))
    row = d.find_element(By.CSS_SELECTOR, "#detail .d-notify tr.n-summarized")
    assert "P-7" in row.text and "in a summary" in row.text
    # another link, in the same page
    d.execute_script("location.hash = '#alarm=a-2'")
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail .d-fields"),
                                                "a-2"))
    assert severe_console_messages(d) == []
