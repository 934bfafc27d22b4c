"""Accounts, passwords, sessions, CSRF tokens and login rate limiting.

Nothing here does I/O or reads a clock: every function that depends on time takes
``now_ms`` (epoch milliseconds), so the HTTP layer owns the clock and tests can move it.

Design choices, and why:

* Passwords are hashed with argon2id (argon2-cffi's defaults, tuned by its maintainers).
  A login for an unknown name still verifies against a dummy hash, so response time
  does not tell which account names exist.
* Sessions are server-side: the cookie carries only a random 256-bit token, so logout
  and account disabling take effect at once, and nothing personal sits in the browser.
  The table lives in the console process; a restart logs operators out, which is the
  safe failure.
* CSRF uses the synchronizer-token pattern: each session has its own random token,
  handed to the page at login and required in the ``X-CSRF-Token`` header of every
  state-changing request (the cookie is also ``SameSite=Strict``).
* Failed logins are counted per account name and per client address over a sliding
  window, in the store (``login_attempts``), so the limit holds across console
  restarts and across workers sharing one PostgreSQL; over either limit, login answers
  429 with ``Retry-After`` before the password is even checked (see
  ``console.resources.session``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from contract.errors import EmfenceError

ROLES = ("operator", "supervisor", "admin")

_hasher = PasswordHasher()
# Verified against when the account does not exist, so the time taken is the same.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AuthError(EmfenceError, ValueError):
    """A user definition is invalid (bad role, bad region list, weak password)."""


def hash_password(password: str) -> str:
    """The argon2id hash string of ``password`` (random salt; safe to store)."""
    if not isinstance(password, str) or not password:
        raise AuthError("password must be a non-empty string")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; a missing hash costs the same time."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_REGION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_regions(text: str | Iterable[str]) -> tuple[str, ...]:
    """Region codes from ``"411303,411302"`` (or an iterable), validated and de-duplicated.

    A region is a county (district) code such as ``411303``; like every MQTT topic level
    it is 1-64 letters, digits, ``_`` or ``-``. Raises :class:`AuthError` naming the
    offending entry.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in items:
        code = str(raw).strip()
        if not code:
            continue
        if not _REGION.match(code):
            raise AuthError(f"region {code!r} is not a region code (e.g. 411303)")
        if code not in out:
            out.append(code)
    return tuple(out)


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`, else :class:`AuthError`."""
    if role not in ROLES:
        raise AuthError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Principal:
    """The logged-in user as the console sees them: name, role and region scope."""

    name: str
    role: str
    regions: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> list[str] | None:
        """Regions to pass to store queries: ``None`` means every region (admin)."""
        return None if self.is_admin else sorted(self.regions)

    def can_see(self, region: str | None) -> bool:
        """May this user see and act on things in ``region``?"""
        return self.is_admin or (region is not None and str(region) in self.regions)

    def narrow(self, requested: str | None) -> list[str] | None:
        """The scope for a query filtered to ``requested`` regions (comma list or None).

        Asking for a region outside one's scope yields an empty scope, not an error, so a
        filter cannot be used to probe which regions exist.
        """
        if not requested:
            return self.scope
        wanted = [r for r in parse_regions(requested)]
        return wanted if self.is_admin else [r for r in wanted if r in self.regions]


def principal_from_user(user: Mapping[str, Any] | Any) -> Principal:
    """A :class:`Principal` from a store user record (a mapping or an object)."""

    def get(key: str, default: Any = None) -> Any:
        if isinstance(user, Mapping):
            return user.get(key, default)
        return getattr(user, key, default)

    regions = get("regions") or ()
    if isinstance(regions, str):
        regions = [r for r in regions.split(",") if r.strip()]
    return Principal(name=str(get("name")), role=str(get("role")),
                     regions=frozenset(str(r).strip() for r in regions))


def user_disabled(user: Mapping[str, Any] | Any) -> bool:
    value = user.get("disabled") if isinstance(user, Mapping) else getattr(user, "disabled", False)
    return bool(value)


def user_password_hash(user: Mapping[str, Any] | Any) -> str | None:
    if isinstance(user, Mapping):
        return user.get("password_hash")
    return getattr(user, "password_hash", None)


@dataclass
class Session:
    """One login: the cookie token, its CSRF token, whose it is and its times (epoch ms).

    ``credential`` is a digest of the password hash the user logged in with: a password
    change (e.g. after a suspected compromise) ends every session opened before it.
    """

    token: str
    csrf: str
    user: str
    created_ms: int
    last_seen_ms: int
    credential: str = ""


def credential_digest(password_hash: str | None) -> str:
    """A digest naming one password hash (the hash itself is not kept in sessions)."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()


class SessionTable:
    """Server-side sessions with an idle timeout and an absolute lifetime.

    Thread-safe: the HTTP server may call it from several worker threads.
    """

    def __init__(self, *, idle_ms: int, max_ms: int):
        if idle_ms <= 0 or max_ms <= 0:
            raise ValueError("session idle and max lifetimes must be positive")
        self.idle_ms = int(idle_ms)
        self.max_ms = int(max_ms)
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str, now_ms: int, credential: str = "") -> Session:
        session = Session(token=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32),
                          user=user, created_ms=now_ms, last_seen_ms=now_ms,
                          credential=credential)
        with self._lock:
            self._expire(now_ms)
            self._by_token[session.token] = session
        return session

    def get(self, token: str | None, now_ms: int) -> Session | None:
        """The live session for ``token`` (touching its idle clock), or None."""
        if not token:
            return None
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None
            if self._expired(session, now_ms):
                del self._by_token[token]
                return None
            session.last_seen_ms = now_ms
            return session

    def drop(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)

    def drop_user(self, user: str) -> int:
        """End every session of ``user`` (e.g. after the account is disabled)."""
        with self._lock:
            gone = [t for t, s in self._by_token.items() if s.user == user]
            for t in gone:
                del self._by_token[t]
        return len(gone)

    def __len__(self) -> int:
        return len(self._by_token)

    def _expired(self, s: Session, now_ms: int) -> bool:
        return now_ms - s.last_seen_ms >= self.idle_ms or now_ms - s.created_ms >= self.max_ms

    def _expire(self, now_ms: int) -> None:
        for t in [t for t, s in self._by_token.items() if self._expired(s, now_ms)]:
            del self._by_token[t]


def csrf_ok(session: Session, presented: str | None) -> bool:
    """Constant-time comparison of the presented CSRF token with the session's."""
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), presented.encode())
