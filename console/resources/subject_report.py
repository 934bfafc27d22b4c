"""``/api/subjects/{subject_id}/report.pdf?month=YYYY-MM&lang=zh|en``: a subject's monthly
report (:mod:`console.monthly_report`). A subject outside the caller's regions answers
404 like one that does not exist (the register's rule). Every report is audited
(``subject.report``): it tells where the subject was not allowed to be."""

from __future__ import annotations

import asyncio
import zoneinfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import signed_in
from console.http import ApiError
from console.monthly_report import month_bounds, month_summary, to_pdf
from console.regions import region_names
from console.register import scope
from console.report import format_ms
from console.report_pdf import ReportFontMissing, register_font
from console.resources.reports import _lang

# An episode raised this long before the month may still run into it.
LOOKBACK_MS = 366 * 86_400_000
MAX_ALARMS = 20_000


async def subject_report(request: Request) -> Response:
    caller = await signed_in(request)
    tz = caller.settings.timezone
    month = request.query_params.get("month")
    if not month:
        raise ApiError(400, "missing_param", "query parameter 'month' (YYYY-MM) is required",
                       field="month")
    try:
        from_ms, to_ms = month_bounds(month, tz)
    except ValueError as exc:
        raise ApiError(400, "bad_param", f"query parameter 'month': {exc}",
                       field="month") from None
    lang = _lang(request)
    try:
        register_font()
    except ReportFontMissing as exc:
        raise ApiError(500, "font_missing", str(exc)) from None
    subject = await caller.gateway.register("get_subject", request.path_params["subject_id"],
                                            regions=scope(caller))
    sid = subject["subject_id"]
    alarms = await caller.gateway.subject_alarms(sid, from_ms - LOOKBACK_MS, to_ms,
                                                 limit=MAX_ALARMS)
    now_ms = caller.console.clock_ms()
    summary = month_summary(alarms, subject.get("leave_requests") or [], from_ms, to_ms,
                            min(now_ms, to_ms))
    zone = zoneinfo.ZoneInfo(tz)
    name = region_names(caller.console.zones).get(subject["region"])
    head = {"month": month, "zone": tz, "generated_by": caller.name,
            "generated_at": format_ms(now_ms, zone),
            "region": f"{name}（{subject['region']}）" if name else subject["region"]}
    body = await asyncio.to_thread(to_pdf, subject, summary, head, lang)
    await caller.audit("subject.report", sid,
                       {"region": subject["region"], "month": month, "lang": lang,
                        "alarms": len(summary["alarms"])})
    return Response(body, media_type="application/pdf", headers={
        "content-disposition": f'attachment; filename="subject-report-{sid}-{month}.pdf"',
        "cache-control": "no-store"})


ROUTES = [
    Route("/api/subjects/{subject_id:str}/report.pdf", subject_report, methods=["GET"]),
]
