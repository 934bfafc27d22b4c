"""The alarm register (登记备案) as rows and as CSV: every alarm of a region and period,
who handled it and when, the disposition and the notes. Pure functions over the
store's alarm and action rows; the PDF is in :mod:`console.report_pdf`, the HTTP side in
:mod:`console.resources.reports`.

Times are written in one IANA zone (``console.timezone``) as ``YYYY-MM-DD HH:MM:SS``
(24-hour); the zone is named in the column heading ("告警时间（Asia/Shanghai）"), not
repeated in every cell, so a spreadsheet can sort and filter the values.
"""

from __future__ import annotations

import csv
import io
import zoneinfo
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from console.labels import ALARM_TYPES, DISPOSITIONS, STATES, YES_NO, columns, word

# Characters that make a spreadsheet read a cell as a formula (=, +, -, @) or that
# hide one behind a control character (tab, carriage return): free text (notes, names)
# starting with one gets a leading apostrophe, the OWASP advice against CSV injection.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Byte-order mark: Excel in China opens a UTF-8 CSV as GBK without it.
UTF8_BOM = "\ufeff"


def format_ms(at_ms: int | None, zone: zoneinfo.ZoneInfo) -> str:
    """Epoch ms as ``YYYY-MM-DD HH:MM:SS`` in ``zone``; "" for None."""
    if at_ms is None:
        return ""
    return datetime.fromtimestamp(int(at_ms) / 1000, tz=UTC).astimezone(zone) \
        .strftime("%Y-%m-%d %H:%M:%S")


def notes_text(actions: Iterable[dict[str, Any]], zone: zoneinfo.ZoneInfo) -> str:
    """Every note on the alarm, oldest first, one a line, each followed by who wrote it
    and when: ``text (who YYYY-MM-DD HH:MM:SS)``."""
    notes = [a for a in sorted(actions, key=lambda a: (a.get("at") or 0, a.get("id") or 0))
             if a.get("note")]
    return "\n".join(f"{a['note']} ({a['who']} {format_ms(a['at'], zone)})" for a in notes)


def register_row(alarm: dict[str, Any], actions: list[dict[str, Any]],
                 names: dict[str, str], lang: str, zone: zoneinfo.ZoneInfo) -> list[str]:
    """One alarm as the register's cells, in the order of :data:`console.labels.COLUMNS`."""
    yes, no = YES_NO[lang]
    return [
        alarm["alarm_id"], alarm["subject_id"], names.get(alarm["subject_id"], ""),
        alarm["device_id"], word(ALARM_TYPES, alarm["type"], lang),
        format_ms(alarm["raised_at"], zone), format_ms(alarm.get("cleared_at"), zone),
        word(STATES, alarm["state"], lang), word(STATES, alarm["workflow"], lang),
        alarm.get("acknowledged_by") or "", format_ms(alarm.get("acknowledged_at"), zone),
        alarm.get("closed_by") or "", format_ms(alarm.get("closed_at"), zone),
        word(DISPOSITIONS, alarm.get("disposition"), lang), notes_text(actions, zone),
        yes if alarm.get("escalated_at") is not None else no,
    ]


def register_table(alarms: list[dict[str, Any]], actions: dict[str, list[dict[str, Any]]],
                   names: dict[str, str], lang: str, tz: str, *,
                   zone_in_headings: bool = True) -> list[list[str]]:
    """The heading row and one row per alarm, oldest first (by raise time, then id);
    times in the IANA zone ``tz``, named in the time headings if ``zone_in_headings``."""
    zone = zoneinfo.ZoneInfo(tz)
    ordered = sorted(alarms, key=lambda a: (a["raised_at"], a["alarm_id"]))
    rows = [register_row(a, actions.get(a["alarm_id"], []), names, lang, zone)
            for a in ordered]
    return [columns(lang, tz if zone_in_headings else None)] + rows


def defuse(cell: str) -> str:
    """``cell`` with a leading apostrophe when a spreadsheet would run it as a formula."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def to_csv(table: list[list[str]]) -> bytes:
    """The table as RFC 4180 CSV (CRLF line ends, quoted where needed), UTF-8 with a BOM,
    every cell defused against formula injection."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows([defuse(str(c)) for c in row] for row in table)
    return (UTF8_BOM + out.getvalue()).encode("utf-8")
