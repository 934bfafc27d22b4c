"""``/api/board``: the status board, the morning check's view (issue #16;
docs/console-api.md, "The status board"). Every active subject of the caller's regions
with its devices' online state, newest fix and status, its zone state and open alarms.
A read of location data: audited (``board.read``), region-scoped (a ``?region=`` not the
caller's answers 403). A subject in a register curfew window now shows ``curfew``
(windows in ``register.timezone``)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alarms.board import ZONE_STATES
from console.access import signed_in
from console.http import ApiError, json_response
from console.register import query_text, require_region

# ?state=: a zone state, or offline (a device offline) or alarm (an open alarm).
STATES = (*ZONE_STATES, "offline", "alarm")
# The supervision levels (emfence.config.LEVELS, the register's subject level).
LEVELS = ("strict", "ordinary", "lenient")


def _newest_fix(row: dict[str, Any]) -> int:
    return max((d["last_fix_ts_ms"] or 0 for d in row["devices"]), default=0)


def _battery(row: dict[str, Any]) -> float:
    values = [d["battery_pct"] for d in row["devices"] if d["battery_pct"] is not None]
    return min(values) if values else 101.0


SORT_KEYS = {
    "subject_id": lambda r: r["subject_id"], "name": lambda r: r["name"],
    "level": lambda r: r["level"], "officer": lambda r: r["officer"] or "",
    "region": lambda r: r["region"], "zone_state": lambda r: r["zone_state"],
    "last_fix": _newest_fix, "battery": _battery, "open_alarms": lambda r: r["open_alarms"],
}


def _timezone(caller: Any) -> str:
    """``register.timezone`` of the console's config (the register's curfews are in it)."""
    register = getattr(caller.console.config, "register", None)
    return str(getattr(register, "timezone", "Asia/Shanghai"))


def _param(request: Request, key: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(key) or None
    if value is not None and value not in allowed:
        raise ApiError(400, "bad_param",
                       f"query parameter {key!r} is one of {', '.join(allowed)}", field=key)
    return value


def _matches(row: dict[str, Any], state: str | None) -> bool:
    if state == "offline":
        return any(d["online"] is False for d in row["devices"])
    if state == "alarm":
        return row["open_alarms"] > 0
    return state is None or row["zone_state"] == state


async def board(request: Request) -> Response:
    caller = await signed_in(request)
    region = request.query_params.get("region") or None
    if region is not None:
        require_region(caller, region)
    level = _param(request, "level", LEVELS)
    state = _param(request, "state", STATES)
    sort = request.query_params.get("sort") or "subject_id"
    if sort.lstrip("-") not in SORT_KEYS:
        raise ApiError(400, "bad_param", "query parameter 'sort' is one of "
                       f"{', '.join(SORT_KEYS)} (a leading - sorts descending)", field="sort")
    q = query_text(request, "q")
    needle = q.strip().lower() if q and q.strip() else None
    regions = caller.regions()
    rows = await caller.gateway.board(regions, caller.console.clock_ms(),
                                      timezone=_timezone(caller))
    rows = [r for r in rows if (level is None or r["level"] == level) and _matches(r, state)
            and (needle is None or needle in r["subject_id"].lower()
                 or needle in r["name"].lower() or needle in (r["officer"] or "").lower())]
    rows.sort(key=SORT_KEYS[sort.lstrip("-")], reverse=sort.startswith("-"))
    await caller.audit("board.read", None,
                       {"regions": regions, "level": level, "state": state, "q": q,
                        "sort": sort, "subjects": len(rows)})
    return json_response({"subjects": rows, "now_ms": caller.console.clock_ms()})


ROUTES = [Route("/api/board", board, methods=["GET"])]
