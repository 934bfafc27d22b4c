"""Small pure parts of the console: region lists, scopes, sessions, settings."""

from __future__ import annotations

import pytest

from console.auth import (
    AuthError,
    Principal,
    SessionTable,
    csrf_ok,
    hash_password,
    parse_regions,
    verify_password,
)
from console.settings import ConsoleSettings, console_settings
from emfence.config import Config, config_from_dict


def test_parse_regions():
    assert parse_regions("411303, 411302,,411303") == ("411303", "411302")
    assert parse_regions(["411303"]) == ("411303",)
    assert parse_regions("") == ()
    for bad in ("4113/03", "41 13", "+", "#", "x" * 65):
        with pytest.raises(AuthError, match="not a region code"):
            parse_regions(bad)


def test_scopes():
    op = Principal("alice", "operator", frozenset({"411303"}))
    admin = Principal("root", "admin", frozenset())
    assert op.scope == ["411303"] and admin.scope is None
    assert op.can_see("411303") and not op.can_see("411302") and not op.can_see(None)
    assert admin.can_see("999999")
    assert op.narrow("411302,411303") == ["411303"]
    assert op.narrow("411302") == []
    assert op.narrow(None) == ["411303"]
    assert admin.narrow("411302") == ["411302"]


def test_passwords():
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "correct horse battery")
    assert not verify_password(h, "correct horse battery ")
    assert not verify_password(None, "anything")
    assert not verify_password("not a hash", "anything")
    with pytest.raises(AuthError):
        hash_password("")


def test_session_table_expiry_and_tokens():
    table = SessionTable(idle_ms=1000, max_ms=5000)
    a = table.create("alice", 0)
    b = table.create("alice", 0)
    assert a.token != b.token and a.csrf != b.csrf and len(a.token) >= 43
    assert table.get(a.token, 999) is a
    assert table.get(a.token, 1998) is a  # touched at 999
    assert table.get(a.token, 2998) is None  # idle
    assert table.get(b.token, 500) is b
    assert table.drop_user("alice") == 1  # only b is left
    assert table.get(b.token, 600) is None
    c = table.create("sue", 0)
    for now in range(900, 5000, 900):
        assert table.get(c.token, now) is c
    assert table.get(c.token, 5000) is None  # absolute lifetime
    assert table.get(None, 0) is None and table.get("", 0) is None
    assert csrf_ok(c, c.csrf) and not csrf_ok(c, None) and not csrf_ok(c, c.csrf[:-1])
    with pytest.raises(ValueError):
        SessionTable(idle_ms=0, max_ms=1)


def test_settings_default_and_from_a_console_table():
    assert console_settings(Config()) == ConsoleSettings()
    assert console_settings(None) == ConsoleSettings()

    config = config_from_dict({"console": {"session_idle_s": 60, "login_fail_per_user": 3}})
    s = console_settings(config)
    assert (s.session_idle_s, s.login_fail_per_user) == (60.0, 3)
    assert s.session_max_s == ConsoleSettings().session_max_s
