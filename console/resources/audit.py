"""``/api/audit``: the audit trail, newest first, for supervisors (the rows about their
regions and their colleagues) and admins (every row)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import OVERSEERS, Caller, signed_in
from console.http import int_param, json_response

# The audit view scans at most this many pages of this many rows per request.
AUDIT_SCAN_PAGES = 20
AUDIT_SCAN_ROWS = 500

Row = dict[str, Any]


async def audit(request: Request) -> Response:
    caller = await signed_in(request)
    caller.require_role(OVERSEERS, "the audit trail is for supervisors and admins")
    limit = int_param(request, "limit", 100, lo=1, hi=caller.settings.list_limit_max)
    before_id = int_param(request, "before_id", None, lo=1)
    who = request.query_params.get("who") or None
    action = request.query_params.get("action") or None
    assert limit is not None
    visible = await audit_scope(caller)
    rows: list[Row] = []
    cursor = before_id
    exhausted = False
    # A supervisor sees part of the log: scan it newest first, page by page, keeping
    # the rows in scope; the page bound keeps one request's work finite.
    for _ in range(AUDIT_SCAN_PAGES):
        page = await caller.gateway.audit_log(who=who, action=action, before_id=cursor,
                                              limit=AUDIT_SCAN_ROWS)
        for row in page:
            cursor = row["id"]
            if visible(row):
                rows.append(row)
                if len(rows) == limit:
                    break
        if len(rows) == limit:
            break
        if len(page) < AUDIT_SCAN_ROWS:
            exhausted = True
            break
    return json_response({"rows": rows, "next_before_id": None if exhausted else cursor})


async def audit_scope(caller: Caller) -> Callable[[Row], bool]:
    """A predicate: may the caller see this audit row?"""
    principal = caller.principal
    if principal.is_admin:
        return lambda row: True
    # Rows about their regions, and the rows about no region of accounts that share a
    # region with them (logins, logouts, refusals of their own operators). A
    # colleague's row about another region (a note on its alarm, a look at its
    # subject's track) is that region's business, not theirs.
    colleagues = {u["name"] for u in await caller.gateway.list_users()
                  if set(u["regions"]) & principal.regions}

    def visible(row: Row) -> bool:
        detail = row.get("detail") if isinstance(row.get("detail"), dict) else {}
        about: set[str] = set()
        if detail.get("region") is not None:
            about.add(str(detail["region"]))
        if isinstance(detail.get("regions"), list):
            about |= set(map(str, detail["regions"]))
        if about:
            return bool(about & principal.regions)
        return row.get("who") in colleagues

    return visible


ROUTES = [
    Route("/api/audit", audit, methods=["GET"]),
]
