"""``/api/events``: the event log after a sequence number, for a client that polls
instead of holding the live feed open (:mod:`console.resources.feed`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console.access import signed_in
from console.http import int_param, json_response


def feed_item(row: dict[str, Any]) -> dict[str, Any]:
    """An event-log row as the feed and the API show it."""
    return {"seq": row["seq"], "event": row["event"], "alarm_id": row["alarm_id"],
            "type": row["type"], "region": row["region"], "created_at": row["created_at"],
            "data": row["data"]}


async def events(request: Request) -> Response:
    caller = await signed_in(request)
    scope = caller.principal.scope
    since = int_param(request, "since", 0, lo=0)
    limit = int_param(request, "limit", 500, lo=1, hi=caller.settings.list_limit_max)
    assert since is not None and limit is not None
    rows = await caller.gateway.events_since(since, scope, limit)
    if rows:
        # Events carry the evidence of raised alarms; an empty poll shows nothing and
        # is not written, so a system polling often does not flood the trail.
        await caller.audit("events.view", None,
                           {"regions": scope, "since": since, "limit": limit,
                            "events": len(rows), "last_seq": rows[-1]["seq"]})
    return json_response({"events": [feed_item(r) for r in rows],
                          "seq": rows[-1]["seq"] if rows else since})


ROUTES = [
    Route("/api/events", events, methods=["GET"]),
]
