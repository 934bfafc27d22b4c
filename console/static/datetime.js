// emfence console: date and date-time inputs. A browser's own <input type="datetime-local">
// shows its locale's format (an en-US browser: "11/22/2025, 02:26 PM"); these show and
// accept 24-hour "YYYY-MM-DD HH:mm" (dates "YYYY-MM-DD") whatever the browser, with the
// command centre's UTC offset beside them (time.js), through the vendored flatpickr
// (vendor/flatpickr, MIT), whose calendar speaks the page's language.
// The text is a wall-clock time in the command centre's zone (console.timezone), never
// the browser's: read() turns it into epoch ms with time.js, write() shows epoch ms.
"use strict";

const dateTime = (() => {
  const FORMATS = { datetime: "Y-m-d H:i", date: "Y-m-d" };
  const PATTERN = /^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2}))?$/;
  const pad = (n) => String(n).padStart(2, "0");
  const live = new Set();  // the inputs with a picker, for the language switch
  // An input, or the box make() returned around one.
  const inputOf = (node) => (node.tagName === "INPUT" ? node : node.querySelector("input"));

  // Wall-clock fields of "2025-11-22 14:26" (or "2025-11-22"), or null when the text is
  // not a real date and time (month 13, 30 February, 25:00).
  function wall(text) {
    const m = PATTERN.exec(String(text).trim());
    if (!m) return null;
    const [y, mo, d, h, mi] = [m[1], m[2], m[3], m[4] || 0, m[5] || 0].map(Number);
    const check = new Date(Date.UTC(y, mo - 1, d));
    if (check.getUTCMonth() !== mo - 1 || check.getUTCDate() !== d || h > 23 || mi > 59) return null;
    return { y, mo, d, h, mi, day: `${m[1]}-${pad(mo)}-${pad(d)}` };
  }

  const locale = () => (i18n.lang() === "en" ? "default" : "zh");

  // The zone mark beside an input: the offset at its value (summer time), else now.
  function showMark(input) {
    const f = wall(input.value);
    const mark = input.dtMark;
    if (mark) mark.textContent = zoneTime.mark(f ? zoneTime.midnight(f.day) + (f.h * 60 + f.mi) * 60000 : Date.now());
  }

  // Give `input` (type text) its picker; `kind` "datetime" or "date"; `field` names
  // the request field it feeds (start, from_ms ...) for the error; `param`: a query
  // parameter (error.bad_param) rather than a body field (error.bad_field).
  function attach(input, { kind = "datetime", field = "", param = false } = {}) {
    input.type = "text";
    input.classList.add("dt-input", `dt-${kind}`);
    input.setAttribute("autocomplete", "off");
    input.setAttribute("spellcheck", "false");
    input.setAttribute("placeholder", i18n.t(`dt.placeholder.${kind}`));
    Object.assign(input.dataset, { dtKind: kind, dtField: field, dtParam: param ? "1" : "" });
    // What the operator typed last: text the picker cannot read, it empties the box
    // (on Enter, on leaving it, on a click elsewhere); it is put back, marked, so that
    // read() names it rather than the form saying nothing of the typing.
    input.dtTyped = "";
    const keepTyped = () => {
      if (input.value || !input.dtTyped.trim()) return;
      input.value = input.dtTyped;
      if (!wall(input.value)) input.setAttribute("aria-invalid", "true");
    };
    input.addEventListener("input", () => { input.dtTyped = input.value; input.removeAttribute("aria-invalid"); });
    input.dtPicker = flatpickr(input, {
      enableTime: kind === "datetime", time_24hr: true, dateFormat: FORMATS[kind], allowInput: true,
      disableMobile: true, locale: locale(),
      // Strict: what the page reads (wall) is what the picker takes; browser-local Date
      // objects only carry the wall-clock fields between the text and the calendar. A
      // time the browser's own clock skips (its summer-time hour) is left to the text:
      // the box keeps it and read() takes it as typed.
      parseDate: (text) => {
        const f = wall(text);
        const d = f && new Date(f.y, f.mo - 1, f.d, f.h, f.mi);
        return d && d.getDate() === f.d && d.getHours() === f.h && d.getMinutes() === f.mi ? d : undefined;
      },
      onChange: (dates) => {
        if (dates.length) input.dtTyped = "";
        keepTyped();
        showMark(input);
      },
    });
    input.addEventListener("blur", keepTyped);  // after the picker's own
    // Escape closes the calendar while typing too (the picker leaves keys in a typed box alone).
    input.addEventListener("keydown", (e) => { if (e.key === "Escape") input.dtPicker.close(); });
    live.add(input);
    return input;
  }

  // A new picker input with the zone mark beside it: <span class="dt">input UTC+08:00</span>.
  function make({ kind = "datetime", cls = "", id = "", field = "", param = false, required = false, ms = null } = {}) {
    const input = el("input", { class: cls });
    if (id) input.id = id;
    if (required) input.required = true;
    attach(input, { kind, field, param });
    const mark = el("span", { class: "dt-zone" });
    input.dtMark = mark;
    if (ms !== null) write(input, ms);
    else showMark(input);
    prune();
    return el("span", { class: "dt" }, input, " ", mark);
  }

  // Give an input already on the page (index.html) its picker and its zone mark.
  function upgrade(input, opts) {
    const box = el("span", { class: "dt" });
    input.replaceWith(box);
    attach(input, opts);
    const mark = el("span", { class: "dt-zone" });
    input.dtMark = mark;
    box.append(input, " ", mark);
    showMark(input);
    return input;
  }

  // Show the instant `ms` (epoch ms) in the command centre's zone.
  function write(node, ms) {
    const input = inputOf(node);
    const text = input.dataset.dtKind === "date" ? zoneTime.day(ms) : zoneTime.clock(ms).slice(0, 16);
    input.dtPicker.setDate(text, false);
    input.dtTyped = "";
    input.removeAttribute("aria-invalid");
    showMark(input);
  }

  // The input's time as epoch ms in the command centre's zone (a date: its midnight,
  // `addDays` later), null when empty; text that is no date throws the forms' error
  // ("字段 start 无效" [start]) with `field` set, as the server's answer would.
  function read(node, addDays = 0) {
    const input = inputOf(node);
    const text = (input.value || input.dtTyped).trim();
    if (!text) return null;
    const f = wall(text);
    if (!f || (input.dataset.dtKind === "date" && PATTERN.exec(text)[4] !== undefined)) {
      input.setAttribute("aria-invalid", "true");
      const fieldName = input.dataset.dtField;
      const e = new Error(i18n.t(input.dataset.dtParam ? "error.bad_param" : "error.bad_field", { field: fieldName }));
      e.field = fieldName;
      throw e;
    }
    return zoneTime.midnight(f.day, addDays) + (f.h * 60 + f.mi) * 60000;
  }

  // Calendars of inputs no longer on the page go with them (an input made but not yet
  // placed stays: a form builds its inputs before it is shown).
  function prune() {
    for (const input of live) {
      if (input.isConnected) input.dtShown = true;
      if (input.isConnected || !input.dtShown) continue;
      input.dtPicker.destroy();
      live.delete(input);
    }
  }

  document.addEventListener("langchange", () => {
    prune();
    for (const input of live) {
      const text = input.value;
      input.dtPicker.set("locale", locale());
      if (!input.dtPicker.selectedDates.length) input.value = text;  // keep what was typed
      input.setAttribute("placeholder", i18n.t(`dt.placeholder.${input.dataset.dtKind}`));
    }
  });

  return { make, upgrade, read, write };
})();
