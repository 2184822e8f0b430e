"""FastAPI dependencies shared by every router: the service, who is asking."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Path, Request

from .access import Principal

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
    """The signed-in user, the API token's owner, or a 401."""
    service = get_service(request)
    who = await service.authenticate_request(request)
    if who is None:
        raise HTTPException(401, "sign in or give an API token")
    return who


Who = Annotated[Principal, Depends(current_principal)]


def visible_server(service: Service, server_id: int, who: Principal) -> None:
    """Raise 404 unless the server exists and this user may see it.

    The same answer for "absent" and "not yours", so that ids do not leak.
    """
    if server_id not in service.servers or not who.can_see(server_id):
        raise HTTPException(404, f"no server with id {server_id}")
