"""Who is asking and what they may see: the helpers every resource uses, in this order.

1. :func:`signed_in` (the session cookie, and the CSRF token for anything that changes
   state) gives the :class:`Caller`;
2. :meth:`Caller.require_role` for what only supervisors and admins see;
3. :meth:`Caller.regions` (the caller's region scope narrowed by ``?region=``) for a
   query, or :func:`alarm_in_scope` for one alarm: an alarm outside the caller's regions
   answers 404 exactly as one that does not exist, and the attempt is audited;
4. :meth:`Caller.audit` for every read of a location and every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from console.auth import AuthError, Principal, Session
from console.context import Console, console_of
from console.gateway import StoreGateway
from console.http import ApiError
from console.settings import ConsoleSettings

# The roles that see statistics and the audit trail.
OVERSEERS = ("supervisor", "admin")


@dataclass(frozen=True)
class Caller:
    """One authenticated request: its console, session and principal."""

    console: Console
    request: Request
    session: Session
    principal: Principal

    @property
    def gateway(self) -> StoreGateway:
        return self.console.gateway

    @property
    def settings(self) -> ConsoleSettings:
        return self.console.settings

    @property
    def name(self) -> str:
        return self.principal.name

    async def audit(self, action: str, target: str | None, detail: Any) -> None:
        """One audit row by this caller (see :meth:`Console.audit`)."""
        await self.console.audit(self.request, self.principal.name, action, target, detail)

    def require_role(self, roles: tuple[str, ...], what: str) -> None:
        """403 unless the caller has one of ``roles``; ``what`` says who it is for."""
        if self.principal.role not in roles:
            raise ApiError(403, "forbidden", what)

    def regions(self) -> list[str] | None:
        """The caller's region scope narrowed by ``?region=``; None means every region."""
        try:
            return self.principal.narrow(self.request.query_params.get("region"))
        except AuthError as exc:
            raise ApiError(400, "bad_param", f"query parameter 'region': {exc}") from None


async def signed_in(request: Request) -> Caller:
    """The :class:`Caller` of ``request``, or 401/403 (see :meth:`Console.authenticate`)."""
    console = console_of(request)
    session, principal = await console.authenticate(request)
    return Caller(console, request, session, principal)


async def alarm_in_scope(caller: Caller, action: str) -> dict[str, Any]:
    """The alarm named in the path if the caller may see it; 404 (audited as
    ``alarm.denied`` with ``action``) otherwise."""
    alarm_id = caller.request.path_params["alarm_id"]
    alarm = await caller.gateway.get_alarm(alarm_id)
    if alarm is None:
        raise ApiError(404, "not_found", f"no alarm {alarm_id!r}")
    if not caller.principal.can_see(alarm["region"]):
        await caller.audit("alarm.denied", alarm_id,
                           {"action": action, "region": alarm["region"]})
        raise ApiError(404, "not_found", f"no alarm {alarm_id!r}")
    return alarm
