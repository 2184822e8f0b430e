"""The listener: one dedicated connection per monitored server, whatever the browsers.

It LISTENs first and only then reads what it missed, so that no event falls
between the two. Notifications are only a wake-up: every event is read back
from the event table through the EventCursor, which delivers each exactly
once. A periodic full read is the safety net for a lost notification and
also the heartbeat: a connection that stops answering is dropped within
``heartbeat_timeout`` and the listener reconnects with capped exponential
backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import sql

from .capture import CAPTURE_VERSION, CHANNEL
from .config import ListenerSettings, ServerConfig
from .errors import PgAgentWatchError, ReplayMarkError
from .events import PayloadError, parse_payload
from .hub import Hub
from .replay import CursorState, EventCursor

logger = logging.getLogger("pgagent_watch.listener")

T = TypeVar("T")


_HEARTBEAT = (
    "SELECT id, xid, kind, job_id, jlgid, jstid, jslid FROM pgagent_watch.event LIMIT 0"
)


class ListenerState(StrEnum):
    STARTING = "starting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    # Reachable, but not usable as it is: no pgAgent schema, no capture.
    ERROR = "error"
    # Another instance holds this server's listen lock.
    STANDBY = "standby"
    STOPPED = "stopped"


class Coordinator(Protocol):
    """Shares a server between instances: who listens, and from which mark."""

    async def acquire(self, conn: psycopg.AsyncConnection[Any]) -> bool: ...

    async def load(self) -> CursorState | None: ...

    def save(self, state: CursorState) -> None: ...


class ServerProblem(PgAgentWatchError, RuntimeError):
    """The server answers but cannot be watched; the message says why."""


@dataclass
class ListenerStatus:
    """What /healthz and the page show of one listener."""

    state: ListenerState = ListenerState.STARTING
    reason: str | None = None
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    connected_at: datetime | None = None
    last_event_at: datetime | None = None
    events: int = 0
    reconnects: int = 0
    lag_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since.isoformat(),
            "connected_at": self.connected_at.isoformat()
            if self.connected_at
            else None,
            "last_event_at": self.last_event_at.isoformat()
            if self.last_event_at
            else None,
            "events": self.events,
            "reconnects": self.reconnects,
            "lag_seconds": self.lag_seconds,
        }


def _reason(exc: BaseException) -> str:
    # psycopg's messages name host and port, never the password.
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class Listener:
    """Listens to one server and publishes its events to the hub."""

    def __init__(
        self,
        server_id: int,
        server: ServerConfig,
        settings: ListenerSettings,
        hub: Hub,
    ) -> None:
        self.server_id = server_id
        self.server = server
        self.settings = settings
        self.hub = hub
        self.cursor = EventCursor(server_id)
        self.status = ListenerStatus()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._wake = asyncio.Event()
        # Set when several instances share this server (scaleout.ListenLock).
        self.coordinator: Coordinator | None = None
        self.standby_interval = 2.0
        # Full reads done so far: tests and /healthz can tell one happened.
        self.full_reads = 0

    def _set_state(self, state: ListenerState, reason: str | None = None) -> None:
        if state == self.status.state and reason == self.status.reason:
            return
        self.status.state = state
        self.status.reason = reason
        self.status.since = datetime.now(UTC)
        self.hub.publish_state(self.server_id, state.value, reason)

    def poke(self) -> None:
        """Ask for a full read now (after a relevant change, or in tests)."""
        self._wake.set()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting for ever."""
        attempt = 0
        while True:
            connects = self.status.connected_at
            try:
                await self._session()
            except asyncio.CancelledError:
                self._set_state(ListenerState.STOPPED)
                raise
            except ServerProblem as exc:
                self._set_state(ListenerState.ERROR, str(exc))
                logger.warning("server %s: %s", self.server.name, exc)
            except Exception as exc:
                self._set_state(ListenerState.RECONNECTING, _reason(exc))
                if not isinstance(exc, psycopg.Error | OSError | TimeoutError):
                    logger.exception("listener of %s crashed", self.server.name)
            self.status.reconnects += 1
            if self.status.connected_at != connects:
                # The session had connected: this is a new outage, not the
                # same one going on, so the backoff starts over.
                attempt = 0
            delay = min(
                self.settings.backoff_max,
                self.settings.backoff_initial * 2 ** min(attempt, 16),
            )
            delay *= random.uniform(0.5, 1.0)
            attempt += 1
            logger.warning(
                "listener of %s: reconnecting in %.1f s (%s)",
                self.server.name,
                delay,
                self.status.reason,
            )
            await asyncio.sleep(delay)

    async def _bounded(self, aw: Awaitable[T]) -> T:
        return await asyncio.wait_for(aw, self.settings.heartbeat_timeout)

    async def _session(self) -> None:
        conninfo = self.server.conninfo(application_name="pgagent-watch listener")
        conn = await self._bounded(
            psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        )
        try:
            await self._check_schema(conn)
            if self.coordinator is not None:
                await self._standby(conn, self.coordinator)
            listen = sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL))
            await self._bounded(conn.execute(listen))
            events = []
            if self.cursor.started:
                try:
                    await self.cursor.check_mark(conn)
                    events = await self._bounded(self.cursor.read_full(conn))
                except ReplayMarkError as exc:
                    # Only this process's memory holds the mark: start afresh.
                    logger.error("server %s: %s", self.server.name, exc)
                    await self.cursor.start_from_now(conn)
            else:
                await self._bounded(self.cursor.start_from_now(conn))
            self.status.connected_at = datetime.now(UTC)
            # Only now is the connection the listener's: its cursor is ready.
            self._conn = conn
            self._set_state(ListenerState.CONNECTED)
            if self.coordinator is not None and self.cursor.state is not None:
                # The next holder must start here even if no event comes.
                self.coordinator.save(self.cursor.state)
            logger.info(
                "listening to %s (%s)", self.server.name, self.server.describe()
            )
            self._publish(events)
            await self._loop(conn)
        finally:
            self._conn = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def _standby(
        self, conn: psycopg.AsyncConnection[Any], coordinator: Coordinator
    ) -> None:
        """Wait, connected, until this instance may listen; take the shared mark."""
        while not await self._bounded(coordinator.acquire(conn)):
            self._set_state(ListenerState.STANDBY, "another instance listens")
            await asyncio.sleep(self.standby_interval)
        state = await coordinator.load()
        if state is not None:
            self.cursor.state = state

    async def _check_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await self._bounded(
            conn.execute(
                "SELECT to_regclass('pgagent.pga_joblog') IS NOT NULL,"
                " to_regclass('pgagent_watch.event') IS NOT NULL"
            )
        )
        row = await cur.fetchone()
        assert row is not None
        if not row[0]:
            raise ServerProblem(
                "pgAgent's schema is missing (CREATE EXTENSION pgagent)"
            )
        if not row[1]:
            raise ServerProblem(
                "capture is not installed: run "
                f"'pgagent-watch install --server {self.server.name}'"
            )
        cur = await conn.execute(
            "SELECT version FROM pgagent_watch.version WHERE component = 'capture'"
        )
        version = await cur.fetchone()
        if version is None or version[0] < CAPTURE_VERSION:
            raise ServerProblem(
                "capture is out of date: run "
                f"'pgagent-watch install --server {self.server.name}'"
            )

    async def _loop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        last_full = time.monotonic()
        while True:
            notified: list[int] = []
            wait = min(
                self.settings.heartbeat_interval,
                max(
                    0.0, self.settings.safety_interval - (time.monotonic() - last_full)
                ),
            )
            if not self._wake.is_set():
                async for notice in conn.notifies(timeout=wait, stop_after=1):
                    try:
                        notified.append(parse_payload(notice.payload).event_id)
                    except PayloadError as exc:
                        logger.debug(
                            "ignored notification %r: %s", notice.payload[:80], exc
                        )
            due = time.monotonic() - last_full >= self.settings.safety_interval
            if self._wake.is_set() or due:
                self._wake.clear()
                self._publish(await self._bounded(self.cursor.read_full(conn)))
                self.full_reads += 1
                last_full = time.monotonic()
            elif notified:
                self._publish(
                    await self._bounded(self.cursor.read_live(conn, notified))
                )
            else:
                # Quiet: the heartbeat proves the connection still answers.
                # It reads the event table, so a dropped or altered table
                # shows as a problem now, not at the next full read.
                await self._bounded(conn.execute(_HEARTBEAT))

    def _publish(self, events: list[Any]) -> None:
        if not events:
            return
        now = datetime.now(UTC)
        self.status.events += len(events)
        self.status.last_event_at = now
        self.status.lag_seconds = max(0.0, (now - events[-1].at).total_seconds())
        self.hub.publish(events)
        if self.coordinator is not None and self.cursor.state is not None:
            self.coordinator.save(self.cursor.state)

    @property
    def backend_pid(self) -> int | None:
        """The backend pid of the listening connection, while there is one."""
        conn = self._conn
        return conn.info.backend_pid if conn is not None else None
