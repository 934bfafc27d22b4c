"""`[notify.*]` configuration: the webhook contract's two keys are enough; an unknown
channel table, an unknown key, a missing or empty secret file are refused at load,
naming the key (the `emfence run` start reads the config first and exits 1 on it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emfence.config import ConfigError, load_config


def _write(tmp_path, text: str):
    p = tmp_path / "emfence.toml"
    p.write_text(text)
    return p


def test_url_and_secret_file_are_enough(tmp_path):
    (tmp_path / "webhook.secret").write_text("k\n")
    cfg = load_config(_write(tmp_path, f"""
[notify.webhook]
url = "http://127.0.0.1:8099/hook"
secret_file = "{tmp_path / 'webhook.secret'}"
"""))
    assert cfg.notify.webhook.url == "http://127.0.0.1:8099/hook"
    assert cfg.notify.webhook.retry_max_s == 300.0


@pytest.mark.parametrize("body, key", [
    ('[notify.pager]\nurl = "http://x"\n', "notify.pager"),
    ('[notify.webhook]\nurl = "http://x"\nsecret = "inline"\n', "notify.webhook.secret"),
    ('[notify.webhook]\nurl = "http://x"\nsecret_file = "{missing}"\n',
     "notify.webhook.secret_file"),
    ('[notify.webhook]\nurl = "http://x"\nsecret_file = "{empty}"\n',
     "notify.webhook.secret_file"),
    ('[notify.webhook]\nurl = "http://x"\n', "notify.webhook.secret_file"),
    ('[notify.webhook]\nurl = "ftp://x"\nsecret_file = "{ok}"\n', "notify.webhook.url"),
    ('[notify.webhook]\nsecret_file = "{ok}"\n', "notify.webhook.url"),
    (('[notify.webhook]\nurl = "http://x"\nsecret_file = "{ok}"\nretry_min_s = 5\n'
     'retry_max_s = 1\n'), "notify.webhook.retry_max_s"),
])
def test_bad_notify_config_names_the_key(tmp_path, body, key):
    (tmp_path / "empty.secret").write_text("  \n")
    (tmp_path / "ok.secret").write_text("k")
    body = body.format(missing=tmp_path / "nope.secret", empty=tmp_path / "empty.secret",
                       ok=tmp_path / "ok.secret")
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, body))
    assert err.value.key == key
    assert f"[{key}]" in str(err.value)


def test_emfence_run_refuses_a_bad_notify_table_at_start(tmp_path):
    """One line naming the key, exit 1, before anything connects (no broker is running)."""
    cfg = _write(tmp_path, f'[notify.webhook]\nurl = "http://127.0.0.1:8099/hook"\n'
                           f'secret_file = "{tmp_path / "missing.secret"}"\n')
    proc = subprocess.run([sys.executable, "-m", "emfence", "run", "--config", str(cfg),
                           "--zones", str(tmp_path / "z.geojson"),
                           "--subjects", str(tmp_path / "s.json"),
                           "--store", f"sqlite:///{tmp_path / 'a.db'}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "[notify.webhook.secret_file]" in err[0], proc.stderr
    assert "missing.secret" in err[0] and "Traceback" not in proc.stderr
