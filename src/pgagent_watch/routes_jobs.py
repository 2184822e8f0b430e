"""The jobs API: a job's detail, its runs and step runs, output, actions, trends.

Every route checks that the server is visible to the user (404 otherwise,
the same answer for "absent" and "not yours"); actions also need
``Principal.can_operate`` and are refused with a 403 that says why.
Step output travels only here, over HTTP, never on the socket.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from importlib import import_module
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from . import jobs, trends
from .access import Principal
from .deps import MAX_ID, JobIdPath, ServerIdPath, ServiceDep, Who, visible_server
from .jobs import AnyConn
from .push import jsonable
from .service import Service

logger = logging.getLogger("pgagent_watch.routes_jobs")

router = APIRouter(prefix="/api/servers/{server_id}", tags=["jobs"])

RunIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="a run (jlgid)")]
StepRunIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="a step run (jslid)")]


@asynccontextmanager
async def _conn(
    service: Service, server_id: int, who: Principal
) -> AsyncIterator[AnyConn]:
    """A connection to a visible server; 503 when it cannot be reached."""
    visible_server(service, server_id, who)
    try:
        async with service.servers[server_id].pool.connection(timeout=5) as conn:
            yield conn
    except psycopg.OperationalError as exc:
        logger.warning("server %s unreachable: %s", server_id, exc)
        raise HTTPException(503, "the server cannot be read now") from None


def _no_job(job_id: int) -> HTTPException:
    return HTTPException(404, f"no job with id {job_id}")


async def _operator(
    service: Service,
    request: Request,
    server_id: int,
    job_id: int,
    who: Principal,
    action: str,
    what: str,
) -> None:
    """404 for an invisible server, 403 (audited) for a user who may not act."""
    visible_server(service, server_id, who)
    if not who.can_operate(server_id):
        await _audit(service, request, who, action, server_id, job_id, ok=False)
        raise HTTPException(
            403,
            f"{who.name} ({who.role.value}) may not {what} on this server:"
            " an operator or an administrator can",
        )


def _audit_module() -> Any:
    # The audit trail is the auth module's; without it the log is the record.
    try:
        return import_module(".audit", __package__)
    except ImportError:
        return None


async def _audit(
    service: Service,
    request: Request,
    who: Principal,
    action: str,
    server_id: int,
    job_id: int,
    *,
    ok: bool = True,
    detail: dict[str, Any] | None = None,
) -> None:
    logger.info(
        "%s: %s job %s of server %s%s",
        who.name,
        action,
        job_id,
        server_id,
        "" if ok else " (refused)",
    )
    audit = _audit_module()
    if audit is not None and hasattr(audit, "record"):
        await audit.record(
            service,
            who,
            action,
            request=request,
            server_id=server_id,
            target=f"job {job_id}",
            detail=detail,
            ok=ok,
        )


@router.get("/jobs-summary")
async def jobs_summary(
    server_id: ServerIdPath, who: Who, service: ServiceDep
) -> JSONResponse:
    """The server's TimeZone and every job's usual duration (median of 20 runs)."""
    async with _conn(service, server_id, who) as conn:
        return JSONResponse(jsonable(await jobs.summary(conn)))


@router.get("/jobs/{job_id}")
async def job_detail(
    server_id: ServerIdPath, job_id: JobIdPath, who: Who, service: ServiceDep
) -> JSONResponse:
    """A job with its steps, its schedules in words and its latest run."""
    async with _conn(service, server_id, who) as conn:
        job = await jobs.job_detail(conn, job_id)
    if job is None:
        raise _no_job(job_id)
    return JSONResponse(jsonable(job))


@router.get("/jobs/{job_id}/runs")
async def job_runs(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    who: Who,
    service: ServiceDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JSONResponse:
    """Runs newest first; pass ``next_before`` as ``before`` for older ones."""
    async with _conn(service, server_id, who) as conn:
        if await jobs.job_states(conn, job_id) == []:
            raise _no_job(job_id)
        page = await jobs.runs(conn, job_id, before, limit)
    return JSONResponse(jsonable(page))


@router.get("/jobs/{job_id}/runs/{run_id}")
async def run_detail(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    run_id: RunIdPath,
    who: Who,
    service: ServiceDep,
) -> JSONResponse:
    """One run with its step runs; output longer than 64 kB is cut here."""
    async with _conn(service, server_id, who) as conn:
        run = await jobs.run_detail(conn, job_id, run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id} of job {job_id}")
    return JSONResponse(jsonable(run))


def _filename(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "step"


@router.get(
    "/jobs/{job_id}/runs/{run_id}/step-runs/{step_run_id}/output",
    response_class=PlainTextResponse,
)
async def step_run_output(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    run_id: RunIdPath,
    step_run_id: StepRunIdPath,
    who: Who,
    service: ServiceDep,
) -> Response:
    """The whole output of a step run, exactly as pgAgent stored it (UTF-8)."""
    async with _conn(service, server_id, who) as conn:
        found = await jobs.step_run_output(conn, job_id, run_id, step_run_id)
    if found is None:
        raise HTTPException(404, f"no step run {step_run_id} in run {run_id}")
    step_name, output = found
    name = f"job{job_id}-run{run_id}-{_filename(step_name)}.txt"
    return Response(
        output.encode("utf-8"),
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def _job_name(conn: AnyConn, job_id: int) -> str:
    states = await jobs.job_states(conn, job_id)
    if not states:
        raise _no_job(job_id)
    return states[0]["job_name"]


@router.post("/jobs/{job_id}/run-now")
async def run_now(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    who: Who,
    service: ServiceDep,
    request: Request,
) -> JSONResponse:
    """Run the job at pgAgent's next poll (``jobnextrun = now()``, as pgAdmin does).

    409 when the job is disabled or running now.
    """
    await _operator(service, request, server_id, job_id, who, "job.run_now", "run jobs")
    async with _conn(service, server_id, who) as conn:
        name = await _job_name(conn, job_id)
        done = await jobs.run_now(conn, job_id)
        if done is None:
            state = (await jobs.job_states(conn, job_id))[0]
            why = "it is disabled" if not state["enabled"] else "it is running now"
            raise HTTPException(409, f"{name} was not started: {why}")
    await _audit(service, request, who, "job.run_now", server_id, job_id)
    return JSONResponse(
        {
            "job_id": job_id,
            "message": f"{name} will start at pgAgent's next poll",
            "next_run": jsonable(done["next_run"]),
        }
    )


@router.post("/jobs/{job_id}/runs/{run_id}/retry")
async def retry(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    run_id: RunIdPath,
    who: Who,
    service: ServiceDep,
    request: Request,
) -> JSONResponse:
    """Run a job again after a failed run: pgAgent runs the whole job anew."""
    await _operator(service, request, server_id, job_id, who, "job.retry", "retry runs")
    async with _conn(service, server_id, who) as conn:
        run = await jobs.run_detail(conn, job_id, run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id} of job {job_id}")
        if run["status"] not in ("f", "i", "d"):
            raise HTTPException(409, f"run {run_id} did not fail: nothing to retry")
    await _audit(
        service, request, who, "job.retry", server_id, job_id, detail={"run_id": run_id}
    )
    return await run_now(server_id, job_id, who, service, request)


async def _set_enabled(
    service: Service,
    request: Request,
    server_id: int,
    job_id: int,
    who: Principal,
    enabled: bool,
) -> JSONResponse:
    verb = "enable" if enabled else "disable"
    action = f"job.{verb}"
    await _operator(service, request, server_id, job_id, who, action, f"{verb} jobs")
    async with _conn(service, server_id, who) as conn:
        name = await _job_name(conn, job_id)
        await jobs.set_enabled(conn, job_id, enabled)
    await _audit(service, request, who, action, server_id, job_id)
    return JSONResponse(
        {"job_id": job_id, "enabled": enabled, "message": f"{name} is {verb}d"}
    )


@router.post("/jobs/{job_id}/enable")
async def enable(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    who: Who,
    service: ServiceDep,
    request: Request,
) -> JSONResponse:
    """Enable a job: pgAgent runs it again on its schedules."""
    return await _set_enabled(service, request, server_id, job_id, who, True)


@router.post("/jobs/{job_id}/disable")
async def disable(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    who: Who,
    service: ServiceDep,
    request: Request,
) -> JSONResponse:
    """Disable a job: pgAgent no longer starts it (a running run goes on)."""
    return await _set_enabled(service, request, server_id, job_id, who, False)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise HTTPException(422, f"unknown time zone {name[:64]!r}") from None


async def _trends(
    service: Service,
    server_id: int,
    who: Principal,
    job_id: int | None,
    days: int | None,
    start: date | None,
    end: date | None,
    tz: str,
    fmt: str,
) -> Response:
    zone = _zone(tz)
    try:
        begin, finish = trends.period(days, start, end, zone)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    async with _conn(service, server_id, who) as conn:
        if job_id is not None:
            await _job_name(conn, job_id)
        result = await trends.trends(conn, begin, finish, zone, job_id)
    if fmt == "csv":
        name = f"trends-server{server_id}" + (f"-job{job_id}" if job_id else "")
        return Response(
            trends.to_csv(result),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return JSONResponse(jsonable(result))


Days = Annotated[int | None, Query(ge=1, le=trends.MAX_DAYS)]
From = Annotated[date | None, Query(alias="from")]
To = Annotated[date | None, Query(alias="to")]
Tz = Annotated[str, Query(max_length=64)]
Format = Annotated[Literal["json", "csv"], Query()]


@router.get("/trends")
async def server_trends(
    server_id: ServerIdPath,
    who: Who,
    service: ServiceDep,
    days: Days = 7,
    start: From = None,
    end: To = None,
    tz: Tz = "UTC",
    format: Format = "json",
) -> Response:
    """A server's runs per day by result, failure rate, p50/p95, worst jobs."""
    return await _trends(service, server_id, who, None, days, start, end, tz, format)


@router.get("/jobs/{job_id}/trends")
async def job_trends(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    who: Who,
    service: ServiceDep,
    days: Days = 7,
    start: From = None,
    end: To = None,
    tz: Tz = "UTC",
    format: Format = "json",
) -> Response:
    """One job's runs per day by result, failure rate and p50/p95."""
    return await _trends(service, server_id, who, job_id, days, start, end, tz, format)
