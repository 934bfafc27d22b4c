// emfence console: the "设备指令 / Device commands" panel (issue #16, the downlink).
// Shown under a device in the alarm detail and the subject view: buttons for vibrate,
// locate and interval (every N s for M minutes), and the device's recent commands with
// their state and the device's reply (fetched when asked for, or after sending). The
// console only queues a command; the engine worker of the device's region sends it
// (docs/console-api.md, "Device commands").
// Every word from the page's catalogues (i18n.js, keys cmd.*); times in the command
// centre's zone with its offset (time.js).
"use strict";

const deviceCommands = (() => {
  const t = (key, params) => i18n.t(`cmd.${key}`, params);
  const when = (ms) => (ms ? zoneTime.full(ms) : "–");
  const what = (c) => (c.cmd === "interval"
    ? `${t(c.cmd)} ${t("interval_args", { every: c.args.interval_s, minutes: Math.round(c.args.duration_s / 60) })}`
    : t(c.cmd));
  const replyText = (r) => {
    if (!r) return "–";
    const result = t("result." + r.result);
    return r.detail ? `${result} · ${r.detail}` : result;
  };

  function panel(deviceId) {
    const path = `/api/devices/${encodeURIComponent(deviceId)}/commands`;
    const msg = el("p", { class: "cmd-msg", role: "status" });
    const body = el("tbody");
    const list = el("table", { class: "cmd-list" }, el("thead", {}, el("tr", {},
      ...["time", "cmd", "by", "state", "reply"].map((k) => el("th", { text: t(k) })))), body);
    const every = el("input", { class: "cmd-every", type: "number", min: "5", max: "3600", value: "10", size: "5" });
    const minutes = el("input", { class: "cmd-minutes", type: "number", min: "1", max: "1440", value: "30", size: "5" });

    async function load() {
      try {
        const data = await api("GET", path);
        body.replaceChildren(...data.commands.map((c) => el("tr", { class: `cmd-${c.state}` },
          el("td", { text: when(c.created_at) }), el("td", { text: what(c) }),
          el("td", { text: c.created_by }), el("td", { class: "cmd-state", text: t("state." + c.state) }),
          el("td", { class: "cmd-reply", text: replyText(c.reply) }))));
        if (!data.commands.length) body.append(el("tr", {}, el("td", { colspan: "5", text: t("none") })));
      } catch (e) {
        msg.textContent = e.message;  // the catalogue's words for the error (app.js errorText)
      }
    }
    async function send(cmd) {
      const req = { cmd };
      if (cmd === "interval") {
        req.interval_s = Number(every.value);
        req.duration_s = Math.round(Number(minutes.value) * 60);
      }
      try {
        await api("POST", path, req);
        msg.textContent = t("queued");
      } catch (e) {
        msg.textContent = e.message;
      }
      await load();
    }
    const button = (cmd) => {
      const b = el("button", { type: "button", class: `cmd-${cmd}`, text: t(cmd) });
      b.addEventListener("click", () => send(cmd));
      return b;
    };
    const refresh = el("button", { type: "button", class: "cmd-refresh", text: t("refresh") });
    refresh.addEventListener("click", load);
    // Nothing is fetched until the operator asks (a button): the alarm detail is redrawn
    // on every feed event, and each read of the list is an audited request.
    return el("section", { class: "part device-commands", "data-device": deviceId },
      el("h3", { text: `${t("title")} · ${deviceId}` }),
      el("div", { class: "filters" }, button("vibrate"), button("locate"),
        el("label", {}, t("every_s"), " ", every), el("label", {}, t("for_min"), " ", minutes),
        button("interval"), refresh),
      msg, list);
  }

  return { panel };
})();
