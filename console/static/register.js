// emfence console: the supervision register's pages (subjects, enrolment, a subject's
// page, the leave approval queue). Uses app.js's api/el/$ and state, time.js's zoneTime
// and register-i18n.js's words; the zone page is zones-page.js.
"use strict";

const tr = (key) => i18n.t(key);
const reg = { view: null, subjectId: null };
const OVERSEER = () => state.session && (state.session.role === "supervisor" || state.session.role === "admin");
const LEVELS = ["strict", "ordinary", "lenient"];
const KINDS = ["bracelet", "phone"];

// ---------------------------------------------------------------- small helpers
const library = () => (state.zones && state.zones.library) || [];
// A zone by its name (the id in the tooltip, for searching): 卧龙区, 受害人住所.
function zoneLabel(zoneId) {
  const z = library().find((e) => e.zone_id === zoneId);
  const name = (z && z.name) || (state.session.region_names || {})[zoneId];
  return el("span", { class: "zname", title: zoneId, text: name || zoneId });
}
function zoneList(ids) {
  const span = el("span");
  (ids || []).forEach((id, i) => { if (i) span.append("、"); span.append(zoneLabel(id)); });
  return span;
}
const when = (ms) => (ms === null || ms === undefined ? "–" : zoneTime.full(ms));
function cell(content) {
  const td = el("td");
  td.append(content instanceof Node ? content : String(content === null || content === undefined ? "–" : content));
  return td;
}
function table(headKeys, rows) {
  const head = el("tr");
  for (const k of headKeys) head.append(el("th", { text: tr(k) }));
  const body = el("tbody");
  for (const r of rows) body.append(r);
  return el("table", { class: "reg-table" }, el("thead", {}, head), body);
}
function field(labelKey, input) {
  return el("label", {}, tr(labelKey), input);
}
function options(select, values, group, chosen) {
  for (const v of values) {
    const o = el("option", { value: v, text: group ? i18n.term(group, v) : v });
    if (v === chosen) o.selected = true;
    select.append(o);
  }
  return select;
}
// A multiple choice of the library's zones, by name.
function zonePicker(cls) {
  const s = el("select", { class: cls, multiple: "multiple", size: "4" });
  for (const z of library()) s.append(el("option", { value: z.zone_id, text: `${z.name || z.zone_id} (${z.zone_id})` }));
  return s;
}
const picked = (select) => [...select.selectedOptions].map((o) => o.value);
// Run a form's request: errors (with the field the server names) go to `box`.
async function submit(ev, box, fn) {
  if (ev) ev.preventDefault();
  box.textContent = "";
  try {
    await fn();
  } catch (e) {
    box.textContent = e.field ? `${e.message} [${e.field}]` : e.message;
  }
}

// ---------------------------------------------------------------- views
function regShow(name) {
  for (const v of document.querySelectorAll(".reg-view")) v.hidden = v.id !== `${name}-view`;
  reg.view = name;
  if (name === "subjects") loadSubjects();
  if (name === "leaves") loadQueue();
  if (name === "zones") zonesPage.load();
  if (name === "roster") rosterPage.load();  // roster.js
  if (name === "protected") loadProtected();
}

function regStart(session) {
  $("#tab-leaves").hidden = !OVERSEER();
  $("#tab-roster").hidden = !OVERSEER();
  $("#tab-protected").hidden = !OVERSEER();
  regLabels();
}

function regLabels() {
  $("#tab-subjects").textContent = tr("tab.subjects");
  $("#tab-leaves").textContent = tr("tab.leaves");
  $("#tab-zones").textContent = tr("tab.zones");
  $("#tab-roster").textContent = i18n.t("roster.tab.roster");
  $("#tab-protected").textContent = tr("tab.protected");
  $("#lang").textContent = tr("lang.other");
  document.documentElement.lang = i18n.lang();
}

// ---------------------------------------------------------------- subject list
async function loadSubjects() {
  const view = $("#subjects-view");
  const q = el("input", { id: "subj-q", placeholder: tr("subjects.q"), value: reg.q || "" });
  const st = options(el("select", { id: "subj-state" }), ["", "active", "ended"], "state", reg.state || "");
  st.options[0].textContent = tr("subjects.all");
  const form = el("form", { class: "filters", id: "subj-search" }, field("subjects.search", q),
    field("subjects.state", st), el("button", { type: "submit", text: tr("subjects.search") }),
    el("button", { type: "button", id: "enrol-open", text: tr("subjects.enrol") }));
  const box = el("p", { class: "error", role: "alert" });
  const list = el("div", { id: "subj-list" });
  view.replaceChildren(form, box, list, el("div", { id: "enrol-box" }));
  form.addEventListener("submit", (e) => { reg.q = q.value; reg.state = st.value; submit(e, box, fillSubjects); });
  $("#enrol-open").addEventListener("click", () => enrolForm($("#enrol-box")));
  await submit(null, box, fillSubjects);
}

async function fillSubjects() {
  const p = new URLSearchParams();
  if (reg.q) p.set("q", reg.q);
  if (reg.state) p.set("state", reg.state);
  const data = await api("GET", `/api/subjects?${p}`);
  const rows = data.subjects.map((s) => {
    const row = el("tr", { "data-subject-id": s.subject_id });
    row.append(cell(s.subject_id), cell(s.name), cell(regionName(s.region)), cell(regionalTerm("level", s.level)),
      cell(s.officer), cell(regionalTerm("state", s.state)));
    row.addEventListener("click", () => showSubject(s.subject_id));
    return row;
  });
  $("#subj-list").replaceChildren(rows.length ? table(["col.id", "col.name", "col.region", "col.level",
    "col.officer", "col.state"], rows) : el("p", { class: "muted", text: tr("subjects.none") }));
}
const regionalTerm = (group, v) => i18n.term(group, v);

// ---------------------------------------------------------------- enrolment
function enrolForm(box) {
  const regions = state.session.all_regions ? Object.keys(state.session.region_names || {}) : state.session.regions;
  const region = el("select", { id: "en-region" });
  for (const r of regions) region.append(el("option", { value: r, text: regionName(r) }));
  const inputs = {
    subject_id: el("input", { id: "en-id", required: "required", maxlength: "64" }),
    name: el("input", { id: "en-name", required: "required", maxlength: "200" }),
    level: options(el("select", { id: "en-level" }), LEVELS, "level", "ordinary"),
    officer: el("input", { id: "en-officer", maxlength: "64" }),
    note: el("input", { id: "en-note", maxlength: "2000" }),
    device: el("input", { id: "en-device", maxlength: "64" }),
    kind: options(el("select", { id: "en-kind" }), KINDS, "kind", "bracelet"),
    inclusion: zonePicker("en-inclusion"), exclusion: zonePicker("en-exclusion"),
  };
  const err = el("p", { class: "error", role: "alert", id: "en-error" });
  const form = el("form", { id: "enrol-form", class: "reg-form" }, el("h2", { text: tr("enrol.title") }),
    field("enrol.subject_id", inputs.subject_id), field("enrol.name", inputs.name),
    field("enrol.region", region), field("enrol.level", inputs.level),
    field("enrol.officer", inputs.officer), field("enrol.note", inputs.note),
    field("enrol.device", inputs.device), field("enrol.kind", inputs.kind),
    field("enrol.inclusion", inputs.inclusion), field("enrol.exclusion", inputs.exclusion),
    el("button", { type: "submit", id: "en-submit", text: tr("enrol.submit") }), err);
  box.replaceChildren(form);
  form.addEventListener("submit", (e) => submit(e, err, async () => {
    const body = { subject_id: inputs.subject_id.value.trim(), name: inputs.name.value.trim(),
      region: region.value, level: inputs.level.value, note: inputs.note.value || null,
      devices: inputs.device.value.trim() ? [{ device_id: inputs.device.value.trim(), kind: inputs.kind.value }] : [],
      inclusion: picked(inputs.inclusion), exclusion: picked(inputs.exclusion) };
    if (inputs.officer.value.trim()) body.officer = inputs.officer.value.trim();
    const s = await api("POST", "/api/subjects", body);
    await showSubject(s.subject_id);
  }));
}

// ---------------------------------------------------------------- one subject
async function showSubject(id) {
  reg.subjectId = id;
  for (const v of document.querySelectorAll(".reg-view")) v.hidden = v.id !== "subject-view";
  const view = $("#subject-view");
  const err = el("p", { class: "error", role: "alert", id: "subject-error" });
  view.replaceChildren(err);
  await submit(null, err, () => renderSubject(view, err));
}

async function renderSubject(view, err) {
  const id = reg.subjectId;
  // The zones again too: a subject just enrolled brings its zones into the caller's view.
  const [s, leaves, alarms, zones] = await Promise.all([
    api("GET", `/api/subjects/${encodeURIComponent(id)}`),
    api("GET", `/api/leaves?subject_id=${encodeURIComponent(id)}`),
    api("GET", `/api/alarms?subject_id=${encodeURIComponent(id)}&limit=50`),
    api("GET", "/api/zones"),
  ]);
  state.zones = zones;
  const back = el("button", { type: "button", id: "subject-back", text: tr("subject.back") });
  back.addEventListener("click", () => regShow("subjects"));
  const head = el("div", { class: "reg-head" }, back,
    el("h2", { id: "subject-title", text: `${s.name || ""} ${s.subject_id}` }));
  const facts = el("dl", { class: "d-fields" });
  for (const [k, v] of [["col.region", regionName(s.region)], ["col.level", regionalTerm("level", s.level)],
    ["col.officer", s.officer], ["col.state", regionalTerm("state", s.state)], ["enrol.note", s.note]]) {
    facts.append(el("dt", { text: tr(k) }), el("dd", { text: v || "–" }));
  }
  const commands = s.state === "active" ? (s.devices || []).map((d) => deviceCommands.panel(d.device_id)) : [];
  view.replaceChildren(head, err, facts, devicesPart(s, err), ...commands, trackPlayback.panel(s.subject_id),
    reportPart(s), zonesPart(s), contactsPart(s, err),
    leavesPart(s, leaves.leaves, err), curfewsPart(s, err), alarmsPart(alarms.alarms), endPart(s, err));
}

// The subject's monthly report (PDF: alarms, time outside, leaves, device problems).
function reportPart(s) {
  const month = el("input", { type: "month", class: "report-month", value: zoneTime.day(Date.now()).slice(0, 7) });
  const link = el("a", { class: "report-link", download: "", text: tr("subject.report_pdf") });
  const point = () => {
    const lang = i18n.lang() === "en" ? "en" : "zh";
    link.href = `/api/subjects/${encodeURIComponent(s.subject_id)}/report.pdf?month=${month.value}&lang=${lang}`;
  };
  month.addEventListener("change", point);
  point();
  return el("section", { class: "part", id: "subject-report" }, el("h3", { text: tr("subject.report") }),
    el("div", { class: "filters" }, el("label", {}, tr("subject.report_month"), " ", month), link));
}

function devicesPart(s, err) {
  const rows = (s.devices || []).map((d) => {
    const ret = el("button", { type: "button", class: "dev-return", text: tr("subject.return_device") });
    ret.addEventListener("click", () => submit(null, err, async () => {
      await api("POST", `/api/devices/${encodeURIComponent(d.device_id)}/return`, {});
      await showSubject(s.subject_id);
    }));
    return el("tr", {}, cell(d.device_id), cell(regionalTerm("kind", d.kind)), cell(s.state === "active" ? ret : "–"));
  });
  const dev = el("input", { class: "issue-id", maxlength: "64", required: "required" });
  const kind = options(el("select", { class: "issue-kind" }), KINDS, "kind", "bracelet");
  const form = el("form", { class: "filters" }, field("enrol.device", dev), field("enrol.kind", kind),
    el("button", { type: "submit", text: tr("subject.issue") }));
  form.addEventListener("submit", (e) => submit(e, err, async () => {
    await api("POST", `/api/subjects/${encodeURIComponent(s.subject_id)}/devices`, { device_id: dev.value.trim(), kind: kind.value });
    await showSubject(s.subject_id);
  }));
  return el("section", { class: "part", id: "subject-devices" }, el("h3", { text: tr("subject.devices") }),
    table(["col.device", "col.kind", "col.actions"], rows), s.state === "active" ? form : "");
}

const idList = (text) => text.split(/[,，\s]+/).map((x) => x.trim()).filter(Boolean);

// A subject's prohibited contacts (co-defendants): shown, and set by an operator of its region.
function contactsPart(s, err) {
  const ids = el("input", { class: "ct-ids", value: (s.contacts || []).join(", "), size: "40" });
  const reason = el("input", { class: "ct-reason", maxlength: "2000" });
  const form = el("form", { class: "filters" }, field("contacts.ids", ids), field("contacts.reason", reason),
    el("button", { type: "submit", text: tr("contacts.save") }));
  form.addEventListener("submit", (e) => submit(e, err, async () => {
    await api("PUT", `/api/subjects/${encodeURIComponent(s.subject_id)}/contacts`,
      { contacts: idList(ids.value), reason: reason.value || null });
    await showSubject(s.subject_id);
  }));
  return el("section", { class: "part", id: "subject-contacts" }, el("h3", { text: tr("subject.contacts") }),
    el("p", { id: "contacts-list", text: (s.contacts || []).join(", ") || tr("contacts.none") }),
    s.state === "active" ? form : "");
}

function zonesPart(s) {
  const list = el("dl", { class: "d-fields", id: "subject-zones" },
    el("dt", { text: tr("subject.inclusion") }), el("dd", {}, zoneList(s.inclusion)),
    el("dt", { text: tr("subject.exclusion") }), el("dd", {}, zoneList(s.exclusion)));
  const map = el("div", { id: "subject-map", class: "mini-map" });
  const ids = new Set([...(s.inclusion || []), ...(s.exclusion || [])]);
  for (const lv of s.leaves || []) for (const z of lv.zones || []) ids.add(z);
  const features = ((state.zones && state.zones.features) || []).filter((f) => ids.has(f.properties.zone_id));
  drawMini(map, features, null, (f) => ((s.exclusion || []).includes(f.properties.zone_id) ? "exclusion"
    : (s.inclusion || []).includes(f.properties.zone_id) ? "inclusion" : "leave"));
  return el("section", { class: "part" }, el("h3", { text: tr("subject.zones") }), list, map);
}

// Draw `features` (WGS-84) on a small Leaflet map in the element `box` (basemap.js: the
// base map of console.tiles, or boundaries only); `extra` is {lon, lat, radius_m} of a
// circle being placed. The view fits the features once, when the map is made, so it
// stays put while the circle moves; `onClick` gets a clicked point in WGS-84 {lat, lon}.
const miniMaps = new WeakMap();  // box -> {map, group}
function drawMini(box, features, extra, kindOf, onClick, tries = 0) {
  if (!box.isConnected) {  // Leaflet measures its box: wait until the part is on the page
    if (tries < 20) requestAnimationFrame(() => drawMini(box, features, extra, kindOf, onClick, tries + 1));
    return;
  }
  let m = miniMaps.get(box);
  if (!m) {
    const map = basemap.create(box);
    m = { map, group: L.layerGroup().addTo(map) };
    miniMaps.set(box, m);
    const pts = [];
    for (const f of features) eachCoord(f.geometry, (x, y) => pts.push([x, y]));
    basemap.fit(map, pts, 15);
    if (onClick) map.on("click", (e) => onClick(basemap.wgs(e.latlng)));
  }
  m.group.clearLayers();
  for (const f of features) {
    const kind = kindOf(f);
    const c = f.properties.circle;
    const style = { pane: "zones", className: `zone-${kind}` };
    const layer = c ? L.circle(basemap.ll(c[1], c[0]), { ...style, radius: c[2] })
      : L.polygon(basemap.rings(f.geometry), style);
    m.group.addLayer(layer);
    basemap.mark(layer, { "data-zone-id": f.properties.zone_id });
  }
  if (extra) {
    const circle = L.circle(basemap.ll(extra.lat, extra.lon), { pane: "alarms", className: "zone-new",
      radius: extra.radius_m || 50, interactive: false });
    m.group.addLayer(circle);
    basemap.mark(circle, { "data-radius-m": String(extra.radius_m || 50) });
  }
}

function leaveRow(lv, s, err) {
  const acts = el("td", { class: "leave-acts" });
  const act = (verb, key) => {
    const b = el("button", { type: "button", class: `leave-${verb}`, text: tr(key) });
    b.addEventListener("click", () => submit(null, err, async () => {
      await api("POST", `/api/leaves/${encodeURIComponent(lv.leave_id)}/${verb}`, {});
      if (reg.view === "leaves" && !s) await loadQueue(); else await showSubject(lv.subject_id);
    }));
    acts.append(b);
  };
  if (lv.state === "requested" && OVERSEER() && lv.requested_by !== state.session.user) {
    act("approve", "leave.approve");
    act("refuse", "leave.refuse");
  }
  if (s && ["approved", "active", "overdue"].includes(lv.state)) act("return", "leave.return");
  const row = el("tr", { "data-leave-id": lv.leave_id, class: `leave-${lv.state}` });
  if (!s) row.append(cell(`${lv.subject_name || ""} ${lv.subject_id}`.trim()));
  row.append(cell(zoneList(lv.zones)), cell(when(lv.start)), cell(when(lv.end)), cell(lv.reason),
    cell(lv.requested_by), cell(el("span", { class: "leave-state", text: regionalTerm("leave", lv.state) })), acts);
  return row;
}

function leavesPart(s, leaves, err) {
  const rows = leaves.map((lv) => leaveRow(lv, s, err));
  const zones = zonePicker("lv-zones");
  const start = dateTime.make({ cls: "lv-start", field: "start", required: true });
  const end = dateTime.make({ cls: "lv-end", field: "end", required: true });
  const reason = el("input", { class: "lv-reason", maxlength: "2000" });
  const form = el("form", { class: "filters", id: "leave-form" }, field("leave.zones", zones),
    field("leave.start", start), field("leave.end", end), field("leave.reason", reason),
    el("button", { type: "submit", class: "lv-submit", text: tr("leave.submit") }));
  form.addEventListener("submit", (e) => submit(e, err, async () => {
    await api("POST", `/api/subjects/${encodeURIComponent(s.subject_id)}/leaves`, {
      zones: picked(zones), start: dateTime.read(start), end: dateTime.read(end), reason: reason.value || null });
    await showSubject(s.subject_id);
  }));
  return el("section", { class: "part", id: "subject-leaves" },
    el("h3", { text: `${tr("subject.leaves")} (${zoneTime.mark()})` }),
    table(["col.zones", "col.start", "col.end", "col.reason", "col.requested_by", "col.state", "col.actions"], rows),
    s.state === "active" ? el("div", {}, el("h3", { text: tr("leave.request") }), form) : "");
}

function curfewsPart(s, err) {
  const rows = (s.curfews || []).map((c) => el("tr", {}, cell(`${c.start}–${c.end}`), cell(zoneLabel(c.zone)),
    cell((c.days || []).join(" ") || "–")));
  const start = el("input", { type: "time", class: "cf-start", value: "22:00" });
  const end = el("input", { type: "time", class: "cf-end", value: "06:00" });
  const zone = el("select", { class: "cf-zone" });
  for (const z of library()) zone.append(el("option", { value: z.zone_id, text: z.name || z.zone_id }));
  const form = el("form", { class: "filters" }, field("curfew.start", start), field("curfew.end", end),
    field("curfew.zone", zone), el("button", { type: "submit", text: tr("curfew.add") }));
  form.addEventListener("submit", (e) => submit(e, err, async () => {
    await api("POST", `/api/subjects/${encodeURIComponent(s.subject_id)}/curfews`, { start: start.value, end: end.value, zone: zone.value });
    await showSubject(s.subject_id);
  }));
  const part = el("section", { class: "part", id: "subject-curfews" }, el("h3", { text: tr("subject.curfews") }),
    table(["col.time", "col.zones", "col.days"], rows), s.state === "active" ? form : "");
  if (OVERSEER() && s.state === "active") part.append(suspendForm(s, err));
  return part;
}

function suspendForm(s, err) {
  const type = options(el("select", { class: "sp-type" }), state.session.alarm_types, "atype", "offline");
  const start = dateTime.make({ cls: "sp-start", field: "start", required: true });
  const end = dateTime.make({ cls: "sp-end", field: "end", required: true });
  const reason = el("input", { class: "sp-reason", required: "required", maxlength: "2000" });
  const form = el("form", { class: "filters" }, field("suspend.type", type), field("leave.start", start),
    field("leave.end", end), field("suspend.reason", reason), el("button", { type: "submit", text: tr("subject.suspend") }));
  form.addEventListener("submit", (e) => submit(e, err, async () => {
    await api("POST", `/api/subjects/${encodeURIComponent(s.subject_id)}/suspensions`, {
      type: type.value, start: dateTime.read(start), end: dateTime.read(end), reason: reason.value });
    await showSubject(s.subject_id);
  }));
  return form;
}

function alarmsPart(alarms) {
  const rows = alarms.map((a) => el("tr", { "data-alarm-id": a.alarm_id }, cell(when(a.raised_at)),
    cell(i18n.term("atype", a.type)), cell(a.device_id), cell(i18n.term("astate", a.state)), cell(i18n.term("astate", a.workflow))));
  return el("section", { class: "part", id: "subject-alarms" }, el("h3", { text: tr("subject.alarms") }),
    rows.length ? table(["col.time", "col.type", "col.device", "col.state", "col.actions"], rows)
      : el("p", { class: "muted", text: tr("subject.no_alarms") }));
}

function endPart(s, err) {
  if (s.state !== "active") return el("p", { class: "muted", text: `${tr("state.ended")} ${when(s.ended_at)}` });
  const b = el("button", { type: "button", id: "subject-end", text: tr("subject.end") });
  b.addEventListener("click", () => {
    if (!window.confirm(tr("subject.end_confirm"))) return;
    submit(null, err, async () => {
      await api("POST", `/api/subjects/${encodeURIComponent(s.subject_id)}/end`, {});
      await showSubject(s.subject_id);
    });
  });
  return el("p", {}, b);
}

// ---------------------------------------------------------------- approval queue
async function loadQueue() {
  const view = $("#leaves-view");
  const err = el("p", { class: "error", role: "alert", id: "queue-error" });
  view.replaceChildren(el("h2", { text: `${tr("leave.queue")} (${zoneTime.mark()})` }), err, el("div", { id: "queue" }));
  await submit(null, err, async () => {
    const data = await api("GET", "/api/leaves?state=requested");
    const rows = data.leaves.map((lv) => leaveRow(lv, null, err));
    $("#queue").replaceChildren(rows.length ? table(["col.subject", "col.zones", "col.start", "col.end",
      "col.reason", "col.requested_by", "col.state", "col.actions"], rows)
      : el("p", { class: "muted", id: "queue-empty", text: tr("leave.queue_empty") }));
  });
}

// ---------------------------------------------------------------- protected persons
// Victims under a protection order: supervisors and admins only (the server answers an
// operator 403). Their positions are never shown: a proximity alarm gives the distance.
async function loadProtected() {
  const view = $("#protected-view");
  const err = el("p", { class: "error", role: "alert", id: "protected-error" });
  view.replaceChildren(el("h2", { text: tr("protected.title") }), err, el("div", { id: "protected-list" }),
    el("p", { id: "protected-position" }),
    el("h3", { text: tr("protected.add") }), protectedForm(err));
  await submit(null, err, async () => {
    const data = await api("GET", "/api/protected");
    const rows = data.protected.map((p) => {
      const end = el("button", { type: "button", class: "pr-end", text: tr("protected.end") });
      end.addEventListener("click", () => submit(null, err, async () => {
        const reason = window.prompt(tr("protected.end_reason"));
        if (!reason) return;
        await api("POST", `/api/protected/${encodeURIComponent(p.person_id)}/end`, { reason });
        await loadProtected();
      }));
      const where = el("button", { type: "button", class: "pr-where", text: tr("protected.where") });
      where.addEventListener("click", () => submit(null, err, async () => {
        const data = await api("GET", `/api/protected/${encodeURIComponent(p.person_id)}/position`);
        $("#protected-position").textContent = data.positions.length ? data.positions.map((q) =>
          `${p.name} ${q.device_id}: ${q.lat.toFixed(5)}, ${q.lon.toFixed(5)} ±${i18n.dist(q.acc)}, ${when(q.ts)}`).join("；")
          : tr("protected.no_fix");
      }));
      return el("tr", { "data-person-id": p.person_id }, cell(p.person_id), cell(p.name), cell(regionName(p.region)),
        cell(p.devices.join(", ")), cell(p.protected_from.join(", ")), cell(p.note || "–"), cell(el("span", {}, where, " ", end)));
    });
    $("#protected-list").replaceChildren(rows.length ? table(["col.id", "col.name", "col.region", "col.devices",
      "col.protected_from", "protected.note", "col.actions"], rows)
      : el("p", { class: "muted", id: "protected-empty", text: tr("protected.none") }));
  });
}

function protectedForm(err) {
  const inputs = {};
  for (const k of ["person", "name", "devices", "from", "note"]) inputs[k] = el("input", { class: `pr-${k}`, maxlength: "2000" });
  const region = el("select", { class: "pr-region" });
  const regions = state.session.all_regions ? Object.keys(state.session.region_names || {}) : state.session.regions;
  for (const r of regions || []) region.append(el("option", { value: r, text: regionName(r) }));
  const form = el("form", { class: "filters" }, field("protected.person", inputs.person),
    field("protected.name", inputs.name), field("col.region", region), field("protected.devices", inputs.devices),
    field("protected.from", inputs.from), field("protected.note", inputs.note),
    el("button", { type: "submit", text: tr("protected.add") }));
  form.addEventListener("submit", (e) => submit(e, err, async () => {
    await api("POST", "/api/protected", { person_id: inputs.person.value.trim(), name: inputs.name.value || null,
      region: region.value, devices: idList(inputs.devices.value), protected_from: idList(inputs.from.value),
      note: inputs.note.value || null });
    await loadProtected();
  }));
  return form;
}

function regBoot() {
  for (const b of document.querySelectorAll(".tab")) {
    b.addEventListener("click", () => {
      if (["subjects", "leaves", "zones", "roster", "protected"].includes(b.dataset.view)) regShow(b.dataset.view);
      else for (const v of document.querySelectorAll(".reg-view")) v.hidden = true;
    });
  }
  $("#lang").addEventListener("click", () => {
    i18n.toggle();
    regLabels();
    if (reg.view === "subjects" && !$("#subject-view").hidden) showSubject(reg.subjectId);
    else if (reg.view) regShow(reg.view);
  });
  regLabels();
}
document.addEventListener("DOMContentLoaded", () => i18n.ready.then(regBoot));
