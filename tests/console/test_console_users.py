"""`emfence user`: accounts in a real store, password from stdin, never argv."""

from __future__ import annotations

import io
import subprocess
import sys

from argon2 import PasswordHasher

from alarms.store import open_store
from console.users import MIN_PASSWORD_CHARS, main

GOOD = "a long passphrase here"


def run(argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_add_hashes_the_stdin_password_with_argon2(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    code, out, err = run(["add", "alice", "--role", "operator", "--regions", "411303,411302",
                          "--store", url], GOOD + "\n")
    assert (code, err) == (0, "")
    assert "alice" in out
    store = open_store(url)
    user = store.get_user("alice")
    assert user["role"] == "operator" and user["regions"] == ["411303", "411302"]
    assert user["password_hash"].startswith("$argon2id$")
    assert GOOD not in user["password_hash"]
    assert PasswordHasher().verify(user["password_hash"], GOOD)
    added = store.audit_log(action="user.add")
    assert [(r["target"], r["detail"]["role"]) for r in added] == [("alice", "operator")]
    store.close_store()


def test_add_refuses_bad_input_with_a_clear_message(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    cases = [
        (["add", "bob", "--role", "operator", "--store", url], GOOD, "--regions is required"),
        (["add", "bob", "--role", "operator", "--regions", "41/13", "--store", url], GOOD,
         "not a region code"),
        (["add", "dora", "--role", "operator", "--regions", "41l303", "--store", url], GOOD,
         "region '41l303' is not an adcode: 'l' where a digit belongs"),
        (["add", "dora", "--role", "operator", "--regions", "410000", "--store", url], GOOD,
         "region '410000' is a province's adcode"),
        (["add", "dora", "--role", "operator", "--regions", "411399", "--store", url], GOOD,
         "region '411399' is not a county of province 410000"),
        (["add", "dora", "--role", "operator", "--regions", "4113031", "--store", url], GOOD,
         "a county code has 6 digits"),
        (["add", "bob", "--role", "operator", "--regions", "411303", "--store", url], "short\n",
         f"at least {MIN_PASSWORD_CHARS}"),
        (["add", "bob", "--role", "operator", "--regions", "411303", "--store", url], "",
         f"at least {MIN_PASSWORD_CHARS}"),
        (["add", "b o b", "--role", "operator", "--regions", "411303", "--store", url], GOOD,
         "user name"),
        (["add", "bob", "--role", "operator", "--regions", "411303",
          "--store", "mysql://x"], GOOD, "sqlite:///"),
    ]
    for argv, stdin, message in cases:
        code, _out, err = run(argv, stdin)
        assert code == 1, argv
        assert message in err, (argv, err)
        assert err.startswith("emfence user add: ")
    assert run(["add", "bob", "--role", "wizard", "--store", url], GOOD)[0] == 2


def test_regions_are_checked_against_the_zone_file_when_given(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    zones = tmp_path / "z.geojson"
    zones.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                     '"properties": {"zone_id": "north-1"}, "geometry": {"type": "Polygon", '
                     '"coordinates": [[[112, 33], [112.1, 33], [112.1, 33.1], [112, 33]]]}}]}')
    code, _out, err = run(["add", "dora", "--role", "operator", "--regions", "north-2",
                           "--zones", str(zones), "--store", url], GOOD)
    assert code == 1 and "region 'north-2' is not a zone of the --zones file" in err
    code, out, _err = run(["add", "dora", "--role", "operator", "--regions", "north-1",
                           "--zones", str(zones), "--store", url], GOOD)
    assert code == 0 and "added operator dora for north-1" in out
    # a duplicate name
    assert run(["add", "bob", "--role", "admin", "--store", url], GOOD)[0] == 0
    code, _, err = run(["add", "bob", "--role", "admin", "--store", url], GOOD)
    assert code == 1 and "already exists" in err


def test_list_disable_enable(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    run(["add", "root", "--role", "admin", "--store", url], GOOD)
    run(["add", "sue", "--role", "supervisor", "--regions", "411303", "--store", url], GOOD)
    assert run(["disable", "sue", "--store", url])[0] == 0
    code, out, _ = run(["list", "--store", url])
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == ["root", "admin", "active", "(all)"]
    assert lines[2].split() == ["sue", "supervisor", "disabled", "411303"]
    assert "$argon2" not in out
    assert run(["enable", "sue", "--store", url])[0] == 0
    store = open_store(url)
    assert store.get_user("sue")["disabled"] is False
    store.close_store()
    code, _, err = run(["disable", "nobody", "--store", url])
    assert code == 1 and "no such user" in err


def test_the_emfence_command_reads_the_password_from_stdin(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    proc = subprocess.run([sys.executable, "-m", "emfence", "user", "add", "carol", "--role",
                           "operator", "--regions", "411303", "--store", url],
                          input=GOOD + "\n", capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    store = open_store(url)
    assert PasswordHasher().verify(store.get_user("carol")["password_hash"], GOOD)
    store.close_store()
    # there is no way to pass a password as an argument
    proc = subprocess.run([sys.executable, "-m", "emfence", "user", "add", "dave", "--role",
                           "operator", "--regions", "411303", "--password", GOOD,
                           "--store", url], capture_output=True, text=True, input="", check=False)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_password_and_role_changes(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    run(["add", "alice", "--role", "operator", "--regions", "411303", "--store", url], GOOD)
    new = "an even longer passphrase"
    code, out, err = run(["password", "alice", "--store", url], new + "\n")
    assert (code, err) == (0, "")
    assert "alice" in out
    code, _, err = run(["password", "alice", "--store", url], "short\n")
    assert code == 1 and "at least" in err
    code, _, err = run(["password", "nobody", "--store", url], new + "\n")
    assert code == 1 and "no such user" in err
    code, out, err = run(["role", "alice", "--role", "supervisor", "--regions", "411303,411302",
                          "--store", url])
    assert code == 0, err
    assert "supervisor" in out
    code, _, err = run(["role", "alice", "--role", "operator", "--store", url])
    assert code == 1 and "--regions is required" in err
    store = open_store(url)
    user = store.get_user("alice")
    assert PasswordHasher().verify(user["password_hash"], new)
    assert (user["role"], user["regions"]) == ("supervisor", ["411303", "411302"])
    assert {r["action"] for r in store.audit_log(target="alice")} >= {"user.password", "user.role"}
    store.close_store()
