// emfence console: track playback on a subject's page (轨迹回放). Any window (two
// date-times read in the command centre's zone, at most 48 h by default), the fixes of
// all the subject's devices from GET /api/subjects/{id}/track (each view audited), drawn
// on a Leaflet map (basemap.js: the console.tiles base map, or the boundary-only view):
// one line per device, broken where the device was silent (a gap is drawn as a gap),
// points coloured by accuracy, late fixes (sent from the device's buffer) ringed; a
// timeline with play, pause and speed in event time.
// Words from the page's catalogues (keys play.*); times from time.js; el from app.js.
"use strict";

const trackPlayback = (() => {
  const t = (key, params) => i18n.t(`play.${key}`, params);
  const LATE_MS = 60_000;  // a fix received more than a minute after its ts came late
  const MIN_GAP_MS = 600_000;  // silent at least 10 min (or 5 reporting intervals): a gap
  const SPEEDS = [1, 10, 60, 600];
  const accClass = (acc) => (acc <= 20 ? "acc-good" : acc <= 100 ? "acc-fair" : "acc-poor");

  // Per device, its fixes in ts order cut into runs wherever it fell silent.
  function runsOf(fixes) {
    const byDevice = new Map();
    for (const f of fixes) {
      if (!byDevice.has(f.device_id)) byDevice.set(f.device_id, []);
      byDevice.get(f.device_id).push(f);
    }
    const runs = [];
    let gaps = 0;
    for (const list of byDevice.values()) {
      list.sort((a, b) => a.ts - b.ts);
      const steps = list.slice(1).map((f, i) => f.ts - list[i].ts).sort((a, b) => a - b);
      const typical = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
      const gapMs = Math.max(MIN_GAP_MS, 5 * typical);
      let run = [list[0]];
      for (let i = 1; i < list.length; i++) {
        if (list[i].ts - list[i - 1].ts > gapMs) { runs.push(run); run = []; gaps += 1; }
        run.push(list[i]);
      }
      runs.push(run);
    }
    return { runs, gaps };
  }

  // Draw the fixes on `map` (a Leaflet map) in `group`, which is emptied first.
  function draw(map, group, fixes) {
    group.clearLayers();
    const { runs, gaps } = runsOf(fixes);
    const at = (f) => basemap.ll(f.lat, f.lon);
    for (const run of runs) {
      if (run.length > 1) {
        const line = L.polyline(run.map(at), { pane: "track", className: "pb-line" });
        group.addLayer(line);
        basemap.mark(line, { "data-device": run[0].device_id });
      }
    }
    for (const f of fixes) {
      const late = f.delay_ms !== null && f.delay_ms > LATE_MS;
      const dot = L.circleMarker(at(f), { pane: "devices", radius: late ? 4.5 : 3,
        className: `pb-fix ${accClass(f.acc)}${late ? " pb-late" : ""}` });
      group.addLayer(dot);
      basemap.title(dot, `${f.device_id} ${zoneTime.full(f.ts)} ±${i18n.dist(f.acc)}` +
        (late ? ` ${t("late_by", { delay: Math.round(f.delay_ms / 1000) })}` : ""));
    }
    const marker = L.circleMarker(at(fixes[0]), { pane: "alarms", radius: 7, className: "pb-marker",
      interactive: false });
    group.addLayer(marker);
    basemap.fit(map, fixes.map((f) => [f.lon, f.lat]), 17);
    return { at, marker, gaps, late: fixes.filter((f) => f.delay_ms !== null && f.delay_ms > LATE_MS).length };
  }

  function panel(subjectId) {
    const now = Date.now();
    // 24-hour "YYYY-MM-DD HH:mm" in the command centre's zone, its offset beside (datetime.js)
    const fromBox = dateTime.make({ cls: "pb-from", field: "from_ms", param: true, ms: now - 86_400_000 });
    const toBox = dateTime.make({ cls: "pb-to", field: "to_ms", param: true, ms: now });
    const load = el("button", { type: "button", class: "pb-load", text: t("load") });
    const play = el("button", { type: "button", class: "pb-play", text: t("play"), disabled: "disabled" });
    const speed = el("select", { class: "pb-speed" },
      ...SPEEDS.map((s) => el("option", { value: String(s), text: t("speed", { n: s }) })));
    speed.value = "60";
    const slider = el("input", { type: "range", class: "pb-time", min: "0", max: "0", value: "0", disabled: "disabled" });
    const clock = el("span", { class: "pb-clock" });
    const summary = el("p", { class: "pb-summary", role: "status" });
    const plane = el("div", { class: "pb-plane" });
    const legend = el("p", { class: "pb-legend" },
      ...["acc-good", "acc-fair", "acc-poor", "pb-late"].map((c) =>
        el("span", { class: `pb-key ${c}`, text: t(`legend.${c}`) })));
    let fixes = [];
    let drawn = null;
    let shown = null;  // {map, group}, made at the first load (Leaflet measures its box)
    function mapNow() {
      if (!shown) {
        const map = basemap.create(plane);
        shown = { map, group: L.layerGroup().addTo(map) };
      }
      shown.map.invalidateSize(false);
      return shown;
    }
    let timer = null;
    let clockMs = 0;

    function show(ms) {
      clockMs = ms;
      let i = 0;
      while (i + 1 < fixes.length && fixes[i + 1].ts <= ms) i += 1;
      slider.value = String(i);
      drawn.marker.setLatLng(drawn.at(fixes[i]));
      clock.textContent = zoneTime.full(fixes[i].ts);
    }
    function pause() {
      if (timer !== null) clearInterval(timer);
      timer = null;
      play.textContent = t("play");
    }
    play.addEventListener("click", () => {
      if (timer !== null) { pause(); return; }
      if (clockMs >= fixes[fixes.length - 1].ts) show(fixes[0].ts);
      play.textContent = t("pause");
      let last = performance.now();
      timer = setInterval(() => {
        const tick = performance.now();
        const next = clockMs + (tick - last) * Number(speed.value);
        last = tick;
        show(Math.min(next, fixes[fixes.length - 1].ts));
        if (next >= fixes[fixes.length - 1].ts) pause();
      }, 100);
    });
    slider.addEventListener("input", () => { pause(); show(fixes[Number(slider.value)].ts); });
    load.addEventListener("click", async () => {
      pause();
      try {
        const a = dateTime.read(fromBox);
        const b = dateTime.read(toBox);
        const body = await api("GET", `/api/subjects/${encodeURIComponent(subjectId)}/track?from_ms=${a}&to_ms=${b}`);
        fixes = body.fixes.slice().sort((p, q) => p.ts - q.ts);
      } catch (e) {
        summary.textContent = e.message;
        return;
      }
      const m = mapNow();
      if (!fixes.length) {
        m.group.clearLayers();
        summary.textContent = t("none");
        play.setAttribute("disabled", "disabled");
        slider.setAttribute("disabled", "disabled");
        return;
      }
      drawn = draw(m.map, m.group, fixes);
      summary.textContent = t("summary", { fixes: fixes.length, gaps: drawn.gaps, late: drawn.late });
      slider.max = String(fixes.length - 1);
      play.removeAttribute("disabled");
      slider.removeAttribute("disabled");
      show(fixes[0].ts);
    });
    return el("section", { class: "part track-playback", "data-subject": subjectId },
      el("h3", { text: t("title") }),
      el("div", { class: "filters" },
        el("label", {}, t("from"), " ", fromBox), el("label", {}, t("to"), " ", toBox), load),
      summary, plane, legend,
      el("div", { class: "pb-controls" }, play, speed, slider, clock));
  }

  return { panel };
})();
