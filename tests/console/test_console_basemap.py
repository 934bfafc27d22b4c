"""The console's maps on a base map (console.tiles) and without one, in headless Chromium.

A real HTTP tile server runs in the test and records every request. With console.tiles
pointing at it the page asks for the tiles of the area shown (at the zoom shown), shows
the attribution as text, and with ``crs = "gcj02"`` draws a device known in WGS-84 at its
GCJ-02 position; the CSP lets images come from that server and nowhere else. Without a
tile source the map is the offline boundary-only view: the zones and devices drawn, not
one tile requested. gcoord (vendored, run in the page) agrees with geofence.gcj02.
Screenshots of both views (zh-CN) go to tests/artifacts/basemap/."""

from __future__ import annotations

import io
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from browser_helpers import (
    WAIT_S,
    click,
    log_in_chinese,
    severe_console_messages,
    start_chromium,
    type_time,
)
from console_helpers import CNMAPS, PASSWORD, Server, add_accounts, county_and_circle, raised
from PIL import Image, ImageDraw
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from starlette.testclient import TestClient

from alarms.store import open_store
from console import create_app
from emfence.config import Config, config_from_dict
from engine import load_registry
from geofence import compile_zones, load_zones
from geofence.gcj02 import gcj02_to_wgs84, wgs84_to_gcj02

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "basemap"
# The device's last position, WGS-84 (as the store holds every position).
DEVICE_LAT, DEVICE_LON = 33.0101, 112.5201
ATTRIBUTION = "底图 © 测试测绘院 <内部>"
# The last fix's time (2026-09-21), epoch ms.
T_MS = 1_790_000_000_000


def tile_png() -> bytes:
    """A 256 px tile: a pale ground with a grid, so a screenshot shows a base map."""
    img = Image.new("RGB", (256, 256), (232, 236, 228))
    draw = ImageDraw.Draw(img)
    for k in range(0, 256, 64):
        draw.line([(k, 0), (k, 255)], fill=(200, 206, 196))
        draw.line([(0, k), (255, k)], fill=(200, 206, 196))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


class TileServer:
    """An HTTP tile server on a free port: /tiles/{z}/{x}/{y}.png, each request kept."""

    def __init__(self):
        self.requests: list[tuple[int, int, int]] = []
        self.lock = threading.Lock()
        png = tile_png()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 4 and parts[0] == "tiles" and parts[3].endswith(".png"):
                    with outer.lock:
                        outer.requests.append((int(parts[1]), int(parts[2]), int(parts[3][:-4])))
                    self.send_response(200)
                    self.send_header("content-type", "image/png")
                    self.send_header("content-length", str(len(png)))
                    self.end_headers()
                    self.wfile.write(png)
                else:
                    self.send_error(404)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def seen(self) -> list[tuple[int, int, int]]:
        with self.lock:
            return list(self.requests)


@pytest.fixture
def tiles():
    server = TileServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def world(tmp_path, config: Config) -> tuple[Server, object]:
    """A county, an exclusion circle, a subject whose bracelet last stood at DEVICE_*."""
    fc = county_and_circle()
    zones = compile_zones(load_zones(fc))
    registry = load_registry({"subjects": [
        {"subject_id": "S-1", "region": "411303", "level": "strict",
         "devices": [{"device_id": "B-1"}], "inclusion": ["411303"],
         "exclusion": ["victim-17"]}]}, zones)
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    t = T_MS
    store.register.adcode_dir = str(CNMAPS)
    store.register.import_adcode("411303", actor="root", now_ms=t)
    store.register.create_subject({"subject_id": "S-1", "name": "张三", "region": "411303",
                                   "level": "strict", "devices": [{"device_id": "B-1"}],
                                   "inclusion": ["411303"]}, actor="alice", now_ms=t)
    store.record_fixes([
        {"device_id": "B-1", "subject_id": "S-1", "region": "411303", "ts": t - k * 60_000,
         "lat": DEVICE_LAT + k * 0.0004, "lon": DEVICE_LON + k * 0.0006, "acc": 12.0,
         "src": "gps", "received_at": t - k * 60_000} for k in range(5, -1, -1)])
    # the fix 3 min before the last one was in the exclusion circle
    store.record_events([raised("x-1", "411303", kind="exclusion", at=t - 180_000, subject="S-1",
                                device="B-1", lat=DEVICE_LAT + 0.0012,
                                lon=DEVICE_LON + 0.0018)], t)
    app = create_app(store=store, config=config, zones=zones, registry=registry,
                     secure_cookies=False)
    return Server(app).start(), store


def tiles_config(tiles: TileServer) -> Config:
    return config_from_dict({"console": {"tiles": {
        "url": f"{tiles.origin}/tiles/{{z}}/{{x}}/{{y}}.png", "attribution": ATTRIBUTION,
        "crs": "gcj02", "max_zoom": 18}}})


def tile_xy(lat: float, lon: float, z: int) -> tuple[int, int]:
    """The Web Mercator (XYZ) tile holding lat, lon at zoom z."""
    n = 2 ** z
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return x, y


def metres(lat0: float, lon0: float, lat1: float, lon1: float) -> float:
    """Great-circle distance, metres (Leaflet's Earth radius)."""
    p0, p1 = math.radians(lat0), math.radians(lat1)
    a = (math.sin((p1 - p0) / 2) ** 2
         + math.cos(p0) * math.cos(p1) * math.sin(math.radians(lon1 - lon0) / 2) ** 2)
    return 2 * 6_371_000 * math.asin(math.sqrt(a))


# The centre of a drawn element's geometry (stroke left out) in the map's container pixels.
CENTRE_JS = """
const m = state.map.map, node = arguments[0];
const bb = node.getBBox(), k = node.getScreenCTM(), c = m.getContainer().getBoundingClientRect();
return [k.a * (bb.x + bb.width / 2) + k.e - c.left, k.d * (bb.y + bb.height / 2) + k.f - c.top];
"""
DEVICE = '#map path.device[data-device="B-1"]'
SETTLED_JS = """
const tiles = [...document.querySelectorAll('#map .leaflet-tile')];
return tiles.length > 0 && tiles.every((t) => t.classList.contains('leaflet-tile-loaded'));
"""


def settle(d, wait) -> None:
    wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, DEVICE))
    wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#map path.zone-inclusion"))


@pytest.mark.browser
def test_tiles_of_the_area_shown_with_attribution_and_gcj02_positions(tmp_path, tiles):
    server, store = world(tmp_path, tiles_config(tiles))
    d = start_chromium(tmp_path, lang="zh-CN", window="1280,800")
    try:
        wait = log_in_chinese(d, server.url, "alice")
        settle(d, wait)
        wait.until(lambda drv: drv.execute_script(SETTLED_JS))
        # the tiles asked for: all at the zoom shown, covering exactly the area shown
        zoom, north, west, south, east, max_zoom = d.execute_script(
            "const m = state.map.map, b = m.getBounds(); return [m.getZoom(), b.getNorth(),"
            " b.getWest(), b.getSouth(), b.getEast(), m.getMaxZoom()];")
        z = round(zoom)
        assert 8 <= z <= 14 and max_zoom == 18, zoom  # a county fills the map
        (x0, y0), (x1, y1) = tile_xy(north, west, z), tile_xy(south, east, z)
        shown = {(z, x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}
        asked = set(tiles.seen())
        assert shown <= asked, sorted(shown - asked)
        assert all(tz == z and x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1
                   for tz, x, y in asked), sorted(asked)
        assert len(tiles.seen()) == len(asked)  # none twice
        # the attribution, as text (not read as HTML)
        shown_text = d.find_element(By.CSS_SELECTOR, "#map .leaflet-control-attribution").text
        assert shown_text == ATTRIBUTION
        assert not d.find_elements(By.CSS_SELECTOR, "#map.map-offline")
        # the alarm selected: its track and point over the base map
        click(wait, (By.CSS_SELECTOR, 'tr[data-alarm-id="x-1"]'))
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#map path.alarm-point"))
        wait.until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, "#map path.fix")) == 6)
        wait.until(lambda drv: drv.execute_script(SETTLED_JS))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "zh-CN-tiles.png"))

        # the device, WGS-84 in the store, is drawn at its GCJ-02 position
        glon, glat = wgs84_to_gcj02(DEVICE_LON, DEVICE_LAT)
        offset_m = metres(DEVICE_LAT, DEVICE_LON, glat, glon)
        assert 100 < offset_m < 700, offset_m
        d.execute_script("state.map.map.setView([arguments[0], arguments[1]], 16,"
                         " {animate: false});", glat, glon)
        dot = d.find_element(By.CSS_SELECTOR, DEVICE)
        drawn = d.execute_script(CENTRE_JS, dot)
        want, raw = d.execute_script(
            "const m = state.map.map;"
            "const p = (a, b) => {"
            " const q = m.latLngToContainerPoint([a, b]); return [q.x, q.y]; };"
            "return [p(arguments[0], arguments[1]), p(arguments[2], arguments[3])];",
            glat, glon, DEVICE_LAT, DEVICE_LON)
        assert math.dist(drawn, want) < 1.5, (drawn, want)
        metres_per_px = d.execute_script(
            "const m = state.map.map, s = m.getSize();"
            "return m.distance(m.containerPointToLatLng([0, s.y / 2]),"
            " m.containerPointToLatLng([s.x, s.y / 2])) / s.x;")
        assert abs(math.dist(drawn, raw) * metres_per_px - offset_m) < 0.02 * offset_m
        # images from the tile server and nowhere else; no CSP violation logged
        csp = httpx.get(server.url + "/").headers["content-security-policy"]
        assert f"img-src 'self' data: {tiles.origin};" in csp
        assert severe_console_messages(d) == []
    finally:
        d.quit()
        server.stop()
        store.close_store()


@pytest.mark.browser
def test_without_tiles_the_boundaries_alone_and_no_tile_requested(tmp_path, tiles):
    server, store = world(tmp_path, Config())
    d = start_chromium(tmp_path, lang="zh-CN", window="1280,800")
    try:
        wait = log_in_chinese(d, server.url, "alice")
        settle(d, wait)
        assert d.find_elements(By.CSS_SELECTOR, "#map.map-offline")
        assert d.find_elements(By.CSS_SELECTOR, '#map path.zone-exclusion[data-radius-m="500"]')
        # pan and zoom: still nothing asked of any tile server
        click(wait, (By.CSS_SELECTOR, "#map .leaflet-control-zoom-in"))
        zoom_in = d.find_element(By.CSS_SELECTOR, "#map .leaflet-control-zoom-in")
        assert zoom_in.get_attribute("title") == "放大"
        assert d.find_element(By.CSS_SELECTOR, "#map .leaflet-control-scale-line").text
        # the legend hides and shows a layer
        box = (By.CSS_SELECTOR, '#map-legend input[data-layer="device"]')
        click(wait, box)
        wait.until(lambda drv: not drv.find_elements(By.CSS_SELECTOR, "#map path.device"))
        click(wait, box)
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#map path.device"))
        assert d.find_element(By.CSS_SELECTOR, "#map path.device title").get_attribute(
            "textContent").startswith("B-1 (S-1) 2026-09-21 22:13:20")
        click(wait, (By.ID, "map-fit"))  # the whole county in view again
        wait.until(lambda drv: drv.execute_script(
            "const m = state.map.map, zones = state.map.groups.inclusion.getLayers();"
            "return zones.length > 0"
            " && zones.every((z) => m.getBounds().contains(z.getBounds()));"))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "zh-CN-offline.png"))
        assert d.find_elements(By.CSS_SELECTOR, "#map .leaflet-tile") == []
        assert tiles.seen() == []
        assert not d.find_elements(By.CSS_SELECTOR, "#map .leaflet-control-attribution")
        csp = httpx.get(server.url + "/").headers["content-security-policy"]
        assert "img-src 'self' data:;" in csp
        assert severe_console_messages(d) == []
    finally:
        d.quit()
        server.stop()
        store.close_store()


@pytest.mark.browser
def test_gcoord_in_the_page_agrees_with_geofence_gcj02(tmp_path):
    """Both ways, on points across China, within centimetres; and the page's own
    round trip (a point clicked on a GCJ-02 map back to WGS-84) within a centimetre."""
    server, store = world(tmp_path, Config())
    d = start_chromium(tmp_path, window="800,600")
    try:
        d.get(server.url + "/")
        WebDriverWait(d, WAIT_S, ignored_exceptions=[StaleElementReferenceException]).until(
            lambda drv: drv.execute_script(
                "return typeof gcoord === 'object' && typeof basemap === 'object'"))
        lon, lat = np.meshgrid(np.arange(75.5, 134.6, 3.7), np.arange(18.3, 53.4, 2.9))
        lon, lat = lon.ravel(), lat.ravel()
        fwd, back, round_trip = d.execute_script("""
const [lons, lats] = arguments;
const fwd = lons.map((x, i) => gcoord.transform([x, lats[i]], gcoord.WGS84, gcoord.GCJ02));
const back = lons.map((x, i) => gcoord.transform([x, lats[i]], gcoord.GCJ02, gcoord.WGS84));
basemap.configure({url: "http://127.0.0.1:9/{z}/{x}/{y}.png", crs: "gcj02"});
const trip = lons.map((x, i) => {
  const p = basemap.wgs(basemap.ll(lats[i], x));
  return [p.lon, p.lat];
});
basemap.configure(null);
return [fwd, back, trip];""", lon.tolist(), lat.tolist())
        want_fwd = np.column_stack(wgs84_to_gcj02(lon, lat))
        want_back = np.column_stack(gcj02_to_wgs84(lon, lat))
        for got, want, tol_m in ((fwd, want_fwd, 0.05), (back, want_back, 0.5),
                                 (round_trip, np.column_stack([lon, lat]), 0.5)):
            err = [metres(a[1], a[0], b[1], b[0])
                   for a, b in zip(np.asarray(got), want, strict=True)]
            assert max(err) < tol_m, max(err)
        moved = [metres(a, b, c, e) for a, b, (e, c) in zip(lat, lon, want_fwd, strict=True)]
        assert min(moved) > 50  # every point is inside China: the datum moved it
    finally:
        d.quit()
        server.stop()
        store.close_store()


def test_the_csp_names_each_tile_subdomain_and_the_session_the_tiles(tmp_path):
    config = config_from_dict({"console": {"tiles": {
        "url": "https://t{s}.tianditu.gov.cn/vec_w/wmts?SERVICE=WMTS&REQUEST=GetTile"
               "&VERSION=1.0.0&LAYER=vec&STYLE=default&TILEMATRIXSET=w&FORMAT=tiles"
               "&TILEMATRIX={z}&TILEROW={y}&TILECOL={x}&tk=KEY",
        "subdomains": "01", "attribution": "天地图", "max_zoom": 18}}})
    store = open_store(f"sqlite:///{tmp_path / 'alarms.db'}")
    add_accounts(store)
    try:
        with TestClient(create_app(store=store, config=config, secure_cookies=False)) as client:
            csp = client.get("/").headers["content-security-policy"]
            assert ("img-src 'self' data: https://t0.tianditu.gov.cn https://t1.tianditu.gov.cn;"
                    in csp)
            r = client.post("/api/login", json={"name": "alice", "password": PASSWORD})
            assert r.status_code == 200
            assert r.json()["tiles"] == {"url": config.console.tiles.url, "attribution": "天地图",
                                         "crs": "wgs84", "subdomains": "01", "min_zoom": 0,
                                         "max_zoom": 18}
        with TestClient(create_app(store=store, config=Config(), secure_cookies=False)) as client:
            r = client.post("/api/login", json={"name": "alice", "password": PASSWORD})
            assert r.json()["tiles"] is None
    finally:
        store.close_store()


# Where the first fix of the playback is drawn, read off the tile grid (not Leaflet's
# API): a loaded tile z/x/y sits at world pixel (256 x, 256 y) of zoom z, scaled by the
# map's fractional zoom; the dot's centre is so many pixels from the tile's corner.
PLAYBACK_DOT_JS = """
const plane = document.querySelector('.pb-plane');
const tile = plane.querySelector('img.leaflet-tile-loaded'), r = tile.getBoundingClientRect();
const dot = plane.querySelector('path.pb-fix'), bb = dot.getBBox(), k = dot.getScreenCTM();
return [tile.getAttribute('src'), r.left, r.top, r.width,
        k.a * (bb.x + bb.width / 2) + k.e, k.d * (bb.y + bb.height / 2) + k.f];
"""


def tile_lat_lon(src: str, left: float, top: float, width: float, cx: float,
                 cy: float) -> tuple[float, float, float]:
    """The lat, lon of screen point (cx, cy) from a tile's URL and box, and the map's
    metres per screen pixel there."""
    z, x, y = (int(v) for v in src.rsplit("/", 3)[1:3] + [src.rsplit("/", 1)[1][:-4]])
    scale = width / 256.0
    world = 256.0 * 2 ** z
    px, py = x * 256 + (cx - left) / scale, y * 256 + (cy - top) / scale
    lon = px / world * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * py / world))))
    metres_per_px = 40_075_016.7 * math.cos(math.radians(lat)) / world / scale
    return lat, lon, metres_per_px


@pytest.mark.browser
def test_playback_on_the_base_map_puts_each_fix_at_its_gcj02_position(tmp_path, tiles):
    """The subject page's track playback uses the same base map and the same conversion."""
    server, store = world(tmp_path, tiles_config(tiles))
    d = start_chromium(tmp_path, lang="zh-CN", window="1280,900")
    try:
        wait = log_in_chinese(d, server.url, "alice")
        click(wait, (By.ID, "tab-subjects"))
        click(wait, (By.CSS_SELECTOR, '#subj-list tr[data-subject-id="S-1"]'))
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, ".pb-load"))
        # Shanghai wall clock, typed as an operator would
        type_time(d.find_element(By.CSS_SELECTOR, ".pb-from"), "2026-09-21 20:00")
        type_time(d.find_element(By.CSS_SELECTOR, ".pb-to"), "2026-09-22 00:00")
        click(wait, (By.CSS_SELECTOR, ".pb-load"))
        fixes = (By.CSS_SELECTOR, ".pb-plane path.pb-fix")
        wait.until(lambda drv: len(drv.find_elements(*fixes)) == 6)
        wait.until(lambda drv: drv.execute_script(
            "const t = [...document.querySelectorAll('.pb-plane .leaflet-tile')];"
            "return t.length > 0 && t.every((i) => i.classList.contains('leaflet-tile-loaded'));"))
        lat, lon, m_per_px = tile_lat_lon(*d.execute_script(PLAYBACK_DOT_JS))
        # the first fix (5 min before the last) in WGS-84, and where GCJ-02 tiles show it
        wlat, wlon = DEVICE_LAT + 5 * 0.0004, DEVICE_LON + 5 * 0.0006
        glon, glat = wgs84_to_gcj02(wlon, wlat)
        assert metres(lat, lon, glat, glon) < 2 * m_per_px, (lat, lon, glat, glon, m_per_px)
        assert abs(metres(lat, lon, wlat, wlon) - metres(wlat, wlon, glat, glon)) < 2 * m_per_px
        assert d.find_element(By.CSS_SELECTOR, ".pb-plane .leaflet-control-attribution").text == (
            ATTRIBUTION)
        d.execute_script("document.querySelector('.track-playback').scrollIntoView();")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(ARTIFACTS / "zh-CN-playback-tiles.png"))
        assert severe_console_messages(d) == []
    finally:
        d.quit()
        server.stop()
        store.close_store()
