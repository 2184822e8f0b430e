"""Fixtures: a throwaway PostgreSQL cluster, the real pgAgent daemon, the service.

Loaded as a pytest plugin (see pyproject.toml). One cluster serves the whole
test session; each test makes its own jobs, so tests never depend on each
other's leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import psycopg
import pytest
import socketio

from pgagent_watch import samples
from pgagent_watch.cluster import Agent, Cluster, free_port
from pgagent_watch.config import Settings, load_settings
from pgagent_watch.demo import prepare_database
from pgagent_watch.server import make_server
from pgagent_watch.service import Service

# Generous limits: waits end on the event, never on the clock.
WAIT = 30.0
_names = itertools.count(1)


def unique(prefix: str = "job") -> str:
    """A job name no other test uses."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**6}"


@pytest.fixture(scope="session", autouse=True)
async def close_leftover_http_sessions() -> AsyncIterator[None]:
    """Close the aiohttp sessions engineio's clients leave behind.

    A Socket.IO client that was refused, or was reconnecting when it was
    closed, can keep its HTTP session; at exit the garbage collector would
    warn about it, and warnings are errors here.
    """
    yield
    import gc

    import aiohttp

    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, aiohttp.ClientSession) and not obj.closed:
            await obj.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster().start()
    prepare_database(c.dsn())
    try:
        yield c
    finally:
        c.destroy()


@pytest.fixture(scope="session")
def agent(cluster: Cluster) -> Iterator[Agent]:
    """The real pgAgent daemon, polling every second. Tests that kill it restart it."""
    a = Agent(
        cluster.dsn(), poll_seconds=1, logfile=cluster.folder / "pgagent.log"
    ).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def live_agent(agent: Agent, cluster: Cluster) -> Agent:
    """The daemon, started again if an earlier test killed it."""
    if not agent.alive():
        agent.start()
    return agent


@pytest.fixture
def db(cluster: Cluster) -> Iterator[psycopg.Connection]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_job(db: psycopg.Connection) -> Callable[..., int]:
    """Create a job without a schedule (it runs only when asked)."""

    created: list[int] = []

    def make(steps: list[samples.Step], name: str | None = None, **kw: Any) -> int:
        job_id = samples.create_job(db, name or unique(), steps, **kw)
        created.append(job_id)
        return job_id

    yield make  # type: ignore[misc]
    # Disable what the test made, so the daemon never runs it again.
    for job_id in created:
        with contextlib.suppress(psycopg.Error):
            db.execute(
                "UPDATE pgagent.pga_job SET jobenabled = false WHERE jobid = %s",
                (job_id,),
            )


def settings_for(cluster: Cluster, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "servers": [{"name": "test", "dsn": cluster.dsn()}],
        "listener": {
            "safety_interval": 2,
            "heartbeat_interval": 1,
            "heartbeat_timeout": 3,
            "backoff_initial": 0.1,
            "backoff_max": 1,
        },
    }
    base.update(overrides)
    return load_settings(**base)


class Running:
    """A service served by uvicorn on a free port, in the test's event loop."""

    def __init__(self, service: Service, port: int) -> None:
        self.service = service
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, wait_state: bool = True
) -> AsyncIterator[Running]:
    service = Service(settings)
    port = free_port()
    server = make_server(service, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + WAIT
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        await asyncio.sleep(0.02)
    if wait_state:
        await asyncio.wait_for(service.state_ready.wait(), WAIT)
    try:
        yield Running(service, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT)


@pytest.fixture
async def watch(cluster: Cluster) -> AsyncIterator[Running]:
    """The service watching the test cluster."""
    async with running_service(settings_for(cluster)) as running:
        await wait_connected(running)
        yield running


async def wait_connected(running: Running, server_id: int = 1) -> None:
    listener = running.service.servers[server_id].listener
    await until(
        lambda: listener.status.state.value == "connected", "listener connected"
    )


async def until(predicate: Callable[[], Any], what: str, limit: float = WAIT) -> Any:
    """Wait for a condition checked on every event-loop turn, with a limit."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.02)


class Client:
    """A real Socket.IO client over a real websocket, recording what it receives."""

    def __init__(self) -> None:
        # Its own HTTP session, closed with the client: engineio would make a
        # new one at every reconnection attempt and leave them to the GC.
        self.http = aiohttp.ClientSession()
        self.sio = socketio.AsyncClient(
            reconnection=True, reconnection_delay=0.1, http_session=self.http
        )
        self.received: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

        @self.sio.on("*", namespace="/pgagent")
        async def any_event(event: str, data: Any = None) -> None:
            self.received.append((event, data))
            self._changed.set()

    async def connect(self, url: str, **kw: Any) -> Client:
        await self.sio.connect(
            url,
            namespaces=["/pgagent"],
            transports=["websocket"],
            wait_timeout=10,
            **kw,
        )
        return self

    async def emit(self, event: str, data: Any = None) -> None:
        await self.sio.emit(event, data, namespace="/pgagent")

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, namespace="/pgagent", timeout=WAIT)

    def events(self, name: str) -> list[Any]:
        return [d for e, d in self.received if e == name]

    def updates(self) -> list[dict[str, Any]]:
        """Every job_status_update, batches unpacked, in arrival order."""
        out: list[dict[str, Any]] = []
        for event, data in self.received:
            if event == "job_status_update":
                out.append(data)
            elif event == "job_status_batch":
                out.extend(data["events"])
        return out

    async def wait_for(
        self, predicate: Callable[[Client], Any], what: str, limit: float = WAIT
    ) -> Any:
        deadline = time.monotonic() + limit
        while True:
            value = predicate(self)
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {limit} s waiting for {what};"
                    f" received {self.received[-10:]!r}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        self.sio.reconnection = False
        await self.sio.disconnect()
        await self.http.close()


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []

    async def make(url: str, **kw: Any) -> Client:
        c = Client()
        try:
            await c.connect(url, **kw)
        except BaseException:
            await c.http.close()
            raise
        clients.append(c)
        return c

    yield make
    for c in clients:
        with contextlib.suppress(Exception):
            await c.close()


def run_updates(updates: list[dict[str, Any]], job_id: int) -> list[tuple[str, str]]:
    """(kind, status) of one job's updates, in order: the story of its runs."""
    return [
        (u["kind"], u["status"])
        for u in updates
        if u["job_id"] == job_id and u["kind"] in ("run", "step")
    ]
