"""The console's first screen (issue #16): login to a usable status board, in a browser.

    python -m benchmarks.console_first_screen --json
    python -m benchmarks.console_first_screen --quick          # a smoke run, small world

"The first screen is usable in under 2 s on a loaded 2-core machine with 10 000 subjects
and 100 000 alarms in PostgreSQL." This program builds that world and measures it:

1. a fresh PostgreSQL database on ``--pg`` (dropped afterwards), filled through the
   store's own write API: the register (``register.import_files``) of ``--subjects``
   subjects from the simulator's generator (``simulators.generate``: devices, inclusion
   and exclusion zones, levels, leaves, over 411303 and its neighbouring counties) with a
   name and an officer each; a fix and a status per device (``record_fixes``,
   ``record_device_status``, batches of 5 000); ``--alarms`` alarms over the last 30 days
   (``record_events``, batches of 2 000 ``raised`` events, most followed by ``cleared``);
   the operator's actions (``acknowledge`` then ``close_alarm``, one transaction each, as
   the console does) on the ``--actions`` newest alarms but the last ``--open``. The other
   old alarms are filed with the same writes in bulk SQL (``_file_in_bulk``: the columns,
   ``acknowledged`` and ``closed`` events, two ``alarm_actions`` rows each; no audit
   rows): the API's two transactions per alarm run at about 650 a second here, five more
   minutes for 99 000 alarms on every run (``--actions 99400`` files them all through the
   API). An operator account whose regions hold every subject. Then ``VACUUM ANALYZE``
   and a ``CHECKPOINT``, so that the runs meet a store in its steady state rather than
   PostgreSQL catching up with the fill (a login stalled for 2 s in one run while it did).
2. the console as its own process (``python -m emfence console --store URL --http``) on a
   free port, as a command room runs it next to the engine workers.
3. ``--runs`` times without load, then ``--runs`` times with ``--load`` busy processes
   (one pure-Python spin loop each; default 2 on this 2-core machine): a fresh headless
   Chromium (cold cache, no cookie) opens the page, and the page's own clock
   (``performance.now()``, observers injected before the login is submitted) times
   - ``board_rows_ms``: login submitted → the first board row in the DOM;
   - ``board_ready_ms``: → that row visible (non-zero box, view shown) and the page
     interactive (the next frame has been drawn and a task queued after it has run);
   - ``alarms_rows_ms``: login submitted → the alarm list's first page in the DOM (it
     is loaded beside the board);
   - ``alarms_view_ms``: a click on the Alarms tab → its first row visible, next frame;
   - from the page's Resource Timing entries: ``login_api_ms``, ``board_api_ms`` and
     ``alarms_api_ms`` (request sent → response ended: server time plus transfer on
     loopback), ``*_ttfb_ms`` (request → first byte: the server's time) and the
     ``*_bytes`` decoded body sizes; likewise ``zones_*`` and ``positions_*``, the map's
     two reads the page makes at the same moment (they compete for the same process).
4. the server time of ``GET /api/board`` and ``GET /api/alarms?limit=500`` measured
   apart from the page (an HTTP client, ``--runs`` calls each, without and with load).

Each figure is given as min / median / max over the runs. Absolute figures depend on
the machine and on whatever else runs on it: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OPERATOR = "bench-op"
PASSWORD = "first screen benchmark"
DAY_MS = 86_400_000
TYPES = ("offline", "outbound", "low_battery", "exclusion", "tamper", "no_fix", "curfew",
         "leave_overdue", "power_off", "approach")
TARGET_MS = 2000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the world


def _register(store: Any, n_subjects: int, now_ms: int) -> list[dict[str, Any]]:
    from simulators.generate import generate_fleet

    fleet = generate_fleet(n_subjects, seed=16, start_ms=now_ms)
    subjects = fleet.subjects["subjects"]
    for k, s in enumerate(subjects):
        s["name"] = f"对象{k:05d}"
        s["officer"] = f"民警{k % 40:02d}"
    store.register.import_files(fleet.zones, fleet.subjects, actor="bench",
                                now_ms=now_ms - 40 * DAY_MS)
    return subjects


def _devices(store: Any, subjects: list[dict[str, Any]], now_ms: int) -> int:
    """A fix and a status for every device but every 50th (never heard from)."""
    fixes, status = [], []
    for k, s in enumerate(subjects):
        for j, d in enumerate(s["devices"]):
            if (k + j) % 50 == 49:
                continue
            ts = now_ms - (k * 7919 + j * 104_729) % 3_600_000
            fixes.append((d["device_id"], s["subject_id"], s["region"], ts, 33.0, 112.5,
                          15.0, "gps", ts + 800))
            status.append((d["device_id"], s["region"], ts, float((k * 37) % 101),
                           "open" if k % 97 == 3 else "ok", "on", ts + 900))
    for i in range(0, len(fixes), 5000):
        store.record_fixes(fixes[i:i + 5000])
        store.record_device_status(status[i:i + 5000])
    return len(fixes)


def _event(i: int, n: int, s: dict[str, Any], now_ms: int, event: str) -> dict[str, Any]:
    kind = TYPES[(i * 7) % len(TYPES)]
    at = now_ms - 30 * DAY_MS + (i * 30 * DAY_MS) // n
    zone = s["region"] if kind in ("outbound", "leave_overdue", "curfew") else None
    return {"event": event, "alarm_id": f"A-{i:07d}", "type": kind,
            "subject_id": s["subject_id"], "device_id": s["devices"][0]["device_id"],
            "zone_id": zone, "region": s["region"],
            "at": at + (600_000 if event == "cleared" else 0), "late": False,
            "lat": 33.0, "lon": 112.5, "distance_m": 240.0, "acc": 15.0}


def _alarms(store: Any, subjects: list[dict[str, Any]], n: int, now_ms: int) -> None:
    """``n`` raised events over the last 30 days, nine in ten followed by cleared."""
    for lo in range(0, n, 2000):
        batch = []
        for i in range(lo, min(n, lo + 2000)):
            s = subjects[(i * 7919) % len(subjects)]
            batch.append(_event(i, n, s, now_ms, "raised"))
            if i % 10 != 0:
                batch.append(_event(i, n, s, now_ms, "cleared"))
        store.record_events(batch, now_ms - 30 * DAY_MS + (lo * 30 * DAY_MS) // n)


def _file_in_bulk(url: str, last: int) -> int:
    """Alarms ``A-0000000`` .. before ``A-{last}``: acknowledged and closed as the API
    writes it (columns, events, action rows), in a few statements."""
    import psycopg

    ids = f"alarm_id < 'A-{last:07d}'"
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute(f"UPDATE alarms SET workflow = 'closed', acknowledged_by = '{OPERATOR}', "
                     "acknowledged_at = raised_at + 300000, closed_by = "
                     f"'{OPERATOR}', closed_at = raised_at + 900000, disposition = "
                     f"'gps_drift', note = '核实' WHERE {ids}")
        for what, ev, off in (("acknowledge", "acknowledged", 300_000),
                              ("close", "closed", 900_000)):
            conn.execute("INSERT INTO alarm_actions (alarm_id, who, what, at, note, "
                         f"disposition) SELECT alarm_id, '{OPERATOR}', '{what}', "
                         f"raised_at + {off}, NULL, NULL FROM alarms WHERE {ids}")
            conn.execute("INSERT INTO events (alarm_id, event, region, type, topic, payload, "
                         "created_at, delivered_at) SELECT alarm_id, %s, region, type, "
                         "'emfence/v1/' || region || '/alarms/' || type, "
                         "convert_to(json_build_object('event', %s::text, 'alarm_id', "
                         "alarm_id, 'by', %s::text)::text, 'UTF8'), "
                         f"raised_at + {off}, raised_at + {off} FROM alarms WHERE {ids} "
                         "ORDER BY raised_at", (ev, ev, OPERATOR))
        n = conn.execute(f"SELECT count(*) FROM alarms WHERE {ids}").fetchone()[0]
        conn.commit()
    return n


def build_world(url: str, args: argparse.Namespace, now_ms: int) -> dict[str, Any]:
    """The register, devices, alarms and the operator in the store at ``url``."""
    from alarms.store import open_store
    from console.auth import hash_password

    store = open_store(url)
    out: dict[str, Any] = {}
    try:
        t = time.perf_counter()
        subjects = _register(store, args.subjects, now_ms)
        out["register_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        out["devices_heard"] = _devices(store, subjects, now_ms)
        out["devices_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        _alarms(store, subjects, args.alarms, now_ms)
        out["alarms_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        first_api = max(0, args.alarms - args.open - args.actions)
        out["alarms_filed_in_bulk"] = _file_in_bulk(url, first_api)
        out["bulk_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        out["alarms_filed_by_api"] = _file_by_api(store, first_api, args.alarms - args.open,
                                                  now_ms)
        out["api_actions_s"] = round(time.perf_counter() - t, 1)
        regions = sorted({s["region"] for s in subjects})
        store.add_user(OPERATOR, hash_password(PASSWORD), "operator", regions, now_ms - DAY_MS)
        out["regions"] = regions
        out["subjects"] = len(subjects)
        out["devices"] = sum(len(s["devices"]) for s in subjects)
        out["alarms"] = args.alarms
        out["open_alarms"] = len(store.list_alarms(states=["new", "acknowledged"],
                                                   limit=args.alarms))
    finally:
        store.close_store()
    import psycopg

    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")  # the fill's dirty pages written now, not mid-run
    out["vacuum_s"] = round(time.perf_counter() - t, 1)
    return out


def _file_by_api(store: Any, lo: int, hi: int, now_ms: int) -> int:
    """Acknowledge and close alarms ``lo`` .. ``hi - 1`` through the store's API."""
    for i in range(lo, hi):
        store.acknowledge(f"A-{i:07d}", OPERATOR, None, now_ms - 3_600_000)
        store.close_alarm(f"A-{i:07d}", OPERATOR, "confirmed_violation", "已处置",
                          now_ms - 3_000_000)
    return hi - lo


@contextmanager
def fresh_pg_database(server_url: str):
    from benchmarks.store import fresh_pg_database as fresh

    with fresh(server_url) as url:
        yield url


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def console_process(store_url: str):
    """``emfence console`` over ``store_url`` on a free port: its base URL."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "emfence", "console", "--store", store_url,
                             "--http", f"127.0.0.1:{port}", "--log-level", "WARNING"],
                            cwd=ROOT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"emfence console exited with {proc.returncode}")
            try:
                if httpx.get(base + "/api/session", timeout=2).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("emfence console did not answer within 120 s")
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def cpu_load(n: int):
    """``n`` processes spinning in pure Python (each wants a whole core)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              start_new_session=True) for _ in range(n)]
    try:
        time.sleep(0.5 if procs else 0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


# ---------------------------------------------------------------- the page

# Injected before the login is submitted: observers on the page's own clock.
WATCH_JS = """
const fs = window.__fs = {t0: performance.now()};
function watch(boxSel, viewSel, key) {
  const box = document.querySelector(boxSel);
  const seen = () => {
    const row = box.firstElementChild;
    if (!row) return false;
    fs[key + '_rows'] = performance.now();
    requestAnimationFrame(() => setTimeout(() => {
      const r = row.getBoundingClientRect();
      const shown = !document.querySelector(viewSel).hidden;
      fs[key + '_visible'] = row.isConnected && r.height > 0 && shown;
      fs[key + '_ready'] = performance.now();
    }, 0));
    return true;
  };
  if (!seen()) {
    const mo = new MutationObserver(() => { if (seen()) mo.disconnect(); });
    mo.observe(box, {childList: true});
  }
}
watch('#board-rows', '#board-view', 'board');
watch('#alarm-rows', '#alarms-view', 'alarms');
document.getElementById('login-name').value = arguments[0];
document.getElementById('login-password').value = arguments[1];
document.getElementById('login-form').requestSubmit();
"""

# The Alarms tab clicked once the board is ready: its first row visible, next frame.
TAB_JS = """
const done = arguments[arguments.length - 1];
const t = performance.now();
document.getElementById('tab-alarms').click();
requestAnimationFrame(() => setTimeout(() => {
  const row = document.querySelector('#alarm-rows tr');
  const r = row ? row.getBoundingClientRect() : {height: 0};
  done({ms: performance.now() - t, visible: r.height > 0});
}, 0));
"""

RESOURCES_JS = """
return performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/'))
  .map((e) => ({name: new URL(e.name).pathname, start: e.startTime, req: e.requestStart,
                first: e.responseStart, end: e.responseEnd, bytes: e.decodedBodySize,
                wire: e.encodedBodySize}));
"""


def start_chromium(profile: Path):
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    service = webdriver.ChromeService(
        executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=opts, service=service)


def _api_entry(entries: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    found = [e for e in entries if e["name"] == path]
    return found[0] if found else None


def browser_run(base: str, tmp: Path) -> dict[str, Any]:
    """One first screen in a fresh Chromium: the figures of the page's own clock."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    d = start_chromium(tmp / f"profile-{time.monotonic_ns()}")
    try:
        d.set_script_timeout(60)
        d.get(base + "/")
        WebDriverWait(d, 60).until(EC.visibility_of_element_located((By.ID, "login-name")))
        d.execute_script(WATCH_JS, OPERATOR, PASSWORD)
        WebDriverWait(d, 120, poll_frequency=0.05).until(lambda drv: drv.execute_script(
            "return window.__fs && window.__fs.board_ready && window.__fs.alarms_rows"))
        fs = d.execute_script("return window.__fs")
        tab = d.execute_async_script(TAB_JS)
        entries = d.execute_script(RESOURCES_JS)
    finally:
        d.quit()
    out = {"board_rows_ms": fs["board_rows"] - fs["t0"],
           "board_ready_ms": fs["board_ready"] - fs["t0"],
           "alarms_rows_ms": fs["alarms_rows"] - fs["t0"],
           "alarms_view_ms": tab["ms"],
           "visible": bool(fs["board_visible"] and tab["visible"])}
    for key, path in (("login", "/api/login"), ("board", "/api/board"),
                      ("alarms", "/api/alarms"), ("zones", "/api/zones"),
                      ("positions", "/api/positions")):
        e = _api_entry(entries, path)
        if e is not None:
            out[f"{key}_api_ms"] = e["end"] - e["start"]
            out[f"{key}_ttfb_ms"] = e["first"] - e["req"]
            out[f"{key}_bytes"] = e["bytes"]
    return out


def server_calls(base: str, runs: int) -> dict[str, list[float]]:
    """``GET /api/board`` and ``GET /api/alarms?limit=500`` timed by an HTTP client."""
    import httpx

    out: dict[str, list[float]] = {"board_server_ms": [], "alarms_server_ms": []}
    with httpx.Client(base_url=base, timeout=120) as c:
        r = c.post("/api/login", json={"name": OPERATOR, "password": PASSWORD})
        r.raise_for_status()
        for _ in range(runs):
            for key, path in (("board_server_ms", "/api/board"),
                              ("alarms_server_ms", "/api/alarms?limit=500")):
                t = time.perf_counter()
                c.get(path).raise_for_status()
                out[key].append((time.perf_counter() - t) * 1000)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1)}


def measure(base: str, runs: int, load: int, tmp: Path) -> dict[str, Any]:
    """``runs`` first screens and server calls with ``load`` busy processes running."""
    samples: dict[str, list[float]] = {}
    visible = True
    with cpu_load(load):
        before = os.getloadavg()[0]
        for r in range(runs):
            one = browser_run(base, tmp)
            visible = visible and one.pop("visible")
            for k, v in one.items():
                samples.setdefault(k, []).append(v)
            log(f"load {load} run {r + 1}: board ready {one['board_ready_ms']:.0f} ms, "
                f"alarms {one['alarms_rows_ms']:.0f} ms")
        samples.update(server_calls(base, runs))
        after = os.getloadavg()[0]
    out: dict[str, Any] = {k: (summary(v) if not k.endswith("_bytes") else int(v[-1]))
                           for k, v in samples.items()}
    out.update({"load_processes": load, "runs": runs, "rows_visible": visible,
                "load_average": [round(before, 2), round(after, 2)]})
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    result: dict[str, Any] = {"subjects": args.subjects, "alarms": args.alarms,
                              "cpus": os.cpu_count(), "target_ms": TARGET_MS}
    with fresh_pg_database(args.pg) as url, tempfile.TemporaryDirectory() as d:
        log(f"filling {args.subjects} subjects, {args.alarms} alarms")
        result["fill"] = build_world(url, args, now_ms)
        log(f"filled: {result['fill']}")
        with console_process(url) as base:
            result["unloaded"] = measure(base, args.runs, 0, Path(d))
            result["loaded"] = measure(base, args.runs, args.load, Path(d))
    result["under_target_loaded"] = result["loaded"]["board_ready_ms"]["max"] < TARGET_MS
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(f"{result['subjects']} subjects, {result['alarms']} alarms "
          f"({result['fill']['open_alarms']} open), {result['cpus']} CPUs")
    print(f"{'figure (min / median / max)':28s} {'no load':>24s} "
          f"{'load ' + str(result['loaded']['load_processes']):>24s}")
    for k, v in result["unloaded"].items():
        if isinstance(v, dict):
            w = result["loaded"][k]
            a = f"{v['min']:.0f} / {v['median']:.0f} / {v['max']:.0f}"
            b = f"{w['min']:.0f} / {w['median']:.0f} / {w['max']:.0f}"
            print(f"{k:28s} {a:>24s} {b:>24s}")
        elif k.endswith("_bytes"):
            print(f"{k:28s} {v:>24d}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.console_first_screen",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=10_000, help="subjects in the register")
    p.add_argument("--alarms", type=int, default=100_000, help="alarms in the store")
    p.add_argument("--open", type=int, default=600, help="newest alarms left open")
    p.add_argument("--actions", type=int, default=400,
                   help="alarms before those acknowledged and closed through the store's API")
    p.add_argument("--runs", type=int, default=5, help="first screens per load level")
    p.add_argument("--load", type=int, default=2, help="busy processes for the loaded runs")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 000 subjects, 5 000 alarms, 2 runs")
    p.add_argument("--pg", default=os.environ.get(
        "EMFENCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server URL; a fresh database is created on it and dropped "
             "afterwards (default: $EMFENCE_TEST_PG or the local server)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    if args.quick:
        args.subjects, args.alarms, args.runs = 1_000, 5_000, 2
        args.open, args.actions = min(args.open, 300), min(args.actions, 100)
    if min(args.subjects, args.alarms, args.runs) < 1 or min(args.open, args.actions,
                                                              args.load) < 0:
        p.error("--subjects, --alarms and --runs must be at least 1; --open, --actions "
                "and --load at least 0")
    if args.open + args.actions > args.alarms:
        p.error("--open + --actions must not exceed --alarms")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
