"""The service: monitored servers, their listeners and pools, the hub and the push.

Everything long-running is started and stopped here, in one place, and a
reference to every background task is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from . import capture, flow, jobs, state, users
from .access import Principal
from .auth.sessions import (
    Authenticated,
    Authenticator,
    cookie_from_header,
    peer_of_environ,
)
from .config import ServerConfig, Settings
from .detect import DetectCollector, Detector, JobSettingStore
from .errors import StateUnavailable
from .hub import Hub
from .listener import Listener
from .metrics import Metrics
from .push import NAMESPACE, PgAgentNamespace, Pusher
from .scaleout import ListenLock, RedisManager

logger = logging.getLogger("pgagent_watch.service")


@dataclass
class MonitoredServer:
    """One monitored database: its listener and a small pool for reads."""

    id: int
    config: ServerConfig
    listener: Listener
    pool: AsyncConnectionPool
    detector: Detector | None = None

    def public(self) -> dict[str, Any]:
        """What anyone allowed to see this server may know of it."""
        status = self.listener.status
        return {
            "id": self.id,
            "name": self.config.name,
            "state": status.state.value,
            "reason": status.reason,
            "health": self.detector.counts() if self.detector else None,
        }


class Service:
    """pgagent-watch in one process: call start(), then serve its app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub()
        cluster = settings.cluster
        self.redis: RedisManager | None = None
        if cluster.redis_url is not None:
            self.redis = RedisManager(
                cluster.redis_url.get_secret_value(),
                cluster.channel,
                cluster.probe_interval,
                cluster.probe_timeout,
            )
        self.sio = flow.AsyncServer(
            client_manager=self.redis,
            async_mode="asgi",
            # Only our namespace: the default "/" would accept anyone.
            namespaces=[NAMESPACE],
            cors_allowed_origins=[],
            ping_interval=settings.web.ping_interval,
            ping_timeout=settings.web.ping_timeout,
            # Output never travels on the socket: small frames only.
            max_http_buffer_size=64 * 1024,
            logger=False,
            engineio_logger=False,
        )
        self.sio.eio.client_queue_max = settings.limits.client_queue_max
        self.namespace = PgAgentNamespace(self)
        self.sio.register_namespace(self.namespace)
        self.pusher = Pusher(self.sio, settings.web.coalesce_ms / 1000)
        self.hub.add(self.pusher)
        self.metrics = Metrics(self)
        self.hub.add(self.metrics)
        self.servers: dict[int, MonitoredServer] = {}
        for server_id, config in settings.server_ids().items():
            listener = Listener(server_id, config, settings.listener, self.hub)
            pool = AsyncConnectionPool(
                config.conninfo(application_name="pgagent-watch"),
                min_size=0,
                max_size=3,
                max_idle=60,
                timeout=10,
                open=False,
                kwargs={"autocommit": True},
                name=f"pgagent-watch-{config.name}",
            )
            self.servers[server_id] = MonitoredServer(server_id, config, listener, pool)
        self.locks: list[ListenLock] = []
        # The service's own state (users, subscriptions, outbox): one pool.
        self.state_pool = AsyncConnectionPool(
            settings.state_conninfo(application_name="pgagent-watch state")
            if settings.servers or settings.state_dsn
            else "",
            min_size=0,
            max_size=4,
            max_idle=60,
            timeout=10,
            open=False,
            kwargs={"autocommit": True},
            name="pgagent-watch-state",
        )
        self.state_ready = asyncio.Event()
        self.state_error: str | None = None
        # Health detection: one detector per server, a hub consumer too.
        self.job_settings = JobSettingStore(self.state_pool, self.state_ready)
        self.detectors: dict[int, Detector] = {}
        if settings.detect.enabled:
            for server in self.servers.values():
                server.detector = Detector(
                    server.id,
                    server.config.name,
                    server.listener,
                    server.pool,
                    settings.detect,
                    self.job_settings,
                )
                self.detectors[server.id] = server.detector
                self.hub.add(server.detector)
        self.metrics.registry.register(DetectCollector(self.detectors))
        if self.redis is not None:
            # Several instances: one listens to each server, from a shared mark.
            for server in self.servers.values():
                lock = ListenLock(
                    server.config.name, self.state_pool, self.state_ready, self.pusher
                )
                server.listener.coordinator = lock
                server.listener.standby_interval = cluster.standby_interval
                self.locks.append(lock)
        self._users_exist: tuple[float, bool] = (0.0, False)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.auth = Authenticator(self)
        self.started = False
        # Alerts: subscriptions, outbox, dispatch (registers its own consumer).
        from .alerts.manager import AlertService

        self.alerts = AlertService(self)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Start a background task and keep a reference until it ends."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        """Open pools, start every listener and the push; never waits on a server."""
        if self.started:
            return
        self.started = True
        self.pusher.start()
        await self.state_pool.open(wait=False)
        self.spawn(self._prepare_state(), "state")
        for server in self.servers.values():
            await server.pool.open(wait=False)
            self.spawn(server.listener.run(), f"listener-{server.config.name}")
            if server.detector is not None:
                self.spawn(server.detector.run(), f"detect-{server.config.name}")
        self.spawn(self._prune_loop(), "prune")
        self.spawn(self.auth.watch_sockets(), "auth-sockets")
        await self.alerts.start()
        self.spawn(self.metrics.run(), "metrics")
        for lock in self.locks:
            self.spawn(lock.run(), f"mark-{lock.server_name}")
        if self.redis is not None:
            # Subscribe now, not at the first browser, and keep the task.
            self.sio.manager_initialized = True
            self.redis.initialize()
            self.spawn(self.redis.watch(), "redis-probe")
        # Sign-in needs the state database: give it a moment before serving,
        # so that the first clients are not refused; never wait longer.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.state_ready.wait(), 10)
        logger.info("watching %d servers", len(self.servers))

    async def drain(self, limit: float = 2) -> None:
        """Send the events waiting in the push and in every client's queue.

        Called on shutdown while the connections are still open; gives up
        after ``limit`` seconds (a client that does not read is not waited
        for).
        """

        async def drained() -> None:
            await self.pusher.flush()
            sockets = list(self.sio.eio.sockets.values())
            await asyncio.gather(*(s.queue.join() for s in sockets))

        try:
            await asyncio.wait_for(drained(), limit)
        except TimeoutError:
            logger.warning("shutdown: some clients did not take their last events")

    async def stop(self) -> None:
        """Stop every task, finish pending pushes, close every connection."""
        if not self.started:
            return
        self.started = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task that does not end on cancel must not hold the exit.
            _, stuck = await asyncio.wait(tasks, timeout=5)
            for task in stuck:
                logger.warning("task %s did not stop in 5 s", task.get_name())
        await self.pusher.stop()
        await self.alerts.stop()
        for lock in self.locks:
            try:
                await asyncio.wait_for(lock.flush(), 5)
            except Exception as exc:
                logger.warning("mark of %s not saved: %s", lock.server_name, exc)
        if self.redis is not None:
            await self._stop_redis(self.redis)
        for server in self.servers.values():
            await server.pool.close(timeout=2)
        await self.state_pool.close(timeout=2)
        logger.info("stopped")

    async def _stop_redis(self, redis: RedisManager) -> None:
        thread = getattr(redis, "thread", None)
        if thread is not None:
            thread.cancel()
            await asyncio.gather(thread, return_exceptions=True)
        try:
            await asyncio.wait_for(redis.close(), 2)
        except Exception as exc:
            logger.debug("closing Redis: %s", exc)

    async def _prepare_state(self) -> None:
        """Migrate the state schema, retrying until the state database answers."""
        delay = self.settings.listener.backoff_initial
        while True:
            try:
                async with self.state_pool.connection(timeout=10) as conn:
                    await state.migrate(conn)
                self.state_error = None
                self.state_ready.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.state_error = (
                    str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
                )
                logger.warning(
                    "state database not ready (%s); retrying", self.state_error
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.listener.backoff_max)

    async def _prune_loop(self) -> None:
        retention = timedelta(days=self.settings.capture.retention_days)
        while True:
            for server in self.servers.values():
                try:
                    async with server.pool.connection(timeout=5) as conn:
                        cur = await conn.execute(capture.PRUNE_SQL, (retention,))
                        if cur.rowcount:
                            logger.info(
                                "pruned %d events of %s",
                                cur.rowcount,
                                server.config.name,
                            )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.debug("prune of %s skipped: %s", server.config.name, exc)
            await asyncio.sleep(self.settings.capture.prune_interval)

    def server_ids_by_name(self) -> dict[str, int]:
        return {s.config.name: s.id for s in self.servers.values()}

    async def users_exist(self) -> bool:
        """Whether any user exists (cached for a few seconds)."""
        checked, exist = self._users_exist
        if exist or time.monotonic() - checked < 2:
            return exist
        async with self.state_pool.connection(timeout=5) as conn:
            exist = await users.any_users(conn)
        self._users_exist = (time.monotonic(), exist)
        return exist

    async def principal_for_token(self, token: str) -> Principal | None:
        async with self.state_pool.connection(timeout=5) as conn:
            return await users.principal_for_token(
                conn, token, self.server_ids_by_name()
            )

    def forget_users_exist(self) -> None:
        """Drop the cached answer of users_exist (a user was just created)."""
        self._users_exist = (0.0, False)

    async def _authenticate(self, **how: Any) -> Authenticated | None:
        """Until users exist everyone is the anonymous administrator.

        Raises StateUnavailable when the state database cannot answer.
        """
        if not self.state_ready.is_set():
            raise StateUnavailable("the state database is not ready yet")
        try:
            return await self.auth.authenticate(**how)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("authentication failed on the state database: %s", exc)
            raise StateUnavailable("the state database cannot be reached") from None

    async def authenticate_socket(
        self, environ: dict[str, Any], auth: Any
    ) -> Principal | None:
        """Who opens this socket, or None to refuse.

        ``auth={"token": ...}``, else the session cookie, else the trusted
        proxy header. A browser's socket from another origin is refused
        unless it brings a token.
        """
        token = auth.get("token") if isinstance(auth, dict) else None
        bearer = token if isinstance(token, str) and token else None
        peer = peer_of_environ(environ)
        if bearer is None and not self.auth.same_origin(
            environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST")
        ):
            logger.warning("socket from a foreign origin refused")
            return None
        header = self.settings.auth.trusted_header
        proxy_user = (
            environ.get("HTTP_" + header.upper().replace("-", "_")) if header else None
        )
        credentials = {
            "bearer": bearer,
            "cookie": cookie_from_header(
                environ.get("HTTP_COOKIE"), self.auth.cookie_name
            ),
            "proxy_user": proxy_user,
            "peer": peer,
        }
        try:
            found = await self._authenticate(**credentials)
        except StateUnavailable:
            return None
        if found is None:
            return None
        self.auth.remember_socket(environ, credentials, found)
        return found.principal

    async def authenticate_request(self, request: Any) -> Principal | None:
        """Who sends this request: ``Authorization: Bearer TOKEN``, the session
        cookie or the trusted proxy header; None when nobody.

        The details (method, CSRF token, session) are kept in
        ``request.state.auth``; the client address in
        ``request.state.client_address``.
        """
        cached = getattr(request.state, "auth", None)
        if isinstance(cached, Authenticated):
            return cached.principal
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else None
        peer = request.client.host if request.client else None
        request.state.client_address = self.auth.client_address(peer, request.headers)
        trusted = self.settings.auth.trusted_header
        found = await self._authenticate(
            bearer=bearer or None,
            cookie=request.cookies.get(self.auth.cookie_name),
            proxy_user=request.headers.get(trusted) if trusted else None,
            peer=peer,
        )
        request.state.auth = found
        return found.principal if found else None

    async def job_states(
        self, server_id: int, job_id: int | None = None
    ) -> list[jobs.JobState]:
        """The jobs of a server with their latest run, read through its pool.

        Each job also has ``health``: its open conditions (stuck, overdue,
        flapping), an empty list when detection is off.
        """
        server = self.servers[server_id]
        async with server.pool.connection(timeout=5) as conn:
            states = await jobs.job_states(conn, job_id)
        conditions = await server.detector.conditions() if server.detector else []
        for job in states:
            job["health"] = [
                c.as_dict() for c in conditions if c.job_id == job["job_id"]
            ]
        return states

    def health(self) -> dict[str, Any]:
        """Each listener's state; no connection string, no secret."""
        servers = {
            str(s.id): {
                "name": s.config.name,
                **s.listener.status.as_dict(),
                "detect": s.detector.status() if s.detector else None,
            }
            for s in self.servers.values()
        }
        # A standby listener is healthy: another instance listens for it.
        ok = all(
            s.listener.status.state.value in ("connected", "standby")
            for s in self.servers.values()
        )
        ok = ok and self.state_ready.is_set()
        alerts = self.alerts.health()
        ok = ok and all(s["cursor"] == "ok" for s in alerts["servers"].values())
        return {
            "status": "ok" if ok else "degraded",
            "servers": servers,
            "state_database": {
                "ready": self.state_ready.is_set(),
                "error": self.state_error,
            },
            "alerts": alerts,
        }
