"""`[notify]`, `[notify.email]`, `[notify.sms]` and `console.public_url`: good tables load,
bad ones are refused naming the key (an unknown channel or key, a missing secret file, a
template naming an unknown field), and `emfence run` refuses them at start in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emfence.config import ConfigError, load_config

SMS = '[notify.sms]\nurl = "https://gw/send"\nbody = \'{"m": "{phone}", "c": "{text}"}\'\n'
EMAIL = ('[notify.email]\nhost = "smtp.example"\nfrom_addr = "a@example"\n'
         'username = "u"\npassword_file = "OK"\n')


def _load(tmp_path, text: str):
    (tmp_path / "ok.secret").write_text("s3cret\n")
    (tmp_path / "empty.secret").write_text(" \n")
    text = (text.replace("OK", str(tmp_path / "ok.secret"))
            .replace("MISSING", str(tmp_path / "nope.secret"))
            .replace("EMPTY", str(tmp_path / "empty.secret")))
    p = tmp_path / "emfence.toml"
    p.write_text(text, encoding="utf-8")
    return load_config(p)


def test_good_tables_load(tmp_path):
    cfg = _load(tmp_path, '[notify]\nlang = "en"\nstorm_max_per_recipient = 3\n'
                '[console]\npublic_url = "https://emfence.example"\n' + EMAIL + SMS
                + 'token_file = "OK"\n[notify.sms.headers]\nAuthorization = "Bearer {token}"\n')
    assert cfg.notify.lang == "en" and cfg.notify.storm_max_per_recipient == 3
    assert cfg.notify.email.starttls is True and cfg.notify.email.port == 587
    assert cfg.notify.sms.headers == {"Authorization": "Bearer {token}"}
    assert cfg.notify.sms.method == "POST" and cfg.console.public_url.startswith("https")
    assert load_config(None).notify.lang == "zh"  # Chinese by default
    assert load_config(None).notify.closing_messages is True


@pytest.mark.parametrize("text, key", [
    ('[notify.pager]\nurl = "http://x"\n', "notify.pager"),
    ('[notify.email]\nhost = "h"\nfrom_addr = "a@b"\npassword = "inline"\n',
     "notify.email.password"),
    (EMAIL.replace('"OK"', '"MISSING"'), "notify.email.password_file"),
    (EMAIL.replace('"OK"', '"EMPTY"'), "notify.email.password_file"),
    (EMAIL.replace('password_file = "OK"\n', ""), "notify.email.password_file"),
    (EMAIL + 'ca_file = "MISSING"\n', "notify.email.ca_file"),
    (EMAIL.replace("a@example", "nobody"), "notify.email.from_addr"),
    (EMAIL + "starttls = 1\n", "notify.email.starttls"),
    (EMAIL + "starttls = false\n", "notify.email.starttls"),
    (EMAIL + "port = 70000\n", "notify.email.port"),
    ('[notify.email]\nfrom_addr = "a@b"\n', "notify.email.host"),
    (SMS.replace("{phone}", "{mobile}"), "notify.sms.body"),
    (SMS + '[notify.sms.headers]\nX-Sign = "{secret}"\n', "notify.sms.headers.X-Sign"),
    (SMS.replace("https://gw/send", "https://gw/send?u={user}"), "notify.sms.url"),
    (SMS + '[notify.sms.headers]\nAuthorization = "Bearer {token}"\n',
     "notify.sms.token_file"),
    (SMS + 'token_file = "MISSING"\n', "notify.sms.token_file"),
    (SMS + 'method = "DELETE"\n', "notify.sms.method"),
    (SMS + 'body_encoding = "xml"\n', "notify.sms.body_encoding"),
    (SMS + 'success_json_path = "code"\n', "notify.sms.success_value"),
    (SMS + "success_status = 42\n", "notify.sms.success_status"),
    (SMS + "[notify.sms.headers]\nX-N = 5\n", "notify.sms.headers.X-N"),
    (SMS.replace("{text}", "text"), "notify.sms.body"),
    ('[notify.sms]\nbody = "{text}"\n', "notify.sms.url"),
    ('[notify]\nlang = "fr"\n', "notify.lang"),
    ('[notify]\nclosing_messages = "no"\n', "notify.closing_messages"),
    ("[notify]\nstorm_max_per_recipient = 0\n", "notify.storm_max_per_recipient"),
    ("[notify]\nstorm_window_s = 0\n", "notify.storm_window_s"),
    ('[console]\npublic_url = "emfence.example"\n', "console.public_url"),
])
def test_bad_tables_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert err.value.key == key, str(err.value)
    assert f"[{key}]" in str(err.value)


def test_an_unknown_template_field_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field \{mobile\}; known: \{phone\}, "
                                          r"\{text\}, \{token\}, \{delivery_id\}"):
        _load(tmp_path, SMS.replace("{phone}", "{mobile}"))


def test_emfence_run_refuses_a_bad_sms_template_at_start(tmp_path):
    """One line naming the key, exit 1, before anything connects (no broker is running)."""
    cfg = tmp_path / "emfence.toml"
    cfg.write_text(SMS.replace("{phone}", "{mobile}"), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "emfence", "run", "--config", str(cfg),
                           "--zones", str(tmp_path / "z.geojson"),
                           "--subjects", str(tmp_path / "s.json"),
                           "--store", f"sqlite:///{tmp_path / 'a.db'}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "[notify.sms.body]" in err[0], proc.stderr
    assert "{mobile}" in err[0] and "Traceback" not in proc.stderr


def test_emfence_run_builds_one_loop_per_channel_with_counters(tmp_path):
    from alarms import open_store
    from alarms.notify import Recipient
    from emfence.run.notify import notification_planner, notify_outboxes
    from tests.alarms.alarms_helpers import raised

    cfg = _load(tmp_path, '[notify.webhook]\nurl = "http://127.0.0.1:9/h"\nsecret_file = "OK"\n'
                + EMAIL + SMS)
    li = Recipient("P-1", "李", email="li@example.gov.cn", phone="13800000001")
    # without the roster's resolver the people channels plan nothing; with it, they do
    for resolver, want in ((None, ["webhook"]), (lambda cur, ev, level: [li],
                                                 ["webhook", "email", "sms"])):
        store = open_store(f"sqlite:///{tmp_path / 'a.db'}",
                           notification_planner=notification_planner(cfg, resolver))
        try:
            store.record_events([raised(f"A-{len(want)}", at=1_764_000_000_000)],
                                1_764_000_000_000)
            rows = store.alarm_notifications(f"A-{len(want)}")
            assert [r["channel"] for r in rows] == want
            notifier = notify_outboxes(store, cfg, None)
            assert notifier is not None
            assert list(notifier.counters) == ["webhook", "email", "sms"]
            assert notifier.counters["sms"] == {"sent": 0, "failed_attempts": 0,
                                                "summarized": 0, "store_errors": 0,
                                                "errors": 0}
        finally:
            store.close()
    assert notify_outboxes(None, load_config(None), None) is None


def test_closing_messages_off_reaches_the_planner(tmp_path):
    from emfence.run.notify import message_settings

    cfg = _load(tmp_path, "[notify]\nclosing_messages = false\n")
    assert message_settings(cfg, {}).closing_messages is False
    assert message_settings(load_config(None), {}).closing_messages is True
