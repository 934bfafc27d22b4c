// emfence console: the zone page: the zone library by name, a county imported by its
// adcode, a GeoJSON upload, and a circle placed by clicking the map and typing a radius.
// A point clicked on the map is taken back to WGS-84 (basemap.wgs) when the base map is
// drawn in GCJ-02: every zone is stored in WGS-84.
"use strict";

const zonesPage = (() => {
  let centre = null;  // {lon, lat} clicked on the map, WGS-84

  async function reload() {
    state.zones = await api("GET", "/api/zones");
  }

  async function load() {
    const view = $("#zones-view");
    const err = el("p", { class: "error", role: "alert", id: "zones-error" });
    const ok = el("p", { class: "muted", id: "zones-ok" });
    view.replaceChildren(err, ok);
    await submit(null, err, async () => {
      await reload();
      view.replaceChildren(el("div", { class: "zones-left" }, libraryTable(), importForm(err, ok),
        uploadForm(err, ok), circleForm(err, ok), err, ok), el("div", { class: "zones-right" }, circleMap()));
      drawCircleMap();
    });
  }

  function libraryTable() {
    const rows = library().map((z) => el("tr", { "data-zone-id": z.zone_id }, cell(z.name), cell(z.zone_id),
      cell(i18n.term("zkind", z.kind) + (z.radius_m ? ` ${i18n.dist(z.radius_m)}` : "")),
      cell(i18n.term("src", z.source))));
    return el("section", { class: "part", id: "zone-library" }, el("h3", { text: tr("zones.library") }),
      table(["zones.name", "col.id", "col.kind", "col.source"], rows));
  }

  async function saved(ok, zone) {
    ok.textContent = `${tr("zones.saved")}${zone.name || ""} (${zone.zone_id})`;
    const text = ok.textContent;
    await load();
    $("#zones-ok").textContent = text;
  }

  function importForm(err, ok) {
    const code = el("input", { id: "zone-adcode", pattern: "[0-9]{6}", maxlength: "6", required: "required", placeholder: "411303" });
    const form = el("form", { class: "filters", id: "import-form" }, el("h3", { text: tr("zones.import") }),
      field("zones.adcode", code), el("button", { type: "submit", id: "import-btn", text: tr("zones.import_btn") }));
    form.addEventListener("submit", (e) => submit(e, err, async () => {
      await saved(ok, await api("POST", "/api/zones/import-adcode", { adcode: code.value.trim() }));
    }));
    return form;
  }

  function idAndName(prefix) {
    return [el("input", { class: `${prefix}-id`, maxlength: "64", required: "required" }),
      el("input", { class: `${prefix}-name`, maxlength: "200", required: "required" })];
  }

  function uploadForm(err, ok) {
    const file = el("input", { type: "file", id: "upload-file", accept: ".geojson,.json,application/geo+json" });
    const [zid, name] = idAndName("up");
    const crs = options(el("select", { id: "upload-crs" }), ["wgs84", "gcj02"], "crs", "wgs84");
    const form = el("form", { class: "filters", id: "upload-form" }, el("h3", { text: tr("zones.upload") }),
      field("zones.file", file), field("zones.zone_id", zid), field("zones.name", name),
      field("zones.coord_sys", crs), el("button", { type: "submit", text: tr("zones.upload_btn") }));
    form.addEventListener("submit", (e) => submit(e, err, async () => {
      const doc = JSON.parse(await file.files[0].text());
      // A file may hold a Feature, a FeatureCollection of one, or a bare geometry.
      const feature = doc.type === "FeatureCollection" ? doc.features[0] : doc;
      const geometry = feature.type === "Feature" ? feature.geometry : feature;
      await saved(ok, await api("POST", "/api/zones", { zone_id: zid.value.trim(), name: name.value.trim(),
        coord_sys: crs.value, geometry }));
    }));
    return form;
  }

  function circleForm(err, ok) {
    const [zid, name] = idAndName("circle");
    const radius = el("input", { type: "number", id: "circle-radius", min: "10", max: "50000", value: "500", required: "required" });
    const where = el("span", { id: "circle-centre", class: "muted", text: "–" });
    radius.addEventListener("input", drawCircleMap);
    const form = el("form", { class: "filters", id: "circle-form" }, el("h3", { text: tr("zones.circle") }),
      field("zones.zone_id", zid), field("zones.name", name), field("zones.radius", radius),
      el("label", {}, tr("zones.centre"), where), el("button", { type: "submit", id: "circle-btn", text: tr("zones.circle_btn") }));
    form.addEventListener("submit", (e) => submit(e, err, async () => {
      if (!centre) throw new Error(tr("zones.click_first"));
      await saved(ok, await api("POST", "/api/zones", { zone_id: zid.value.trim(), name: name.value.trim(),
        coord_sys: "wgs84", radius_m: Number(radius.value),
        geometry: { type: "Point", coordinates: [centre.lon, centre.lat] } }));
      centre = null;
    }));
    return form;
  }

  function circleMap() {
    return el("div", { id: "zone-map", class: "mini-map big" });
  }

  function placeCentre(point) {
    centre = point;
    $("#circle-centre").textContent = `${centre.lat.toFixed(6)}, ${centre.lon.toFixed(6)}`;
    $("#zones-error").textContent = "";
    drawCircleMap();
  }

  // Redraw the zones and the circle being placed.
  function drawCircleMap() {
    const map = $("#zone-map");
    if (!map) return;
    const r = Number(($("#circle-radius") || {}).value) || 0;
    const features = (state.zones && state.zones.features) || [];
    drawMini(map, features, centre ? { ...centre, radius_m: r } : null,
      (f) => (f.properties.circle ? "exclusion" : "inclusion"), placeCentre);
  }

  return { load };
})();
