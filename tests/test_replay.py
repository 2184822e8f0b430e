"""No event lost, none twice: out-of-order commits, a killed listener, a restart."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from pgagent_watch import samples
from pgagent_watch.cluster import Cluster
from pgagent_watch.demo import prepare_database
from pgagent_watch.samples import Step

from .fix_cluster import (
    Running,
    running_service,
    settings_for,
    unique,
    until,
    wait_connected,
)


def write_run(conn: psycopg.Connection, job_id: int, status: str = "s") -> int:
    """Write a run as pgAgent does: insert it running, then finish it."""
    row = conn.execute(
        "INSERT INTO pgagent.pga_joblog (jlgjobid) VALUES (%s) RETURNING jlgid",
        (job_id,),
    ).fetchone()
    assert row is not None
    conn.execute(
        "UPDATE pgagent.pga_joblog SET jlgstatus = %s, jlgduration = now() - jlgstart"
        " WHERE jlgid = %s",
        (status, row[0]),
    )
    return int(row[0])


def event_ids(conn: psycopg.Connection, job_id: int) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM pgagent_watch.event WHERE job_id = %s AND kind = 'run'"
        " ORDER BY id",
        (job_id,),
    ).fetchall()
    return [r[0] for r in rows]


def delivered(client: Any, job_id: int) -> list[int]:
    return [
        u["event_id"]
        for u in client.updates()
        if u["job_id"] == job_id and u["kind"] == "run"
    ]


def assert_exactly_once(client: Any, conn: psycopg.Connection, job_id: int) -> None:
    got = delivered(client, job_id)
    doubles = [i for i, n in collections.Counter(got).items() if n > 1]
    assert not doubles, f"delivered twice: {doubles}"
    assert sorted(got) == event_ids(conn, job_id)


def idle_job(db: psycopg.Connection) -> int:
    """A disabled job: the daemon never runs it, the test writes its runs."""
    return samples.create_job(
        db, unique("written"), [Step("x", "SELECT 1")], enabled=False
    )


async def joined(client_factory: Any, running: Running) -> Any:
    client = await client_factory(running.url)
    await client.call("start_job_status_listener", {"sid": 1})
    return client


@pytest.mark.parametrize("restart_listener", [False, True])
async def test_an_event_that_commits_after_a_later_one_arrives_exactly_once(
    watch: Running,
    client_factory: Any,
    db: psycopg.Connection,
    cluster: Cluster,
    restart_listener: bool,
) -> None:
    job_id = idle_job(db)
    client = await joined(client_factory, watch)
    listener = watch.service.servers[1].listener

    with (
        psycopg.connect(cluster.dsn()) as first,
        psycopg.connect(cluster.dsn()) as second,
    ):
        # The first transaction takes the lower event id and holds it.
        first.execute(
            "INSERT INTO pgagent.pga_joblog (jlgjobid) VALUES (%s)", (job_id,)
        )
        second.execute(
            "INSERT INTO pgagent.pga_joblog (jlgjobid) VALUES (%s)", (job_id,)
        )
        second.commit()
        await client.wait_for(
            lambda c: len(delivered(c, job_id)) == 1, "the later event"
        )
        lower, higher = event_ids_any(db, job_id, first)
        assert delivered(client, job_id) == [higher]

        if restart_listener:
            pid = listener.backend_pid
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await until(
                lambda: listener.backend_pid not in (None, pid), "a new backend"
            )
            await wait_connected(watch)
        first.commit()

    await client.wait_for(lambda c: len(delivered(c, job_id)) == 2, "the straggler")
    assert sorted(delivered(client, job_id)) == [lower, higher]
    # A full read after both must not deliver either again.
    reads = listener.full_reads
    listener.poke()
    await until(lambda: listener.full_reads > reads, "a full read")
    assert_exactly_once(client, db, job_id)


def event_ids_any(
    db: psycopg.Connection, job_id: int, holder: psycopg.Connection
) -> tuple[int, int]:
    """The holder's own (uncommitted) event id and the committed one."""
    own = holder.execute(
        "SELECT id FROM pgagent_watch.event WHERE job_id = %s AND kind = 'run'",
        (job_id,),
    ).fetchall()
    committed = event_ids(db, job_id)
    ids = sorted({r[0] for r in own} | set(committed))
    assert len(ids) == 2 and committed == [ids[1]]
    return ids[0], ids[1]


async def test_a_long_open_transaction_does_not_hold_back_live_events(
    watch: Running, client_factory: Any, db: psycopg.Connection, cluster: Cluster
) -> None:
    job_id = idle_job(db)
    client = await joined(client_factory, watch)
    with psycopg.connect(cluster.dsn()) as holder:
        # An open transaction with an id pins every snapshot's xmin.
        holder.execute("SELECT pg_current_xact_id()")
        for _ in range(5):
            write_run(db, job_id)
        await client.wait_for(
            lambda c: len(delivered(c, job_id)) == 10, "ten live events"
        )
        holder.rollback()
    assert_exactly_once(client, db, job_id)


async def test_a_terminated_listener_loses_and_doubles_nothing_while_runs_are_written(
    watch: Running, client_factory: Any, db: psycopg.Connection, cluster: Cluster
) -> None:
    job_id = idle_job(db)
    client = await joined(client_factory, watch)
    listener = watch.service.servers[1].listener
    stop = asyncio.Event()

    async def writer() -> None:
        async with await psycopg.AsyncConnection.connect(
            cluster.dsn(), autocommit=True
        ) as conn:
            while not stop.is_set():
                cur = await conn.execute(
                    "INSERT INTO pgagent.pga_joblog (jlgjobid) VALUES (%s)"
                    " RETURNING jlgid",
                    (job_id,),
                )
                row = await cur.fetchone()
                assert row is not None
                await conn.execute(
                    "UPDATE pgagent.pga_joblog SET jlgstatus = 'f' WHERE jlgid = %s",
                    (row[0],),
                )
                await asyncio.sleep(0.005)

    task = asyncio.create_task(writer())
    try:
        for _ in range(3):
            await until(lambda: len(delivered(client, job_id)) > 0, "some events")
            pid = listener.backend_pid
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await until(
                lambda old=pid: listener.backend_pid not in (None, old), "reconnected"
            )
    finally:
        stop.set()
        await task
    total = len(event_ids(db, job_id))
    await client.wait_for(lambda c: len(delivered(c, job_id)) >= total, "every event")
    assert_exactly_once(client, db, job_id)
    states = [m["state"] for m in client.events("server_status")]
    assert "reconnecting" in states and states[-1] == "connected"


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of the test's own, for tests that restart PostgreSQL."""
    c = Cluster().start()
    prepare_database(c.dsn())
    try:
        yield c
    finally:
        c.destroy()


@pytest.fixture
async def own_watch(own_cluster: Cluster) -> AsyncIterator[Running]:
    async with running_service(settings_for(own_cluster)) as running:
        await wait_connected(running)
        yield running


async def test_a_postgresql_restart_loses_no_event_and_tells_the_clients(
    own_cluster: Cluster, own_watch: Running, client_factory: Any
) -> None:
    with psycopg.connect(own_cluster.dsn(), autocommit=True) as conn:
        job_id = idle_job(conn)
    client = await joined(client_factory, own_watch)
    with psycopg.connect(own_cluster.dsn(), autocommit=True) as conn:
        for _ in range(20):
            write_run(conn, job_id, "f")
    # Restart at once: some of those events are not read yet.
    await asyncio.to_thread(own_cluster.restart)
    with psycopg.connect(own_cluster.dsn(), autocommit=True) as conn:
        for _ in range(5):
            write_run(conn, job_id, "s")
        total = len(event_ids(conn, job_id))
        await client.wait_for(
            lambda c: len(delivered(c, job_id)) >= total, "every event", limit=60
        )
        assert_exactly_once(client, conn, job_id)
    states = [m["state"] for m in client.events("server_status")]
    assert "reconnecting" in states
    await client.wait_for(
        lambda c: c.events("server_status")[-1]["state"] == "connected", "back"
    )


async def test_a_mark_ahead_of_the_server_restarts_from_now_instead_of_stopping(
    watch: Running, client_factory: Any, db: psycopg.Connection
) -> None:
    # C11: as after a restore into a fresh cluster, whose counter is lower.
    job_id = idle_job(db)
    client = await joined(client_factory, watch)
    listener = watch.service.servers[1].listener
    assert listener.cursor.state is not None
    listener.cursor.state.mark += 10**9
    pid = listener.backend_pid
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    await until(lambda: listener.backend_pid not in (None, pid), "reconnected")
    write_run(db, job_id)
    await client.wait_for(lambda c: len(delivered(c, job_id)) == 2, "new events")
    assert listener.cursor.state.mark < 10**9
