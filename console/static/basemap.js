// emfence console: what every map of the page shares (Leaflet, vendored under
// /static/vendor/leaflet): making a map with its zoom buttons, metric scale bar and,
// when console.tiles names a tile server, the base map and its attribution; without one
// the map is the offline boundary-only view (a plain background, no tile requests).
//
// Every coordinate the console sends is WGS-84 (zones, fixes, last positions, alarm
// evidence: the engine converts GCJ-02 input when it arrives). Tiles may be drawn in
// GCJ-02 (console.tiles.crs = "gcj02"): then every point is converted with gcoord
// (vendored) before it is drawn, and a point clicked on the map converted back.
"use strict";

const basemap = (() => {
  let tiles = null;  // the session's "tiles" ({url, attribution, crs, ...}) or null
  const OFFLINE_MAX_ZOOM = 19;
  // Nanyang (Henan) when there is nothing to show yet.
  const HOME = [33.0, 112.55];
  const viewed = new WeakSet();  // maps that have a view

  // Leaflet's metric scale bar, its length in the page's words ("500米", "2公里").
  const Scale = L.Control.Scale.extend({
    _updateMetric(maxMeters) {
      const metres = this._getRoundNum(maxMeters);
      this._updateScale(this._mScale, i18n.dist(metres), metres / maxMeters);
    },
  });

  function configure(t) { tiles = t && t.url ? t : null; }
  const gcj = () => Boolean(tiles && tiles.crs === "gcj02");

  // WGS-84 lat, lon -> the tiles' datum, as a Leaflet LatLng.
  function ll(lat, lon) {
    if (!gcj()) return L.latLng(lat, lon);
    const [x, y] = gcoord.transform([lon, lat], gcoord.WGS84, gcoord.GCJ02);
    return L.latLng(y, x);
  }
  // A point of the map (the tiles' datum) -> WGS-84 {lat, lon}.
  function wgs(latlng) {
    if (!gcj()) return { lat: latlng.lat, lon: latlng.lng };
    const [x, y] = gcoord.transform([latlng.lng, latlng.lat], gcoord.GCJ02, gcoord.WGS84);
    return { lat: y, lon: x };
  }
  // A GeoJSON Polygon / MultiPolygon (WGS-84 lon/lat) as Leaflet rings.
  function rings(geom) {
    const ring = (r) => r.map(([lon, lat]) => ll(lat, lon));
    if (geom.type === "Polygon") return geom.coordinates.map(ring);
    if (geom.type === "MultiPolygon") return geom.coordinates.map((poly) => poly.map(ring));
    return [];
  }

  // The attribution is configuration, shown as text (Leaflet would read it as HTML).
  const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // A Leaflet map in `container`. Panes keep the layers in order whatever is redrawn:
  // zones under the track under the devices under the alarm points.
  function create(container) {
    const maxZoom = tiles ? tiles.max_zoom : OFFLINE_MAX_ZOOM;
    const map = L.map(container, { zoomControl: false, attributionControl: false, zoomSnap: 0.25,
      minZoom: tiles ? tiles.min_zoom : 3, maxZoom, worldCopyJump: false });
    L.control.zoom({ zoomInTitle: i18n.t("map.zoom_in"), zoomOutTitle: i18n.t("map.zoom_out") }).addTo(map);
    const relabel = () => {
      // a map whose panel was replaced forgets the page
      if (!container.isConnected) { document.removeEventListener("langchange", relabel); return; }
      for (const [cls, key] of [["in", "map.zoom_in"], ["out", "map.zoom_out"]]) {
        const b = container.querySelector(`.leaflet-control-zoom-${cls}`);
        if (b) { b.title = i18n.t(key); b.setAttribute("aria-label", i18n.t(key)); }
      }
    };
    document.addEventListener("langchange", relabel);
    new Scale({ metric: true, imperial: false }).addTo(map);
    [["zones", 410], ["track", 420], ["devices", 430], ["alarms", 440]].forEach(([name, z]) => {
      map.createPane(name).style.zIndex = String(z);
    });
    container.classList.toggle("map-offline", !tiles);
    if (tiles) {
      L.control.attribution({ prefix: false }).addTo(map);
      L.tileLayer(tiles.url, { attribution: escapeHtml(tiles.attribution || ""),
        subdomains: tiles.subdomains || "abc", minZoom: tiles.min_zoom, maxZoom,
        maxNativeZoom: tiles.max_zoom }).addTo(map);
    }
    // No view yet: layers wait for the first fit, so no tile is asked for a place the
    // map is not going to show.
    return map;
  }

  // Fit the map to WGS-84 [lon, lat] points (none: the first view is HOME) with a quarter of their span as margin on
  // every side (the alarm's point must not sit on the edge or under the legend).
  function fit(map, lonlats, maxZoom = 16) {
    // A zoom animation (a button, the wheel) ends by moving to its own target: fit after it.
    if (map._animatingZoom) {
      map.once("zoomend", () => fit(map, lonlats, maxZoom));
      return true;
    }
    if (!lonlats.length) {
      if (!viewed.has(map)) map.setView(HOME, 10);
      viewed.add(map);
      return false;
    }
    viewed.add(map);
    const b = L.latLngBounds(lonlats.map(([lon, lat]) => ll(lat, lon))).pad(0.25);
    map.fitBounds(b, { maxZoom: Math.min(maxZoom, map.getMaxZoom()), animate: false });
    return true;
  }

  // An SVG <title> (the hover text) on a drawn layer; call once it is on the map.
  function title(layer, text) {
    const node = layer.getElement && layer.getElement();
    if (!node) return;
    const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
    t.textContent = text;
    node.append(t);
  }
  // Data attributes on a drawn layer's element (tests and styles read them).
  function mark(layer, attrs) {
    const node = layer.getElement && layer.getElement();
    if (node) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  }

  return { configure, create, fit, ll, wgs, rings, title, mark, tiles: () => tiles };
})();
