"""``/api/alarms/{alarm_id}/evidence.zip``: the alarm's evidence pack (证据包,
:mod:`console.evidence`): the fixes and register that decided it, its stored events and
who handled it, with the command that re-derives it. The pack holds the subject's
locations: an export is audited as a read of them (``alarms.evidence``)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alarms.register import RegisterError
from console.access import alarm_in_scope, signed_in
from console.evidence import build_pack, evidence_window
from emfence.config import Config


async def evidence_zip(request: Request) -> Response:
    caller = await signed_in(request)
    alarm = await alarm_in_scope(caller, "evidence")
    config = caller.console.config if isinstance(caller.console.config, Config) else Config()
    level = await _level(caller, alarm)
    window = evidence_window(alarm, config, level, caller.settings.track_window_ms)
    reads = await caller.gateway.evidence(alarm["alarm_id"], alarm["subject_id"],
                                          window["from_ms"], window["to_ms"],
                                          int(alarm["raised_at"]))
    now_ms = caller.console.clock_ms()
    body = await asyncio.to_thread(build_pack, alarm, reads, config=config, window=window,
                                   who=caller.name, now_ms=now_ms, tz=caller.settings.timezone)
    await caller.audit("alarms.evidence", alarm["alarm_id"],
                       {"subject_id": alarm["subject_id"], "region": alarm["region"],
                        "from_ms": window["from_ms"], "to_ms": window["to_ms"],
                        "fixes": len(reads["fixes"]), "bytes": len(body)})
    return Response(body, media_type="application/zip", headers={
        "content-disposition": f'attachment; filename="evidence-{alarm["alarm_id"]}.zip"',
        "cache-control": "no-store"})


async def _level(caller, alarm) -> str | None:
    """The subject's management level when the alarm was raised (None: not registered
    then; the window then covers every level)."""
    try:
        subject = await caller.gateway.register("get_subject", alarm["subject_id"],
                                                at_ms=int(alarm["raised_at"]))
    except RegisterError:
        return None
    return subject.get("level")


ROUTES = [
    Route("/api/alarms/{alarm_id:str}/evidence.zip", evidence_zip, methods=["GET"]),
]
