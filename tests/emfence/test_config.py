from pathlib import Path

import pytest

from emfence.cli import COMMANDS, main
from emfence.config import Config, ConfigError, config_from_dict, iter_keys, load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_match_the_rules_of_the_design():
    c = Config()
    assert c.rules.buffer_m == 50
    assert c.rules.outbound_confirm_fixes == 2
    assert c.rules.offline_after_s.as_tuple() == (600, 1800, 3600)
    assert (c.rules.battery_low_pct, c.rules.battery_clear_pct) == (15, 20)
    assert c.alarms.escalate_after_s == 300
    assert c.tracks.retention_days == 30


def test_toml_overrides_a_subset(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[rules]\nbuffer_m = 80\n[rules.offline_after_s]\nstrict = 300\n")
    c = load_config(p)
    assert c.rules.buffer_m == 80.0
    assert c.rules.offline_after_s.as_tuple() == (300, 1800, 3600)
    assert c.ingest == Config().ingest


def test_one_number_sets_every_level():
    c = config_from_dict({"rules": {"offline_after_s": 120}})
    assert c.rules.offline_after_s.as_tuple() == (120, 120, 120)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"rules": {"bufer_m": 1}}, "rules.bufer_m"),
        ({"rulez": {}}, "rulez"),
        ({"rules": {"buffer_m": "fifty"}}, "rules.buffer_m"),
        ({"rules": {"buffer_m": -1}}, "rules.buffer_m"),
        ({"rules": {"buffer_m": float("nan")}}, "rules.buffer_m"),
        ({"rules": {"outbound_confirm_fixes": 1.5}}, "rules.outbound_confirm_fixes"),
        ({"rules": {"outbound_confirm_fixes": 0}}, "rules.outbound_confirm_fixes"),
        ({"rules": {"battery_low_pct": 30}}, "rules.battery_clear_pct"),
        ({"rules": {"offline_after_s": {"stricter": 1}}}, "rules.offline_after_s.stricter"),
        ({"ingest": {"max_payload_bytes": True}}, "ingest.max_payload_bytes"),
        ({"ingest": {"subscribe": "everything"}}, "ingest.subscribe"),
        ({"ingest": {"drain_wait_s": -1}}, "ingest.drain_wait_s"),
        ({"ingest": {"broker_ack_wait_s": -5}}, "ingest.broker_ack_wait_s"),
        ({"console": {"timezone": "Asia/Shangai"}}, "console.timezone"),
        ({"console": {"timezone": "localtime"}}, "console.timezone"),
        ({"console": {"timezone": "../../etc/passwd"}}, "console.timezone"),
        ({"console": {"timezone": 8}}, "console.timezone"),
        ({"rules": {"buffer_m": "50"}}, "rules.buffer_m"),
    ],
)
def test_bad_values_name_their_key(data, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source="c.toml")
    assert err.value.key == key
    assert key in str(err.value) and "c.toml" in str(err.value)


def test_unreadable_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules\n")
    with pytest.raises(ConfigError, match="bad.toml.*not valid TOML"):
        load_config(bad)


def test_every_key_is_documented():
    doc = DOC.read_text(encoding="utf-8")
    missing = [key for key, _ in iter_keys() if f"`{key}`" not in doc]
    assert not missing, f"undocumented config keys: {missing}"


def test_cli_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    assert main(["no-such-command"]) == 2


def test_the_console_time_zone_is_an_iana_name_and_a_typo_gets_a_suggestion():
    assert Config().console.timezone == "Asia/Shanghai"
    assert config_from_dict({"console": {"timezone": "UTC"}}).console.timezone == "UTC"
    with pytest.raises(ConfigError) as err:
        config_from_dict({"console": {"timezone": "Asia/Shangai"}}, source="c.toml")
    assert str(err.value) == ("c.toml: [console.timezone] unknown time zone 'Asia/Shangai': "
                              "use an IANA name such as 'Asia/Shanghai'; did you mean "
                              "'Asia/Shanghai'?")
