"""FastAPI dependencies shared by every router: the service, who is asking."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Path, Request

from .access import Principal
from .auth.sessions import CSRF_HEADER, SAFE_METHODS, Authenticated, csrf_ok

if TYPE_CHECKING:
    from .service import Service

# Ids are PostgreSQL int4: anything else is a 422, never a 500.
MAX_ID = 2**31 - 1
ServerIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="a server id")]
JobIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="a pgAgent job id")]


def get_service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated["Service", Depends(get_service)]


async def current_principal(request: Request) -> Principal:
    """The signed-in user, the API token's owner, or a 401.

    A state-changing request (anything but GET, HEAD and OPTIONS) from a
    page (cookie session, proxy header, anonymous) must send the session's
    CSRF token in ``X-CSRF-Token`` (``GET /api/me`` gives it), else 403.
    Requests with ``Authorization: Bearer`` are exempt.
    """
    service = get_service(request)
    who = await service.authenticate_request(request)
    found = getattr(request.state, "auth", None)
    if who is None or not isinstance(found, Authenticated):
        raise HTTPException(
            401,
            "sign in or give an API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in SAFE_METHODS and not csrf_ok(
        found, request.headers.get(CSRF_HEADER)
    ):
        raise HTTPException(403, "missing or wrong X-CSRF-Token header")
    return who


Who = Annotated[Principal, Depends(current_principal)]


async def admin_principal(who: Who) -> Principal:
    """The principal, if an administrator; else 403."""
    if not who.is_admin:
        raise HTTPException(403, "only an administrator may do this")
    return who


Admin = Annotated[Principal, Depends(admin_principal)]


def visible_server(service: Service, server_id: int, who: Principal) -> None:
    """Raise 404 unless the server exists and this user may see it.

    The same answer for "absent" and "not yours", so that ids do not leak.
    """
    if server_id not in service.servers or not who.can_see(server_id):
        raise HTTPException(404, f"no server with id {server_id}")
