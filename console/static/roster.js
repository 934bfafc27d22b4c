// emfence console: the duty roster page (supervisors and admins): who each level of the
// escalation ladder reaches, their shifts in local time, and who an alarm would reach now.
// Uses app.js's api/el/$, register.js's table/cell/field/options/submit, datetime.js's dateTime and
// roster-i18n.js's words.
"use strict";

const rosterPage = (() => {
  const rt = (key, params) => i18n.t(`roster.${key}`, params);
  const ROLES = ["officer", "default_officer", "duty", "squadron", "brigade"];
  let timezone = "";

  function shiftText(s) {
    const days = s.days.length === 7 ? "" : rt("days.prefix") + s.days.map((d) => rt(`day.${d}`)).join("、") + " ";
    const overnight = s.end <= s.start ? rt("shifts.next_day") : "";
    return `${days}${s.start}–${s.end}${overnight}`;
  }
  const shiftsText = (shifts) => (shifts.length ? shifts.map(shiftText).join("；") : rt("shifts.always"));
  // "mon,tue 22:00-08:00" per line -> [{days, start, end}] (the server checks each part)
  function parseShifts(text) {
    return text.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
      const m = line.match(/^(?:([a-z,\s]+)\s+)?(\S+)\s*-\s*(\S+)$/i);
      if (!m) return { start: line, end: "" };
      const shift = { start: m[2], end: m[3] };
      if (m[1]) shift.days = m[1].split(",").map((d) => d.trim().toLowerCase()).filter(Boolean);
      return shift;
    });
  }
  const shiftsLines = (shifts) => shifts.map((s) => `${s.days.join(",")} ${s.start}-${s.end}`).join("\n");

  async function load() {
    const view = $("#roster-view");
    const err = el("p", { class: "error", role: "alert", id: "roster-error" });
    view.replaceChildren(el("h2", { text: rt("title") }), err);
    await submit(null, err, async () => {
      const data = await api("GET", "/api/roster");
      timezone = data.timezone;
      view.replaceChildren(el("h2", { text: rt("title") }),
        el("p", { class: "muted", text: rt("tz") + timezone }), err,
        peopleTable(data.people, err), personForm(err), toldForm());
    });
  }

  function peopleTable(people, err) {
    if (!people.length) return el("p", { class: "muted", id: "roster-empty", text: rt("none") });
    const rows = people.map((p) => {
      const edit = el("button", { type: "button", class: "roster-edit", text: rt("edit") });
      edit.addEventListener("click", () => fillForm(p));
      const del = el("button", { type: "button", class: "roster-delete", text: rt("delete") });
      del.addEventListener("click", () => {
        if (!window.confirm(rt("delete.confirm"))) return;
        submit(null, err, async () => { await api("DELETE", `/api/roster/${encodeURIComponent(p.person_id)}`); await load(); });
      });
      return el("tr", { "data-person-id": p.person_id }, cell(p.person_id), cell(p.name), cell(p.region),
        cell(rt(`role.${p.role}`)), cell(p.level), cell(p.phone), cell(p.email), cell(rt(`lang.${p.lang}`)),
        cell(p.account), cell(shiftsText(p.shifts)), el("td", {}, edit, " ", del));
    });
    const head = el("tr");
    for (const k of ["col.id", "col.name", "col.region", "col.role", "col.level", "col.phone", "col.email",
      "col.lang", "col.account", "col.shifts", "col.actions"]) head.append(el("th", { text: rt(k) }));
    return el("table", { class: "reg-table", id: "roster-table" }, el("thead", {}, head), el("tbody", {}, ...rows));
  }

  const input = (id, attrs = {}) => el("input", { id, ...attrs });
  const labelled = (key, node) => el("label", {}, rt(key), node);

  function personForm(err) {
    const role = el("select", { id: "rp-role" });
    for (const r of ROLES) role.append(el("option", { value: r, text: rt(`role.${r}`) }));
    const lang = el("select", { id: "rp-lang" });
    for (const l of ["zh", "en"]) lang.append(el("option", { value: l, text: rt(`lang.${l}`) }));
    const shifts = el("textarea", { id: "rp-shifts", rows: "3", placeholder: rt("shifts.hint") });
    const form = el("form", { class: "reg-form", id: "roster-form" }, el("h3", { text: rt("form.title") }),
      labelled("col.id", input("rp-id", { required: "required", maxlength: "64" })),
      labelled("col.name", input("rp-name", { required: "required" })),
      labelled("col.region", input("rp-region", { required: "required" })), labelled("col.role", role),
      labelled("col.phone", input("rp-phone")), labelled("col.email", input("rp-email")),
      labelled("col.lang", lang), labelled("col.account", input("rp-account")),
      labelled("form.note", input("rp-note")), labelled("col.shifts", shifts),
      el("p", { class: "muted", text: rt("shifts.hint") }),
      el("button", { type: "submit", id: "rp-save", text: rt("form.save") }));
    form.addEventListener("submit", (e) => submit(e, err, async () => {
      const v = (id) => $(`#${id}`).value.trim() || null;
      const body = { region: v("rp-region"), name: v("rp-name"), role: $("#rp-role").value, phone: v("rp-phone"),
        email: v("rp-email"), lang: $("#rp-lang").value, account: v("rp-account"), note: v("rp-note"),
        shifts: parseShifts($("#rp-shifts").value) };
      await api("PUT", `/api/roster/${encodeURIComponent(v("rp-id") || "")}`, body);
      await load();
    }));
    return form;
  }

  function fillForm(p) {
    for (const [id, key] of [["rp-id", "person_id"], ["rp-name", "name"], ["rp-region", "region"],
      ["rp-phone", "phone"], ["rp-email", "email"], ["rp-account", "account"], ["rp-note", "note"]]) {
      $(`#${id}`).value = p[key] || "";
    }
    $("#rp-role").value = p.role;
    $("#rp-lang").value = p.lang;
    $("#rp-shifts").value = shiftsLines(p.shifts);
  }

  function toldForm() {
    const out = el("div", { id: "told-out" });
    const err = el("p", { class: "error", role: "alert" });
    const regions = (state.session && state.session.regions) || [];
    const form = el("form", { class: "filters", id: "told-form" }, el("h3", { text: rt("told.title") }),
      labelled("told.region", input("told-region", { value: regions[0] || "" })),
      labelled("told.at", dateTime.make({ id: "told-at", field: "at", param: true })),
      el("button", { type: "submit", text: rt("told.show") }), err, out);
    form.addEventListener("submit", (e) => submit(e, err, async () => {
      const q = new URLSearchParams({ region: $("#told-region").value.trim() });
      const at = dateTime.read($("#told-at"));
      if (at !== null) q.set("at", String(at));
      const data = await api("GET", `/api/roster/told?${q}`);
      out.replaceChildren(...Object.entries(data.levels).map(([n, people]) => el("p", { class: "told-level" },
        el("b", { text: rt("told.level", { n }) + "：" }),
        people.length ? people.map((p) => `${p.name}（${rt(`role.${p.role}`)}）`).join("、") : rt("told.nobody"))));
    }));
    return form;
  }

  return { load };
})();
