"""The ASGI app: the page, the JSON API and /healthz, with Socket.IO mounted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import import_module, resources
from typing import Any

import socketio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from . import __version__
from .deps import ServerIdPath, Who, visible_server
from .errors import StateUnavailable
from .push import jsonable
from .service import Service

logger = logging.getLogger("pgagent_watch.web")

# The page loads nothing but its own files; no inline script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)

# No request of the page or the API needs more.
MAX_BODY = 1024 * 1024

# Routers of the other modules, included in this order; each module has a
# ``router`` (an APIRouter).
ROUTERS: list[str] = [
    ".auth.routes",
    ".alerts.routes",
    ".routes_jobs",
    ".routes_page",
    ".detect",
    ".metrics",
]


class ServerOut(BaseModel):
    id: int
    name: str
    state: str
    reason: str | None
    # Open health conditions by kind (agent_down, overdue, stuck, flapping).
    health: dict[str, int] | None = None


def static_dir() -> str:
    return str(resources.files("pgagent_watch").joinpath("static"))


def _printable(value: object) -> str:
    """Text that always encodes: a lone surrogate becomes '?'."""
    return str(value)[:200].encode("utf-8", "replace").decode("utf-8")


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
        # Swagger UI loads its script from a CDN, which the CSP forbids; the
        # description itself is served.
        docs_url=None,
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    api.state.service = service

    @api.exception_handler(StateUnavailable)
    async def state_unavailable(request: Request, exc: StateUnavailable) -> Response:
        return JSONResponse(
            {"detail": f"{exc}; try again in a moment"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @api.exception_handler(RequestValidationError)
    async def invalid_request(
        request: Request, exc: RequestValidationError
    ) -> Response:
        # The input is not echoed: it can be huge, or not encodable (a lone
        # surrogate, NaN), and it is the client's own anyway.
        errors = [
            {
                "loc": [_printable(part) for part in e.get("loc", ())],
                "msg": _printable(e.get("msg", "")),
                "type": e.get("type"),
            }
            for e in exc.errors()[:20]
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @api.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse(
                {"detail": f"a request body is at most {MAX_BODY} bytes"},
                status_code=413,
                headers={"Content-Security-Policy": CSP},
            )
        response: Response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @api.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        """The page; once users exist, only after sign-in."""
        if await service.authenticate_request(request) is None:
            return RedirectResponse("/login", 303)
        # Never from a cache: after sign-out the page must ask again.
        return FileResponse(
            f"{static_dir()}/index.html", headers={"Cache-Control": "no-store"}
        )

    @api.get("/api/servers", response_model=list[ServerOut], tags=["servers"])
    async def list_servers(who: Who) -> list[dict[str, Any]]:
        """The monitored servers this user may see, with their listener's state."""
        return [s.public() for s in service.servers.values() if who.can_see(s.id)]

    @api.get("/api/servers/{server_id}/jobs", tags=["jobs"])
    async def list_jobs(server_id: ServerIdPath, who: Who) -> JSONResponse:
        """Every job of a server with its latest run."""
        visible_server(service, server_id, who)
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

    for module in ROUTERS:
        api.include_router(import_module(module, __package__).router)
    api.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return socketio.ASGIApp(service.sio, other_asgi_app=api, socketio_path="socket.io")
