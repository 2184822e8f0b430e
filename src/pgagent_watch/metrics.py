"""Prometheus metrics: what the service is doing, read at scrape time.

Figures the process already holds (listener states, lag, events, frames,
clients) are read by a collector when ``/metrics`` is scraped, so they
cost nothing between scrapes. Figures that need a query (each server's
``pg_notification_queue_usage()``, the outbox depth) are read by one
background task every ``[metrics] interval`` seconds through the pools and
kept; a scrape never waits on a database. A registry per Service keeps
several services in one process (the tests) apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .events import JobEvent
from .listener import ListenerState

if TYPE_CHECKING:
    from .service import Service

logger = logging.getLogger("pgagent_watch.metrics")

# An async reader of one figure; None when it does not apply (no table yet).
Source = Callable[["Service"], Awaitable[float | None]]

_OUTBOX_SQL = """
SELECT CASE WHEN to_regclass('pgagent_watch.outbox') IS NULL THEN NULL
            ELSE (SELECT count(*) FROM pgagent_watch.outbox) END
"""


async def outbox_depth(service: Service) -> float | None:
    """Rows in the alerts outbox, if the alerts component made one.

    The alerts component may register a precise source instead (only rows
    still to send) with ``service.metrics.sources["outbox_depth"] = fn``.
    """
    async with service.state_pool.connection(timeout=5) as conn:
        row = await (await conn.execute(_OUTBOX_SQL)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


class Metrics:
    """The hub consumer that counts events, and the collector of everything else."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.events: Counter[tuple[int, str]] = Counter()
        self.queue_usage: dict[int, float] = {}
        # Named figures read by the poller, exported as pgagent_watch_<name>.
        self.sources: dict[str, Source] = {"outbox_depth": outbox_depth}
        self.values: dict[str, float] = {}
        self.registry.register(_Collector(self))

    # The hub consumer: both calls return at once.
    def submit(self, events: Sequence[JobEvent]) -> None:
        for event in events:
            self.events[(event.server_id, event.kind)] += 1

    def server_state(self, server_id: int, state: str, reason: str | None) -> None:
        pass

    async def run(self) -> None:
        """Read the database-side figures every interval, until cancelled."""
        interval = self.service.settings.metrics.interval
        while True:
            await self.poll()
            await asyncio.sleep(interval)

    async def poll(self) -> None:
        """Read every database-side figure once; failures only leave gaps."""
        warn = self.service.settings.metrics.queue_warn
        for server in self.service.servers.values():
            try:
                async with server.pool.connection(timeout=5) as conn:
                    cur = await conn.execute("SELECT pg_notification_queue_usage()")
                    row = await cur.fetchone()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.queue_usage.pop(server.id, None)
                logger.debug("queue usage of %s: %s", server.config.name, exc)
                continue
            usage = float(row[0]) if row else 0.0
            self.queue_usage[server.id] = usage
            if usage > warn:
                # A full queue fails pgAgent's own commits: say so loudly.
                logger.warning(
                    "server %s: the notification queue is %.0f %% full; a session"
                    " that LISTENs and never reads (idle in transaction?) holds it",
                    server.config.name,
                    usage * 100,
                )
        for name, source in list(self.sources.items()):
            try:
                value = await source(self.service)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                value = None
                logger.debug("metric %s: %s", name, exc)
            if value is None:
                self.values.pop(name, None)
            else:
                self.values[name] = value

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        service = self.m.service
        names = {s.id: s.config.name for s in service.servers.values()}

        state = GaugeMetricFamily(
            "pgagent_watch_listener_state",
            "1 for the state each server's listener is in",
            labels=["server", "state"],
        )
        lag = GaugeMetricFamily(
            "pgagent_watch_listener_lag_seconds",
            "Seconds from an event's capture to its publication, last batch",
            labels=["server"],
        )
        reconnects = CounterMetricFamily(
            "pgagent_watch_listener_reconnects",
            "Times a listener started a new connection",
            labels=["server"],
        )
        usage = GaugeMetricFamily(
            "pgagent_watch_notification_queue_usage",
            "pg_notification_queue_usage() of each server, 0 to 1",
            labels=["server"],
        )
        for server in service.servers.values():
            status = server.listener.status
            for st in ListenerState:
                state.add_metric(
                    [server.config.name, st.value],
                    1.0 if status.state == st else 0.0,
                )
            if status.lag_seconds is not None:
                lag.add_metric([server.config.name], status.lag_seconds)
            reconnects.add_metric([server.config.name], status.reconnects)
            if server.id in self.m.queue_usage:
                usage.add_metric([server.config.name], self.m.queue_usage[server.id])
        yield from (state, lag, reconnects, usage)

        events = CounterMetricFamily(
            "pgagent_watch_events",
            "Events published by this instance's listeners",
            labels=["server", "kind"],
        )
        for (server_id, kind), count in sorted(self.m.events.items()):
            events.add_metric([names.get(server_id, str(server_id)), kind], count)
        yield events

        pusher = service.pusher
        yield CounterMetricFamily(
            "pgagent_watch_push_frames", "Socket.IO frames emitted", value=pusher.frames
        )
        yield CounterMetricFamily(
            "pgagent_watch_push_events",
            "Events emitted to Socket.IO rooms",
            value=pusher.events,
        )
        yield GaugeMetricFamily(
            "pgagent_watch_clients",
            "Engine.IO connections open on this instance",
            value=len(service.sio.eio.sockets),
        )
        flow = getattr(service.sio.eio, "dropped", None)
        if flow is not None:
            yield CounterMetricFamily(
                "pgagent_watch_clients_dropped",
                "Clients dropped because they stopped reading",
                value=flow,
            )
        for name, value in sorted(self.m.values.items()):
            yield GaugeMetricFamily(f"pgagent_watch_{name}", name, value=value)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics_page(request: Request) -> Response:
    """The Prometheus text format; no secret, no per-user data."""
    service: Any = request.app.state.service
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
