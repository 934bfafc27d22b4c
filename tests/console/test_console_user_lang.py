"""Each account's console language, kept on the server (issue #16): ``users.lang``
(schema version 14), ``PUT /api/session/lang``, ``lang`` in the session and login answers,
and ``emfence user lang``; over SQLite and PostgreSQL."""

from __future__ import annotations

import io

import pytest
from console_helpers import ACCOUNTS, PASSWORD, T0, Clock, Console, audit_rows
from starlette.testclient import TestClient

from alarms import UserError, open_store, schema
from console import create_app
from console.auth import hash_password
from console.users import main as user_main
from emfence.config import Config

# the fixtures (console, any_console, sqlite_url) live in console_helpers
pytest_plugins = ["console_helpers"]


def put_lang(console: Console, body, *, csrf: str | None = "session"):
    headers = {} if csrf is None else {"X-CSRF-Token": console.csrf if csrf == "session"
                                       else csrf}
    return console.client.put("/api/session/lang", json=body, headers=headers)


def test_a_user_chooses_a_language_and_it_is_kept_with_the_account(any_console):
    c = any_console
    first = c.login("alice")
    assert first.json()["lang"] is None  # not chosen: the page follows the browser
    assert c.get("/api/session").json()["lang"] is None
    r = put_lang(c, {"lang": "en"})
    assert (r.status_code, r.json()) == (200, {"lang": "en"})
    assert c.get("/api/session").json()["lang"] == "en"
    assert c.store.get_user("alice")["lang"] == "en"
    # the next login (another browser) gets it in its first answer
    assert c.login("alice").json()["lang"] == "en"
    [row] = audit_rows(c.store, action="session.lang")
    assert (row["who"], row["target"], row["detail"], row["ip"]) == (
        "alice", "alice", {"lang": "en"}, "testclient")
    # back to Chinese: kept, audited again
    assert put_lang(c, {"lang": "zh-CN"}).status_code == 200
    assert c.get("/api/session").json()["lang"] == "zh-CN"
    assert [r["detail"] for r in audit_rows(c.store, action="session.lang")] == [
        {"lang": "zh-CN"}, {"lang": "en"}]
    # another account is untouched
    c.login("olga")
    assert c.get("/api/session").json()["lang"] is None
    assert c.store.get_user("olga")["lang"] is None
    assert {u["name"]: u["lang"] for u in c.store.list_users()} == {
        "alice": "zh-CN", "olga": None, "sue": None, "root": None}


@pytest.mark.parametrize("body, shown", [
    ({"lang": "fr"}, "'fr'"), ({"lang": "zh"}, "'zh'"), ({"lang": "EN"}, "'EN'"),
    ({"lang": None}, "None"), ({"lang": ["en"]}, "['en']"), ({}, "None"),
    ({"lang": "x" * 5000}, "'xxxx")])
def test_a_bad_language_is_refused_naming_the_field_and_the_value(console, body, shown):
    console.login("alice")
    put_lang(console, {"lang": "en"})
    r = put_lang(console, body)
    assert r.status_code == 400
    answer = r.json()
    assert (answer["error"], answer["field"]) == ("bad_field", "lang")
    assert "zh-CN, en" in answer["message"] and f"got {shown}" in answer["message"]
    assert len(answer["message"]) < 200
    assert console.store.get_user("alice")["lang"] == "en"  # unchanged
    assert len(audit_rows(console.store, action="session.lang")) == 1


def test_not_signed_in_cross_site_and_csrf_less_requests_are_refused(console):
    r = put_lang(console, {"lang": "en"}, csrf=None)
    assert (r.status_code, r.json()["error"]) == (401, "not_logged_in")
    console.login("alice")
    r = console.client.put("/api/session/lang", json={"lang": "en"},
                           headers={"X-CSRF-Token": console.csrf,
                                    "origin": "https://evil.example"})
    assert (r.status_code, r.json()["error"]) == (403, "origin")
    r = put_lang(console, {"lang": "en"}, csrf=None)
    assert (r.status_code, r.json()["error"]) == (403, "csrf")
    r = put_lang(console, {"lang": "en"}, csrf="not-the-token")
    assert r.status_code == 403
    assert console.store.get_user("alice")["lang"] is None
    assert audit_rows(console.store, action="session.lang") == []
    assert len(audit_rows(console.store, action="csrf.rejected")) == 2
    # the GET is refused too without a session
    console.client.post("/api/logout", headers={"X-CSRF-Token": console.csrf})
    assert console.get("/api/session").status_code == 401


def test_the_store_checks_the_language(console):
    store = console.store
    with pytest.raises(UserError, match="lang must be one of zh-CN, en, got 'de'"):
        store.set_user_lang("alice", "de", T0)
    with pytest.raises(UserError, match="no such user"):
        store.set_user_lang("nobody", "en", T0)
    with pytest.raises(UserError, match="lang must be one of"):
        store.add_user("dora", "x", "operator", ["411303"], T0, lang="english")
    assert store.add_user("dora", "x", "operator", ["411303"], T0, lang="en")["lang"] == "en"
    store.set_user_lang("dora", None, T0 + 1, by="root")  # back to "not chosen"
    assert store.get_user("dora")["lang"] is None
    rows = audit_rows(store, target="dora")
    assert [(r["action"], r["who"], r["detail"].get("lang")) for r in rows] == [
        ("user.lang", "root", None), ("user.add", None, "en")]


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    code = user_main(argv, stdin=io.StringIO("a long passphrase here\n"), stdout=out,
                     stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_emfence_user_sets_the_language(sqlite_url):
    code, _, err = run_cli(["add", "lin", "--role", "operator", "--regions", "411303",
                            "--lang", "en", "--store", sqlite_url])
    assert (code, err) == (0, "")
    code, out, err = run_cli(["lang", "lin", "zh-CN", "--store", sqlite_url])
    assert (code, err, out) == (0, "", "lin's console language: zh-CN\n")
    store = open_store(sqlite_url)
    try:
        assert store.get_user("lin")["lang"] == "zh-CN"
        [row] = audit_rows(store, action="user.lang")
        assert row["detail"] == {"lang": "zh-CN"}
    finally:
        store.close_store()
    assert run_cli(["lang", "lin", "none", "--store", sqlite_url])[0] == 0
    assert run_cli(["lang", "lin", "fr", "--store", sqlite_url])[0] == 2  # argparse's choices
    assert run_cli(["add", "kai", "--role", "admin", "--lang", "de",
                    "--store", sqlite_url])[0] == 2
    code, _, err = run_cli(["lang", "nobody", "en", "--store", sqlite_url])
    assert code == 1 and err == "emfence user lang: user 'nobody': no such user\n"
    store = open_store(sqlite_url)
    try:
        assert store.get_user("lin")["lang"] is None
    finally:
        store.close_store()


def test_a_version_13_store_migrates_and_its_accounts_keep_working(store_url, monkeypatch):
    """Accounts written before version 14 have no language (null) and log in as before."""
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:13])
        m.setattr(schema, "SCHEMA_VERSION", 13)
        old = open_store(store_url)
    try:
        assert old.schema_version() == 13
        password_hash = hash_password(PASSWORD)
        with old._db.tx("v13 accounts") as cur:  # rows as version 13 wrote them
            for name, (role, regions) in ACCOUNTS.items():
                cur.execute("INSERT INTO users (name, password_hash, role, regions, disabled, "
                            "created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?)",
                            (name, password_hash, role,
                             "[" + ",".join(f'"{r}"' for r in regions) + "]", T0, T0))
    finally:
        old.close_store()
    store = open_store(store_url)  # 13 -> 14 (and any later version)
    try:
        assert store.schema_version() == schema.SCHEMA_VERSION >= 14
        assert store.get_user("alice")["lang"] is None
        assert store.get_user("alice")["regions"] == ["411303"]
        app = create_app(store=store, config=Config(), secure_cookies=False, clock_ms=Clock())
        with TestClient(app) as client:
            c = Console(client, store, Clock())
            assert c.login("alice").json()["lang"] is None
            assert put_lang(c, {"lang": "en"}).status_code == 200
            assert c.get("/api/session").json()["lang"] == "en"
            c.login("sue")
            assert c.get("/api/session").json()["lang"] is None
    finally:
        store.close_store()
