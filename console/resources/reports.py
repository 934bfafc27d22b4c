"""``/api/reports/alarms.csv`` and ``/api/reports/alarms.pdf``: the alarm register
(登记备案) of one of the caller's regions over a period, for filing. Both carry the
same columns (:mod:`console.report`); every export is audited with its row count."""

from __future__ import annotations

import asyncio
import zoneinfo
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import Caller, signed_in
from console.http import ApiError, int_param
from console.labels import LANGS
from console.regions import region_names
from console.report import format_ms, register_table, to_csv
from console.report_pdf import ReportFontMissing, ReportTitle, register_font, to_pdf

DAY_MS = 86_400_000
# A register covers at most a year (a leap year's worth, so "2024-01-01 to 2025-01-01"
# passes): longer asks are almost always a slip, and the answer is built in memory.
MAX_PERIOD_MS = 366 * DAY_MS
# More alarms than this in one region and period, by format: ask for a shorter period
# rather than build a file nobody can file. Laying out a PDF is the slow part (about
# 3 ms an alarm on a loaded 2-core machine: 5 000 alarms, some 170 pages, in ~15 s).
MAX_EXPORT_ALARMS = {"csv": 50_000, "pdf": 5_000}


def _period(request: Request) -> tuple[int, int]:
    """``from_ms`` and ``to_ms`` (epoch ms, both required), ``from_ms < to_ms``, at most
    :data:`MAX_PERIOD_MS` apart; 400 naming the parameter otherwise."""
    bounds = []
    for key in ("from_ms", "to_ms"):
        value = int_param(request, key, None, lo=0)
        if value is None:
            raise ApiError(400, "missing_param",
                           f"query parameter {key!r} (epoch ms) is required", field=key)
        bounds.append(value)
    from_ms, to_ms = bounds
    if to_ms <= from_ms:
        raise ApiError(400, "bad_param", "query parameter 'to_ms' must be after 'from_ms'",
                       field="to_ms")
    if to_ms - from_ms > MAX_PERIOD_MS:
        raise ApiError(400, "bad_param",
                       f"the period from 'from_ms' to 'to_ms' is longer than "
                       f"{MAX_PERIOD_MS // DAY_MS} days: export it in parts", field="to_ms")
    return from_ms, to_ms


async def _region(caller: Caller) -> str:
    """The ``region`` asked for: required, and one of the caller's (403 otherwise, the
    refusal audited as ``report.denied``)."""
    region = (caller.request.query_params.get("region") or "").strip()
    if not region:
        raise ApiError(400, "missing_param", "query parameter 'region' (adcode) is required",
                       field="region")
    if not caller.principal.can_see(region):
        await caller.audit("report.denied", region, {"report": "alarms"})
        raise ApiError(403, "forbidden", f"region {region!r} is not one of yours",
                       field="region")
    return region


def _lang(request: Request) -> str:
    lang = request.query_params.get("lang") or "zh"
    if lang not in LANGS:
        raise ApiError(400, "bad_param", f"query parameter 'lang' is one of {', '.join(LANGS)}",
                       field="lang")
    return lang


async def _register(caller: Caller, fmt: str) -> dict[str, Any]:
    """Everything an export needs, validated and read: region, period, lang, zone, the
    table (heading row first) and the caller's name."""
    lang = _lang(caller.request)
    from_ms, to_ms = _period(caller.request)
    region = await _region(caller)
    most = MAX_EXPORT_ALARMS[fmt]
    alarms, actions = await caller.gateway.alarm_register(region, from_ms, to_ms,
                                                          limit=most + 1)
    if len(alarms) > most:
        raise ApiError(413, "too_large", f"more than {most} alarms in this region and "
                       f"period for a {fmt.upper()}: export a shorter period")
    wanted = {a["subject_id"] for a in alarms}
    # Names of the subjects these alarms are about, wherever they are registered now.
    names = {s["subject_id"]: s.get("name") or "" for s in
             await caller.gateway.register("list_subjects") if s["subject_id"] in wanted}
    tz = caller.settings.timezone
    table = register_table(alarms, actions, names, lang, tz, zone_in_headings=fmt == "csv")
    return {"region": region, "from_ms": from_ms, "to_ms": to_ms, "lang": lang, "tz": tz,
            "table": table}


async def _audit(caller: Caller, fmt: str, r: dict[str, Any]) -> None:
    # The register names subjects and what they did: an export is a read on the record.
    await caller.audit("alarms.export", r["region"],
                       {"format": fmt, "region": r["region"], "from_ms": r["from_ms"],
                        "to_ms": r["to_ms"], "lang": r["lang"], "alarms": len(r["table"]) - 1})


def _filename(r: dict[str, Any], ext: str) -> str:
    """``alarm-register-411303-20251101-20251130.csv``: the region and the first and last
    day of the period in the console's zone."""
    zone = zoneinfo.ZoneInfo(r["tz"])

    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone).strftime("%Y%m%d")

    return f"alarm-register-{r['region']}-{day(r['from_ms'])}-{day(r['to_ms'] - 1)}.{ext}"


def _download(body: bytes, media_type: str, filename: str) -> Response:
    return Response(body, media_type=media_type, headers={
        "content-disposition": f'attachment; filename="{filename}"',
        "cache-control": "no-store"})


async def alarms_csv(request: Request) -> Response:
    caller = await signed_in(request)
    r = await _register(caller, "csv")
    body = to_csv(r["table"])
    await _audit(caller, "csv", r)
    return _download(body, "text/csv; charset=utf-8", _filename(r, "csv"))


async def alarms_pdf(request: Request) -> Response:
    caller = await signed_in(request)
    try:
        register_font()  # before any read: a console without the font says so at once
    except ReportFontMissing as exc:
        raise ApiError(500, "font_missing", str(exc)) from None
    r = await _register(caller, "pdf")
    zone = zoneinfo.ZoneInfo(r["tz"])
    name = region_names(caller.console.zones).get(r["region"])
    title = ReportTitle(
        region=f"{name}（{r['region']}）" if name else r["region"],
        period=f"{format_ms(r['from_ms'], zone)} – {format_ms(r['to_ms'], zone)}",
        generated_at=format_ms(caller.console.clock_ms(), zone), generated_by=caller.name,
        zone=r["tz"])
    # Laying out thousands of rows takes a while: off the event loop.
    body = await asyncio.to_thread(to_pdf, r["table"], title, r["lang"])
    await _audit(caller, "pdf", r)
    return _download(body, "application/pdf", _filename(r, "pdf"))


ROUTES = [
    Route("/api/reports/alarms.csv", alarms_csv, methods=["GET"]),
    Route("/api/reports/alarms.pdf", alarms_pdf, methods=["GET"]),
]
