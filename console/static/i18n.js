// emfence console: the page's words, one catalogue per language (static/i18n/zh-CN.json,
// static/i18n/en.json: flat dotted keys, "{name}" placeholders), the same files the
// server reads for the register's PDF/CSV (console/labels.py). Chinese first. The login
// page: English when this browser's last choice was English, or, before any choice, when
// the browser asks for English before Chinese. Signed in: the account's language if it
// chose one (follow), else the browser's. Numbers, distances and plurals come from Intl.
"use strict";

const i18n = (() => {
  const LANGS = ["zh-CN", "en"];
  const KEY = "emfence.lang";
  const books = { "zh-CN": {}, en: {} };

  // "zh" is what earlier pages kept; it means zh-CN.
  const known = (v) => (v === "zh" || v === "zh-CN" ? "zh-CN" : v === "en" ? "en" : null);

  function initial() {
    try {
      const kept = known(localStorage.getItem(KEY));
      if (kept) return kept;
    } catch (e) { /* storage refused: choose by the browser */ }
    const asked = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "zh-CN"];
    for (const l of asked) {
      const low = String(l).toLowerCase();
      if (low.startsWith("zh")) return "zh-CN";
      if (low.startsWith("en")) return "en";
    }
    return "zh-CN";
  }
  let lang = initial();

  // Both catalogues, once, from this server (nothing fetched from elsewhere).
  const ready = Promise.all(LANGS.map(async (l) => {
    const resp = await fetch(`/static/i18n/${l}.json`, { credentials: "same-origin" });
    books[l] = await resp.json();
  }));

  const numberFormat = (opts) => new Intl.NumberFormat(lang, opts);
  const num = (n, opts) => (typeof n === "number" && Number.isFinite(n) ? numberFormat(opts).format(n) : String(n));

  // The text of `key` with its placeholders filled; numbers in the operator's locale.
  function t(key, params = {}) {
    const text = books[lang][key] ?? books.en[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (whole, name) => {
      const v = params[name];
      if (v === undefined || v === null) return "";
      return typeof v === "number" ? num(v) : String(v);
    });
  }
  const has = (key) => Object.prototype.hasOwnProperty.call(books[lang], key);
  // A word of a vocabulary ("leave", "overdue" -> 逾期未归), or the bare value.
  const term = (group, value) => {
    if (value === null || value === undefined) return "–";
    const key = `${group}.${value}`;
    return has(key) ? t(key) : String(value);
  };
  // "{n} escalated alarms ...": key.one / key.other by the language's plural rules.
  function plural(key, n, params = {}) {
    const rule = new Intl.PluralRules(lang).select(n);
    return t(has(`${key}.${rule}`) ? `${key}.${rule}` : `${key}.other`, { n, ...params });
  }
  // A distance in metres, as metres or (from 1000 m) kilometres, in the locale's words.
  function dist(m) {
    const km = Math.abs(m) >= 1000;
    return numberFormat({ style: "unit", unit: km ? "kilometer" : "meter", unitDisplay: "short",
      maximumFractionDigits: km ? 1 : 0 }).format(km ? m / 1000 : m);
  }
  const pct = (share, digits = 1) => numberFormat({ style: "percent", minimumFractionDigits: digits,
    maximumFractionDigits: digits }).format(share);

  // The words of the static page: data-i18n (text), data-i18n-title, -placeholder,
  // -aria-label and -label (an optgroup's) name their keys.
  function apply(root = document) {
    for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const attr of ["title", "placeholder", "aria-label", "label"]) {
      const data = `data-i18n-${attr}`;
      for (const node of root.querySelectorAll(`[${data}]`)) node.setAttribute(attr, t(node.getAttribute(data)));
    }
    document.documentElement.lang = lang;
  }

  // Show `next`; the page redraws on "langchange" (detail.chosen: the operator's own
  // choice, which the page keeps for the account too).
  function show(next, chosen) {
    if (next === lang) return lang;
    lang = next;
    apply(document);
    document.dispatchEvent(new CustomEvent("langchange", { detail: { lang, chosen } }));
    return lang;
  }

  // The other language, chosen by the operator: kept in this browser for the next login page.
  function toggle() {
    const next = lang === "zh-CN" ? "en" : "zh-CN";
    try { localStorage.setItem(KEY, next); } catch (e) { /* this visit only */ }
    return show(next, true);
  }

  // The signed-in account's language (session.lang), or with none chosen (and after
  // logging out) this browser's. Not kept in the browser: the next user's login page
  // follows the browser, not the last account.
  const follow = (accountLang) => show(known(accountLang) || initial(), false);

  return { ready, t, term, plural, num, dist, pct, apply, toggle, follow, lang: () => lang };
})();
