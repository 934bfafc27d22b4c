// The status board (issue #16; docs/console-api.md, "The status board"): every subject
// of the caller's regions in one virtualised list — only the rows in view (plus a few)
// are in the DOM, each ROW_H pixels high, in one scroll container. Re-fetched (debounced)
// when the page's one live feed (app.js) delivers an alarm event: no poller of its own.
"use strict";

const board = (() => {
  const ROW_H = 32;
  const OVERSCAN = 8;
  const COLS = [["name", "col.name"], ["level", "col.level"], ["officer", "col.officer"],
    ["region", "col.region"], [null, "board.col.online"], ["last_fix", "board.col.last_fix"],
    ["battery", "board.col.battery"], [null, "board.col.strap"], ["zone_state", "board.col.zone"],
    ["open_alarms", "board.col.alarms"]];
  const STATES = ["inside", "outside", "on_leave", "curfew", "unknown", "offline", "alarm"];
  let rows = [];
  let nowMs = Date.now();
  let sort = "name";
  let refetchTimer = null;
  let typing = null;
  let loaded = false;

  const visible = () => !$("#board-view").hidden;

  function ago(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = Math.max(0, Math.round((nowMs - ms) / 1000));
    if (s < 60) return msg("board.ago.s", { n: s });
    if (s < 3600) return msg("board.ago.m", { n: Math.floor(s / 60) });
    if (s < 86400) return msg("board.ago.h", { n: Math.floor(s / 3600) });
    return msg("board.ago.d", { n: Math.floor(s / 86400) });
  }

  function newest(r, key) {
    const v = r.devices.map((d) => d[key]).filter((x) => x !== null && x !== undefined);
    return v.length ? Math.max(...v) : null;
  }

  function online(r) {
    if (r.devices.some((d) => d.online === false)) return ["board.offline", "bad"];
    if (r.devices.some((d) => d.online === true)) return ["board.online", "good"];
    return ["board.never", ""];
  }

  function battery(r) {
    const v = r.devices.map((d) => d.battery_pct).filter((x) => x !== null && x !== undefined);
    return v.length ? `${Math.round(Math.min(...v))}%` : "–";
  }

  function strap(r) {
    if (r.devices.some((d) => d.strap === "open")) return ["board.strap.open", "bad"];
    if (r.devices.some((d) => d.strap === "ok")) return ["board.strap.ok", ""];
    return [null, ""];
  }

  function rowElement(r, i) {
    const [onKey, onClass] = online(r);
    const [strapKey, strapClass] = strap(r);
    const alarms = r.open_alarms ? `${r.open_alarms} · ${msg(`atype.${r.top_alarm}`)}` : "0";
    const cells = [r.name, msg(`level.${r.level}`), r.officer || "–", regionName(r.region),
      [msg(onKey), onClass], ago(newest(r, "last_fix_ts_ms")), battery(r),
      [strapKey ? msg(strapKey) : "–", strapClass], msg(`board.state.${r.zone_state}`),
      [alarms, r.open_alarms ? "bad" : ""]];
    const div = el("div", { class: "board-row", "data-subject-id": r.subject_id });
    div.style.top = `${i * ROW_H}px`;
    for (const c of cells) {
      const [text, cls] = Array.isArray(c) ? c : [c, ""];
      div.append(el("span", { class: cls, text }));
    }
    return div;
  }

  function draw() {
    const scroller = $("#board-scroll");
    const first = Math.max(0, Math.floor(scroller.scrollTop / ROW_H) - OVERSCAN);
    const last = Math.min(rows.length, Math.ceil((scroller.scrollTop + scroller.clientHeight) / ROW_H) + OVERSCAN);
    const body = $("#board-rows");
    body.style.height = `${rows.length * ROW_H}px`;
    const out = [];
    for (let i = first; i < last; i++) out.push(rowElement(rows[i], i));
    body.replaceChildren(...out);
  }

  function header() {
    const head = $("#board-head");
    head.replaceChildren(...COLS.map(([key, label]) => {
      const mark = key && sort.replace("-", "") === key ? (sort.startsWith("-") ? " ▼" : " ▲") : "";
      const span = el("span", { class: key ? "sortable" : "", text: msg(label) + mark });
      if (key) span.addEventListener("click", () => {
        sort = sort === key ? `-${key}` : key;
        load();
      });
      return span;
    }));
  }

  function labels() {
    $("#tab-board").textContent = msg("tab.board");
    $("#board-q").placeholder = msg("board.search");
    fillRegionSelect($("#board-region"), state.session ? state.session.regions : []);
    const lv = $("#board-level"), keepLv = lv.value;
    lv.replaceChildren(el("option", { value: "", text: msg("filter.all") }),
      ...["strict", "ordinary", "lenient"].map((v) => el("option", { value: v, text: msg(`level.${v}`) })));
    lv.value = keepLv;
    const st = $("#board-state"), keepSt = st.value;
    st.replaceChildren(el("option", { value: "", text: msg("filter.all") }),
      ...STATES.map((v) => el("option", { value: v, text: msg(`board.state.${v}`) })));
    st.value = keepSt;
    header();
    $("#board-count").textContent = msg("board.count", { n: rows.length });
  }

  async function load() {
    const q = new URLSearchParams({ sort });
    for (const [key, id] of [["region", "#board-region"], ["level", "#board-level"],
      ["state", "#board-state"], ["q", "#board-q"]]) {
      const v = $(id).value.trim();
      if (v) q.set(key, v);
    }
    const err = $("#board-error");
    try {
      const body = await api("GET", `/api/board?${q}`);
      rows = body.subjects;
      nowMs = body.now_ms;
      err.textContent = "";
    } catch (e) {
      err.textContent = e.message;
      return;
    }
    loaded = true;
    labels();
    draw();
  }

  function show() {
    labels();
    if (loaded) draw();
    load();
  }

  // An alarm event of the page's live feed: the board is re-read once things settle.
  function onFeed() {
    if (!visible()) {
      loaded = false;
      return;
    }
    clearTimeout(refetchTimer);
    refetchTimer = setTimeout(load, 1500);
  }

  function boot() {
    $("#board-scroll").addEventListener("scroll", () => requestAnimationFrame(draw));
    window.addEventListener("resize", () => visible() && draw());
    for (const id of ["#board-region", "#board-level", "#board-state"]) $(id).addEventListener("change", load);
    $("#board-q").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(load, 300);
    });
    $("#board-rows").addEventListener("click", (ev) => {
      const row = ev.target.closest(".board-row");
      if (!row) return;
      showView("subjects");
      showSubject(row.dataset.subjectId);  // register.js
    });
    document.addEventListener("langchange", () => visible() && (labels(), draw()));
    $("#lang").addEventListener("click", () => visible() && (labels(), draw()));
  }
  document.addEventListener("DOMContentLoaded", () => i18n.ready.then(boot));
  return { show, onFeed, labels };
})();
