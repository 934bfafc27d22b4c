"""The alarm register export (/api/reports/alarms.csv and .pdf) against a real store:
the CSV read back with the csv module and the PDF with pypdf must say exactly what the
store holds for the region and period, nothing of another region or outside the period;
refusals and bad parameters answer 403/400; every export is on the record."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pypdf
import pytest
from console_helpers import CNMAPS, T0, audit_rows, cleared, raised

from console import report_pdf
from console.labels import ALARM_TYPES, DISPOSITIONS, STATES, columns
from console.report import register_table, to_csv
from console.report_pdf import ReportFontMissing, ReportTitle, to_pdf
from console.resources.reports import MAX_EXPORT_ALARMS
from contract.alarms import alarm_id

pytest_plugins = ["console_helpers"]

DAY = 86_400_000
FROM, TO = T0, T0 + DAY  # the period asked for in these tests: [FROM, TO)
SHANGHAI = ZoneInfo("Asia/Shanghai")
INJECTIONS = ("=HYPERLINK(\"http://evil.example\",\"点击\")", "+1+1", "-2", "@SUM(A1)")


def seed(store) -> None:
    """411303: a1 raised exactly at FROM (in), a2 later (cleared, acknowledged, closed,
    escalated first), a3 (new, with hostile notes), edge one ms before TO (in), late at
    TO (out), early one ms before FROM (out); 411302: o1 inside the period (not hers)."""
    reg = store.register
    reg.adcode_dir = str(CNMAPS)
    reg.import_adcode("411303", actor="root", now_ms=T0 - DAY)
    reg.create_subject({"subject_id": "subj-1", "name": "张三", "region": "411303",
                        "level": "strict", "devices": [{"device_id": "dev-1"}],
                        "inclusion": ["411303"]}, actor="alice", now_ms=T0 - DAY)
    store.record_events([
        raised("early", "411303", at=FROM - 1),
        raised("a1", "411303", at=FROM),
        raised("a2", "411303", kind="tamper", at=FROM + 1000, subject="subj-2",
               device="dev-2"),
        raised("a3", "411303", kind="offline", at=FROM + 2000),
        raised("edge", "411303", kind="low_battery", at=TO - 1),
        raised("late", "411303", at=TO),
        raised("o1", "411302", kind="exclusion", at=FROM + 3000, subject="subj-9",
               device="dev-9"),
    ], FROM + 5000)
    store.record_events([cleared("a2", "411303", kind="tamper", at=FROM + 60_000,
                                 subject="subj-2", device="dev-2")], FROM + 60_000)
    # a2 goes unacknowledged for ten minutes and is escalated, then handled.
    store.escalate_due(FROM + 600_000, 60_000, ["411303"])
    store.acknowledge("a2", "alice", "已电话联系本人", FROM + 700_000)
    store.close_alarm("a2", "sue", "device_fault", "腕带更换", FROM + 800_000)
    for k, note in enumerate(INJECTIONS):
        store.add_note("a3", "alice", note, FROM + 900_000 + k)


def local(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(SHANGHAI) \
        .strftime("%Y-%m-%d %H:%M:%S")


def export(c, fmt: str = "csv", region: str = "411303", **params):
    query = {"region": region, "from_ms": FROM, "to_ms": TO, **params}
    return c.get(f"/api/reports/alarms.{fmt}", params={k: v for k, v in query.items()
                                                        if v is not None})


def read_csv(resp) -> list[list[str]]:
    assert resp.status_code == 200, resp.text
    assert resp.content.startswith(b"\xef\xbb\xbf"), "Excel needs the UTF-8 BOM"
    assert b"\r\n" in resp.content  # RFC 4180 line ends
    return list(csv.reader(io.StringIO(resp.content.decode("utf-8-sig"), newline="")))


def test_the_csv_is_exactly_the_stores_alarms_of_the_region_and_period(any_console):
    c = any_console
    seed(c.store)
    c.login("alice")
    resp = export(c)
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"] == \
        'attachment; filename="alarm-register-411303-20251122-20251123.csv"'
    header, *rows = read_csv(resp)
    assert header == columns("zh", "Asia/Shanghai")
    assert header[5] == "告警时间（Asia/Shanghai）"
    # [FROM, TO): the alarm raised at FROM is in, the one at TO and the one before FROM
    # are out, and so is the other region's; oldest first.
    assert [r[0] for r in rows] == ["a1", "a2", "a3", "edge"]
    stored = {a["alarm_id"]: a for a in c.store.list_alarms(["411303"], since_ms=FROM,
                                                             until_ms=TO, limit=100)}
    assert set(stored) == {r[0] for r in rows}
    for row in rows:
        a = stored[row[0]]
        notes = [x for x in c.store.actions(a["alarm_id"]) if x["note"]]
        assert row[1:5] == [a["subject_id"], "张三" if a["subject_id"] == "subj-1" else "",
                            a["device_id"], ALARM_TYPES["zh"][a["type"]]]
        assert row[5:9] == [local(a["raised_at"]), local(a["cleared_at"]),
                            STATES["zh"][a["state"]], STATES["zh"][a["workflow"]]]
        assert row[9:13] == [a["acknowledged_by"] or "", local(a["acknowledged_at"]),
                             a["closed_by"] or "", local(a["closed_at"])]
        assert row[13] == (DISPOSITIONS["zh"][a["disposition"]] if a["disposition"] else "")
        assert len(row[14].splitlines()) == len(notes)
        assert all(x["note"] in row[14] and x["who"] in row[14] for x in notes)
        assert row[15] == ("是" if a["escalated_at"] is not None else "否")
    a2 = dict(zip(header, rows[1], strict=True))
    assert (a2["告警类型"], a2["告警状态"], a2["处置状态"], a2["处置结论"], a2["是否升级"]) == (
        "腕带破拆", "已解除", "已结案", "设备故障", "是")
    assert (a2["接手人"], a2["结案人"], a2["告警时间（Asia/Shanghai）"]) == (
        "alice", "sue", "2025-11-22 16:26:41")
    assert a2["备注"] == ("已电话联系本人 (alice 2025-11-22 16:38:20)\n"
                        "腕带更换 (sue 2025-11-22 16:40:00)")
    [row] = audit_rows(c.store, action="alarms.export")
    assert (row["who"], row["target"]) == ("alice", "411303")
    assert row["detail"] == {"format": "csv", "region": "411303", "from_ms": FROM,
                             "to_ms": TO, "lang": "zh", "alarms": 4}


def test_free_text_cannot_run_as_a_spreadsheet_formula(console):
    seed(console.store)
    console.login("alice")
    rows = read_csv(export(console))
    [a3] = [r for r in rows if r[0] == "a3"]
    # Each note is its own line of the cell; a spreadsheet reads only the cell's first
    # character as a formula sign, so the apostrophe goes there.
    assert a3[14].startswith("'=HYPERLINK(")
    for line, note in zip(a3[14][1:].splitlines(), INJECTIONS, strict=True):
        assert line.startswith(note)
    # Every cell that would start a formula is defused, in any column.
    rows = register_table([{"alarm_id": "=1+1", "subject_id": "+s", "device_id": "@d",
                            "type": "-x", "raised_at": T0, "state": "active",
                            "workflow": "new"}], {}, {"+s": "=name"}, "zh", "Asia/Shanghai")
    back = list(csv.reader(io.StringIO(to_csv(rows).decode("utf-8-sig"), newline="")))
    assert back[1][:5] == ["'=1+1", "'+s", "'=name", "'@d", "'-x"]


def test_english_headings_and_words_on_request(console):
    seed(console.store)
    console.login("sue")
    header, *rows = read_csv(export(console, lang="en"))
    assert header[:2] == ["Alarm ID", "Subject ID"]
    assert header[5] == "Raised at (Asia/Shanghai)"
    a2 = dict(zip(header, rows[1], strict=True))
    assert (a2["Alarm type"], a2["Disposition"], a2["Escalated"]) == (
        "strap tampered", "device fault", "yes")


def test_a_region_not_the_callers_is_refused_and_the_refusal_recorded(any_console):
    c = any_console
    seed(c.store)
    c.login("alice")  # 411303 only
    for fmt in ("csv", "pdf"):
        r = export(c, fmt, region="411302")
        assert r.status_code == 403, r.text
        assert (r.json()["error"], r.json()["field"]) == ("forbidden", "region")
    assert [row["target"] for row in audit_rows(c.store, action="report.denied")] == [
        "411302", "411302"]
    assert audit_rows(c.store, action="alarms.export") == []
    c.login("olga")  # 411302's own operator sees its alarm and nothing of 411303
    assert [r[0] for r in read_csv(export(c, region="411302"))[1:]] == ["o1"]
    c.login("root")  # admin: every region
    assert [r[0] for r in read_csv(export(c, region="411302"))[1:]] == ["o1"]


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"region": None}, "region", "'region'"),
    ({"region": ""}, "region", "'region'"),
    ({"from_ms": None}, "from_ms", "'from_ms'"),
    ({"to_ms": None}, "to_ms", "'to_ms'"),
    ({"from_ms": "yesterday"}, None, "'from_ms' must be an integer"),
    ({"to_ms": -5}, None, "'to_ms' must be within"),
    ({"to_ms": FROM}, "to_ms", "'to_ms' must be after 'from_ms'"),
    ({"to_ms": FROM + 367 * DAY}, "to_ms", "366 days"),
    ({"lang": "fr"}, "lang", "'lang'"),
])
def test_bad_parameters_answer_400_naming_the_parameter(console, params, field, words):
    console.login("alice")
    for fmt in ("csv", "pdf"):
        r = export(console, fmt, **params)
        assert r.status_code == 400, r.text
        assert words in r.json()["message"]
        assert r.json().get("field") == field
    assert audit_rows(console.store, action="alarms.export") == []


def test_a_year_is_allowed_and_a_signed_out_caller_is_not(console):
    r = export(console)
    assert r.status_code == 401
    console.login("alice")
    assert export(console, to_ms=FROM + 366 * DAY).status_code == 200


def test_a_pdf_of_too_many_alarms_is_refused_before_it_is_laid_out(console):
    most = MAX_EXPORT_ALARMS["pdf"]
    console.store.record_events([raised(f"n{k:05d}", "411303", at=FROM + k)
                                 for k in range(most + 1)], FROM)
    console.login("alice")
    r = export(console, "pdf")
    assert (r.status_code, r.json()["error"]) == (413, "too_large")
    assert "shorter period" in r.json()["message"]
    # The CSV holds them all.
    assert len(read_csv(export(console))) == most + 2


def pdf_text(content: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(content))
    return len(reader.pages), "\n".join(p.extract_text() for p in reader.pages)


def test_the_pdf_holds_every_alarm_with_chinese_headings_on_every_page(any_console):
    c = any_console
    seed(c.store)
    # Enough alarms for several pages, with the engine's real (24-hex) ids.
    many = [raised(alarm_id("dev-1", "outbound", "411303", FROM + 10_000 + k, False),
                   "411303", at=FROM + 10_000 + k) for k in range(120)]
    c.store.record_events(many, FROM + 20_000)
    c.login("alice")
    resp = export(c, "pdf")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/pdf"
    assert resp.headers["content-disposition"].startswith('attachment; filename="alarm-')
    pages, text = pdf_text(resp.content)
    assert pages >= 3
    flat = text.replace("\n", "")  # a long id may wrap inside its cell
    for a in ["a1", "a2", "a3", "edge"] + [e["alarm_id"] for e in many]:
        assert a in flat, a
    assert "late" not in flat and "o1" not in flat and "early" not in flat
    # The heading row repeats on every page, and every page is numbered.
    assert text.count("告警编号") == pages and text.count("处置结论") == pages
    assert all(f"第 {n} 页" in text for n in range(1, pages + 1))
    for words in ("告警登记备案表", "卧龙区（411303）", "alice", "Asia/Shanghai",
                  "2025-11-22 16:26:40", "腕带破拆", "设备故障"):
        assert words in flat, words
    [row] = audit_rows(c.store, action="alarms.export")
    assert (row["detail"]["format"], row["detail"]["alarms"]) == ("pdf", 124)


def test_without_the_cjk_font_the_pdf_says_which_package_to_install(tmp_path):
    table = register_table([], {}, {}, "zh", "Asia/Shanghai")
    title = ReportTitle("411303", "p", "g", "alice", "Asia/Shanghai")
    with pytest.raises(ReportFontMissing, match="fonts-wqy-microhei"):
        to_pdf(table, title, "zh", font_path=tmp_path / "no-such-font.ttc")


def test_a_console_without_the_font_answers_500_naming_the_package(console, monkeypatch,
                                                                   tmp_path):
    # A machine where `make system-deps` was never run: the font path points nowhere.
    monkeypatch.setattr(report_pdf, "CJK_FONT_PATH", tmp_path / "wqy-microhei.ttc")
    console.login("alice")
    r = export(console, "pdf")
    assert r.status_code == 500
    assert r.json()["error"] == "font_missing"
    assert "fonts-wqy-microhei" in r.json()["message"]
    assert export(console).status_code == 200  # the CSV needs no font
