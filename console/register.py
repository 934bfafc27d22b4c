"""What the register's resources (subjects, devices, zones, leaves) share: the caller's
scope in the register's terms, the fields of their bodies, the changes that carry the
caller's name and the console's clock, and the answer to a ``RegisterError``.

The register (``store.register``, :mod:`alarms.register`) checks and applies every
change in one transaction and writes its audit row with ``before`` and ``after``; this
module only turns HTTP into its arguments and its errors back into HTTP.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from console.access import Caller
from console.auth import AuthError, parse_regions
from console.http import ApiError, json_response, read_json
from engine.registry import parse_time_ms

# The machine-readable code of a register refusal, by its HTTP status.
_CODES = {400: "bad_field", 403: "forbidden", 404: "not_found", 409: "conflict"}
# Longest free text accepted in a register field (a name, a reason, a note).
MAX_TEXT_CHARS = 2000
# A zone upload may carry a county outline: larger than the console's usual bodies.
MAX_ZONE_BODY_BYTES = 4 * 1024 * 1024


async def register_error(request: Request, exc: Exception) -> Response:
    """A ``RegisterError`` as ``{error, message, field}`` with the register's status."""
    status = int(getattr(exc, "status", 400))
    field = getattr(exc, "field", None)
    message = str(getattr(exc, "reason", None) or exc)
    if field is not None and field not in message:
        # "end: longer than 30 days" reads on its own, without the JSON around it.
        message = f"{field}: {message}"
    body: dict[str, Any] = {"error": _CODES.get(status, "bad_field"), "message": message}
    if field is not None:
        body["field"] = field
    return json_response(body, status)


def scope(caller: Caller, *, narrowed: bool = False) -> set[str] | None:
    """The caller's regions as the register takes them (None: every region);
    ``narrowed`` applies the ``?region=`` filter of a list query."""
    regions = caller.regions() if narrowed else caller.principal.scope
    return None if regions is None else set(regions)


def require_region(caller: Caller, region: Any, field: str = "region") -> None:
    """403 naming ``field`` when ``region`` (a code) is outside the caller's regions: an
    operator enrols and moves subjects only within their own."""
    try:
        parse_regions([region] if isinstance(region, str) else [])
    except AuthError:
        return  # not a region code at all: the register answers 400 naming the field
    if isinstance(region, str) and not caller.principal.can_see(region):
        raise ApiError(403, "forbidden", f"region {region!r} is not one of yours",
                       field=field)


async def change(caller: Caller, method: str, *args: Any, **kwargs: Any) -> Any:
    """A register change by the caller, now (the console's clock)."""
    return await caller.gateway.register(method, *args, actor=caller.name,
                                         now_ms=caller.console.clock_ms(), **kwargs)


def time_field(data: dict[str, Any], key: str, *, required: bool) -> int | None:
    """A time of a body (epoch ms, or ISO 8601 with a UTC offset) as epoch ms; 400
    naming ``key`` otherwise."""
    value = data.get(key)
    if value is None:
        if required:
            raise ApiError(400, "missing_field", f"field {key!r} is required", field=key)
        return None
    try:
        return parse_time_ms(value, f"field {key!r}")
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "bad_field", str(exc), field=key) from None


def text(data: dict[str, Any], key: str, *, required: bool = False,
         max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """A string field (None when absent or blank); 400 naming ``key`` when it is
    required and missing, not a string, or too long."""
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(400, "missing_field", f"field {key!r} is required", field=key)
        return None
    if not isinstance(value, str):
        raise ApiError(400, "bad_field", f"field {key!r} must be a string", field=key)
    if len(value) > max_chars:
        raise ApiError(400, "bad_field",
                       f"field {key!r} is longer than {max_chars} characters", field=key)
    return value


def only_keys(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """400 naming the first key of ``data`` that is not in ``allowed``."""
    for key in data:
        if key not in allowed:
            raise ApiError(400, "bad_field",
                           f"field {key!r} is not one of {', '.join(allowed)}", field=key)


def query_text(request: Request, key: str, max_chars: int = 200) -> str | None:
    """A free-text query parameter (None when absent or blank)."""
    value = (request.query_params.get(key) or "").strip()
    if len(value) > max_chars:
        raise ApiError(400, "bad_param",
                       f"query parameter {key!r} is longer than {max_chars} characters",
                       field=key)
    return value or None


async def optional_json(request: Request) -> dict[str, Any]:
    """The JSON object of a body that may be empty (an action such as ``/return``)."""
    if not await request.body():
        return {}
    return await read_json(request)


def leave_max_days(caller: Caller) -> int:
    """``register.leave_max_days`` of the console's config (30 without one)."""
    register = getattr(caller.console.config, "register", None)
    return int(getattr(register, "leave_max_days", 30))
