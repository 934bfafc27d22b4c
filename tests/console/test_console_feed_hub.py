"""The live feeds' shared poll (console/feed_hub.py), over a real uvicorn server and a
real store (SQLite and PostgreSQL): one events-since read per poll period however many
feeds are open, each feed exactly its regions, a resume from behind the hub's window,
shutdown, and a store outage.

The store's ``events_since`` is wrapped by a counter (it still runs the real query): the
tests count the console's reads, they do not replace them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from console_helpers import PASSWORD, T0, Server, add_accounts, raised, sse_messages

from alarms.store import open_store
from console import create_app
from console.feed_hub import position_after_page
from emfence.config import Config, ConsoleConfig

# name -> regions of the accounts the tests add to console_helpers.ACCOUNTS (operators).
MORE = {"ning": ["411321"], "wen": ["411322"]}
# Who sees what: five feeds of different region scopes (root is the admin: all).
SCOPES = {"alice": {"411303"}, "olga": {"411302"}, "sue": {"411303", "411302"},
          "ning": {"411321"}, "root": None}
WAIT_S = 30.0


class CountedReads:
    """Counts the calls of ``store.events_since`` (time, regions); the real method runs."""

    def __init__(self, store: Any):
        self.calls: list[tuple[float, Any]] = []
        real = store.events_since

        def events_since(seq: int, regions: Any = None, *args: Any, **kw: Any):
            self.calls.append((time.monotonic(), regions))
            return real(seq, regions, *args, **kw)

        store.events_since = events_since

    def since(self, t: float) -> list[Any]:
        return [regions for at, regions in self.calls if at >= t]


class Live:
    def __init__(self, url: str, tmp_path, poll_s: float):
        self.url = url
        self.store = open_store(url)
        add_accounts(self.store)
        digest = self.store.get_user("alice")["password_hash"]
        for name, regions in MORE.items():
            self.store.add_user(name, digest, "operator", regions, T0 - 1000)
        self.reads = CountedReads(self.store)
        self.app = create_app(store=self.store, secure_cookies=False,
                              config=Config(console=ConsoleConfig(feed_poll_s=poll_s)))
        self.console = self.app.state.console
        self.server = Server(self.app).start()

    def sql(self, statement: str) -> None:
        """Run one statement on the store's database behind the console's back."""
        if self.url.startswith("sqlite"):
            db = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            db.execute(statement)
            db.close()
        else:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(statement)

    def record(self, *events: dict) -> list[int]:
        return self.store.record_events(list(events), T0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request, tmp_path):
    """A served console over SQLite, then PostgreSQL; ``request.param`` is the poll."""
    url = (f"sqlite:///{tmp_path / 'alarms.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    made: list[Live] = []

    def make(poll_s: float = 0.5) -> Live:
        made.append(Live(url, tmp_path, poll_s))
        return made[-1]

    yield make
    for lv in made:
        lv.server.stop()
        lv.store.close_store()


class Feed:
    """One logged-in page's live feed, read in the background: alarms and comments."""

    def __init__(self, base: str, name: str):
        self.name = name
        self.client = httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(WAIT_S))
        self.alarms: list[dict] = []
        self.comments: list[str] = []
        self.opened = asyncio.Event()
        self.ended = asyncio.Event()
        self.changed = asyncio.Event()
        self.logout = False
        self._task: asyncio.Task | None = None

    async def open(self, headers: dict | None = None, params: dict | None = None) -> Feed:
        r = await self.client.post("/api/login", json={"name": self.name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        self._task = asyncio.create_task(self._read(headers or {}, params or {}))
        await asyncio.wait_for(self.opened.wait(), WAIT_S)
        return self

    async def _read(self, headers: dict, params: dict) -> None:
        try:
            async with self.client.stream("GET", "/api/feed", headers=headers,
                                          params=params) as resp:
                assert resp.status_code == 200
                lines: list[str] = []
                async for line in resp.aiter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                    lines.append(line)
                    if line == "":
                        self.opened.set()
                        self._take(lines)
                        lines = []
                    self.changed.set()
        finally:
            self.ended.set()
            self.changed.set()

    def _take(self, lines: list[str]) -> None:
        for msg in sse_messages(iter([*lines, ""])):
            if msg.get("event") == "alarm":
                self.alarms.append({"id": int(msg["id"]), **orjson.loads(msg["data"])})
            elif msg.get("event") == "logout":
                self.logout = True

    async def until(self, done: Callable[[Feed], bool], what: str) -> None:
        """Wait (at most WAIT_S) until ``done(self)``."""
        async def watch() -> None:
            while not done(self):
                self.changed.clear()
                if self.ended.is_set():
                    raise AssertionError(f"{self.name}'s feed ended waiting for {what}")
                await self.changed.wait()

        await asyncio.wait_for(watch(), WAIT_S)

    def seqs(self) -> list[int]:
        return [a["id"] for a in self.alarms]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()


async def open_feeds(base: str, names: list[str], **kw: Any) -> list[Feed]:
    return [await Feed(base, name).open(**kw) for name in names]


async def close_feeds(feeds: list[Feed]) -> None:
    for f in feeds:
        await f.close()


def visible(scope: set[str] | None, region: str) -> bool:
    return scope is None or region in scope


def mixed_events(prefix: str, n: int, regions: list[str]) -> list[dict]:
    return [raised(f"{prefix}-{i}", regions[i % len(regions)], subject=f"s-{prefix}-{i}",
                   device=f"d-{prefix}-{i}") for i in range(n)]


def test_where_a_feed_stands_after_reading_a_page_itself():
    rows = [{"seq": s} for s in (12, 15, 19)]
    # A full page: there may be more of its regions after the last row.
    assert position_after_page(10, rows, 3, hub_seq=40) == 19
    # A short page: nothing more of its regions up to the hub's seq read before it.
    assert position_after_page(10, rows, 5, hub_seq=40) == 40
    assert position_after_page(10, [], 5, hub_seq=40) == 40
    # The hub behind the feed's own rows (or behind where the feed started).
    assert position_after_page(10, rows, 5, hub_seq=17) == 19
    assert position_after_page(50, [], 5, hub_seq=40) == 50


def test_five_open_feeds_cost_one_store_read_per_poll(live):
    lv = live(poll_s=0.5)

    async def main() -> tuple[list[Any], float]:
        feeds = await open_feeds(lv.server.url, list(SCOPES))
        try:
            t0 = time.monotonic()
            for i in range(6):  # a little traffic while the feeds are watched
                lv.record(raised(f"load-{i}", ["411303", "411302", "411321"][i % 3],
                                 subject=f"s-load-{i}", device=f"d-load-{i}"))
                await asyncio.sleep(0.5)
            elapsed = time.monotonic() - t0
            reads = lv.reads.since(t0)
            await feeds[-1].until(lambda f: len(f.alarms) == 6, "the six events")
            return reads, elapsed
        finally:
            await close_feeds(feeds)

    hub = lv.console.feed_hub
    assert not hub.running  # started by the first feed...
    reads, elapsed = asyncio.run(main())
    # ...and stopped once the last one has gone (the server notices the disconnects).
    deadline = time.monotonic() + WAIT_S
    while hub.running:
        assert time.monotonic() < deadline, "the poll outlived its feeds"
        time.sleep(0.05)
    polls = elapsed / 0.5
    print(f"5 feeds, {elapsed:.2f} s: {len(reads)} events-since reads ({polls:.1f} polls)")
    # One read per poll period (a feed per screen would make it five), all of them the
    # hub's: every region, no feed reading the store on its own.
    assert 2 <= len(reads) <= polls + 2, (len(reads), polls)
    assert all(regions is None for regions in reads)


def test_each_feed_gets_exactly_its_regions_in_order(live):
    lv = live(poll_s=0.5)
    regions = ["411303", "411302", "411321", "411322", "411399"]

    async def main() -> dict[str, list[dict]]:
        feeds = await open_feeds(lv.server.url, list(SCOPES))
        try:
            for batch in range(4):
                lv.record(*mixed_events(f"b{batch}", 7, regions))
                await asyncio.sleep(0.2)
            # Last, one event per region: once a feed has its regions' last ones, every
            # event before them has had its chance to arrive (or wrongly arrive).
            marks = lv.record(*mixed_events("mark", len(regions), regions))
            for f in feeds:
                await f.until(lambda f: max(f.seqs(), default=0) >= max(
                    s for s, r in zip(marks, regions, strict=True)
                    if visible(SCOPES[f.name], r)), "the last events")
            return {f.name: f.alarms for f in feeds}
        finally:
            await close_feeds(feeds)

    got = asyncio.run(main())
    log = lv.store.events_since(0, limit=10_000)
    assert len(log) == 4 * 7 + len(regions)
    for name, scope in SCOPES.items():
        expected = [e["seq"] for e in log if visible(scope, e["region"])]
        assert [a["id"] for a in got[name]] == expected, name
        assert all(visible(scope, a["region"]) for a in got[name])
        assert [a["alarm_id"] for a in got[name]] == [
            e["alarm_id"] for e in log if visible(scope, e["region"])]


def test_a_feed_resuming_behind_the_window_catches_up_once_then_goes_live(live):
    lv = live(poll_s=0.5)
    hub = lv.console.feed_hub
    # A small window and page so that a few hundred events leave the resume behind.
    hub.window, hub.page = 60, 20

    async def main() -> tuple[list[dict], int, int]:
        watcher = await Feed(lv.server.url, "root").open()  # keeps the hub polling
        try:
            [old] = lv.record(raised("before", "411303"))
            for batch in range(5):
                lv.record(*mixed_events(f"b{batch}", 40, ["411303", "411302"]))
            last = lv.store.last_seq()
            await watcher.until(lambda f: max(f.seqs(), default=0) >= last, "the backlog")
            floor = hub.floor
            t0 = time.monotonic()
            alice = await Feed(lv.server.url, "alice").open(headers={"Last-Event-ID": str(old)})
            try:
                await alice.until(lambda f: len(f.alarms) >= 100, "the missed events")
                catch_up = [r for r in lv.reads.since(t0) if r is not None]
                lv.record(raised("live-1", "411303", subject="s-l1", device="d-l1"))
                lv.record(raised("live-x", "411302", subject="s-lx", device="d-lx"))
                lv.record(raised("live-2", "411303", subject="s-l2", device="d-l2"))
                await alice.until(lambda f: any(a["alarm_id"] == "live-2" for a in f.alarms),
                                  "the live events")
                return alice.alarms, floor, len(catch_up)
            finally:
                await alice.close()
        finally:
            await watcher.close()

    got, floor, catch_up_reads = asyncio.run(main())
    [old_event] = [e for e in lv.store.events_since(0, limit=10_000) if e["alarm_id"] == "before"]
    assert floor > old_event["seq"]  # the resume really was behind the hub's window
    expected = [e for e in lv.store.events_since(old_event["seq"], limit=10_000)
                if e["region"] == "411303"]
    # Alice's events older than the window were read by her feed itself, a page (20) at
    # a time, with her regions; the rest came from the hub.
    behind = [e for e in expected if e["seq"] <= floor]
    assert len(behind) > 2 * 20 and catch_up_reads >= len(behind) // 20
    assert [a["id"] for a in got] == [e["seq"] for e in expected]
    assert [a["alarm_id"] for a in got][-2:] == ["live-1", "live-2"]
    assert len({a["id"] for a in got}) == len(got) == 102


def test_console_shutdown_ends_every_feed_within_a_poll(live):
    lv = live(poll_s=2.0)

    async def main() -> float:
        feeds = await open_feeds(lv.server.url, list(SCOPES))
        try:
            t0 = time.monotonic()
            # What `serve` does when its task is cancelled; here from another thread.
            lv.console.shutdown()
            for f in feeds:
                await asyncio.wait_for(f.ended.wait(), WAIT_S)
            return time.monotonic() - t0
        finally:
            await close_feeds(feeds)

    took_s = asyncio.run(main())
    print(f"5 feeds ended {took_s:.3f} s after shutdown (poll 2 s)")
    assert took_s < 2.0, took_s
    # Each connection's end is audited (written without waiting: look until it is there).
    deadline = time.monotonic() + WAIT_S
    while len(closes := lv.store.audit_log(action="feed.close")) < len(SCOPES):
        assert time.monotonic() < deadline, closes
        time.sleep(0.05)
    assert sorted(r["who"] for r in closes) == sorted(SCOPES)


def test_a_store_outage_keeps_every_feed_open_and_they_catch_up(live, caplog):
    lv = live(poll_s=0.25)
    names = ["alice", "olga", "root"]

    async def main() -> list[Feed]:
        feeds = await open_feeds(lv.server.url, names)
        try:
            # Take the event log away under the running console (a broken database).
            lv.sql("ALTER TABLE events RENAME TO events_away")
            for f in feeds:
                await f.until(lambda f: any(c.startswith(": store unavailable")
                                            for c in f.comments), "the outage comment")
            lv.sql("ALTER TABLE events_away RENAME TO events")
            lv.record(raised("after-a", "411303", subject="s-a", device="d-a"),
                      raised("after-o", "411302", subject="s-o", device="d-o"))
            for f in feeds:
                await f.until(lambda f: len(f.alarms) == (2 if f.name == "root" else 1),
                              "the events after the outage")
            assert not any(f.ended.is_set() for f in feeds)
            return feeds
        finally:
            await close_feeds(feeds)

    with caplog.at_level(logging.ERROR, logger="emfence.console"):
        feeds = asyncio.run(main())
    got = {f.name: [a["alarm_id"] for a in f.alarms] for f in feeds}
    assert got == {"alice": ["after-a"], "olga": ["after-o"], "root": ["after-a", "after-o"]}
    # The hub asked the store; it logged the outage once, not once per feed or retry.
    outages = [r for r in caplog.records if "live feed: store error" in r.getMessage()]
    assert len(outages) == 1, [r.getMessage() for r in outages]
