"""The page's message catalogues (console/static/i18n/zh-CN.json and en.json): the same
keys and the same placeholders in both, a word for every alarm type, state, disposition
and error code the server has, and the register export reading its words from them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from alarms.schema import DISPOSITIONS, WORKFLOW_STATES
from console import labels
from contract import ALARM_TYPES

CATALOGUES = Path(labels.__file__).resolve().parent / "static" / "i18n"
CONSOLE = CATALOGUES.parent.parent


def load(lang: str) -> dict[str, str]:
    return json.loads((CATALOGUES / f"{lang}.json").read_text(encoding="utf-8"))


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


def test_both_catalogues_have_the_same_keys_and_placeholders():
    zh, en = load("zh-CN"), load("en")
    assert sorted(set(zh) ^ set(en)) == []
    assert len(zh) > 300
    differ = {k: (zh[k], en[k]) for k in zh if placeholders(zh[k]) != placeholders(en[k])}
    assert differ == {}
    # empty only where a language needs no word (English says no 周 before weekdays)
    empty = [k for k in zh if not zh[k].strip() or not en[k].strip()]
    assert empty == ["roster.days.prefix"]
    # Chinese first: the zh-CN catalogue says in Chinese what English says in words
    # (not a copy of it), the keys that are names or units aside.
    same = [k for k in zh if zh[k] == en[k] and re.search(r"[A-Za-z]{3}", en[k])]
    assert same == ["lang.title"]


def test_every_code_of_the_server_has_its_words():
    zh, en = load("zh-CN"), load("en")
    codes = ([f"atype.{t}" for t in ALARM_TYPES] + [f"disp.{d}" for d in DISPOSITIONS]
             + [f"astate.{s}" for s in (*WORKFLOW_STATES, "active", "cleared")])
    # every error code an API route can answer (ApiError(status, "code", ...))
    source = "\n".join(p.read_text(encoding="utf-8") for p in CONSOLE.rglob("*.py"))
    errors = set(re.findall(r'ApiError\(\s*\d{3},\s*"([a-z_]+)"', source))
    errors |= set(re.findall(r'"error": "([a-z_]+)"', source))
    assert {"bad_field", "login_failed", "forbidden"} <= errors
    codes += [f"error.{c}" for c in sorted(errors)]
    assert [c for c in codes if c not in zh or c not in en] == []
    assert zh["atype.tamper"] == "腕带破拆" and en["atype.tamper"] == "strap tampered"


def test_the_register_export_reads_the_page_catalogues():
    zh, en = load("zh-CN"), load("en")
    assert labels.word(labels.ALARM_TYPES, "outbound", "zh") == zh["atype.outbound"] == "越界"
    assert labels.word(labels.ALARM_TYPES, "outbound", "en") == en["atype.outbound"]
    assert labels.word(labels.DISPOSITIONS, "gps_drift", "zh") == zh["disp.gps_drift"]
    assert labels.word(labels.STATES, "acknowledged", "zh") == "已接手"
    assert labels.word(labels.ALARM_TYPES, "unheard_of", "zh") == "unheard_of"
    assert labels.TITLES["zh"]["page"] == "第 {n} 页"
    cols = labels.columns("zh", "Asia/Shanghai")
    assert len(cols) == 16 and cols[5] == "告警时间（Asia/Shanghai）" and cols[0] == "告警编号"
    assert labels.columns("en", None)[5] == "Raised at"
    assert labels.columns("en", "UTC")[12] == "Closed at (UTC)"
