"""Every `emfence` subcommand meets a user's mistake with one line and exit 1 (2 for
usage), never a traceback: a missing file, bad JSON, a wrong store URL, a database
server that is down, and a reader that closed the pipe (`... | head -3`)."""

from __future__ import annotations

import socket
import subprocess
import sys

import orjson
import pytest

from emfence.cli import COMMANDS


def _emfence(*argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emfence", *argv], input=stdin,
                          capture_output=True, text=True, check=False, timeout=120)


def _down_url() -> str:
    """A PostgreSQL URL on a 127.0.0.1 port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/emfence"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad.json").write_text('{"subjects": [')
    (tmp_path / "zones.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "subjects.json").write_text('{"subjects": []}')
    (tmp_path / "fixes.jsonl").write_text("")
    truth = [{"what": "run", "start": 0, "end": 60_000}]
    truth += [{"what": "exclusion", "expect": "exclusion", "device_id": f"BR-{i:05d}",
               "zone_id": "victim-001", "start": 1000, "end": 2000} for i in range(3000)]
    (tmp_path / "truth.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in truth))
    (tmp_path / "alarms.jsonl").write_text("")
    return tmp_path


def _cases(t, down):
    nope = str(t / "nope.json")
    bad = str(t / "bad.json")
    zones, subjects = str(t / "zones.geojson"), str(t / "subjects.json")
    truth, alarms = str(t / "truth.jsonl"), str(t / "alarms.jsonl")
    return {
        "zones": [["zones", "check", nope], ["zones", "check", bad]],
        "replay": [["replay", "--zones", nope, "--subjects", subjects, "--fixes", alarms],
                   ["replay", "--zones", bad, "--subjects", subjects, "--fixes", alarms],
                   ["replay", "--zones", zones, "--subjects", bad, "--fixes", alarms],
                   ["replay", "--zones", zones, "--subjects", subjects, "--fixes", nope]],
        "run": [["run", "--zones", nope, "--subjects", subjects, "--store", down],
                ["run", "--zones", zones, "--subjects", bad, "--store", down]],
        "mqtt-passwords": [["mqtt-passwords", nope, "--secret-file", truth],
                           ["mqtt-passwords", bad, "--secret-file", truth]],
        "retire-session": [["retire-session", "--name", "w1", "--broker", "mqtt://x:y:z"],
                           ["retire-session", "--name", "w1", "--password-file", nope]],
        "simulate": [["simulate", "--zones", nope, "--subjects", subjects, "--replay-out",
                      str(t / "o.jsonl")],
                     ["simulate", "--zones", zones, "--subjects", bad, "--replay-out",
                      str(t / "o.jsonl")]],
        "score": [["score", "--truth", nope, "--alarms", alarms],
                  ["score", "--truth", bad, "--alarms", alarms],
                  ["score", "--truth", truth, "--alarms", down],
                  ["score", "--truth", truth, "--alarms", "mysql://db/emfence"],
                  ["score", "--truth", truth, "--alarms", f"sqlite:///{t}/no-dir/a.db"]],
        "console": [["console", "--store", down],
                    ["console", "--store", "mysql://db/emfence"],
                    ["console", "--store", f"sqlite:///{t}/c.db", "--zones", nope,
                     "--subjects", subjects]],
        "register": [["register", "import", "--zones", nope, "--subjects", subjects,
                      "--store", f"sqlite:///{t}/r.db"],
                     ["register", "import", "--zones", zones, "--subjects", bad,
                      "--store", f"sqlite:///{t}/r.db"],
                     ["register", "import", "--zones", zones, "--subjects", subjects,
                      "--store", down],
                     ["register", "export", "--store", down, "-o", str(t / "out")],
                     ["register", "export", "--store", "mysql://db/emfence", "-o",
                      str(t / "out")]],
        "user": [["user", "list", "--store", down],
                 ["user", "list", "--store", "mysql://db/emfence"],
                 ["user", "list", "--store", f"sqlite:///{t}/no-dir/a.db"]],
    }


def test_every_subcommand_is_audited(files):
    assert set(_cases(files, "x")) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_mistakes_are_one_line_and_exit_1(files, command):
    for argv in _cases(files, _down_url())[command]:
        proc = _emfence(*argv)
        err = proc.stderr.strip()
        assert proc.returncode == 1, (argv, proc.returncode, err)
        assert "Traceback" not in err, (argv, err)
        assert len(err.splitlines()) == 1, (argv, err)
        assert err.startswith(f"emfence {command}"), (argv, err)
        for path in argv:  # the file at fault is named, once
            if path.endswith(("nope.json", "bad.json")):
                assert err.count(path) == 1, (argv, err)


def test_store_server_down_is_named(files):
    down = _down_url()
    proc = _emfence("score", "--truth", str(files / "truth.jsonl"), "--alarms", down)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"emfence score: {down}: cannot connect to PostgreSQL")


@pytest.mark.parametrize("argv", [
    ["score", "--truth", "{t}/truth.jsonl", "--alarms", "{t}/alarms.jsonl"],
    ["score", "--truth", "{t}/truth.jsonl", "--alarms", "{t}/alarms.jsonl", "--json"],
    ["zones", "check", "{t}/zones.geojson"],
    ["replay", "--zones", "{t}/zones.geojson", "--subjects", "{t}/subjects.json",
     "--fixes", "{t}/fixes.jsonl"],
    ["--help"],
], ids=["score", "score-json", "zones-check", "replay", "help"])
def test_a_closed_pipe_is_no_traceback(files, argv):
    """The reader is gone before the command writes (`| head -0`): no traceback."""
    argv = [a.format(t=files) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "emfence", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc in (0, 1), (rc, err)  # 0 when the command wrote nothing to stdout
