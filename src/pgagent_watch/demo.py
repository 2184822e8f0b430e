"""The embedded default: a throwaway cluster, a real pgAgent daemon, the page.

Everything it starts lives in one temporary folder that goes away on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from . import capture, samples
from .auth.admin import add_user, new_token
from .cluster import Agent, Cluster
from .config import Settings, load_settings
from .server import serve
from .service import Service

logger = logging.getLogger("pgagent_watch.demo")


@dataclass
class DemoStack:
    """The parts of a running demo, for the demo command and for tests."""

    cluster: Cluster
    agent: Agent
    jobs: dict[str, int]


def prepare_database(dsn: str) -> None:
    """Create the pgagent extension and install capture in one database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgagent")
        capture.install(conn)


@contextlib.contextmanager
def demo_stack(with_jobs: bool = True, poll_seconds: int = 1) -> Iterator[DemoStack]:
    """Start a cluster, pgAgent and the sample jobs; tear all of it down after."""
    cluster = Cluster()
    agent: Agent | None = None
    try:
        cluster.start()
        prepare_database(cluster.dsn())
        jobs: dict[str, int] = {}
        if with_jobs:
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                jobs = samples.demo_jobs(conn)
        agent = Agent(
            cluster.dsn(),
            poll_seconds=poll_seconds,
            logfile=cluster.folder / "pgagent.log",
        )
        agent.start()
        yield DemoStack(cluster, agent, jobs)
    finally:
        if agent is not None:
            agent.stop()
        cluster.destroy()


def demo_settings(
    stack: DemoStack,
    port: int,
    alert_window: float | None = None,
    alert_batch: int | None = None,
) -> Settings:
    """The demo's settings: its mail catcher on unless SMTP_HOST is set."""
    alerts: dict[str, Any] = {"mail_catcher": True}
    if alert_window is not None:
        alerts["window"] = alert_window
    if alert_batch is not None:
        alerts["batch"] = alert_batch
    return load_settings(
        servers=[{"name": "demo", "dsn": stack.cluster.dsn()}],
        web={
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
        },
        alerts=alerts,
    )


async def demo_admin(settings: Settings) -> tuple[str, str, str]:
    """Create the demo's administrator; return its name, password and a token."""
    created = await add_user(settings, "admin", "admin", email="admin@localhost")
    assert created.password is not None
    token = await new_token(settings, "admin", "demo")
    return created.name, created.password, token


def run_demo(
    port: int,
    say: Callable[[str], None] = print,
    alert_window: float | None = None,
    alert_batch: int | None = None,
) -> int:
    """The ``demo`` command: serve until Ctrl-C or SIGTERM, then clean up."""
    with demo_stack() as stack:
        say(f"database: {stack.cluster.url()}")
        settings = demo_settings(stack, port, alert_window, alert_batch)
        admin = asyncio.run(demo_admin(settings))
        say(f"login: {admin[0]} {admin[1]}")
        say(f"token: {admin[2]}")
        service = Service(settings)
        asyncio.run(
            serve(
                service,
                "127.0.0.1",
                port,
                on_ready=lambda: say(f"page: http://127.0.0.1:{port}/"),
            )
        )
    return 0
