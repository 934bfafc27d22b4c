"""Abuse of the console over real HTTP: parallel login storms against the console served
by uvicorn on a free port, over a real SQLite and a real PostgreSQL store.

Each storm opens one connection per attempt first, then lets every request go at once
(a barrier), so the console receives them in parallel. How many passwords were checked
is read from the audit trail: every checked password leaves exactly one ``login.ok`` or
``login.failed`` row, every refused attempt a ``login.blocked`` row.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter

import orjson
import pytest
from console_helpers import PASSWORD, Server, add_accounts, audit_rows

from alarms.store import open_store
from console import create_app
from console.settings import ConsoleSettings
from emfence.config import Config

S = ConsoleSettings()
WRONG = "not the password at all"

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'alarms.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def served(store_url):
    """The console over a fresh store, served on a free port with the wall clock."""
    store = open_store(store_url)
    add_accounts(store)
    server = Server(create_app(store=store, config=Config(), secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()


@pytest.fixture
def two_consoles(store_url):
    """Two console processes' worth of console (each its own store connections and
    server) over one store, as when several workers serve the command room."""
    stores = [open_store(store_url) for _ in range(2)]
    add_accounts(stores[0])
    servers = [Server(create_app(store=st, config=Config(), secure_cookies=False)).start()
               for st in stores]
    yield servers, stores[0]
    for server in servers:
        server.stop()
    for st in stores:
        st.close_store()


def storm(ports: int | list[int], attempts: list[tuple[str, str]],
          last: tuple[str, str] | None = None) -> tuple[list[int], int | None]:
    """POST every (name, password) of ``attempts`` to /api/login in parallel (spread
    over ``ports`` in turn); then, once all of them are sent (not answered), ``last``.
    Returns the statuses of ``attempts`` in order and the status of ``last``."""
    ports = ports if isinstance(ports, list) else [ports]
    statuses: list[int | None] = [None] * len(attempts)
    last_status: list[int | None] = [None]
    errors: list[BaseException] = []
    go = threading.Barrier(len(attempts))
    sent = threading.Semaphore(0)
    all_sent = threading.Event()

    def connect(i: int) -> http.client.HTTPConnection:
        # The timeout is only a guard against a hung server.
        conn = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=120)
        conn.connect()
        return conn

    def send(conn: http.client.HTTPConnection, name: str, password: str) -> None:
        conn.request("POST", "/api/login",
                     body=orjson.dumps({"name": name, "password": password}),
                     headers={"content-type": "application/json"})

    def one(i: int, name: str, password: str) -> None:
        try:
            conn = connect(i)
            try:
                go.wait(60)
                send(conn, name, password)
                sent.release()
                resp = conn.getresponse()
                resp.read()
                statuses[i] = resp.status
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            go.abort()
            sent.release()

    def final(name: str, password: str) -> None:
        try:
            conn = connect(len(attempts))
            try:
                all_sent.wait(120)
                send(conn, name, password)
                resp = conn.getresponse()
                resp.read()
                last_status[0] = resp.status
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i, n, p)) for i, (n, p) in enumerate(attempts)]
    if last is not None:
        threads.append(threading.Thread(target=final, args=last))
    for t in threads:
        t.start()
    for _ in attempts:
        sent.acquire(timeout=120)
    all_sent.set()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert all(s is not None for s in statuses)
    return [int(s) for s in statuses], last_status[0]  # type: ignore[arg-type]


def checked(store, name: str | None = None) -> int:
    """Passwords checked (for ``name``, or anyone): one login.ok/login.failed row each."""
    return sum(1 for action in ("login.ok", "login.failed")
               for row in audit_rows(store, action=action) if name in (None, row["who"]))


def test_parallel_wrong_logins_for_one_account_check_at_most_the_limit(served):
    server, store = served
    statuses, _ = storm(server.port, [("alice", WRONG)] * 40)
    assert checked(store, "alice") == S.login_fail_per_user
    assert Counter(statuses) == {401: S.login_fail_per_user, 429: 40 - S.login_fail_per_user}
    assert len(audit_rows(store, action="login.blocked")) == 40 - S.login_fail_per_user
    assert store.failed_logins(0, name="alice") == S.login_fail_per_user


def test_parallel_wrong_logins_from_one_address_check_at_most_its_limit(served):
    server, store = served
    # 40 different names: the per-name limit never bites, the per-address one must.
    statuses, _ = storm(server.port, [(f"guess{i}", WRONG) for i in range(40)])
    assert checked(store) == S.login_fail_per_ip
    assert Counter(statuses) == {401: S.login_fail_per_ip, 429: 40 - S.login_fail_per_ip}


def test_right_password_behind_a_parallel_storm_of_wrong_ones_is_refused(served):
    server, store = served
    statuses, last = storm(server.port, [("alice", WRONG)] * 149, last=("alice", PASSWORD))
    # The right password arrives while the limit is already used up by attempts whose
    # passwords are still being checked: refused, never checked, no session.
    assert last == 429
    assert audit_rows(store, action="login.ok") == []
    assert checked(store, "alice") == S.login_fail_per_user
    assert Counter(statuses) == {401: S.login_fail_per_user, 429: 149 - S.login_fail_per_user}


def test_the_limit_holds_across_consoles_sharing_one_store(two_consoles):
    servers, store = two_consoles
    statuses, last = storm([s.port for s in servers], [("alice", WRONG)] * 40,
                           last=("alice", PASSWORD))
    assert last == 429
    assert checked(store, "alice") == S.login_fail_per_user
    assert Counter(statuses) == {401: S.login_fail_per_user, 429: 40 - S.login_fail_per_user}
