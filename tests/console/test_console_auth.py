"""Login, sessions, CSRF and login rate limiting, against a real SQLite store."""

from __future__ import annotations

from http.cookies import SimpleCookie

from console_helpers import (
    PASSWORD,
    T0,
    audit_rows,
    open_console,
    raised,
)

from console.app import COOKIE
from console.settings import ConsoleSettings

S = ConsoleSettings()

# the fixtures (console, any_console, sqlite_url) live in console_helpers
pytest_plugins = ["console_helpers"]


def test_login_returns_session_and_csrf_and_sets_a_locked_down_cookie(sqlite_url):
    c = open_console(sqlite_url, secure_cookies=True)
    with c.client:
        r = c.login("alice")
        assert r.status_code == 200
        body = r.json()
        assert body["user"] == "alice" and body["role"] == "operator"
        assert body["regions"] == ["411303"] and body["all_regions"] is False
        assert len(body["csrf_token"]) >= 32
        assert "gps_drift" in body["dispositions"]
        cookie = SimpleCookie(r.headers["set-cookie"])[COOKIE]
        assert cookie["httponly"] is True
        assert cookie["secure"] is True
        assert cookie["samesite"].lower() == "strict"
        assert cookie["path"] == "/"
        # the token is random and opaque: no user name or role in the browser
        assert "alice" not in cookie.value and "operator" not in cookie.value
        assert r.headers["cache-control"] == "no-store"
    c.store.close_store()


def test_insecure_cookie_only_when_asked(console):
    r = console.login("alice")
    assert "secure" not in r.headers["set-cookie"].lower()


def test_wrong_password_unknown_name_and_disabled_account_get_one_generic_answer(console):
    console.store.set_user_disabled("olga", True, T0)
    answers = [console.login("alice", "wrong password here"),
               console.login("nobody", PASSWORD),
               console.login("olga", PASSWORD)]
    for r in answers:
        assert r.status_code == 401
        assert r.json() == {"error": "login_failed", "message": "wrong name or password"}
        assert COOKIE not in r.cookies
    failed = audit_rows(console.store, action="login.failed")
    assert sorted(row["who"] for row in failed) == ["alice", "nobody", "olga"]
    assert all(row["ip"] == "testclient" for row in failed)
    assert console.get("/api/session").status_code == 401


def test_successful_login_is_audited(console):
    assert console.login("alice").status_code == 200
    rows = audit_rows(console.store, action="login.ok")
    assert [(r["who"], r["at"]) for r in rows] == [("alice", T0)]


def test_rate_limit_per_name_answers_429_before_checking_the_password(console):
    for _ in range(S.login_fail_per_user):
        assert console.login("alice", "not the password").status_code == 401
    # Even the right password is refused now: the limiter answers first.
    r = console.login("alice", PASSWORD)
    assert r.status_code == 429
    assert r.json()["error"] == "rate_limited"
    assert int(r.headers["retry-after"]) == int(S.login_window_s)
    assert COOKIE not in r.cookies
    assert len(audit_rows(console.store, action="login.blocked")) == 1
    # Another account from the same address is not blocked by alice's failures alone.
    assert console.login("olga").status_code == 200
    # Once the window has passed, alice may log in again.
    console.clock.advance(int(S.login_window_s * 1000) + 1)
    assert console.login("alice").status_code == 200


def test_login_attempts_are_kept_only_for_the_rate_limit_window(console):
    for _ in range(2):
        assert console.login("alice", "not the password").status_code == 401
    assert console.store.failed_logins(0, name="alice") == 2
    console.clock.advance(int(S.login_window_s * 1000) + 1)
    assert console.login("olga", "not the password either").status_code == 401
    # alice's attempts left the window and are gone; olga's new one is kept.
    assert console.store.failed_logins(0, name="alice") == 0
    assert console.store.failed_logins(0, name="olga") == 1
    # The audit log still has every attempt.
    assert len(audit_rows(console.store, action="login.failed")) == 3


def test_blocked_attempts_do_not_extend_the_block(console):
    for _ in range(S.login_fail_per_user):
        console.login("alice", "nope nope nope")
    for _ in range(3):
        console.clock.advance(60_000)
        assert console.login("alice", "nope nope nope").status_code == 429
    console.clock.advance(int(S.login_window_s * 1000) - 3 * 60_000 + 1)
    assert console.login("alice").status_code == 200


def test_rate_limit_per_address_across_names(console):
    names = [f"guess{i}" for i in range(S.login_fail_per_ip)]
    for name in names:
        assert console.login(name, "x" * 12).status_code == 401
    r = console.login("alice", PASSWORD)
    assert r.status_code == 429


def test_csrf_token_required_on_every_state_change(console):
    console.store.record_events([raised("a1")], T0)
    console.login("alice")
    for token in (None, "", "forged-" + "0" * 40):
        r = console.post("/api/alarms/a1/acknowledge", {"note": "x"}, csrf=token)
        assert r.status_code == 403, token
        assert r.json()["error"] == "csrf"
    assert console.store.get_alarm("a1")["workflow"] == "new"
    assert console.store.actions("a1") == []
    rejected = audit_rows(console.store, action="csrf.rejected")
    assert len(rejected) == 3 and {r["target"] for r in rejected} == {"/api/alarms/a1/acknowledge"}
    # logout is a state change as well
    assert console.post("/api/logout", csrf=None).status_code == 403
    assert console.get("/api/session").status_code == 200
    # the right token works
    assert console.post("/api/alarms/a1/acknowledge", {"note": "x"}).status_code == 200


def test_csrf_token_of_another_session_is_refused(sqlite_url):
    c1 = open_console(sqlite_url)
    with c1.client:
        c1.store.record_events([raised("a1")], T0)
        c1.login("alice")
        other = c1.client.post("/api/login",
                               json={"name": "sue", "password": PASSWORD}).json()["csrf_token"]
        # The client now holds sue's cookie (the last login); alice's token must not pass.
        r = c1.post("/api/alarms/a1/acknowledge", {}, csrf=c1.csrf)
        assert r.status_code == 403
        assert c1.post("/api/alarms/a1/acknowledge", {}, csrf=other).status_code == 200
        assert c1.store.get_alarm("a1")["acknowledged_by"] == "sue"
    c1.store.close_store()


def test_cross_origin_requests_are_refused(console):
    console.store.record_events([raised("a1")], T0)
    r = console.client.post("/api/login", json={"name": "alice", "password": PASSWORD},
                            headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"] == "origin"
    console.login("alice")
    r = console.post("/api/alarms/a1/acknowledge", {}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = console.post("/api/alarms/a1/acknowledge", {}, headers={"Origin": "http://testserver"})
    assert r.status_code == 200


def test_login_only_accepts_json(console):
    r = console.client.post("/api/login", data={"name": "alice", "password": PASSWORD})
    assert r.status_code == 415
    r = console.client.post("/api/login", content=b"{not json",
                            headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = console.client.post("/api/login", json={"name": "alice"})
    assert r.status_code == 400 and "'password'" in r.json()["message"]


def test_logout_ends_the_session_on_the_server(console):
    console.login("alice")
    token = console.client.cookies.get(COOKIE)
    assert console.post("/api/logout").status_code == 204
    assert console.get("/api/session").status_code == 401
    # Replaying the old cookie does not bring the session back.
    console.client.cookies.set(COOKIE, token)
    assert console.get("/api/alarms").status_code == 401
    assert [r["who"] for r in audit_rows(console.store, action="logout")] == ["alice"]


def test_logging_in_again_ends_the_previous_session_of_that_browser(console):
    console.login("alice")
    first = console.client.cookies.get(COOKIE)
    console.login("alice")
    second = console.client.cookies.get(COOKIE)
    assert first != second
    assert console.get("/api/session").status_code == 200
    console.client.cookies.set(COOKIE, first)
    assert console.get("/api/session").status_code == 401


def test_session_idle_timeout_and_absolute_lifetime(console):
    console.login("alice")
    console.clock.advance(int(S.session_idle_s * 1000) - 1)
    assert console.get("/api/session").status_code == 200  # activity resets the idle clock
    console.clock.advance(int(S.session_idle_s * 1000) - 1)
    assert console.get("/api/session").status_code == 200
    console.clock.advance(int(S.session_idle_s * 1000))
    assert console.get("/api/session").status_code == 401

    console.login("alice")
    # busy all shift: never idle, but the absolute lifetime still ends the session
    step = int(S.session_idle_s * 1000) // 2
    elapsed = 0
    while elapsed + step < S.session_max_s * 1000:
        console.clock.advance(step)
        elapsed += step
        assert console.get("/api/session").status_code == 200
    console.clock.advance(step)
    assert console.get("/api/session").status_code == 401


def test_disabling_an_account_ends_its_open_session(console):
    console.login("alice")
    assert console.get("/api/alarms").status_code == 200
    console.store.set_user_disabled("alice", True, T0)
    assert console.get("/api/alarms").status_code == 401


def test_security_headers_on_page_and_api(console):
    page = console.get("/")
    assert page.status_code == 200 and "emfence console</title>" in page.text
    for r in (page, console.get("/api/session")):
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"


def test_a_password_change_ends_sessions_opened_before_it(console):
    from console.auth import hash_password

    console.login("alice")
    assert console.get("/api/session").status_code == 200
    console.store.set_user_password("alice", hash_password("a brand new passphrase"), T0)
    assert console.get("/api/session").status_code == 401
    assert console.login("alice").status_code == 401
    assert console.login("alice", "a brand new passphrase").status_code == 200


def test_a_role_or_region_change_applies_to_the_next_request(console):
    console.store.record_events([raised("x1", "411302", subject="s9", device="d9")], T0)
    console.login("alice")
    assert console.get("/api/alarms/x1").status_code == 404
    console.store.set_user_role("alice", "operator", ["411303", "411302"], T0)
    assert console.get("/api/alarms/x1").status_code == 200
    assert console.get("/api/session").json()["regions"] == ["411302", "411303"]


def test_an_attempt_counts_as_failed_from_before_its_password_is_checked(any_console):
    store = any_console.store
    window = int(S.login_window_s * 1000)
    limits = {"window_ms": window, "max_failed_per_name": 2, "max_failed_per_ip": 10}
    first = store.begin_login("alice", "10.0.0.1", T0, **limits)
    second = store.begin_login("alice", "10.0.0.2", T0, **limits)
    assert first.allowed and second.allowed
    assert (second.failed_by_name, second.failed_by_ip) == (1, 0)
    # Both still being checked: they count, so a third is refused (and audited).
    third = store.begin_login("alice", "10.0.0.3", T0, **limits)
    assert not third.allowed and third.attempt_id is None
    assert [r["detail"] for r in audit_rows(store, action="login.blocked")] == [
        {"failed_by_name": 2, "failed_by_ip": 0}]
    # A success stops counting; a failure stays counted.
    store.finish_login(first.attempt_id, "alice", True, T0, "10.0.0.1")
    store.finish_login(second.attempt_id, "alice", False, T0, "10.0.0.2")
    assert store.failed_logins(0, name="alice") == 1
    assert store.begin_login("alice", "10.0.0.3", T0 + 1, **limits).allowed
    assert [r["who"] for r in audit_rows(store, action="login.ok")] == ["alice"]
    assert len(audit_rows(store, action="login.failed")) == 1
    # Attempts that left the window are forgotten when the next attempt is counted.
    store.begin_login("olga", "10.0.0.9", T0 + window + 2, **limits)
    assert store.failed_logins(0, name="alice") == 0
