"""The live feed (server-sent events) over a real uvicorn server on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
import pytest
from console_helpers import PASSWORD, T0, Server, add_accounts, http_log_in, raised, sse_messages

from alarms.store import open_store
from console import create_app, serve
from emfence.config import Config


@pytest.fixture
def live(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    server = Server(create_app(store=store, config=Config(), secure_cookies=False)).start()
    yield server, store
    server.stop()
    store.close_store()



def messages(response: httpx.Response) -> Iterator[dict]:
    """Parse an SSE stream into messages: {'event', 'id', 'data'} (comments skipped)."""
    return sse_messages(response.iter_lines())


def next_alarm(stream: Iterator[dict]) -> dict:
    for msg in stream:
        if msg.get("event") == "alarm":
            return {"id": int(msg["id"]), **orjson.loads(msg["data"])}
        if msg.get("event") == "logout":
            return {"logout": True}
    raise AssertionError("feed ended")


def test_feed_delivers_a_new_alarm_live_and_resumes_after_last_event_id(live):
    server, store = live
    client = http_log_in(server.url, "alice")
    with client.stream("GET", "/api/feed", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in resp.headers  # a compressor would hold events back
        stream = messages(resp)
        # Recorded after the feed opened: it must arrive without any reload.
        [seq] = store.record_events([raised("live-1", "411303", at=T0)], T0)
        got = next_alarm(stream)
        assert got["id"] == seq and got["seq"] == seq
        assert (got["event"], got["alarm_id"], got["region"]) == ("raised", "live-1", "411303")
        assert got["data"]["lat"] == 33.0 and got["data"]["type"] == "outbound"
    # Disconnected; two more events happen; the browser reconnects with Last-Event-ID.
    store.record_events([raised("live-2", "411303", at=T0 + 1)], T0 + 1)
    store.acknowledge("live-1", "alice", None, T0 + 2)
    with client.stream("GET", "/api/feed", headers={"Last-Event-ID": str(seq)}) as resp:
        stream = messages(resp)
        first, second = next_alarm(stream), next_alarm(stream)
    assert (first["event"], first["alarm_id"]) == ("raised", "live-2")
    assert (second["event"], second["alarm_id"]) == ("acknowledged", "live-1")
    assert second["id"] > first["id"] > seq
    client.close()


def test_feed_carries_only_the_callers_regions(live):
    server, store = live
    client = http_log_in(server.url, "olga")  # 411302 only
    with client.stream("GET", f"/api/feed?since={store.last_seq()}") as resp:
        stream = messages(resp)
        store.record_events([raised("not-hers", "411303")], T0)
        store.record_events([raised("hers", "411302", subject="s9", device="d9")], T0)
        got = next_alarm(stream)
    assert got["alarm_id"] == "hers"
    client.close()


def test_logout_ends_an_open_feed(live):
    server, _store = live
    client = http_log_in(server.url, "alice")
    with client.stream("GET", "/api/feed") as resp:
        stream = messages(resp)
        other = httpx.Client(base_url=server.url, cookies=client.cookies,
                             headers={"X-CSRF-Token": client.headers["X-CSRF-Token"]})
        assert other.post("/api/logout").status_code == 204
        assert next_alarm(stream) == {"logout": True}
        other.close()
    assert client.get("/api/feed").status_code == 401
    client.close()


def test_feed_rejects_a_bad_last_event_id(live):
    server, _ = live
    client = http_log_in(server.url, "alice")
    r = client.get("/api/feed", headers={"Last-Event-ID": "abc"})
    assert r.status_code == 400 and r.json()["error"] == "bad_param"
    client.close()


def test_serve_reports_a_port_in_use(live):
    server, store = live
    app = create_app(store=store, config=Config(), secure_cookies=False)

    async def try_bind() -> None:
        await serve(app, "127.0.0.1", server.port)

    with pytest.raises(OSError):
        asyncio.run(try_bind())


def test_shutdown_ends_open_feeds_so_a_plain_uvicorn_server_can_stop(tmp_path):
    """A host running the app on its own uvicorn server (as `emfence run` may) calls
    ``app.state.console.shutdown()``; without it uvicorn would wait for the endless feed."""
    import contextlib
    import socket

    import uvicorn

    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    app = create_app(store=store, config=Config(), secure_cookies=False)

    class Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = Quiet(uvicorn.Config(app, log_level="warning", lifespan="on"))
    lines: list[str] = []

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert (await c.post("/api/login", json={"name": "alice", "password": PASSWORD})
                    ).status_code == 200
            async with c.stream("GET", "/api/feed") as resp:
                async for line in resp.aiter_lines():
                    lines.append(line)
                    if line == "":  # the opening message is through: the feed is open
                        app.state.console.shutdown()
                        server.should_exit = True
        # The server returns only once the feed has ended; without shutdown() it would
        # wait forever, so give up (and fail) after a generous minute.
        await asyncio.wait_for(task, 60)

    asyncio.run(main())
    sock.close()
    store.close_store()
    assert lines[0] == "retry: 2000"


def test_feed_survives_a_store_outage_and_catches_up(live, tmp_path):
    """While the store cannot answer, the stream stays open and says so; afterwards it
    delivers what happened, from where it stopped."""
    import sqlite3

    server, store = live
    client = http_log_in(server.url, "alice")
    db = sqlite3.connect(tmp_path / "alarms.db", isolation_level=None)
    with client.stream("GET", "/api/feed") as resp:
        lines = resp.iter_lines()
        assert next(lines) == "retry: 2000"
        # Take the event log away under the running console (a broken database).
        db.execute("ALTER TABLE events RENAME TO events_away")
        for line in lines:
            if line.startswith(": store unavailable"):
                break
        db.execute("ALTER TABLE events_away RENAME TO events")
        store.record_events([raised("after-outage", "411303")], T0)
        got = next_alarm(sse_messages(lines))
    assert got["alarm_id"] == "after-outage"
    db.close()
    client.close()
