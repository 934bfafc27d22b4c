"""The ``[notify]`` tables: the channels alarms reach people and systems through
(docs/notifications.md), their checks, and the placeholder syntax of the SMS request
templates. Secrets come from files only (``*_file`` keys), read at start."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from emfence.config.errors import ConfigError, read_secret

# A template placeholder: ``{name}``; any other brace (a JSON body's) is literal text.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The fields an SMS request template may name.
SMS_FIELDS = ("phone", "text", "token", "delivery_id")
LANGS = ("zh", "en")


def template_fields(template: str) -> list[str]:
    """The placeholder names in ``template``, in order."""
    return PLACEHOLDER.findall(template)


@dataclass(frozen=True)
class WebhookConfig:
    # The receiver's URL; empty: no webhook. Every raised, cleared and escalated alarm
    # event is POSTed to it (docs/notifications.md).
    url: str = ""
    # A file holding the shared HMAC secret (its content, stripped): never on the command line.
    secret_file: str = ""
    # One request's time limit, s.
    timeout_s: float = 10.0
    # Retry backoff: first delay and cap, s (jittered), until a 2xx.
    retry_min_s: float = 1.0
    retry_max_s: float = 300.0


@dataclass(frozen=True)
class EmailConfig:
    # The SMTP relay's host name; empty: no e-mail channel.
    host: str = ""
    # Its port (587: submission with STARTTLS).
    port: int = 587
    # Upgrade the connection with STARTTLS before logging in (refuse a relay without it).
    starttls: bool = True
    # Login name; empty: no login.
    username: str = ""
    # A file holding the login password (its content, stripped); required with username.
    password_file: str = ""
    # The From: address.
    from_addr: str = ""
    # A PEM file of extra certificate authorities to trust (a relay with its own CA);
    # empty: the system's.
    ca_file: str = ""
    # One delivery's time limit (connect, TLS, login, send), s.
    timeout_s: float = 10.0
    # Retry backoff: first delay and cap, s (jittered), until the relay accepts.
    retry_min_s: float = 5.0
    retry_max_s: float = 600.0


@dataclass(frozen=True)
class SmsConfig:
    # The gateway's URL (may hold {phone} {text} {token} {delivery_id}); empty: no SMS.
    url: str = ""
    # The HTTP method: POST, PUT or GET.
    method: str = "POST"
    # Request headers (a table; values may hold the same placeholders).
    headers: dict[str, str] = field(default_factory=dict)
    # The request body template; empty: no body.
    body: str = ""
    # How placeholder values are escaped in the body: "json" (inside a JSON string),
    # "form" (URL-encoded) or "raw".
    body_encoding: str = "json"
    # The answer's HTTP status that means sent; 0: any 2xx.
    success_status: int = 0
    # Also required: the answer's JSON value at this dotted path (e.g. "result.code")...
    success_json_path: str = ""
    # ...equal to this (compared as text); both empty: the status alone decides.
    success_value: str = ""
    # A file holding the gateway's token, usable as {token} (its content, stripped).
    token_file: str = ""
    # One request's time limit, s.
    timeout_s: float = 10.0
    # Retry backoff: first delay and cap, s (jittered), until the gateway accepts.
    retry_min_s: float = 5.0
    retry_max_s: float = 600.0


@dataclass(frozen=True)
class NotifyConfig:
    # The language of people's messages when the roster gives none: "zh" or "en".
    lang: str = "zh"
    # Rate limit per recipient and channel: at most storm_max_per_recipient messages in
    # any storm_window_s; the rest become one summary message (docs/notifications.md), s...
    storm_window_s: float = 600.0
    # ...and messages.
    storm_max_per_recipient: int = 5
    # Tell the people already told when their alarm clears or an operator takes it over.
    closing_messages: bool = True
    # Channels: a table each (docs/notifications.md).
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)


def _http_url(url: str, key: str, source: str | None) -> None:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"must start with http:// or https://, got {url!r}", key=key,
                          source=source)


def _retries(cfg, name: str, source: str | None) -> None:
    for attr in ("timeout_s", "retry_min_s"):
        if getattr(cfg, attr) <= 0:
            raise ConfigError("must be positive", key=f"notify.{name}.{attr}", source=source)
    if cfg.retry_max_s < cfg.retry_min_s:
        raise ConfigError(f"must be >= notify.{name}.retry_min_s",
                          key=f"notify.{name}.retry_max_s", source=source)


def _check_webhook(w: WebhookConfig, source: str | None) -> None:
    if not w.url:
        if w.secret_file:
            raise ConfigError("is required with notify.webhook.secret_file",
                              key="notify.webhook.url", source=source)
        return
    _http_url(w.url, "notify.webhook.url", source)
    if not w.secret_file:
        raise ConfigError("is required with notify.webhook.url (the signing key)",
                          key="notify.webhook.secret_file", source=source)
    read_secret(w.secret_file, "notify.webhook.secret_file", source)
    _retries(w, "webhook", source)


def _check_email(e: EmailConfig, source: str | None) -> None:
    if not e.host:
        if e != EmailConfig():
            raise ConfigError("is required with the other notify.email keys",
                              key="notify.email.host", source=source)
        return
    if not 1 <= e.port <= 65535:
        raise ConfigError(f"must be a port number, got {e.port}", key="notify.email.port",
                          source=source)
    if "@" not in e.from_addr:
        raise ConfigError(f"must be an e-mail address, got {e.from_addr!r}",
                          key="notify.email.from_addr", source=source)
    if bool(e.username) != bool(e.password_file):
        key = "password_file" if e.username else "username"
        raise ConfigError("is required with notify.email."
                          + ("username" if e.username else "password_file"),
                          key=f"notify.email.{key}", source=source)
    if e.username and not e.starttls:
        raise ConfigError("must be true with notify.email.username (never a password in "
                          "clear text)", key="notify.email.starttls", source=source)
    if e.password_file:
        read_secret(e.password_file, "notify.email.password_file", source)
    if e.ca_file:
        read_secret(e.ca_file, "notify.email.ca_file", source)
    _retries(e, "email", source)


def _check_sms_templates(s: SmsConfig, source: str | None) -> None:
    templates = [("url", s.url), ("body", s.body),
                 *((f"headers.{k}", v) for k, v in s.headers.items())]
    for name, template in templates:
        for f in template_fields(template):
            if f not in SMS_FIELDS:
                raise ConfigError(f"names an unknown field {{{f}}}; known: "
                                  + ", ".join(f"{{{k}}}" for k in SMS_FIELDS),
                                  key=f"notify.sms.{name}", source=source)
            if f == "token" and not s.token_file:
                raise ConfigError(f"is required: notify.sms.{name} names {{token}}",
                                  key="notify.sms.token_file", source=source)
    if "text" not in template_fields(s.url + s.body):
        raise ConfigError("must name {text} (in url or body)", key="notify.sms.body",
                          source=source)


def _check_sms(s: SmsConfig, source: str | None) -> None:
    if not s.url:
        if s != SmsConfig():
            raise ConfigError("is required with the other notify.sms keys",
                              key="notify.sms.url", source=source)
        return
    _http_url(s.url, "notify.sms.url", source)
    if s.method not in ("POST", "PUT", "GET"):
        raise ConfigError(f'must be "POST", "PUT" or "GET", got {s.method!r}',
                          key="notify.sms.method", source=source)
    if s.body_encoding not in ("json", "form", "raw"):
        raise ConfigError(f'must be "json", "form" or "raw", got {s.body_encoding!r}',
                          key="notify.sms.body_encoding", source=source)
    if s.success_status and not 100 <= s.success_status <= 599:
        raise ConfigError(f"must be 0 (any 2xx) or an HTTP status, got {s.success_status}",
                          key="notify.sms.success_status", source=source)
    if bool(s.success_json_path) != bool(s.success_value):
        key = "success_value" if s.success_json_path else "success_json_path"
        raise ConfigError("is required with the other of success_json_path / success_value",
                          key=f"notify.sms.{key}", source=source)
    _check_sms_templates(s, source)
    if s.token_file:
        read_secret(s.token_file, "notify.sms.token_file", source)
    _retries(s, "sms", source)


def check_notify(n: NotifyConfig, public_url: str, source: str | None) -> None:
    """Refuse a bad ``[notify]`` table (and ``console.public_url``), naming the key."""
    if n.lang not in LANGS:
        raise ConfigError(f'must be "zh" or "en", got {n.lang!r}', key="notify.lang",
                          source=source)
    if n.storm_window_s <= 0:
        raise ConfigError("must be positive", key="notify.storm_window_s", source=source)
    if n.storm_max_per_recipient < 1:
        raise ConfigError("must be at least 1", key="notify.storm_max_per_recipient",
                          source=source)
    if public_url:
        _http_url(public_url, "console.public_url", source)
    _check_webhook(n.webhook, source)
    _check_email(n.email, source)
    _check_sms(n.sms, source)
