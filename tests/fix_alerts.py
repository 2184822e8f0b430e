"""Fixtures of the alert tests: a real SMTP server, and users cleaned up after.

Loaded as a pytest plugin (see pyproject.toml), beside fix_cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from pgagent_watch.cluster import Cluster

from .alerts_support import Inbox


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    """An aiosmtpd server in the test process, catching every message."""
    box = await Inbox().start()
    try:
        yield box
    finally:
        await box.stop()


@pytest.fixture(scope="module")
def forget_users(cluster: Cluster) -> Iterator[None]:
    """Users end anonymous access: remove a module's own after it."""
    yield
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("DELETE FROM pgagent_watch.app_user WHERE name LIKE 'user-%'")
