"""The console's HTTP vocabulary, shared by every resource: JSON answers, API errors, the
security headers, and the parsers of query parameters and JSON bodies.

Nothing here knows the store, sessions or resources; everything above imports it.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("emfence.console")

COOKIE = "emfence_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Bodies larger than this are refused before they are parsed, bytes.
MAX_BODY_BYTES = 16 * 1024

# The page loads nothing from elsewhere (no CDN, no fonts), so the policy can be tight;
# the one exception is the base map's tile server (console.tiles), whose origins alone
# are added to img-src.
def csp(img_origins: list[str] | tuple[str, ...] = ()) -> str:
    """The Content-Security-Policy, images also allowed from ``img_origins``."""
    img = " ".join(["'self'", "data:", *img_origins])
    return ("default-src 'self'; script-src 'self'; style-src 'self'; "
            f"img-src {img}; "
            "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


def security_headers(img_origins: list[str] | tuple[str, ...] = ()) -> list[tuple[bytes, bytes]]:
    """The headers every response carries."""
    return [
        (b"content-security-policy", csp(img_origins).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
        (b"permissions-policy", b"geolocation=(), camera=(), microphone=()"),
    ]


class ApiError(HTTPException):
    """An HTTP error with a stable machine-readable ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, *, field: str | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code
        # The request field at fault ("end", "zones[1]"), when there is one.
        self.field = field


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson-encoded JSON; never cached (the bodies carry personal data)."""
    h = {"cache-control": "no-store"}
    h.update(headers or {})
    return Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status_code=status,
                    media_type="application/json", headers=h)


class SecurityHeaders:
    """Adds the security headers above to every HTTP response (pure ASGI, so streaming
    responses such as the live feed pass through untouched); ``img_origins``: the tile
    server's origins, the only other place the page may load images from."""

    def __init__(self, app: ASGIApp, img_origins: list[str] | tuple[str, ...] = ()):
        self.app = app
        self.headers = security_headers(img_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def api_error(request: Request, exc: Exception) -> Response:
    """An :class:`ApiError` (or Starlette's own 404/405) as ``{error, message}``, plus
    ``field`` when the error names the request field at fault."""
    if isinstance(exc, ApiError):
        body = {"error": exc.code, "message": exc.detail}
        if exc.field is not None:
            body["field"] = exc.field
        return json_response(body, exc.status_code, headers=exc.headers)
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return json_response({"error": code, "message": exc.detail}, exc.status_code,
                         headers=exc.headers)


async def store_error(request: Request, exc: Exception) -> Response:
    """A store failure as 503 ``store_unavailable`` with ``Retry-After``."""
    # The database is down or refused: say so plainly; the details go to the log only
    # (they may name hosts and tables).
    log.error("store error on %s %s: %s", request.method, request.url.path, exc)
    return json_response({"error": "store_unavailable",
                          "message": "the alarm store is not answering; try again shortly"},
                         503, headers={"retry-after": "5"})


async def read_json(request: Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object; 415 for another content type, 413 over
    ``max_bytes``, 400 if malformed."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "content_type", "send the body as application/json")
    body = await request.body()
    if len(body) > max_bytes:
        raise ApiError(413, "too_large", f"body is larger than {max_bytes} bytes")
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    return data


def text_field(data: dict[str, Any], key: str, *, required: bool, max_chars: int) -> str | None:
    """A string field of a JSON body, validated; 400 naming the field otherwise."""
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(400, "missing_field", f"field {key!r} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(400, "bad_field", f"field {key!r} must be a string")
    if len(value) > max_chars:
        raise ApiError(400, "bad_field", f"field {key!r} is longer than {max_chars} characters")
    return value


def int_param(request: Request, key: str, default: int | None, *, lo: int | None = None,
              hi: int | None = None) -> int | None:
    """An integer query parameter within [lo, hi]; 400 naming it otherwise."""
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_param", f"query parameter {key!r} must be an integer") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ApiError(400, "bad_param",
                       f"query parameter {key!r} must be within [{lo}, {hi}], got {value}")
    return value


def list_param(request: Request, key: str, choices: tuple[str, ...]) -> list[str] | None:
    """A comma-separated list parameter whose items are all in ``choices``; None if absent."""
    raw = request.query_params.get(key)
    if not raw:
        return None
    items = [x.strip() for x in raw.split(",") if x.strip()]
    for item in items:
        if item not in choices:
            raise ApiError(400, "bad_param",
                           f"query parameter {key!r}: {item!r} is not one of {', '.join(choices)}")
    return items
