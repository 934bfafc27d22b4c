// emfence console: the "设备指令 / Device commands" panel (issue #16, the downlink).
// Shown under a device in the alarm detail and the subject view: buttons for vibrate,
// locate and interval (every N s for M minutes), and the device's recent commands with
// their state and the device's reply (fetched when asked for, or after sending). The
// console only queues a command; the engine worker of the device's region sends it
// (docs/console-api.md, "Device commands").
// Chinese first, English when the operator chose it (register-i18n.js keeps the choice).
"use strict";

const deviceCommands = (() => {
  const STRINGS = {
    zh: {
      title: "设备指令", vibrate: "振动提醒", locate: "立即定位", interval: "加密定位",
      every_s: "间隔（秒）", for_min: "持续（分钟）", refresh: "查看指令记录", none: "尚无指令。",
      time: "时间", cmd: "指令", by: "操作人", state: "状态", reply: "设备回复",
      "state.pending": "待发送", "state.sent": "已发送", "state.replied": "已回复",
      "state.expired": "已过期", "result.ok": "成功", "result.rejected": "拒绝",
      "result.expired": "超时未执行", "result.unsupported": "不支持",
      queued: "指令已提交，等待发送。",
    },
    en: {
      title: "Device commands", vibrate: "Vibrate", locate: "Locate now", interval: "Report often",
      every_s: "every (s)", for_min: "for (min)", refresh: "Show commands", none: "No commands yet.",
      time: "time", cmd: "command", by: "by", state: "state", reply: "device's reply",
      "state.pending": "pending", "state.sent": "sent", "state.replied": "replied",
      "state.expired": "expired", "result.ok": "ok", "result.rejected": "rejected",
      "result.expired": "expired, not done", "result.unsupported": "unsupported",
      queued: "Command queued; waiting to be sent.",
    },
  };
  const lang = () => (typeof regI18n !== "undefined" && regI18n.lang() === "en" ? "en" : "zh");
  const t = (key) => STRINGS[lang()][key] || STRINGS.en[key] || key;
  const node = (tag, attrs, ...kids) => {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") n.textContent = v; else n.setAttribute(k, v);
    }
    n.append(...kids);
    return n;
  };
  const when = (ms) => (ms ? new Date(ms).toLocaleString(lang() === "zh" ? "zh-CN" : "en-GB") : "–");
  const what = (c) => t(c.cmd) + (c.cmd === "interval"
    ? ` ${c.args.interval_s} s × ${Math.round(c.args.duration_s / 60)} min` : "");
  const replyText = (r) => (r ? `${t("result." + r.result)}${r.detail ? " · " + r.detail : ""}` : "–");

  function panel(deviceId) {
    const path = `/api/devices/${encodeURIComponent(deviceId)}/commands`;
    const msg = node("p", { class: "cmd-msg", role: "status" });
    const body = node("tbody");
    const list = node("table", { class: "cmd-list" }, node("thead", {}, node("tr", {},
      ...["time", "cmd", "by", "state", "reply"].map((k) => node("th", { text: t(k) })))), body);
    const every = node("input", { class: "cmd-every", type: "number", min: "5", max: "3600", value: "10", size: "5" });
    const minutes = node("input", { class: "cmd-minutes", type: "number", min: "1", max: "1440", value: "30", size: "5" });

    async function load() {
      try {
        const data = await api("GET", path);
        body.replaceChildren(...data.commands.map((c) => node("tr", { class: `cmd-${c.state}` },
          node("td", { text: when(c.created_at) }), node("td", { text: what(c) }),
          node("td", { text: c.created_by }), node("td", { class: "cmd-state", text: t("state." + c.state) }),
          node("td", { class: "cmd-reply", text: replyText(c.reply) }))));
        if (!data.commands.length) body.append(node("tr", {}, node("td", { colspan: "5", text: t("none") })));
      } catch (e) {
        msg.textContent = e.message;
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
      const b = node("button", { type: "button", class: `cmd-${cmd}`, text: t(cmd) });
      b.addEventListener("click", () => send(cmd));
      return b;
    };
    const refresh = node("button", { type: "button", class: "cmd-refresh", text: t("refresh") });
    refresh.addEventListener("click", load);
    // Nothing is fetched until the operator asks (a button): the alarm detail is redrawn
    // on every feed event, and each read of the list is an audited request.
    return node("section", { class: "part device-commands", "data-device": deviceId },
      node("h3", { text: `${t("title")} · ${deviceId}` }),
      node("div", { class: "filters" }, button("vibrate"), button("locate"),
        node("label", {}, t("every_s"), " ", every), node("label", {}, t("for_min"), " ", minutes),
        button("interval"), refresh),
      msg, list);
  }

  return { panel };
})();
