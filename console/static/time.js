// emfence console: times in the command centre's time zone, never the browser's.
// The zone is the server's `console.timezone` (an IANA name, default Asia/Shanghai), sent
// in the session body: a PC set to UTC or a supervisor travelling abroad sees the same
// clock as the room, and every time shown says its UTC offset.
"use strict";

const zoneTime = (() => {
  const pad = (n) => String(n).padStart(2, "0");
  let zone = "UTC";
  let parts = null;  // Intl.DateTimeFormat giving the wall-clock fields in `zone`

  function formatter(name) {
    return new Intl.DateTimeFormat("en-US", {
      timeZone: name, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  // The page's zone; a name this browser does not know falls back to UTC (still marked,
  // so nothing is shown without its offset). Returns the zone in use.
  function setZone(name) {
    try {
      parts = formatter(name);
      zone = name;
    } catch (e) {
      parts = formatter("UTC");
      zone = "UTC";
    }
    return zone;
  }
  setZone("UTC");

  // Wall-clock fields of the instant `ms` (epoch ms) in the zone, and its UTC offset in
  // minutes (computed, not read from a zone abbreviation: "CST" means three zones).
  function fields(ms) {
    const f = {};
    for (const p of parts.formatToParts(new Date(ms))) f[p.type] = p.value;
    const wall = Date.UTC(+f.year, +f.month - 1, +f.day, +f.hour, +f.minute, +f.second);
    const whole = Math.floor(ms / 1000) * 1000;
    return { y: f.year, mo: f.month, d: f.day, h: f.hour, mi: f.minute, s: f.second,
             offsetMin: Math.round((wall - whole) / 60000) };
  }

  function markOf(offsetMin) {
    const a = Math.abs(offsetMin);
    return `UTC${offsetMin < 0 ? "-" : "+"}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
  }

  // "UTC+08:00": the offset at `ms` (default: now).
  const mark = (ms = Date.now()) => markOf(fields(ms).offsetMin);

  // "2026-11-28 10:51:03" without the mark (for a place whose heading carries it).
  function clock(ms) {
    if (ms === null || ms === undefined) return "";
    const f = fields(ms);
    return `${f.y}-${f.mo}-${f.d} ${f.h}:${f.mi}:${f.s}`;
  }

  // "2026-11-28 10:51:03 UTC+08:00": a time that stands alone.
  function full(ms) {
    if (ms === null || ms === undefined) return "";
    return `${clock(ms)} ${mark(ms)}`;
  }

  // A list row's time under a heading that says the offset now: the clock time today,
  // the date and minute before; its own offset added when it differs (summer time).
  function short(ms) {
    if (ms === null || ms === undefined) return "";
    const text = clock(ms);
    const own = mark(ms);
    const shown = text.slice(0, 10) === clock(Date.now()).slice(0, 10) ? text.slice(11) : text.slice(5, 16);
    return own === mark() ? shown : `${shown} ${own}`;
  }

  // "2026-11-28": the zone's calendar day of `ms` (for a date input).
  const day = (ms) => clock(ms).slice(0, 10);

  // Epoch ms of midnight starting the day "YYYY-MM-DD" (plus `addDays`) in the zone.
  function midnight(dayText, addDays = 0) {
    const [y, m, d] = dayText.split("-").map(Number);
    const wall = Date.UTC(y, m - 1, d + addDays);
    // The offset at the guess, then at the result (right across a summer-time change).
    let ms = wall - fields(wall).offsetMin * 60000;
    ms = wall - fields(ms).offsetMin * 60000;
    return ms;
  }

  return { setZone, zone: () => zone, mark, clock, full, short, day, midnight };
})();
