"""The ASGI app: the page, the JSON API, /healthz and /metrics, with Socket.IO mounted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import socketio
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from . import __version__
from .access import Principal
from .push import jsonable
from .service import Service

logger = logging.getLogger("pgagent_watch.web")

# Ids are PostgreSQL int4: anything else is a 422, never a 500.
ServerIdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="a server id")]

# The page loads nothing but its own files; no inline script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class ServerOut(BaseModel):
    id: int
    name: str
    state: str
    reason: str | None


async def current_principal(request: Request) -> Principal:
    """The signed-in user, the API token's owner, or a 401."""
    service: Service = request.app.state.service
    who = await service.authenticate_request(request.headers, request.cookies)
    if who is None:
        raise HTTPException(401, "sign in or give an API token")
    return who


Who = Annotated[Principal, Depends(current_principal)]


def static_dir() -> str:
    return str(resources.files("pgagent_watch").joinpath("static"))


def create_app(service: Service) -> socketio.ASGIApp:
    """The whole ASGI application for one Service; its lifespan runs the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    api = FastAPI(
        title="pgagent-watch",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    api.state.service = service

    @api.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    def visible_server(server_id: int, who: Principal) -> int:
        if server_id not in service.servers or not who.can_see(server_id):
            # The same answer for "absent" and "not yours": ids do not leak.
            raise HTTPException(404, f"no server with id {server_id}")
        return server_id

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(resources.files("pgagent_watch").joinpath("static", "index.html"))  # type: ignore[arg-type]

    @api.get("/api/servers", response_model=list[ServerOut], tags=["servers"])
    async def list_servers(who: Who) -> list[dict[str, Any]]:
        """The monitored servers this user may see, with their listener's state."""
        return [s.public() for s in service.servers.values() if who.can_see(s.id)]

    @api.get("/api/servers/{server_id}/jobs", tags=["jobs"])
    async def list_jobs(server_id: ServerIdPath, who: Who) -> JSONResponse:
        """Every job of a server with its latest run."""
        visible_server(server_id, who)
        try:
            jobs = await service.job_states(server_id)
        except Exception as exc:
            logger.warning("jobs of server %s: %s", server_id, exc)
            raise HTTPException(503, "the server cannot be read now") from None
        return JSONResponse(jsonable(jobs))

    @api.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        """Each listener's state; ``status`` is "ok" when all are connected."""
        health = service.health()
        return JSONResponse(health)

    api.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return socketio.ASGIApp(service.sio, other_asgi_app=api, socketio_path="socket.io")
