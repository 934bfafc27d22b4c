"""The channels' senders: how one notification row goes out. Each is an async context
(``async with sender:`` opens its connection pool) with ``send(row)`` returning None
when the receiver took the message, else why not (the outbox retries it).

- :class:`WebhookSender`: the signed POST of docs/notifications.md.
- :class:`EmailSender`: SMTP with the standard library (``smtplib``/``email``) in a
  worker thread: STARTTLS (certificate and host name verified) before the login, and
  the ``Message-ID`` ``<delivery_id@emfence>`` (plus ``X-Emfence-Delivery``), so a mail
  system can drop a duplicate.
- :class:`SmsSender`: the gateway request ``[notify.sms]`` describes (URL, method,
  headers, body templates), ``X-Emfence-Delivery`` on every request (``{delivery_id}``
  puts it in the body too, for gateways that take a request id), and its success
  condition (status, optionally a JSON value).

The people channels' rows hold the rendered message as JSON (``to``, ``subject``,
``text``: :mod:`alarms.notify_people`).
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import orjson

from alarms.notify import signature
from emfence.config import EmailConfig, SmsConfig, WebhookConfig, read_secret
from emfence.config.notify import PLACEHOLDER


class _HttpSender:
    channel = ""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self):
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


class WebhookSender(_HttpSender):
    channel = "webhook"

    def __init__(self, config: WebhookConfig):
        if not config.url:
            raise ValueError("notify.webhook.url is not set")
        super().__init__(config.timeout_s)
        self.config = config
        self.retry_min_s, self.retry_max_s = config.retry_min_s, config.retry_max_s
        self.secret = read_secret(config.secret_file, "notify.webhook.secret_file")

    def headers(self, row: dict[str, Any]) -> dict[str, str]:
        return {"Content-Type": "application/json",
                "X-Emfence-Delivery": row["delivery_id"],
                "X-Emfence-Signature": signature(row["body"], self.secret)}

    async def send(self, row: dict[str, Any]) -> str | None:
        assert self.client is not None, "use the sender in `async with`"
        try:
            resp = await self.client.post(self.config.url, content=row["body"],
                                          headers=self.headers(row))
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"


def message_id(delivery: str) -> str:
    """The e-mail ``Message-ID`` of one delivery: the same for every attempt."""
    return f"<{delivery}@emfence>"


class EmailSender:
    channel = "email"

    def __init__(self, config: EmailConfig):
        if not config.host:
            raise ValueError("notify.email.host is not set")
        self.config = config
        self.retry_min_s, self.retry_max_s = config.retry_min_s, config.retry_max_s
        self.password = (read_secret(config.password_file, "notify.email.password_file")
                         .decode() if config.password_file else "")
        self.tls = ssl.create_default_context(cafile=config.ca_file or None)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def message(self, row: dict[str, Any]) -> EmailMessage:
        body = orjson.loads(row["body"])
        msg = EmailMessage()
        msg["From"] = self.config.from_addr
        msg["To"] = body["to"]
        msg["Subject"] = body["subject"]
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = message_id(row["delivery_id"])
        msg["X-Emfence-Delivery"] = row["delivery_id"]
        msg.set_content(body["text"] + "\n")
        return msg

    def _send_sync(self, msg: EmailMessage) -> None:
        c = self.config
        with smtplib.SMTP(c.host, c.port, timeout=c.timeout_s) as smtp:
            smtp.ehlo()
            if c.starttls:
                if not smtp.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("the relay offers no STARTTLS")
                smtp.starttls(context=self.tls)
                smtp.ehlo()
            if c.username:
                smtp.login(c.username, self.password)
            smtp.send_message(msg)

    async def send(self, row: dict[str, Any]) -> str | None:
        try:
            await asyncio.to_thread(self._send_sync, self.message(row))
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None


# The body's Content-Type when notify.sms.headers gives none, per body_encoding.
_CONTENT_TYPES = {"json": "application/json; charset=utf-8",
                  "form": "application/x-www-form-urlencoded",
                  "raw": "text/plain; charset=utf-8"}


def _escape(value: str, encoding: str) -> str:
    if encoding == "json":
        return json.dumps(value, ensure_ascii=False)[1:-1]
    if encoding == "form":
        return quote_plus(value)
    return value


def fill(template: str, fields: dict[str, str], encode=lambda v: v) -> str:
    """``template`` with each ``{name}`` replaced by ``encode(fields[name])``."""
    return PLACEHOLDER.sub(lambda m: encode(fields[m.group(1)]), template)


def json_at(doc: Any, path: str) -> Any:
    """The value at a dotted path (``result.code``, ``items.0.status``), or KeyError."""
    for part in path.split("."):
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise KeyError(path)
    return doc


class SmsSender(_HttpSender):
    channel = "sms"

    def __init__(self, config: SmsConfig):
        if not config.url:
            raise ValueError("notify.sms.url is not set")
        super().__init__(config.timeout_s)
        self.config = config
        self.retry_min_s, self.retry_max_s = config.retry_min_s, config.retry_max_s
        self.token = (read_secret(config.token_file, "notify.sms.token_file").decode()
                      if config.token_file else "")

    def request(self, row: dict[str, Any]) -> tuple[str, dict[str, str], bytes | None]:
        """The gateway request of one row: (url, headers, body)."""
        c = self.config
        body = orjson.loads(row["body"])
        fields = {"phone": body["to"], "text": body["text"], "token": self.token,
                  "delivery_id": row["delivery_id"]}
        url = fill(c.url, fields, lambda v: quote(v, safe=""))
        headers = {k: fill(v, fields) for k, v in c.headers.items()}
        headers["X-Emfence-Delivery"] = row["delivery_id"]
        content = (fill(c.body, fields, lambda v: _escape(v, c.body_encoding)).encode()
                   if c.body else None)
        if content is not None and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = _CONTENT_TYPES[c.body_encoding]
        return url, headers, content

    def verdict(self, resp: httpx.Response) -> str | None:
        """None when the answer means sent, else why not."""
        c = self.config
        ok = resp.status_code == c.success_status if c.success_status else \
            200 <= resp.status_code < 300
        if not ok:
            return f"HTTP {resp.status_code}"
        if not c.success_json_path:
            return None
        try:
            value = json_at(resp.json(), c.success_json_path)
        except (ValueError, KeyError):
            return f"HTTP {resp.status_code}, no {c.success_json_path} in the answer"
        text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
        if text != c.success_value:
            return f"HTTP {resp.status_code}, {c.success_json_path} = {text!r}"
        return None

    async def send(self, row: dict[str, Any]) -> str | None:
        assert self.client is not None, "use the sender in `async with`"
        url, headers, content = self.request(row)
        try:
            resp = await self.client.request(self.config.method, url, headers=headers,
                                             content=content)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return self.verdict(resp)
