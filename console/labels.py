"""Words for codes, zh-CN and en, for what the server itself writes (the alarm register
export): alarm types, dispositions, alarm states and the register's column headings.

They are read from the page's own catalogues (``static/i18n/zh-CN.json`` and
``static/i18n/en.json``: ``atype.*``, ``disp.*``, ``astate.*``, ``report.*``), so a
printed register says what the officer saw on screen. A code with no word is shown as
itself, never dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

LANGS = ("zh", "en")

CATALOGUES = Path(__file__).resolve().parent / "static" / "i18n"
# The report's language codes and the catalogue each one reads.
CATALOGUE_OF = {"zh": "zh-CN", "en": "en"}

# The register's columns in order (report.col.<code>); "*" marks a time, labelled with
# its zone.
_COLUMNS = ("alarm_id", "subject_id", "name", "device", "type", "raised_at*", "cleared_at*",
            "condition", "handling", "ack_by", "ack_at*", "closed_by", "closed_at*",
            "disposition", "notes", "escalated")


def catalogue(lang: str) -> dict[str, str]:
    """The page's catalogue for the report language ``lang`` ("zh" or "en")."""
    path = CATALOGUES / f"{CATALOGUE_OF[lang]}.json"
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _group(prefix: str) -> dict[str, dict[str, str]]:
    """Every ``prefix.<code>`` of both catalogues, as {lang: {code: word}}."""
    return {lang: {k[len(prefix) + 1:]: v for k, v in catalogue(lang).items()
                   if k.startswith(prefix + ".") and "." not in k[len(prefix) + 1:]}
            for lang in LANGS}


ALARM_TYPES: dict[str, dict[str, str]] = _group("atype")
DISPOSITIONS: dict[str, dict[str, str]] = _group("disp")
# The condition (is the cause still there?) and the workflow (who is handling it).
STATES: dict[str, dict[str, str]] = _group("astate")
YES_NO: dict[str, tuple[str, str]] = {
    lang: (catalogue(lang)["yesno.yes"], catalogue(lang)["yesno.no"]) for lang in LANGS}
# The PDF's title block ("page" has the placeholder {n}).
TITLES: dict[str, dict[str, str]] = _group("report")


def word(table: dict[str, dict[str, str]], code: str | None, lang: str) -> str:
    """The ``lang`` word for ``code`` in ``table``; the code itself when there is none,
    and "" for None."""
    if code is None:
        return ""
    return table[lang].get(code, code)


def columns(lang: str, tz: str | None) -> list[str]:
    """The register's column headings in ``lang``, times labelled with the zone ``tz``
    ("告警时间（Asia/Shanghai）"); None leaves the zone out (the PDF names it once, in
    its title block, to keep the columns narrow)."""
    words = catalogue(lang)
    out = []
    for code in _COLUMNS:
        text = words[f"report.col.{code.rstrip('*')}"]
        if code.endswith("*") and tz is not None:
            text = words["report.col.zone"].replace("{label}", text).replace("{tz}", tz)
        out.append(text)
    return out
