"""`emfence mqtt-passwords` as the README and docs/operations.md run it: its step gives a
broker the README's `emfence run` step can log in to, and a re-run (every enrolment)
keeps the installed files readable by the broker."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from ingest_mqtt_helpers import PahoClient

from ingest.passwords import device_password

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"test-site-secret-0123456789abcdef"
SUBJECTS = {"subjects": [{"subject_id": "S-1", "region": "411303", "devices": ["BR-0001"]}]}


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Running it for real", 1)[1].split("```sh", 1)[1].split("```", 1)[0]


def _readme_command(block: str, name: str) -> list[str]:
    """The argv of the README command ``emfence NAME ...`` (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    line = next(ln for ln in joined.splitlines() if ln.startswith(f"emfence {name} "))
    return shlex.split(line.split("#", 1)[0])


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emfence", *argv], capture_output=True,
                          text=True, check=False)


@pytest.mark.mqtt
def test_readme_step_2_makes_the_account_step_3_logs_in_with(tmp_path, mosquitto_factory):
    """The README's `emfence mqtt-passwords` step exactly as written (paths moved under
    tmp_path, the files it reads made as the steps before it make them), then the login
    of its `emfence run` step."""
    block = _readme_block()
    step2 = _readme_command(block, "mqtt-passwords")[2:]
    step3 = _readme_command(block, "run")[2:]
    user = step3[step3.index("--username") + 1]
    engine_pw_path = step3[step3.index("--password-file") + 1]

    def here(path: str) -> str:
        return str(tmp_path / path.lstrip("/").replace("/", "_"))

    files = {step2[0]: orjson.dumps(SUBJECTS),
             step2[step2.index("--secret-file") + 1]: SECRET,
             engine_pw_path: b"engine-pw-7f3a\n",
             step2[step2.index("--console-password-file") + 1]: b"console-pw\n"}
    for name, data in files.items():
        Path(here(name)).write_bytes(data)
    argv = [here(a) if a in files or a.startswith("/") else a for a in step2]
    argv = [re.sub(r"=(/.*)", lambda m: "=" + here(m.group(1)), a) for a in argv]
    proc = _run(["mqtt-passwords", *argv])
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    passwd = here(step2[step2.index("-o") + 1])
    acl = here(step2[step2.index("--acl-output") + 1])
    broker = mosquitto_factory(password_file=Path(passwd), acl_file=Path(acl))
    engine = PahoClient(broker.port, user, "engine-pw-7f3a")
    device = PahoClient(broker.port, "BR-0001", device_password(SECRET, "BR-0001"))
    try:
        engine.subscribe("emfence/v1/+/+/fix")
        device.publish("emfence/v1/411303/BR-0001/fix", b"{}")
        assert engine.get()[0] == "emfence/v1/411303/BR-0001/fix"
    finally:
        engine.close()
        device.close()


def test_password_file_without_engine_account_is_warned_about(tmp_path):
    (tmp_path / "s.json").write_bytes(orjson.dumps(SUBJECTS))
    (tmp_path / "secret").write_bytes(SECRET)
    proc = _run(["mqtt-passwords", str(tmp_path / "s.json"), "--secret-file",
                 str(tmp_path / "secret"), "-o", str(tmp_path / "out.passwd")])
    assert proc.returncode == 0, proc.stderr
    assert ("warning: no engine account; `emfence run --name NAME` logs in as emfence-NAME"
            in proc.stderr)
    assert "--engine NAME=PASSWORD_FILE" in proc.stderr


def test_rerun_keeps_owner_and_mode_and_says_what_to_reload(tmp_path):
    (tmp_path / "s.json").write_bytes(orjson.dumps(SUBJECTS))
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "w.pw").write_text("engine-pw\n")
    passwd, acl = tmp_path / "emfence.passwd", tmp_path / "emfence.acl"
    argv = ["mqtt-passwords", str(tmp_path / "s.json"), "--secret-file", str(tmp_path / "secret"),
            "--engine", f"w1={tmp_path / 'w.pw'}", "-o", str(passwd), "--acl-output", str(acl)]
    assert _run(argv).returncode == 0
    assert passwd.stat().st_mode & 0o7777 == 0o600  # a new file is private
    # As installed: the broker's user owns them (`chown mosquitto:`), group-readable. Only
    # root can give a file away; elsewhere the owner is ours and the mode is what is kept.
    owner = (4321, 4322) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    for path in (passwd, acl):
        os.chown(path, *owner)
        os.chmod(path, 0o640)
    inode = passwd.stat().st_ino
    enrolled = {"subjects": [{**SUBJECTS["subjects"][0], "devices": ["BR-0001", "BR-0002"]}]}
    (tmp_path / "s.json").write_bytes(orjson.dumps(enrolled))  # an enrolment
    proc = _run(argv)
    assert proc.returncode == 0, proc.stderr
    for path in (passwd, acl):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (*owner, 0o640), path
    assert "BR-0002:" in passwd.read_text()
    assert passwd.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "emfence.acl", "emfence.passwd", "s.json", "secret", "w.pw"]  # no temporary left
    assert "systemctl reload mosquitto" in proc.stderr


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "s.json").write_bytes(orjson.dumps(SUBJECTS))
    (tmp_path / "secret").write_bytes(SECRET)
    proc = _run(["mqtt-passwords", str(tmp_path / "s.json"), "--secret-file",
                 str(tmp_path / "secret"), "-o", str(tmp_path / "no-such-dir" / "out")])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "cannot write" in proc.stderr
