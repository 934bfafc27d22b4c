"""`python -m console`: the console as a process of its own over a real store."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import orjson
from console_helpers import CNMAPS, PASSWORD, add_accounts, free_port

from alarms.store import open_store


def start(argv):
    return subprocess.Popen([sys.executable, "-m", "console", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_up(url: str, proc) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("console did not come up")


def test_runs_on_its_own_and_stops_cleanly_with_a_feed_open(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    store = open_store(url)
    add_accounts(store)
    store.close_store()
    zones = tmp_path / "zones.geojson"
    zones.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "411303", "properties": {"coord_sys": "gcj02"},
         "geometry": orjson.loads((CNMAPS / "411303.geojson").read_bytes())}]}))
    subjects = tmp_path / "subjects.json"
    subjects.write_bytes(orjson.dumps({"subjects": [
        {"subject_id": "S-1", "region": "411303", "level": "strict",
         "devices": [{"device_id": "B-1"}], "inclusion": ["411303"]}]}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["--store", url, "--http", f"127.0.0.1:{port}", "--zones", str(zones),
                  "--subjects", str(subjects), "--insecure-cookies"])
    try:
        wait_up(base + "/", proc)
        with httpx.Client(base_url=base, timeout=20) as c:
            login = c.post("/api/login", json={"name": "alice", "password": PASSWORD})
            assert login.status_code == 200
            assert [f["id"] for f in c.get("/api/zones").json()["features"]] == ["411303"]
            # SIGHUP re-reads the zones and subjects
            fc = orjson.loads(zones.read_bytes())
            fc["features"].append({"type": "Feature", "id": "victim-17",
                                   "geometry": {"type": "Point", "coordinates": [112.52, 33.01]},
                                   "properties": {"radius_m": 500}})
            zones.write_bytes(orjson.dumps(fc))
            subjects.write_bytes(orjson.dumps({"subjects": [
                {"subject_id": "S-1", "region": "411303", "level": "strict",
                 "devices": [{"device_id": "B-1"}], "inclusion": ["411303"],
                 "exclusion": ["victim-17"]}]}))
            proc.send_signal(signal.SIGHUP)
            for _ in range(300):
                ids = [f["id"] for f in c.get("/api/zones").json()["features"]]
                if ids != ["411303"]:
                    break
                time.sleep(0.1)
            assert ids == ["411303", "victim-17"]
            with c.stream("GET", "/api/feed") as resp:
                lines = resp.iter_lines()
                assert next(lines) == "retry: 2000"
                proc.send_signal(signal.SIGTERM)
                # the server ends the stream itself; it does not wait for the client
                for _ in lines:
                    pass
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read()
    assert "zones and subjects reloaded" in out and "console stopped" in out


def test_bad_input_is_named_and_exits_1(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    for argv, message in ((["--store", "mysql://x"], "sqlite:///"),
                          (["--store", url, "--http", "nowhere"], "HOST:PORT"),
                          (["--store", url, "--zones", str(tmp_path / "missing.geojson")],
                           "missing.geojson")):
        proc = subprocess.run([sys.executable, "-m", "console", *argv], capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 1, (argv, proc.stderr)
        assert message in proc.stderr, (argv, proc.stderr)
    proc = subprocess.run([sys.executable, "-m", "console", "--store", url, "--subjects", "s.json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--subjects needs --zones" in proc.stderr


def test_on_loopback_the_cookie_works_over_plain_http_as_with_run(tmp_path):
    """`emfence console --http 127.0.0.1:PORT` as docs/console-api.md shows it (no
    --insecure-cookies): a browser on this machine speaks plain HTTP, so the session
    cookie must not be Secure (it would never be sent back), as with `emfence run --http`."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    store = open_store(url)
    add_accounts(store)
    store.close_store()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "emfence", "console", "--store", url,
                             "--http", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_up(base + "/", proc)
        with httpx.Client(base_url=base, timeout=20) as c:
            r = c.post("/api/login", json={"name": "alice", "password": PASSWORD})
            assert r.status_code == 200
            cookie = r.headers["set-cookie"]
            assert "secure" not in cookie.lower(), cookie
            assert c.get("/api/session").status_code == 200  # the cookie came back
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    from console.service import secure_cookies

    assert secure_cookies("0.0.0.0", False) and secure_cookies("10.0.0.5", False)
    assert not secure_cookies("10.0.0.5", True)
