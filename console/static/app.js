// emfence console page. Plain JavaScript, no libraries, nothing loaded from elsewhere.
// Talks only to the JSON API of this server (docs/console-api.md).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const kid of kids) node.append(kid);
  return node;
};
const SVG_NS = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
};

const state = {
  session: null,          // {user, role, regions, all_regions, csrf_token, dispositions}
  alarms: new Map(),      // alarm_id -> alarm
  selected: null,         // alarm_id
  feed: null,             // EventSource
  lastSeq: 0,
  zones: null,            // GeoJSON FeatureCollection
  positions: [],
  track: null,            // {alarm_id, fixes, at}
  map: null,              // {map: Leaflet map, groups: layer name -> LayerGroup}
  fit: null,              // a fit waiting for the map to be shown: "all" | "track"
};

// ---------------------------------------------------------------- API
class ApiError extends Error {
  constructor(status, body) {
    super(errorText(status, body));
    this.status = status;
    this.code = body && body.error;
    this.field = body && body.field;  // the request field at fault, when the server names one
    this.body = body;
  }
}

// An error the server names by its code (error.bad_field ...), in the page's language;
// the server's own message only for a code the catalogue does not know.
function errorText(status, body) {
  const code = body && body.error;
  const key = `error.${code}`;
  if (code && i18n.t(key) !== key) {
    const needsField = i18n.t(key, { field: "\u0000" }).includes("\u0000");
    if (body.field || !needsField) return i18n.t(key, { field: body.field });
  }
  return (body && body.message) || i18n.t("error.http", { status: String(status) });
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf_token;
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    // Only a page that had a session can have lost it: the first visit's probe of
    // /api/session answers 401 too, and that is simply "not logged in yet".
    if (resp.status === 401 && path !== "/api/login" && state.session) showLogin("", "session.ended");
    throw new ApiError(resp.status, data);
  }
  return data;
}

// ---------------------------------------------------------------- formatting
// Times are in the command centre's zone with their UTC offset (time.js).
const msg = (key, params) => i18n.t(key, params);
const fmtTime = (ms) => zoneTime.full(ms);
const fmtShort = (ms) => zoneTime.short(ms);
const tzMark = () => zoneTime.mark();
function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return msg("dur.s", { s });
  if (s < 3600) return msg("dur.ms", { m: Math.floor(s / 60), s: s % 60 });
  return msg("dur.hm", { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
}
// An alarm type in the operator's words (越界, 人机分离 ...; static/i18n/), and whether it
// is a warning (approach: shown as 预警, no alarm sound) by the server's list.
const typeWord = (type) => i18n.term("atype", type);
const typeTitle = (type) => (isWarning(type) ? msg("alarm.type_warning", { type: typeWord(type), warning: typeWord("warning") }) : typeWord(type));
const isWarning = (type) =>
  Boolean(state.session && (state.session.warning_types || []).includes(type));
function fillTypeSelect(select, types) {
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: msg("filter.all") }));
  for (const type of types) select.append(el("option", { value: type, text: typeTitle(type) }));
  select.value = keep;
}
const deviceKindWord = (kind) => i18n.term("kind", kind);
// A region by its name, with the code for searching (卧龙区 411303); a zone by its name.
function regionName(code) {
  const names = (state.session && state.session.region_names) || {};
  return names[code] ? `${names[code]} ${code}` : String(code || "–");
}
function regionShort(code) {
  const names = (state.session && state.session.region_names) || {};
  return names[code] || String(code || "–");
}
function zoneName(zoneId) {
  if (!zoneId) return "–";
  const f = ((state.zones && state.zones.features) || []).find((z) => z.properties.zone_id === zoneId);
  const lib = ((state.zones && state.zones.library) || []).find((z) => z.zone_id === zoneId);
  const name = (f && f.properties.name) || (lib && lib.name) || (state.session && state.session.region_names || {})[zoneId];
  return name ? `${name} (${zoneId})` : zoneId;
}

// ---------------------------------------------------------------- sound
let audio = null;
function beep(escalated) {
  if (!$("#sound").checked) return;
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    const tones = escalated ? [880, 660, 880, 660] : [880, 1175];
    let t = audio.currentTime;
    for (const f of tones) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = f;
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.15, t + 0.01);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.16);
      osc.connect(gain).connect(audio.destination);
      osc.start(t);
      osc.stop(t + 0.18);
      t += 0.2;
    }
  } catch (e) { /* no audio device: the visual cue remains */ }
}

// ---------------------------------------------------------------- login / session
// `message`: a text to show (the server's); `key`: a catalogue message instead, in the
// login page's language.
function showLogin(message, key) {
  closeFeed();
  stopPositionRefresh();
  state.session = null;
  // The next person's login page speaks this browser's language, not the last account's.
  i18n.follow(null);
  $("#login-view").hidden = false;
  $("#alarms-view").hidden = true;
  $("#stats-view").hidden = true;
  for (const v of document.querySelectorAll(".reg-view")) v.hidden = true;
  $("#tabs").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#login-error").textContent = key ? msg(key) : message || "";
  $("#login-name").focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  $("#login-error").textContent = "";
  $("#login-submit").disabled = true;
  try {
    const s = await api("POST", "/api/login", {
      name: $("#login-name").value, password: $("#login-password").value,
    });
    $("#login-password").value = "";
    await start(s);
  } catch (e) {
    $("#login-error").textContent = e.message;
  } finally {
    $("#login-submit").disabled = false;
  }
}

async function onLogout() {
  // Nothing more may ask the server in this session's name: a map refresh sent after the
  // logout would only be refused (401).
  stopPositionRefresh();
  state.loggingOut = true;  // loadPositions asks nothing more
  try { await api("POST", "/api/logout"); } catch (e) { /* ended anyway */ }
  state.loggingOut = false;
  showLogin("", "session.logged_out");
}

function fillRegionSelect(select, regions) {
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: msg(state.session && state.session.all_regions ? "filter.all" : "filter.all_mine") }));
  for (const r of regions) select.append(el("option", { value: r, text: regionName(r) }));
  select.value = regions.includes(keep) ? keep : "";
}

// An admin's account lists no regions (it has them all): offer those the data shows.
function knownRegions() {
  if (!state.session.all_regions) return state.session.regions;
  const found = new Set();
  for (const a of state.alarms.values()) found.add(a.region);
  for (const f of (state.zones && state.zones.features) || []) for (const r of f.properties.regions) found.add(r);
  for (const p of state.positions) found.add(p.region);
  return [...found].sort();
}

function refreshRegionSelects() {
  fillRegionSelect($("#f-region"), knownRegions());
  fillRegionSelect($("#s-region"), knownRegions());
}

// The words this file writes outside the lists (the header's user, the time column).
function pageWords() {
  if (!state.session) return;
  $("#who").textContent = msg("app.who", { user: state.session.user, role: i18n.term("role", state.session.role) });
  $("#th-time").textContent = msg("alarms.col.time", { mark: tzMark() });
  $("#th-time").title = msg("alarms.times_in", { zone: zoneTime.zone() });
}

// The operator's own choice of language is kept for the account (PUT /api/session/lang),
// one request after another so the last choice is the one kept.
function keepLang(lang) {
  state.session.lang = lang;
  state.langSaved = (state.langSaved || Promise.resolve())
    .then(() => api("PUT", "/api/session/lang", { lang }))
    // Not kept (a 401 shows the login): the page keeps the choice; the button says why.
    .catch((e) => { if (state.session) $("#lang").title = e.message; });
}

// Another language chosen: everything this file drew is drawn again in it.
function onLangChange(ev) {
  if (!state.session) return;
  if (ev.detail && ev.detail.chosen) keepLang(ev.detail.lang);
  pageWords();
  refreshRegionSelects();
  fillTypeSelect($("#f-type"), state.session.alarm_types || []);
  setFeedState(Boolean(state.feed && state.feed.readyState === EventSource.OPEN));
  renderAlarms();
  if (state.selected) renderDetail(state.selected);
  drawMap();  // the map's hover texts
  if (!$("#stats-view").hidden) loadStats();
}

async function start(session) {
  // The account's language before anything is drawn (none chosen: the browser's).
  i18n.follow(session.lang);
  state.session = session;
  $("#login-view").hidden = true;
  $("#tabs").hidden = false;
  $("#logout").hidden = false;
  zoneTime.setZone(session.timezone || "UTC");
  basemap.configure(session.tiles);  // the base map (console.tiles) or none
  pageWords();
  $("#tab-stats").hidden = !(session.role === "supervisor" || session.role === "admin");
  fillRegionSelect($("#f-region"), session.regions);
  fillRegionSelect($("#s-region"), session.regions);
  fillTypeSelect($("#f-type"), session.alarm_types || []);
  regStart(session);  // register.js: the register's tabs for this role
  showView("board");  // the morning check's view (board.js)
  await Promise.all([loadAlarms(), loadMapData()]);
  if (session.all_regions) refreshRegionSelects();
  openLinkedAlarm();
}

// A notification's link (console.public_url + "#alarm=<alarm_id>", docs/notifications.md)
// opens that alarm's detail, after the login if there is one to do.
function openLinkedAlarm() {
  const m = /^#alarm=(.+)$/.exec(location.hash);
  if (!m || !state.session) return;
  showView("alarms");
  selectAlarm(decodeURIComponent(m[1]));
}
window.addEventListener("hashchange", openLinkedAlarm);

function showView(name) {
  $("#alarms-view").hidden = name !== "alarms";
  $("#stats-view").hidden = name !== "stats";
  $("#board-view").hidden = name !== "board";
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.view === name);
  if (name === "stats") loadStats();
  if (name === "alarms") drawMap();
  if (name === "board") board.show();  // board.js
}

// ---------------------------------------------------------------- alarm list + feed
function filters() {
  const q = new URLSearchParams();
  for (const [key, id] of [["region", "#f-region"], ["type", "#f-type"], ["state", "#f-state"]]) {
    const v = $(id).value;
    if (v) q.set(key, v);
  }
  return q;
}

function matchesFilters(a) {
  const f = filters();
  if (f.get("region") && a.region !== f.get("region")) return false;
  if (f.get("type") && a.type !== f.get("type")) return false;
  const st = f.get("state");
  if (st && a.workflow !== st && a.state !== st) return false;
  return true;
}

const PAGE = 500;

async function loadAlarms() {
  const q = filters();
  q.set("limit", String(PAGE));
  const data = await api("GET", `/api/alarms?${q}`);
  state.alarms = new Map(data.alarms.map((a) => [a.alarm_id, a]));
  $("#load-older").hidden = data.alarms.length < PAGE;
  renderAlarms();
  openFeed(data.seq);
}

async function loadOlder() {
  // The next page starts after the oldest alarm shown (stable while new ones arrive).
  const shown = sortedAlarms().filter((a) => matchesFilters(a) && !pinned(a));
  const last = shown[shown.length - 1];
  if (!last) return;
  const q = filters();
  q.set("limit", String(PAGE));
  q.set("before_ms", String(last.raised_at));
  q.set("before_id", last.alarm_id);
  const data = await api("GET", `/api/alarms?${q}`);
  for (const a of data.alarms) if (!state.alarms.has(a.alarm_id)) state.alarms.set(a.alarm_id, a);
  $("#load-older").hidden = data.alarms.length < PAGE;
  renderAlarms();
}

// A late alarm is listed by its fix time, which can be long before it arrived: one
// nobody has acknowledged yet stays pinned on top (newest arrival first) so it cannot
// sink under newer rows; once handled it takes its place by fix time.
const pinned = (a) => Boolean(a.late) && a.workflow === "new";
function sortedAlarms() {
  return [...state.alarms.values()].sort((a, b) =>
    (pinned(b) - pinned(a)) ||
    (pinned(a) ? ((b.recorded_at || 0) - (a.recorded_at || 0)) : 0) ||
    (b.raised_at - a.raised_at) || (a.alarm_id < b.alarm_id ? 1 : -1));
}

function alarmRow(a) {
  const tr = el("tr", { "data-alarm-id": a.alarm_id });
  tr.className = `w-${a.workflow}` + (isWarning(a.type) ? " warning" : "") + (pinned(a) ? " pinned" : "") + (a.escalated_at && a.workflow === "new" ? " escalated" : "") +
                 (a.alarm_id === state.selected ? " selected" : "");
  // An escalated alarm is a new one nobody took in time: "ESCALATED" says both.
  const escalated = a.escalated_at && a.workflow === "new";
  tr.append(
    el("td", { title: fmtTime(a.raised_at) }, fmtShort(a.raised_at), a.late ? el("span", { class: "late",
      text: msg("alarm.late"), title: msg("alarm.late_title", { at: fmtTime(a.recorded_at) }) }) : ""),
    el("td", {}, el("span", { class: `pill t-${a.type}` + (isWarning(a.type) ? " warning" : ""),
      text: typeWord(a.type), title: isWarning(a.type) ? typeWord("warning") : "" })),
    el("td", { text: a.subject_id }),
    // The device and its kind in words (腕带 / 手机): a subject's bracelet and phone are two rows.
    el("td", { class: "device", title: a.device_kind ? msg("alarm.device_kind", { device: a.device_id, kind: deviceKindWord(a.device_kind) }) : (a.device_id || "") },
      a.device_id || "–", a.device_kind ? el("span", { class: "kind", text: deviceKindWord(a.device_kind) }) : ""),
    el("td", { text: regionShort(a.region), title: regionName(a.region) }),
    el("td", { class: `s-${a.state}`, text: i18n.term("astate", a.state) }),
    escalated ? el("td", { class: "esc", text: msg("alarm.escalated") }) : el("td", { class: `w-${a.workflow}`, text: i18n.term("astate", a.workflow) }),
  );
  tr.tabIndex = 0;  // reachable and selectable from the keyboard too
  tr.addEventListener("click", () => selectAlarm(a.alarm_id));
  tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectAlarm(a.alarm_id); } });
  return tr;
}

// Feed events are coalesced into one redraw per animation frame.
const pendingFresh = new Set();
let renderQueued = false;
function scheduleRender(freshId) {
  if (freshId) pendingFresh.add(freshId);
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderAlarms(); });
}

function renderAlarms(freshId) {
  if (freshId) pendingFresh.add(freshId);
  const body = $("#alarm-rows");
  const rows = sortedAlarms().filter(matchesFilters);
  body.replaceChildren(...rows.map(alarmRow));
  $("#alarm-empty").hidden = rows.length > 0;
  for (const id of pendingFresh) {
    const tr = body.querySelector(`tr[data-alarm-id="${CSS.escape(id)}"]`);
    if (tr) tr.classList.add("fresh");
  }
  pendingFresh.clear();
  const escalated = rows.filter((a) => a.escalated_at && a.workflow === "new").length;
  // The tab's title counts alarms nobody has acknowledged, for a console in the background.
  const waiting = [...state.alarms.values()].filter((a) => a.workflow === "new").length;
  document.title = waiting ? msg("app.title_waiting", { n: waiting }) : msg("app.title");
  const banner = $("#banner");
  banner.hidden = escalated === 0;
  banner.textContent = escalated ? i18n.plural("alarms.banner", escalated) : "";
}

function closeFeed() {
  if (state.feed) state.feed.close();
  state.feed = null;
  setFeedState(false);
}

function setFeedState(on) {
  const s = $("#feed-state");
  // Logged out there is no feed to miss: the badge hides rather than say "offline".
  s.hidden = !state.session;
  s.textContent = msg(on ? "feed.live" : "feed.reconnecting");
  s.title = msg(on ? "feed.live_title" : "feed.down_title");
  s.className = `feed ${on ? "on" : "off"}`;
}

function openFeed(seq) {
  closeFeed();
  state.lastSeq = seq;
  // EventSource resends the last id it saw as Last-Event-ID when it reconnects.
  const es = new EventSource(`/api/feed?since=${encodeURIComponent(seq)}`);
  state.feed = es;
  es.onopen = () => setFeedState(true);
  es.onerror = () => {
    setFeedState(false);
    // EventSource retries by itself after a dropped connection, but gives up for good
    // on an HTTP error (e.g. 401 after the console restarted): find out why, then
    // either show the login or open a new feed from the last event seen.
    if (es.readyState === EventSource.CLOSED && state.feed === es) {
      setTimeout(async () => {
        if (state.feed !== es) return;
        try {
          await api("GET", "/api/session");
          openFeed(state.lastSeq);
        } catch (e) {
          if (!(e instanceof ApiError && e.status === 401) && state.feed === es) openFeed(state.lastSeq);
        }
      }, 2000);
    }
  };
  es.addEventListener("alarm", (msg) => onFeedEvent(JSON.parse(msg.data)));
  es.addEventListener("logout", () => showLogin("", "session.ended"));
}

// Apply one event of the log to the alarm it concerns. The feed carries the published
// event, so the list updates without asking the server again, even in an alarm storm.
function applyEvent(alarm, ev) {
  const d = ev.data || {};
  switch (ev.event) {
    case "cleared": alarm.state = "cleared"; alarm.cleared_at = d.at; break;
    case "escalated": alarm.escalated_at = d.at; alarm.escalated = true; break;
    case "acknowledged":
      if (alarm.workflow === "new") alarm.workflow = "acknowledged";
      alarm.acknowledged_by = d.by; alarm.acknowledged_at = d.at; break;
    case "closed":
      alarm.workflow = "closed"; alarm.closed_by = d.by; alarm.closed_at = d.at;
      alarm.disposition = d.disposition; break;
    default: break;
  }
  return alarm;
}

const EVENT_KEYS = new Set(["event", "alarm_id", "type", "subject_id", "device_id", "zone_id", "region", "at", "late"]);
function alarmFromRaised(ev) {
  const d = ev.data;
  const evidence = {};
  for (const [k, v] of Object.entries(d)) if (!EVENT_KEYS.has(k)) evidence[k] = v;
  return {
    alarm_id: d.alarm_id, type: d.type, subject_id: d.subject_id, device_id: d.device_id,
    zone_id: d.zone_id, region: d.region, raised_at: d.at, recorded_at: ev.created_at,
    cleared_at: null, state: "active", workflow: "new", late: d.late, evidence,
    escalated_at: null, escalated: false,
  };
}

let lastBeep = 0;
function cue(escalated) {
  // One beep per second at most: an alarm storm must not become a siren.
  const now = Date.now();
  if (now - lastBeep < 1000) return;
  lastBeep = now;
  beep(escalated);
}

let positionsTimer = null;
function refreshPositionsSoon() {
  if (positionsTimer) return;
  positionsTimer = setTimeout(() => { positionsTimer = null; loadPositions(); }, 2000);
}
function stopPositionRefresh() {
  if (positionsTimer) clearTimeout(positionsTimer);
  positionsTimer = null;
}

async function onFeedEvent(ev) {
  state.lastSeq = Math.max(state.lastSeq, ev.seq);
  board.onFeed();  // board.js: re-read the status board (debounced) from this one feed
  let alarm = state.alarms.get(ev.alarm_id);
  const isNew = ev.event === "raised" && !alarm;
  if (isNew) {
    alarm = alarmFromRaised(ev);
  } else if (!alarm) {
    // An event about an alarm this page has not loaded (older than the list): fetch it.
    try {
      alarm = (await api("GET", `/api/alarms/${encodeURIComponent(ev.alarm_id)}`)).alarm;
    } catch (e) {
      return;
    }
  } else {
    const before = JSON.stringify(alarm);
    applyEvent(alarm, ev);
    // Our own acknowledge/close comes back through the feed: nothing to redraw then.
    if (JSON.stringify(alarm) === before) return;
  }
  state.alarms.set(alarm.alarm_id, alarm);
  scheduleRender(isNew ? alarm.alarm_id : null);
  if (isNew && matchesFilters(alarm) && !isWarning(alarm.type)) cue(false);
  if (ev.event === "escalated" && alarm.workflow === "new") cue(true);
  if (alarm.alarm_id === state.selected) renderDetail(alarm.alarm_id);
  if (ev.event === "raised" || ev.event === "cleared") refreshPositionsSoon();
}

// ---------------------------------------------------------------- detail
async function selectAlarm(id) {
  state.selected = id;
  renderAlarms();
  await renderDetail(id);
  await loadTrack(id);
}

async function renderDetail(id) {
  const box = $("#detail");
  let data;
  try {
    data = await api("GET", `/api/alarms/${encodeURIComponent(id)}`);
  } catch (e) {
    box.textContent = e.message;
    return;
  }
  const a = data.alarm;
  state.alarms.set(a.alarm_id, a);
  const frag = $("#detail-template").content.cloneNode(true);
  i18n.apply(frag);
  $(".d-title", frag).textContent = `${typeTitle(a.type)} · ${a.subject_id}`;
  const fields = detailFields(a);
  const ev = a.evidence || {};
  if (ev.lat !== undefined && ev.lat !== null) {
    fields.push([msg("field.position_wgs"), `${(+ev.lat).toFixed(6)}, ${(+ev.lon).toFixed(6)}` + (ev.acc ? ` ±${i18n.dist(ev.acc)}` : "")]);
    // Chinese map services use GCJ-02: the WGS-84 figures pasted there land ~500 m off.
    if (data.position_gcj02) fields.push([msg("field.position_gcj"), `${data.position_gcj02.lat.toFixed(6)}, ${data.position_gcj02.lon.toFixed(6)}`]);
  }
  if (ev.distance_m !== undefined && ev.distance_m !== null) fields.push([msg("field.distance"), i18n.dist(ev.distance_m)]);
  for (const [k, v] of Object.entries(ev)) {
    if (EVIDENCE_SHOWN.has(k) || v === null || v === undefined) continue;
    fields.push([word("ev", k), evidenceValue(k, v)]);
  }
  if (a.disposition) fields.push([msg("field.disposition"), i18n.term("disp", a.disposition)]);
  const dl = $(".d-fields", frag);
  for (const [k, v] of fields) dl.append(el("dt", { text: k }), el("dd", { text: v }));

  const ackForm = $(".ack-form", frag);
  const closeForm = $(".close-form", frag);
  const err = $(".d-error", frag);
  const disp = $(".close-disp", frag);
  disp.append(el("option", { value: "", text: msg("detail.choose") }));
  for (const d of state.session.dispositions) disp.append(el("option", { value: d, text: i18n.term("disp", d) }));
  ackForm.hidden = a.workflow !== "new";
  closeForm.hidden = a.workflow !== "acknowledged";
  ackForm.addEventListener("submit", (e) => act(e, a.alarm_id, "acknowledge",
    { note: $(".ack-note", ackForm).value }, err));
  closeForm.addEventListener("submit", (e) => act(e, a.alarm_id, "close",
    { disposition: disp.value, note: $(".close-note", closeForm).value }, err));
  const noteForm = $(".note-form", frag);
  noteForm.addEventListener("submit", (e) => act(e, a.alarm_id, "note",
    { note: $(".note-text", noteForm).value }, err));

  const hist = $(".d-history", frag);
  // One history in time order: the condition clearing may fall between two actions.
  const entries = [[a.raised_at, 0, msg("history.raised")]];
  data.actions.forEach((x, i) => {
    let text = msg("history.by", { what: i18n.term("action", x.what), who: x.who });
    if (x.disposition) text += ` · ${i18n.term("disp", x.disposition)}`;
    if (x.note) text += ` · “${x.note}”`;
    entries.push([x.at, 1 + i, text]);
  });
  if (a.cleared_at) entries.push([a.cleared_at, 1e9, msg("history.cleared")]);
  entries.sort((x, y) => (x[0] - y[0]) || (x[1] - y[1]));
  for (const [at, , text] of entries) hist.append(el("li", { text: `${fmtTime(at)} ${text}` }));
  renderNotifications($(".d-notify-title", frag), $(".d-notify", frag), data.notifications || []);
  $(".d-title", frag).after(el("a", { class: "evidence-link", download: "",
    href: `/api/alarms/${encodeURIComponent(a.alarm_id)}/evidence.zip`, text: msg("detail.evidence") }));
  if (a.device_id && typeof deviceCommands !== "undefined") $(".d-history", frag).after(deviceCommands.panel(a.device_id));
  // A feed event may redraw the alarm the operator is typing about: keep what they
  // typed and where the cursor was.
  const kept = box.dataset.alarmId === a.alarm_id ? FORM_FIELDS.map((sel) => {
    const node = $(sel, box);
    return node ? [sel, node.value, node === document.activeElement] : null;
  }).filter(Boolean) : [];
  box.className = "";
  box.replaceChildren(frag);
  box.dataset.alarmId = a.alarm_id;
  for (const [sel, value, focused] of kept) {
    const node = $(sel, box);
    node.value = value;
    if (focused) node.focus();
  }
}
const FORM_FIELDS = [".ack-note", ".close-disp", ".close-note", ".note-text"];

// The alarm's fields before its evidence: [label, value] in the page's language.
function detailFields(a) {
  const term = (v) => i18n.term("astate", v);
  return [
    [msg("field.alarm"), a.alarm_id], [msg("field.region"), regionName(a.region)],
    [msg("field.device"), a.device_id], [msg("field.zone"), zoneName(a.zone_id)],
    [msg("field.raised"), fmtTime(a.raised_at) + (a.late ? msg("field.late", { at: fmtTime(a.recorded_at) }) : "")],
    [msg("field.condition"), a.cleared_at ? msg("field.cleared_at", { state: term(a.state), at: fmtTime(a.cleared_at) }) : term(a.state)],
    [msg("field.handling"), term(a.workflow) + (a.escalated_at ? msg("field.escalated_at", { at: fmtTime(a.escalated_at) }) : "")],
  ];
}

// The catalogue's word for a group's value ("nstate", "sent"), or the value itself.
const word = (group, v) => i18n.term(group, v);
// Evidence keys the fields above already show; the others (battery_pct, devices ...) follow.
const EVIDENCE_SHOWN = new Set(["lat", "lon", "acc", "distance_m"]);
function evidenceValue(key, v) {
  if (key.endsWith("_ms")) return fmtTime(v);
  if (key === "battery_pct") return i18n.pct(v / 100, 0);
  if (key === "strap") return word("strap", v);
  return Array.isArray(v) ? v.join(", ") : String(v);
}
// Who was told what: each notification of the alarm (channel, recipient, level, state).
function renderNotifications(title, table, rows) {
  title.textContent = word("notify", "title");
  if (!rows.length) {
    table.replaceWith(el("p", { class: "muted d-notify-none", text: word("notify", "none") }));
    return;
  }
  const head = el("tr", {}, ...["time", "channel", "recipient", "level", "state", "attempts", "error"]
    .map((k) => el("th", { text: word("notify", k) })));
  table.append(head);
  for (const n of rows) {
    const st = n.state === "pending" && n.attempts > 0 ? "retrying" : n.state;
    table.append(el("tr", { class: `n-${st}`, "data-delivery-id": n.delivery_id },
      el("td", { text: fmtShort(n.sent_at || n.created_at), title: fmtTime(n.sent_at || n.created_at) }),
      el("td", { text: `${word("nchan", n.channel)} · ${word("nevent", n.event)}` }),
      el("td", { text: n.recipient }),
      el("td", { text: String(n.level) }),
      el("td", { class: "n-state", text: word("nstate", st) }),
      el("td", { text: String(n.attempts) }),
      el("td", { class: "muted", text: n.last_error || "" })));
  }
}

async function act(ev, id, verb, body, errBox) {
  ev.preventDefault();
  errBox.textContent = "";
  if (verb === "close" && !body.disposition) {
    errBox.textContent = msg("detail.need_disposition");
    return;
  }
  if (verb === "note" && !body.note.trim()) {
    errBox.textContent = msg("detail.need_note");
    return;
  }
  const btn = ev.submitter || ev.target.querySelector("button");
  btn.disabled = true;
  try {
    const data = await api("POST", `/api/alarms/${encodeURIComponent(id)}/${verb}`, body);
    state.alarms.set(id, data.alarm);
    renderAlarms();
    await renderDetail(id);
  } catch (e) {
    errBox.textContent = e.message;
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------- map
// A Leaflet map (basemap.js): the tile server of console.tiles under it, or the offline
// boundary-only view. Layers, each shown or hidden from the legend: inclusion,
// exclusion and leave zones, devices (last positions), the selected alarm's track and
// its alarm point. Every coordinate received is WGS-84; basemap.ll puts it in the
// tiles' datum.
const LAYERS = ["inclusion", "exclusion", "leave", "device", "track", "alarm_point"];
const PANE = { inclusion: "zones", exclusion: "zones", leave: "zones", device: "devices",
  track: "track", alarm_point: "alarms" };

async function loadMapData() {
  try {
    state.zones = await api("GET", "/api/zones");
  } catch (e) {
    state.zones = { type: "FeatureCollection", features: [] };
  }
  await loadPositions();
  fitAll();
}

async function loadPositions() {
  if (!state.session || state.loggingOut) return;  // logged out meanwhile
  try {
    state.positions = (await api("GET", "/api/positions")).positions;
  } catch (e) {
    state.positions = [];
  }
  drawMap();
}

async function loadTrack(id) {
  try {
    const t = await api("GET", `/api/alarms/${encodeURIComponent(id)}/track`);
    state.track = t;
  } catch (e) {
    state.track = null;
  }
  fitTrack();
}

function eachCoord(geom, fn) {
  const walk = (c) => (typeof c[0] === "number" ? fn(c[0], c[1]) : c.forEach(walk));
  if (geom && geom.coordinates) walk(geom.coordinates);
}

// The alarms view's map, made the first time the view is shown (Leaflet measures its
// box); its layer groups are emptied and refilled by drawMap.
function mapNow() {
  if (state.map || $("#alarms-view").hidden) return state.map;
  const map = basemap.create($("#map"));
  const groups = {};
  for (const name of LAYERS) groups[name] = L.layerGroup().addTo(map);
  state.map = { map, groups };
  return state.map;
}

// Fit the view now if the map is shown, else once it is ("all" or "track").
function fitAll() { state.fit = "all"; drawMap(); }
function fitTrack() { state.fit = "track"; drawMap(); }

function applyFit(map) {
  const pts = [];
  if (state.fit === "track") {
    const t = state.track;
    if (t) for (const f of t.fixes) pts.push([f.lon, f.lat]);
    const a = state.alarms.get(state.selected);
    if (a && a.evidence && a.evidence.lat !== undefined && a.evidence.lat !== null) pts.push([a.evidence.lon, a.evidence.lat]);
  } else {
    for (const f of (state.zones && state.zones.features) || []) eachCoord(f.geometry, (x, y) => pts.push([x, y]));
    for (const p of state.positions) pts.push([p.lon, p.lat]);
  }
  basemap.fit(map, pts, state.fit === "track" ? 17 : 15);
  state.fit = null;
}

function drawMap() {
  const m = mapNow();
  if (!m || $("#alarms-view").hidden) return;
  m.map.invalidateSize(false);
  if (state.fit) applyFit(m.map);
  for (const g of Object.values(m.groups)) g.clearLayers();
  drawZones(m.groups);
  drawDevices(m.groups.device);
  drawTrack(m.groups);
}

function drawZones(groups) {
  const sel = state.alarms.get(state.selected);
  for (const f of (state.zones && state.zones.features) || []) {
    // With an alarm selected, only its subject's zones; a leave zone (one subject's
    // permitted trip) only for its subject, never over everyone's map.
    const users = f.properties.subjects || [];
    if (sel ? users.length && !users.includes(sel.subject_id) : f.properties.kind === "leave") continue;
    const kind = f.properties.kind;
    const style = { pane: PANE[kind] || "zones", className: `zone-${kind}` };
    const c = f.properties.circle;
    // A circle zone is drawn exactly: its centre and radius in metres.
    const layer = c ? L.circle(basemap.ll(c[1], c[0]), { ...style, radius: c[2] })
      : L.polygon(basemap.rings(f.geometry), style);
    (groups[kind] || groups.inclusion).addLayer(layer);
    basemap.mark(layer, { "data-zone-id": f.properties.zone_id, ...(c ? { "data-radius-m": String(c[2]) } : {}) });
    basemap.title(layer, msg("map.zone_title", { kind: i18n.term("map", kind), zone: zoneName(f.properties.zone_id) }));
  }
}

function drawDevices(group) {
  const alarmDevices = new Set([...state.alarms.values()].filter((a) => a.state === "active").map((a) => a.device_id));
  for (const pos of state.positions) {
    const dot = L.circleMarker(basemap.ll(pos.lat, pos.lon), { pane: "devices", radius: 4,
      className: "device" + (alarmDevices.has(pos.device_id) ? " alarm" : "") });
    group.addLayer(dot);
    basemap.mark(dot, { "data-device": pos.device_id });
    basemap.title(dot, `${pos.device_id} (${pos.subject_id || "?"}) ${fmtTime(pos.ts)}`);
  }
}

function drawTrack(groups) {
  const t = state.track;
  if (t && t.alarm_id === state.selected && t.fixes.length) {
    // One line per device: a subject's bracelet and phone each leave their own track.
    const byDevice = new Map();
    for (const f of t.fixes) {
      if (!byDevice.has(f.device_id)) byDevice.set(f.device_id, []);
      byDevice.get(f.device_id).push(f);
    }
    for (const [device, fixes] of byDevice) {
      const line = L.polyline(fixes.map((f) => basemap.ll(f.lat, f.lon)),
        { pane: "track", className: device === t.device_id ? "track" : "track other" });
      groups.track.addLayer(line);
      for (const f of fixes) {
        const dot = L.circleMarker(basemap.ll(f.lat, f.lon), { pane: "track", radius: 2.5, className: "fix" });
        groups.track.addLayer(dot);
        basemap.title(dot, `${f.device_id} ${fmtTime(f.ts)} ±${i18n.dist(f.acc || 0)}`);
      }
    }
  }
  const a = state.alarms.get(state.selected);
  if (a && a.evidence && a.evidence.lat !== undefined && a.evidence.lat !== null) {
    const point = L.circleMarker(basemap.ll(a.evidence.lat, a.evidence.lon), { pane: "alarms", radius: 7,
      className: "alarm-point" });
    groups.alarm_point.addLayer(point);
    basemap.title(point, msg("map.alarm_point_title", { type: i18n.term("atype", a.type) }));
  }
}

// The legend: one checkbox per layer (shown / hidden), then the fit button.
function setupMapControls() {
  for (const box of document.querySelectorAll("#map-legend input[data-layer]")) {
    box.addEventListener("change", () => {
      const m = state.map;
      if (!m) return;
      const g = m.groups[box.dataset.layer];
      // drawn again when shown: hover texts are set on drawn elements only
      if (box.checked) { m.map.addLayer(g); drawMap(); } else m.map.removeLayer(g);
    });
  }
  $("#map-fit").addEventListener("click", () => (state.selected ? fitTrack() : fitAll()));
  window.addEventListener("resize", () => { if (state.map) state.map.map.invalidateSize(false); });
}

// ---------------------------------------------------------------- supervisor view

// The alarm register (登记备案) of the region and period shown, as CSV and PDF: the
// server wants one region, so the links wait until one is chosen.
function registerLinks(q) {
  const lang = i18n.lang() === "en" ? "en" : "zh";
  const one = Boolean(q.get("region"));
  for (const fmt of ["csv", "pdf"]) {
    const a = $(`#s-register-${fmt}`);
    a.hidden = !one;
    if (one) a.href = `/api/reports/alarms.${fmt}?${q}&lang=${lang}`;
  }
  $("#s-register-hint").hidden = one;
}

async function loadStats(ev) {
  if (ev) ev.preventDefault();
  const body = $("#stats-body");
  // Days are the command centre's (console.timezone), whatever the browser's zone is,
  // shown "YYYY-MM-DD" whatever its locale (datetime.js).
  const fromInput = $("#s-from");
  const toInput = $("#s-to");
  if (!fromInput.dtPicker) {
    dateTime.upgrade(fromInput, { kind: "date", field: "from_ms", param: true });
    dateTime.upgrade(toInput, { kind: "date", field: "to_ms", param: true });
  }
  let from;
  let to;
  try {
    if (!toInput.value) dateTime.write(toInput, Date.now());
    // to_ms is exclusive: the midnight after the last day shown. The server counts days
    // in the same zone.
    to = dateTime.read(toInput, 1);
    if (!fromInput.value) dateTime.write(fromInput, dateTime.read(toInput, -29));
    from = dateTime.read(fromInput);
  } catch (e) {
    body.replaceChildren(el("p", { class: "error", text: `${e.message} [${e.field}]` }));
    return;
  }
  const q = new URLSearchParams({ from_ms: from, to_ms: to });
  if ($("#s-region").value) q.set("region", $("#s-region").value);
  registerLinks(q);
  let s;
  try {
    s = await api("GET", `/api/stats?${q}`);
  } catch (e) {
    body.replaceChildren(el("p", { class: "error", text: e.message }));
    return;
  }
  const card = (title, ...kids) => el("div", { class: "card" }, el("h2", { text: title }), ...kids);
  const table = (heads, rows) => {
    const t = el("table");
    t.append(el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", { text: h ? msg(`stats.${h}`) : "", class: h === "alarms" ? "num" : "" })))));
    const tb = el("tbody");
    for (const r of rows) tb.append(el("tr", {}, ...r.map((c) => (c instanceof Node ? el("td", { class: "barcell" }, c) : el("td", { text: c })))));
    t.append(tb);
    return t;
  };
  // Widths through CSSOM: the page's CSP forbids inline style attributes.
  const bar = (n, max, cls = "") => {
    const b = el("span", { class: `bar ${cls}` });
    // A share of its cell, so a long label beside it cannot push it out of the card.
    b.style.width = `${Math.round(100 * n / Math.max(max, 1))}%`;
    return b;
  };
  const maxOf = (rows) => Math.max(1, ...rows.map((r) => r.count));

  const overview = card(msg("stats.overview"),
    el("div", { class: "big", text: i18n.num(s.total) }), el("div", { class: "muted", text: msg("stats.raised") }),
    table(["measure", "value"], [
      [msg("stats.median_ack"), fmtDuration(s.median_ack_ms)],
      [msg("stats.median_close"), fmtDuration(s.median_close_ms)],
      [msg("stats.acknowledged"), i18n.num(s.acknowledged)], [msg("stats.closed"), i18n.num(s.closed)],
      [msg("stats.false_share"), s.false_alarm_share === null ? "–" : i18n.pct(s.false_alarm_share)],
    ]));
  const entries = (obj, key) => Object.entries(obj).map(([k, count]) => ({ [key]: k, count }));
  const perRegion = entries(s.by_region, "region");
  const perType = entries(s.by_type, "type");
  const perDay = entries(s.by_day, "day");
  const falseSet = new Set(s.false_alarm_dispositions);
  const perDisp = entries(s.dispositions, "disposition").filter((r) => r.count > 0);
  const mr = maxOf(perRegion), mt = maxOf(perType), md = maxOf(perDay), mdisp = maxOf(perDisp);
  const byRegion = card(msg("stats.per_region"), table(["region", "alarms", ""],
    perRegion.map((r) => [regionName(r.region), i18n.num(r.count), bar(r.count, mr)])));
  const byType = card(msg("stats.per_type"), table(["type", "alarms", ""],
    perType.map((r) => [typeWord(r.type), i18n.num(r.count), bar(r.count, mt)])));
  // The days are the server's, counted in the zone it names (console.timezone).
  const offMin = Math.round((s.day_offset_ms || 0) / 60000);
  const dayZone = `${s.timezone || "UTC"}, UTC${offMin < 0 ? "-" : "+"}` +
    `${String(Math.floor(Math.abs(offMin) / 60)).padStart(2, "0")}:${String(Math.abs(offMin) % 60).padStart(2, "0")}`;
  const byDay = card(msg("stats.per_day", { zone: dayZone }), table(["day", "alarms", ""],
    perDay.map((r) => [r.day, i18n.num(r.count), bar(r.count, md)])));
  const byDisp = card(msg("stats.by_disposition"), table(["disposition", "alarms", ""],
    perDisp.map((r) => [i18n.term("disp", r.disposition) + (falseSet.has(r.disposition) ? msg("stats.false_alarm") : ""),
      i18n.num(r.count), bar(r.count, mdisp, falseSet.has(r.disposition) ? "false" : "")])));
  const detail = card(msg("stats.detail", { zone: dayZone }), table(["day", "region", "type", "alarms"],
    s.counts.map((r) => [r.day, regionName(r.region), typeWord(r.type), i18n.num(r.count)])));
  let trail = [];
  try {
    trail = (await api("GET", "/api/audit?limit=50")).rows;
  } catch (e) { /* shown as empty */ }
  const describe = (r) => {
    const d = r.detail || {};
    return [d.disposition && i18n.term("disp", d.disposition), d.note && `“${d.note}”`,
      d.action && msg("stats.tried", { action: d.action }), d.region].filter(Boolean).join(" · ");
  };
  const audit = card(msg("stats.audit", { n: 50 }), table(["time", "who", "action", "target", "detail_col"],
    // The action in the reader's words (audit.action.* of the catalogues); an action
    // without words there shows its code.
    trail.map((r) => [fmtTime(r.at), r.who || "–", i18n.term("audit.action", r.action),
      r.target || "", describe(r)])));
  audit.classList.add("wide");
  // Notification delivery now: failed and retrying ones are the supervisor's to chase.
  const nc = s.notifications || {};
  const notify = card(word("stats", "notify"), table(["state_col", "value"],
    ["failed", "retrying", "pending", "sent", "summarized"].map((k) => [word("nstate", k), i18n.num(nc[k] || 0)])));
  notify.classList.add("notify-card");
  if ((nc.failed || 0) + (nc.retrying || 0) > 0) notify.classList.add("attention");
  body.replaceChildren(overview, notify, byRegion, byType, byDay, byDisp, detail, audit);
}

// ---------------------------------------------------------------- boot
async function boot() {
  // The session is asked for while the language catalogue loads (two round trips at once).
  const session = api("GET", "/api/session");
  session.catch(() => {});  // answered below, after the catalogue
  await i18n.ready;
  i18n.apply(document);
  document.addEventListener("langchange", onLangChange);
  $("#login-form").addEventListener("submit", onLogin);
  $("#logout").addEventListener("click", onLogout);
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showView(b.dataset.view));
  for (const id of ["#f-region", "#f-type", "#f-state"]) $(id).addEventListener("change", () => loadAlarms());
  $("#stats-form").addEventListener("submit", loadStats);
  $("#load-older").addEventListener("click", loadOlder);
  setupMapControls();
  // While an escalated alarm waits for someone, remind the room once a minute.
  setInterval(() => {
    if (!state.session) return;
    const waiting = [...state.alarms.values()].some((a) => a.escalated_at && a.workflow === "new");
    if (waiting) cue(true);
  }, 60000);
  try {
    const s = await session;
    await start(s);
  } catch (e) {
    // The session may have failed before the catalogue was loaded: its words are taken
    // again now, in the page's language.
    showLogin(e instanceof ApiError && e.status === 401 ? ""
      : e instanceof ApiError ? errorText(e.status, e.body) : e.message);
  }
}

document.addEventListener("DOMContentLoaded", boot);
