"""Console accounts, login attempts (the shared login rate limit) and the audit log.

The store never sees a password, only the hash the console's hasher made. Every change
to an account, every login and every alarm action is audited in the transaction that
does it (:func:`audit_row`); callers add rows for what the store does not see
(:meth:`UserStore.audit`).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from alarms.db import Cursor, Database, StoreError, Where, as_list, count, int_ms
from alarms.schema import LANGS, REGION_CODE, ROLES
from contract.errors import EmfenceError


class UserError(EmfenceError, ValueError):
    """A user account operation is not possible: ``name`` and ``reason``."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"user {name!r}: {reason}")


@dataclass(frozen=True)
class LoginAttempt:
    """What :meth:`AlarmStore.begin_login` decided about one login attempt.

    ``allowed``: the password may be checked (the attempt is recorded as ``attempt_id``,
    counted as failed until :meth:`AlarmStore.finish_login` records a success).
    ``failed_by_name`` / ``failed_by_ip``: failed and unfinished attempts in the window
    before this one.
    """

    allowed: bool
    attempt_id: int | None
    failed_by_name: int
    failed_by_ip: int


def _login_lock_key(kind: str, value: str) -> int:
    """A signed 32-bit key naming one account name or client address for a lock."""
    digest = hashlib.blake2b(f"{kind}\0{value}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _user_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    row["regions"] = orjson.loads(row["regions"])
    row["disabled"] = bool(row["disabled"])
    return row


def audit_row(cur: Cursor, who: str | None, action: str, target: str | None,
              detail: Any, now_ms: int, ip: str | None) -> None:
    """Append one audit row in the caller's transaction (``detail``: any JSON-able value)."""
    cur.execute("INSERT INTO audit (at, who, action, target, detail, ip) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (now_ms, who, action, target,
                 None if detail is None else orjson.dumps(detail).decode(), ip))


class UserStore:
    """Users, logins and the audit log of :class:`alarms.store.AlarmStore`."""

    _db: Database

    # --- users --------------------------------------------------------------------------

    @staticmethod
    def _check_user_fields(name: str, role: str | None, regions: Iterable[str] | None
                           ) -> list[str] | None:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
            raise UserError(str(name), "a user name is 1-64 letters, digits, '_', '.', '@', '-'")
        if role is not None and role not in ROLES:
            raise UserError(name, f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if regions is None:
            return None
        out = as_list(regions, "regions") or []
        for r in out:
            if not REGION_CODE.match(r):
                raise UserError(name, f"region {r!r} is not a region code")
        return out

    @staticmethod
    def _check_lang(name: str, lang: str | None) -> str | None:
        if lang is not None and lang not in LANGS:
            raise UserError(name, f"lang must be one of {', '.join(LANGS)}, got {lang!r}")
        return lang

    def add_user(self, name: str, password_hash: str, role: str, regions: Iterable[str],
                 now_ms: int, *, by: str | None = None,
                 lang: str | None = None) -> dict[str, Any]:
        """Create a console account (the hash comes from the console's password hasher).

        ``regions``: the region codes the user may see and act in; ``lang``: the console
        language (one of LANGS; None: not chosen, the browser's is used). Audited (``by``,
        if given, is who created it). Raises :class:`UserError` if the name exists or a
        field is bad.
        """
        now_ms = int_ms(now_ms, "now_ms")
        region_list = self._check_user_fields(name, role, regions)
        self._check_lang(name, lang)
        if not isinstance(password_hash, str) or not password_hash:
            raise UserError(name, "a password hash is required")
        detail: dict[str, Any] = {"role": role, "regions": region_list}
        if lang is not None:
            detail["lang"] = lang
        with self._db.tx("add user") as cur:
            n = cur.execute("INSERT INTO users (name, password_hash, role, regions, disabled, "
                            "created_at, updated_at, lang) VALUES (?, ?, ?, ?, 0, ?, ?, ?) "
                            "ON CONFLICT (name) DO NOTHING",
                            (name, password_hash, role, orjson.dumps(region_list).decode(),
                             now_ms, now_ms, lang)).rowcount
            if n != 1:
                raise UserError(name, "already exists")
            audit_row(cur, by, "user.add", name, detail, now_ms, None)
        return self.get_user(name)  # type: ignore[return-value]

    def get_user(self, name: str) -> dict[str, Any] | None:
        """``{name, password_hash, role, regions: [..], disabled, created_at, updated_at,
        lang}`` (``lang``: the chosen console language, or None)."""
        with self._db.tx("get user", write=False) as cur:
            return _user_row(cur.execute("SELECT name, password_hash, role, regions, disabled, "
                                         "created_at, updated_at, lang FROM users "
                                         "WHERE name = ?", (name,)).one())

    def list_users(self) -> list[dict[str, Any]]:
        """Every account, by name, without password hashes."""
        with self._db.tx("list users", write=False) as cur:
            rows = cur.execute("SELECT name, role, regions, disabled, created_at, updated_at, "
                               "lang FROM users ORDER BY name").all()
        return [_user_row(r) for r in rows]  # type: ignore[misc]

    def _update_user(self, op: str, name: str, sets: str, params: tuple[Any, ...],
                     now_ms: int, by: str | None, detail: dict[str, Any], *,
                     ip: str | None = None) -> None:
        with self._db.tx(op) as cur:
            n = cur.execute(f"UPDATE users SET {sets}, updated_at = ? WHERE name = ?",
                            (*params, now_ms, name)).rowcount
            if n != 1:
                raise UserError(name, "no such user")
            audit_row(cur, by, op, name, detail, now_ms, ip)

    def set_user_disabled(self, name: str, disabled: bool, now_ms: int | None = None, *,
                          by: str | None = None) -> None:
        """Disable (or re-enable) an account; audited."""
        now = time.time_ns() // 1_000_000 if now_ms is None else int_ms(now_ms, "now_ms")
        self._update_user("user.disable" if disabled else "user.enable", name,
                          "disabled = ?", (int(bool(disabled)),), now, by, {})

    def set_user_password(self, name: str, password_hash: str, now_ms: int, *,
                          by: str | None = None) -> None:
        """Replace an account's password hash; audited (without the hash)."""
        if not isinstance(password_hash, str) or not password_hash:
            raise UserError(name, "a password hash is required")
        self._update_user("user.password", name, "password_hash = ?", (password_hash,),
                          int_ms(now_ms, "now_ms"), by, {})

    def set_user_role(self, name: str, role: str, regions: Iterable[str], now_ms: int, *,
                      by: str | None = None) -> None:
        """Change an account's role and regions; audited."""
        region_list = self._check_user_fields(name, role, regions)
        self._update_user("user.role", name, "role = ?, regions = ?",
                          (role, orjson.dumps(region_list).decode()),
                          int_ms(now_ms, "now_ms"), by, {"role": role, "regions": region_list})

    def set_user_lang(self, name: str, lang: str | None, now_ms: int, *,
                      by: str | None = None, ip: str | None = None,
                      action: str = "user.lang") -> None:
        """Set an account's console language (one of LANGS; None: back to the browser's);
        audited as ``action`` with ``{"lang": lang}`` (the console's own choice, by the
        signed-in user, is ``session.lang``)."""
        self._update_user(action, name, "lang = ?", (self._check_lang(name, lang),),
                          int_ms(now_ms, "now_ms"), by, {"lang": lang}, ip=ip)

    def begin_login(self, name: str, ip: str | None, now_ms: int, *, window_ms: int,
                    max_failed_per_name: int, max_failed_per_ip: int) -> LoginAttempt:
        """Count a login attempt *before* its password is checked, atomically.

        One transaction that no other attempt for the same name or the same address can
        run beside (PostgreSQL: transaction-scoped advisory locks per name and per
        address; SQLite: its single writer, across processes too) forgets attempts older
        than ``window_ms``, counts the failed and unfinished attempts in the window for
        ``name`` and for ``ip``, and then either

        - records this attempt and answers ``allowed`` (check the password, then call
          :meth:`finish_login`; until then the attempt counts as failed, so parallel
          attempts cannot all pass the limit together), or
        - over ``max_failed_per_name`` or ``max_failed_per_ip``, audits ``login.blocked``
          and records nothing (a blocked attempt does not extend the block).
        """
        now_ms = int_ms(now_ms, "now_ms")
        since_ms = now_ms - count(window_ms, "window_ms")
        keys = [_login_lock_key("name", name)]
        if ip is not None:
            keys.append(_login_lock_key("ip", ip))
        with self._db.tx("begin login") as cur:
            self._db.lock_logins(cur, keys)
            # Attempts hold client addresses (personal data) and matter only inside the
            # window; the audit log keeps the trail of every login.
            cur.execute("DELETE FROM login_attempts WHERE at < ?", (since_ms,))
            row = cur.execute(
                "SELECT COALESCE(SUM(CASE WHEN name = ? THEN 1 ELSE 0 END), 0) AS by_name, "
                "COALESCE(SUM(CASE WHEN ip = ? THEN 1 ELSE 0 END), 0) AS by_ip "
                "FROM login_attempts WHERE ok = 0 AND at >= ? AND (name = ? OR ip = ?)",
                (name, ip, since_ms, name, ip)).one()
            assert row is not None
            by_name, by_ip = int(row["by_name"]), int(row["by_ip"])
            if by_name >= max_failed_per_name or by_ip >= max_failed_per_ip:
                audit_row(cur, name, "login.blocked", name,
                            {"failed_by_name": by_name, "failed_by_ip": by_ip}, now_ms, ip)
                return LoginAttempt(False, None, by_name, by_ip)
            attempt_id = cur.execute("INSERT INTO login_attempts (name, ip, at, ok) "
                                     "VALUES (?, ?, ?, 0) RETURNING id",
                                     (name, ip, now_ms)).scalar()
        return LoginAttempt(True, int(attempt_id), by_name, by_ip)

    def finish_login(self, attempt_id: int, name: str, ok: bool, now_ms: int,
                     ip: str | None = None) -> None:
        """Record how an allowed attempt (:meth:`begin_login`) ended and audit it
        (``login.ok`` / ``login.failed``); a failure stays counted."""
        now_ms = int_ms(now_ms, "now_ms")
        with self._db.tx("finish login") as cur:
            if ok:
                cur.execute("UPDATE login_attempts SET ok = 1 WHERE id = ?", (int(attempt_id),))
            audit_row(cur, name, "login.ok" if ok else "login.failed", name, {}, now_ms, ip)

    def record_login(self, name: str, ok: bool, now_ms: int, ip: str | None = None) -> None:
        """Remember a finished login attempt and audit it (for importing or replaying
        attempts; a login service counts attempts with :meth:`begin_login` instead, which
        parallel requests cannot race)."""
        now_ms = int_ms(now_ms, "now_ms")
        with self._db.tx("record login") as cur:
            cur.execute("INSERT INTO login_attempts (name, ip, at, ok) VALUES (?, ?, ?, ?)",
                        (name, ip, now_ms, int(bool(ok))))
            audit_row(cur, name, "login.ok" if ok else "login.failed", name, {}, now_ms, ip)

    def failed_logins(self, since_ms: int, *, name: str | None = None,
                      ip: str | None = None) -> int:
        """Failed (or still unfinished) login attempts since ``since_ms`` for a name and/or
        an address."""
        where = Where("ok = 0", "at >= ?", params=[int_ms(since_ms, "since_ms")])
        if name is not None:
            where.add("name = ?", name)
        if ip is not None:
            where.add("ip = ?", ip)
        with self._db.tx("failed logins", write=False) as cur:
            return int(cur.execute(f"SELECT COUNT(*) FROM login_attempts{where.sql}",
                                   where.params).scalar())

    def purge_login_attempts(self, before_ms: int) -> int:
        """Delete login attempts older than ``before_ms`` (they hold addresses: personal
        data, needed only for the rate-limit window); returns how many."""
        before_ms = int_ms(before_ms, "before_ms")
        with self._db.tx("purge login attempts") as cur:
            return max(cur.execute("DELETE FROM login_attempts WHERE at < ?",
                                   (before_ms,)).rowcount, 0)

    # --- audit --------------------------------------------------------------------------

    def audit(self, who: str | None, action: str, target: str | None, detail: Any,
              now_ms: int, ip: str | None = None) -> None:
        """Append one audit row (``detail`` is any JSON-able value)."""
        if not isinstance(action, str) or not action:
            raise StoreError("an audit row needs an action")
        now_ms = int_ms(now_ms, "now_ms")
        with self._db.tx("audit") as cur:
            audit_row(cur, who, action, target, detail, now_ms, ip)

    def audit_log(self, *, who: str | None = None, action: str | None = None,
                  target: str | None = None, since_ms: int | None = None,
                  until_ms: int | None = None, limit: int = 200,
                  before_id: int | None = None) -> list[dict[str, Any]]:
        """Audit rows newest first: ``{id, at, who, action, target, detail, ip}``.

        Page with ``before_id`` (the last row's id).
        """
        where = Where()
        for column, value in (("who", who), ("action", action), ("target", target)):
            if value is not None:
                where.add(f"{column} = ?", value)
        if since_ms is not None:
            where.add("at >= ?", int_ms(since_ms, "since_ms"))
        if until_ms is not None:
            where.add("at < ?", int_ms(until_ms, "until_ms"))
        if before_id is not None:
            where.add("id < ?", int(before_id))
        with self._db.tx("audit log", write=False) as cur:
            rows = cur.execute(f"SELECT id, at, who, action, target, detail, ip FROM audit"
                               f"{where.sql} ORDER BY id DESC LIMIT ?",
                               (*where.params, count(limit, "limit"))).all()
        for r in rows:
            r["detail"] = None if r["detail"] is None else orjson.loads(r["detail"])
        return rows
