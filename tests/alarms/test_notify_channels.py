"""E-mail and SMS delivery against real receivers on free loopback ports
(tests/alarms/notify_servers.py), on real SQLite and PostgreSQL: an SMTP server that
requires STARTTLS (a self-signed certificate made by openssl) and a login, an SMS
gateway that fails its first requests, the shipped example gateway configuration, and a
storm of 300 offline alarms in one region that becomes one summary within the limit."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from alarms import open_store
from alarms.notify import Recipient, delivery_id
from alarms.notify_outbox import ChannelOutbox
from alarms.notify_people import MessageSettings, people_planner
from alarms.notify_senders import EmailSender, SmsSender, message_id
from alarms.notify_storm import StormLimit
from emfence.config import EmailConfig, SmsConfig, load_config
from emfence.run.notify import storm_limit
from tests.alarms.alarms_helpers import raised
from tests.alarms.notify_servers import PASSWORD, USER, SmsGateway, SmtpServer

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_764_008_040_000
LI = Recipient("P-1", "李警官", email="li@example.gov.cn", phone="13800000001")
CHEN = Recipient("P-2", "陈", email="chen@example.gov.cn", phone="13800000002", lang="en")


def fixed(*people):
    return lambda cur, ev, level: list(people)


def open_people_store(url, *people, channels=("email", "sms")):
    planner = people_planner(fixed(*people), channels,
                             MessageSettings(timezone="Asia/Shanghai",
                                             region_names={"330723": "卧龙区"}))
    return open_store(url, notification_planner=planner)


async def run_until(outbox, done, timeout_s: float = 20.0, settle_s: float = 0.5) -> None:
    task = asyncio.create_task(outbox.run())
    try:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(done):
            assert time.monotonic() < deadline, f"not delivered in time: {outbox.counters}"
            assert not task.done(), task
            await asyncio.sleep(0.02)
        await asyncio.sleep(settle_s)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def email_config(tmp_path, smtp: SmtpServer, **kw) -> EmailConfig:
    pw = tmp_path / "smtp.password"
    pw.write_text(PASSWORD + "\n")
    return EmailConfig(host="127.0.0.1", port=smtp.port, username=USER,
                       password_file=str(pw), from_addr="emfence@example.gov.cn",
                       ca_file=str(smtp.cert), timeout_s=5, retry_min_s=0.05,
                       retry_max_s=0.2, **kw)


def test_email_over_starttls_with_login_once_per_delivery(store_url, tmp_path):
    smtp = SmtpServer(tmp_path, fail_first=2)
    store = open_people_store(store_url, LI, CHEN, channels=["email"])
    try:
        store.record_events([raised(f"A-{i}", at=T0 + i) for i in range(3)], T0)
        outbox = ChannelOutbox(store, EmailSender(email_config(tmp_path, smtp)))
        asyncio.run(run_until(outbox, lambda: store.notification_counts()["sent"] == 6))
        assert outbox.counters["failed_attempts"] == 2  # the two 451s, retried
        assert smtp.attempts == 8 and smtp.logins  # every session logged in over TLS
        assert set(smtp.delivered.values()) == {1} and len(smtp.delivered) == 6
        did = delivery_id("A-1", "raised@1", "email", "P-1")
        msg = smtp.messages[message_id(did)]
        assert msg["To"] == "li@example.gov.cn" and msg["X-Emfence-Delivery"] == did
        assert msg["Subject"] == "【越界告警】"
        assert msg.get_content().startswith("【越界告警】S-1 离开Z-county 412 米，")
        en = smtp.messages[message_id(delivery_id("A-1", "raised@1", "email", "P-2"))]
        assert en["Subject"] == "[Out of area alarm]"
    finally:
        store.close()
        smtp.close()


def test_email_refuses_a_relay_it_cannot_verify(store_url, tmp_path):
    """Without the relay's CA the STARTTLS handshake fails: retried, never sent in clear."""
    smtp = SmtpServer(tmp_path)
    store = open_people_store(store_url, LI, channels=["email"])
    try:
        store.record_events([raised("A-1", at=T0)], T0)
        cfg = dataclasses.replace(email_config(tmp_path, smtp), ca_file="")
        outbox = ChannelOutbox(store, EmailSender(cfg))
        asyncio.run(run_until(outbox, lambda: outbox.counters["failed_attempts"] >= 2,
                              settle_s=0))
        assert not smtp.delivered and store.notification_counts()["retrying"] == 1
        row = store.alarm_notifications("A-1")[0]
        assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"]
    finally:
        store.close()
        smtp.close()


def test_email_never_sends_through_a_relay_without_starttls(store_url, tmp_path):
    smtp = SmtpServer(tmp_path, tls=False)
    store = open_people_store(store_url, LI, channels=["email"])
    try:
        store.record_events([raised("A-1", at=T0)], T0)
        outbox = ChannelOutbox(store, EmailSender(email_config(tmp_path, smtp)))
        asyncio.run(run_until(outbox, lambda: outbox.counters["failed_attempts"] >= 2,
                              settle_s=0))
        assert not smtp.delivered and not smtp.logins
        row = store.alarm_notifications("A-1")[0]
        assert row["state"] == "pending" and "STARTTLS" in row["last_error"]
    finally:
        store.close()
        smtp.close()


def sms_config(gw: SmsGateway, token_file: str) -> SmsConfig:
    return SmsConfig(url=gw.url + "?sign={token}", headers={"Authorization": "Bearer {token}"},
                     body='{"mobile": "{phone}", "content": "{text}", "id": "{delivery_id}"}',
                     success_json_path="result.code", success_value="0",
                     token_file=token_file, timeout_s=2, retry_min_s=0.05, retry_max_s=0.2)


def test_sms_gateway_failing_first_requests_gets_each_once(store_url, tmp_path):
    token = tmp_path / "sms.token"
    token.write_text("tok-123\n")
    gw = SmsGateway(fail_first=3, token="tok-123")
    store = open_people_store(store_url, LI, CHEN, channels=["sms"])
    try:
        store.record_events([raised(f"A-{i}", at=T0 + i) for i in range(2)], T0)
        outbox = ChannelOutbox(store, SmsSender(sms_config(gw, str(token))))
        asyncio.run(run_until(outbox, lambda: store.notification_counts()["sent"] == 4))
        assert gw.requests == 4 + 3 and gw.bad_auth == 0
        assert set(gw.delivered.values()) == {1} and len(gw.delivered) == 4
        one = next(s for s in gw.sent if s["mobile"] == "13800000001")
        assert one["content"].startswith("【越界告警】S-1 ") and one["id"] == one["delivery"]
        assert one["query"] == {"sign": ["tok-123"]}
        assert outbox.counters["failed_attempts"] == 3
    finally:
        store.close()
        gw.close()


def test_sms_success_value_decides(tmp_path):
    """A 200 whose JSON says otherwise is a failed attempt, naming the value."""
    gw = SmsGateway()
    try:
        cfg = dataclasses.replace(sms_config(gw, ""), token_file="", url=gw.url,
                                  headers={}, success_value="1")
        sender = SmsSender(cfg)
        row = {"delivery_id": "d" * 32, "body": b'{"to": "1", "text": "x \\"q\\""}'}

        async def go():
            async with sender:
                return await sender.send(row)
        assert asyncio.run(go()) == "HTTP 200, result.code = '0'"
        assert gw.sent[0]["content"] == 'x "q"'  # the JSON body escapes the text
    finally:
        gw.close()


def test_the_shipped_example_gateway_configuration_sends(tmp_path):
    example = (ROOT / "deploy" / "notify-sms.example.toml").read_text(encoding="utf-8")
    token = tmp_path / "sms.token"
    token.write_text("example-token")
    gw = SmsGateway(fail_first=1, token="example-token")
    example = example.replace("https://sms.example.gov.cn/api/v1/send", gw.url)
    example = example.replace("/etc/emfence/sms.token", str(token))
    cfg_file = tmp_path / "emfence.toml"
    cfg_file.write_text(example, encoding="utf-8")
    config = load_config(cfg_file)
    assert config.notify.sms.success_json_path == "result.code"
    store = open_people_store(f"sqlite:///{tmp_path / 'a.db'}", LI, channels=["sms"])
    try:
        store.record_events([raised("A-1", at=T0)], T0)
        sms = dataclasses.replace(config.notify.sms, retry_min_s=0.05, retry_max_s=0.1)
        outbox = ChannelOutbox(store, SmsSender(sms), storm=storm_limit(config))
        asyncio.run(run_until(outbox, lambda: store.notification_counts()["sent"] == 1))
        assert [s["mobile"] for s in gw.sent] == ["13800000001"]
        assert gw.sent[0]["sign"] == "社区矫正" and gw.sent[0]["request_id"] == \
            delivery_id("A-1", "raised@1", "sms", "P-1")
    finally:
        store.close()
        gw.close()


def offline(i: int) -> dict:
    return raised(f"OFF-{i:03d}", at=T0 + i, type="offline", subject_id=f"S-{i:03d}",
                  device_id=f"BR-{i:03d}", zone_id=None, region="330723", lat=None,
                  lon=None, distance_m=None, acc=None)


@pytest.mark.parametrize("max_n", [5, 1])
def test_a_storm_of_300_offline_alarms_becomes_one_summary(store_url, tmp_path, max_n):
    gw = SmsGateway()
    store = open_people_store(store_url, LI, channels=["sms"])
    try:
        store.record_events([offline(i) for i in range(300)], T0)
        config = load_config(None)
        config = dataclasses.replace(config, notify=dataclasses.replace(
            config.notify, storm_window_s=3600, storm_max_per_recipient=max_n))
        limit = storm_limit(config, {"330723": "卧龙区"})
        assert isinstance(limit, StormLimit)
        sender = SmsSender(sms_config(gw, ""))
        sender.config = dataclasses.replace(sender.config, url=gw.url, headers={})
        outbox = ChannelOutbox(store, sender, storm=limit)
        folded = 300 - (max_n - 1)
        asyncio.run(run_until(outbox, lambda: store.notification_counts()["sent"] == max_n,
                              settle_s=1.0))
        assert len(gw.sent) == max_n  # within the limit, after waiting on
        # (the outbox sends up to 16 at once: the gateway may take them in any order)
        summaries = [s for s in gw.sent if s["content"].startswith("【告警汇总】")]
        assert len(summaries) == 1, [s["content"] for s in gw.sent]
        assert summaries[0]["content"].startswith(f"【告警汇总】卧龙区 {folded} 条离线告警，")
        assert all(s["content"].startswith("【离线告警】") for s in gw.sent if s not in summaries)
        counts = store.notification_counts()
        assert counts["summarized"] == folded and counts["pending"] == 0
        assert outbox.counters["summarized"] == folded
        # visible, not lost: each folded row names the summary that carried it
        row = store.alarm_notifications("OFF-299")[0]
        assert row["state"] == "summarized"
        assert row["summary_id"] == summaries[0]["delivery"]
    finally:
        store.close()
        gw.close()


def test_a_raise_reaches_the_gateway_within_a_second(store_url):
    gw = SmsGateway()
    store = open_people_store(store_url, LI, channels=["sms"])
    sender = SmsSender(SmsConfig(url=gw.url, body='{"mobile": "{phone}", "c": "{text}"}'))
    outbox = ChannelOutbox(store, sender, storm=storm_limit(load_config(None)))

    async def scenario() -> float:
        task = asyncio.create_task(outbox.run())
        try:
            await asyncio.sleep(0.5)  # the loop is idle, polling
            t = time.monotonic()
            await asyncio.to_thread(store.record_events, [raised("A-1", at=T0)], T0)
            while not gw.sent:
                assert time.monotonic() - t < 5, outbox.counters
                await asyncio.sleep(0.01)
            return time.monotonic() - t
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    try:
        assert asyncio.run(scenario()) < 1.0
        assert gw.sent[0]["mobile"] == "13800000001"
    finally:
        store.close()
        gw.close()
