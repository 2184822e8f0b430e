"""Faults the service must survive, each against the real services (issue 8)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import psycopg
import pytest
import socketio

from pgagent_watch import samples
from pgagent_watch.cluster import free_port
from pgagent_watch.samples import Step
from pgagent_watch.server import make_server
from pgagent_watch.service import Service

from .fix_cluster import (
    WAIT,
    run_updates,
    running_service,
    settings_for,
    unique,
    until,
    wait_connected,
)
from .netutil import RawWebSocket, StallProxy

FINISHED = {"s", "f", "i", "d"}


def _ensure_database(db: psycopg.Connection, name: str) -> None:
    if not db.execute(
        "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
    ).fetchone():
        db.execute(f'CREATE DATABASE "{name}"')


async def _discard(client) -> None:
    """Close what a client the server dropped still holds (its HTTP session)."""
    if client is not None and client.sio.eio.http is not None:
        await client.sio.eio.http.close()


def _finished(job_id: int):
    return lambda c: any(
        k == "run" and s in FINISHED for k, s in run_updates(c.updates(), job_id)
    )


@pytest.fixture
async def client_factory(client_factory):
    """Clients that do not reconnect: these tests stop services under them,
    and a client retrying a dead port leaves an HTTP session behind."""

    async def make(url: str, **kw):
        client = await client_factory(url, **kw)
        client.sio.reconnection = False
        return client

    return make


# Fault 2: servers that cannot be watched at start.


async def test_a_service_with_broken_servers_starts_reports_them_and_watches_the_rest(
    cluster, db, client_factory, make_job, live_agent
):
    _ensure_database(db, "no_pgagent")
    _ensure_database(db, "no_capture")
    with psycopg.connect(cluster.dsn("no_capture"), autocommit=True) as other:
        other.execute("CREATE EXTENSION IF NOT EXISTS pgagent")
        other.execute("DROP SCHEMA IF EXISTS pgagent_watch CASCADE")
    settings = settings_for(
        cluster,
        servers=[
            {"name": "test", "dsn": cluster.dsn()},
            {
                "name": "wrong-port",
                "host": "127.0.0.1",
                "port": free_port(),
                "dbname": "postgres",
                "user": "postgres",
            },
            # TEST-NET-1: routed nowhere, so the connection attempt hangs.
            {
                "name": "host-down",
                "host": "192.0.2.1",
                "dbname": "postgres",
                "user": "postgres",
            },
            {"name": "no-pgagent", "dsn": cluster.dsn("no_pgagent")},
            {"name": "no-capture", "dsn": cluster.dsn("no_capture")},
        ],
    )
    async with running_service(settings) as watch:
        await wait_connected(watch, 1)
        service = watch.service
        await until(
            lambda: all(
                s.listener.status.state.value in ("reconnecting", "error")
                for s in list(service.servers.values())[1:]
            ),
            "every broken server in a failed state",
        )
        async with httpx.AsyncClient(base_url=watch.url) as http:
            servers = {s["name"]: s for s in (await http.get("/api/servers")).json()}
            health = (await http.get("/healthz")).json()
        assert servers["test"]["state"] == "connected"
        assert servers["wrong-port"]["state"] == "reconnecting"
        assert "refused" in servers["wrong-port"]["reason"].lower()
        assert servers["host-down"]["state"] == "reconnecting"
        assert servers["host-down"]["reason"]
        assert servers["no-pgagent"]["state"] == "error"
        assert "pgAgent" in servers["no-pgagent"]["reason"]
        assert servers["no-capture"]["state"] == "error"
        assert (
            "pgagent-watch install --server no-capture"
            in (servers["no-capture"]["reason"])
        )
        assert health["status"] == "degraded"
        assert health["servers"]["2"]["state"] == "reconnecting"
        assert "password" not in str(health).lower()

        # The healthy server works as if nothing else were wrong.
        client = await client_factory(watch.url)
        await client.call("start_job_status_listener", {"sid": 1})
        job_id = make_job([Step("ok", "SELECT 1")])
        samples.run_now(db, job_id)
        await client.wait_for(_finished(job_id), "the run on the healthy server")

        # It keeps retrying: installing capture brings that server in.
        no_capture = service.servers[5].listener
        before = no_capture.status.reconnects
        await until(lambda: no_capture.status.reconnects > before, "another attempt")
        with psycopg.connect(cluster.dsn("no_capture"), autocommit=True) as other:
            from pgagent_watch import capture

            capture.install(other)
        await until(
            lambda: no_capture.status.state.value == "connected",
            "no-capture connected once capture is installed",
        )


# Fault 3 / C15: a browser that stops reading.


async def test_a_browser_that_stops_reading_is_dropped_and_nobody_else_slows(
    cluster, db, client_factory, make_job, request
):
    limit = 10
    settings = settings_for(cluster, limits={"client_queue_max": limit})
    async with running_service(settings) as watch:
        await wait_connected(watch)
        eio = watch.service.sio.eio
        stalled = await RawWebSocket.open(watch.port)
        request.addfinalizer(stalled.close)
        await stalled.send_text("40/pgagent,")
        await stalled.send_text('42/pgagent,["start_job_status_listener",{"sid":1}]')
        reader = await client_factory(watch.url)
        await reader.call("start_job_status_listener", {"sid": 1})
        await until(lambda: len(eio.sockets) == 2, "both clients connected")

        # Long names make big frames: the socket buffers fill in a few MB.
        job_id = make_job([Step("ok", "SELECT 1")], name=f"{unique()}-{'x' * 3000}")
        rows, per_commit = 4000, 50
        started = time.monotonic()
        biggest = 0
        async with await psycopg.AsyncConnection.connect(
            cluster.dsn(), autocommit=True
        ) as writer:
            for _ in range(rows // per_commit):
                await writer.execute(
                    "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus)"
                    " SELECT %s, 's' FROM generate_series(1, %s)",
                    (job_id, per_commit),
                )
                queues = [s.queue.qsize() for s in eio.sockets.values()]
                biggest = max([biggest, *queues])
        assert biggest <= limit
        await reader.wait_for(
            lambda c: len([u for u in c.updates() if u["job_id"] == job_id]) > rows,
            "every event at the reading client",
        )
        elapsed = time.monotonic() - started
        await until(lambda: eio.dropped == 1, "the stalled client dropped")
        assert len(eio.sockets) == 1
        # Its connection is aborted: it sees the end after what it was sent.
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(stalled.reader.read(2**16), WAIT):
                pass
        ids = [
            u["event_id"]
            for u in reader.updates()
            if u["job_id"] == job_id and u["kind"] == "run"
        ]
        assert len(ids) == len(set(ids)) == rows
        print(f"{rows} events of 3 kB to the reading client in {elapsed:.1f} s")


async def test_a_step_with_more_than_a_megabyte_of_output_sends_none_of_it(
    watch, db, client_factory, make_job, live_agent
):
    """C15: output is fetched over HTTP, never carried by a socket message."""
    client = await client_factory(watch.url)
    await client.call("start_job_status_listener", {"sid": 1})
    script = "head -c 1200000 /dev/zero | tr '\\0' x; echo; exit 1"
    job_id = make_job([Step("1 loud", script, kind="b")])
    samples.run_now(db, job_id)
    await client.wait_for(_finished(job_id), "the end of the loud run")
    row = db.execute(
        "SELECT length(jsloutput) FROM pgagent.pga_jobsteplog sl"
        " JOIN pgagent.pga_joblog jl ON jl.jlgid = sl.jsljlgid WHERE jl.jlgjobid = %s",
        (job_id,),
    ).fetchone()
    assert row is not None and row[0] > 1_000_000
    for event, data in client.received:
        assert len(json.dumps(data)) < 4096, event
    assert ("step", "f") in run_updates(client.updates(), job_id)


# Fault 6 / C13: a session that LISTENs and sits idle in a transaction.


@pytest.fixture
def notify_max_usage(db, agent):
    """Set the trigger's threshold for new sessions; pgAgent's are started anew."""

    def restart_agent() -> None:
        agent.stop()
        agent.start()

    def set_to(value: str) -> None:
        db.execute(
            f"ALTER DATABASE postgres SET pgagent_watch.notify_max_usage = '{value}'"
        )
        restart_agent()

    yield set_to
    db.execute("ALTER DATABASE postgres RESET pgagent_watch.notify_max_usage")
    restart_agent()


async def test_a_session_idle_in_transaction_is_reported_and_never_fails_pgagent(
    cluster, db, client_factory, make_job, live_agent, caplog
):
    settings = settings_for(cluster, metrics={"interval": 0.2, "queue_warn": 1e-9})
    idle = psycopg.connect(cluster.dsn())
    try:
        idle.execute("LISTEN pgagent_watch")
        idle.commit()
        idle.execute("SELECT 1")  # and now idle in transaction, never reading
        async with running_service(settings) as watch:
            await wait_connected(watch)
            client = await client_factory(watch.url)
            await client.call("start_job_status_listener", {"sid": 1})
            job_id = make_job([Step("ok", "SELECT 1")])
            with caplog.at_level(logging.WARNING, logger="pgagent_watch.metrics"):
                samples.run_now(db, job_id)
                await client.wait_for(_finished(job_id), "the run")
                # A few pages of notifications the idle session never reads.
                db.execute(
                    "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus)"
                    " SELECT %s, 's' FROM generate_series(1, 1000)",
                    (job_id,),
                )
                metrics = watch.service.metrics
                await until(lambda: metrics.queue_usage.get(1, 0) > 0, "queue usage")
                await until(
                    lambda: "notification queue" in caplog.text, "a warning logged"
                )
            async with httpx.AsyncClient(base_url=watch.url) as http:
                text = (await http.get("/metrics")).text
            line = next(
                x
                for x in text.splitlines()
                if x.startswith('pgagent_watch_notification_queue_usage{server="test"}')
            )
            assert float(line.split()[-1]) > 0
            states = db.execute(
                "SELECT state FROM pg_stat_activity"
                " WHERE application_name = 'pgagent-watch listener'"
            ).fetchall()
            assert states and all(s[0] != "idle in transaction" for s in states)
    finally:
        idle.close()


async def test_with_notifications_skipped_events_arrive_by_the_safety_read(
    cluster, db, watch, client_factory, make_job, live_agent, notify_max_usage
):
    notify_max_usage("0")
    client = await client_factory(watch.url)
    await client.call("start_job_status_listener", {"sid": 1})
    job_id = make_job([Step("1 ok", "SELECT 1"), Step("2 ok", "SELECT 2")])
    with psycopg.connect(cluster.dsn(), autocommit=True) as other:
        other.execute("LISTEN pgagent_watch")
        samples.run_now(db, job_id)
        await client.wait_for(_finished(job_id), "the run, read by the safety read")
        assert not list(other.notifies(timeout=0.2, stop_after=1))
    story = run_updates(client.updates(), job_id)
    assert story[0] == ("run", "r") and story[-1] == ("run", "s")
    assert len(story) == 6
    row = db.execute(
        "SELECT jlgstatus FROM pgagent.pga_joblog WHERE jlgjobid = %s", (job_id,)
    ).fetchone()
    assert row == ("s",)


# Fault 7: malformed input.


async def test_wrong_types_get_bad_request_and_the_connection_stays_up(
    watch, client_factory
):
    client = await client_factory(watch.url)
    cases = [
        (None, "BAD_REQUEST"),
        ("1", "BAD_REQUEST"),
        ([1], "BAD_REQUEST"),
        ({}, "NO_SERVER_ID"),
        ({"sid": None}, "NO_SERVER_ID"),
        ({"sid": "1"}, "BAD_REQUEST"),
        ({"sid": 1.5}, "BAD_REQUEST"),
        ({"sid": True}, "BAD_REQUEST"),
        ({"sid": -1}, "BAD_REQUEST"),
        ({"sid": 2**40}, "BAD_REQUEST"),
        ({"sid": {"$gt": 0}}, "BAD_REQUEST"),
        ({"sid": 999}, "SERVER_NOT_FOUND"),
    ]
    for data, code in cases:
        for event in ("start_job_status_listener", "get_job_states"):
            answer = await client.call(event, data)
            assert answer["code"] == code, (event, data, answer)
    answer = await client.call("no_such_event", {"x": 1})
    assert answer["code"] == "UNKNOWN_EVENT"
    assert "time" in await client.call("keep_alive")
    assert client.sio.connected


async def test_a_huge_payload_closes_only_that_connection(watch, client_factory):
    bystander = await client_factory(watch.url)
    big = await client_factory(watch.url)
    big.sio.reconnection = False
    await big.emit("start_job_status_listener", {"sid": 1, "pad": "x" * 2_000_000})
    await until(
        lambda: not big.sio.connected or big.sio.eio.state != "connected",
        "the huge sender disconnected",
    )
    assert "time" in await bystander.call("keep_alive")
    await _discard(big)


async def test_a_flood_of_events_is_rate_limited_and_the_connection_stays_up(
    cluster, client_factory
):
    settings = settings_for(
        cluster, limits={"socket_rate": 50, "socket_burst": 50, "socket_strikes": 10**6}
    )
    async with running_service(settings) as watch:
        flood = await client_factory(watch.url)
        bystander = await client_factory(watch.url)
        for _ in range(3000):
            await flood.emit("keep_alive", {})
        await flood.wait_for(
            lambda c: any(
                e["code"] == "RATE_LIMITED"
                for e in c.events("job_status_listener_error")
            ),
            "RATE_LIMITED",
        )
        started = time.monotonic()
        assert "time" in await bystander.call("keep_alive")
        assert time.monotonic() - started < 1
        errors = [
            e
            for e in flood.events("job_status_listener_error")
            if e["code"] == "RATE_LIMITED"
        ]
        # One error per run of refusals, not one per refused event.
        assert len(errors) < 10
        await asyncio.sleep(0.5)  # the bucket refills
        assert "time" in await flood.call("keep_alive")
        assert flood.sio.connected


async def test_a_client_that_keeps_flooding_is_disconnected(cluster, client_factory):
    settings = settings_for(
        cluster, limits={"socket_rate": 10, "socket_burst": 10, "socket_strikes": 100}
    )
    async with running_service(settings) as watch:
        flood = await client_factory(watch.url)
        flood.sio.reconnection = False
        for _ in range(2000):
            if not flood.sio.connected:
                break
            await flood.emit("keep_alive", {})
        await until(lambda: not flood.sio.connected, "the flooding client dropped")
        await _discard(flood)


async def test_random_bytes_on_the_websocket_do_not_hurt_the_service(
    watch, client_factory
):
    rng = random.Random(8)
    sockets = []
    for i in range(20):
        raw = await RawWebSocket.open(watch.port, recv_buffer=None)
        sockets.append(raw)
        if i % 4 == 0:
            await raw.send_raw(rng.randbytes(rng.randint(1, 3000)))
        elif i % 4 == 1:
            await raw.send_frame(rng.randbytes(rng.randint(1, 3000)), opcode=2)
        elif i % 4 == 2:
            await raw.send_text("40/pgagent,")
            await raw.send_text("42/pgagent," + "[" * 50_000)
        else:
            await raw.send_text("40/pgagent,")
            junk = "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(500))
            await raw.send_text("42/pgagent," + junk)
            await raw.send_text('42/pgagent,["start_job_status_listener",' + junk)
    client = await client_factory(watch.url)
    answer = await client.call("start_job_status_listener", {"sid": 1})
    assert answer["state"] == "connected"
    for raw in sockets:
        raw.close()


# Fault 8: SIGTERM.


async def test_sigterm_delivers_what_is_in_flight_and_exits_0_within_seconds(
    cluster, db, make_job, client_factory, tmp_path: Path
):
    port = free_port()
    config = tmp_path / "pgagent-watch.toml"
    config.write_text(
        f'[[servers]]\nname = "test"\ndsn = "{cluster.dsn()}"\n'
        f"[web]\nport = {port}\ncoalesce_ms = 1000\n"
    )
    exe = Path(sys.executable).with_name("pgagent-watch")
    proc = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
        [str(exe), "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    client = None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), WAIT)
        assert line.startswith("page:"), line
        client = await client_factory(f"http://127.0.0.1:{port}")
        client.sio.reconnection = False
        await client.call("start_job_status_listener", {"sid": 1})
        job_id = make_job([Step("ok", "SELECT 1")])
        insert = "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus) VALUES (%s, %s)"
        db.execute(insert, (job_id, "r"))
        await client.wait_for(
            lambda c: ("run", "r") in run_updates(c.updates(), job_id), "the first"
        )
        # The signal comes right after the commit: the event is still on its
        # way (in the listener or the push) and must be delivered all the same.
        db.execute(insert, (job_id, "s"))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), WAIT)
        elapsed = time.monotonic() - started
        assert code == 0, proc.stderr.read()
        assert elapsed < 5, elapsed
        await until(lambda: not client.sio.connected, "the client disconnected")
        assert ("run", "s") in run_updates(client.updates(), job_id)
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as http:
                await http.get(f"http://127.0.0.1:{port}/healthz")
        print(f"SIGTERM to exit 0 in {elapsed:.2f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        await _discard(client)


# C12: a network path that goes silent without closing.


async def test_a_silent_connection_is_dropped_by_the_heartbeat_and_replayed(
    cluster, db, client_factory, make_job
):
    proxy = await StallProxy("127.0.0.1", cluster.port).start()
    settings = settings_for(
        cluster,
        servers=[
            {
                "name": "test",
                "host": "127.0.0.1",
                "port": proxy.port,
                "dbname": "postgres",
                "user": "postgres",
            }
        ],
    )
    try:
        async with running_service(settings) as watch:
            await wait_connected(watch)
            listener = watch.service.servers[1].listener
            client = await client_factory(watch.url)
            await client.call("start_job_status_listener", {"sid": 1})
            reconnects = listener.status.reconnects
            proxy.stall()
            stalled_at = time.monotonic()
            # Written while the listener hears nothing: must come by replay.
            job_id = make_job([Step("ok", "SELECT 1")])
            db.execute(
                "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus) VALUES (%s, 'r')",
                (job_id,),
            )
            await until(
                lambda: listener.status.reconnects > reconnects, "the drop noticed"
            )
            noticed = time.monotonic() - stalled_at
            # heartbeat_interval 1 s + heartbeat_timeout 3 s + psycopg's own
            # 5 s wait for the cancelled query, and some slack.
            assert noticed < 12, noticed
            await wait_connected(watch)
            await client.wait_for(
                lambda c: ("run", "r") in run_updates(c.updates(), job_id),
                "the event written during the stall",
            )
            print(f"silent connection noticed in {noticed:.1f} s")

            # Shutdown in bounded time, with the path silent again.
            proxy.stall()
            started = time.monotonic()
        assert time.monotonic() - started < 10
    finally:
        await proxy.close()


# C16: a restart with many browsers connected.


@contextlib.asynccontextmanager
async def _serve_on(settings, port: int):
    service = Service(settings)
    server = make_server(service, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), "the service serving")
    assert not task.done()
    try:
        yield service
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT)


async def test_a_restart_with_many_browsers_connected_rebuilds_rooms_and_catches_up(
    cluster, db, make_job
):
    n = 200
    port = free_port()
    settings = settings_for(cluster)
    job_id = make_job([Step("ok", "SELECT 1")])
    clients: list[socketio.AsyncClient] = []
    # No connection limit: each websocket holds one for its lifetime.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    joined: list[int] = [0] * n
    states: list[dict] = [{} for _ in range(n)]

    def make(i: int) -> socketio.AsyncClient:
        # As the page does: jittered reconnects; on every connect, ask again
        # for the rooms and for the current job states.
        sio = socketio.AsyncClient(
            reconnection_delay=0.2,
            reconnection_delay_max=2,
            randomization_factor=0.5,
            # One session for all: each client's own would be left open by
            # the reconnects.
            http_session=session,
        )

        @sio.on("connect", namespace="/pgagent")
        async def on_connect() -> None:
            await sio.emit(
                "start_job_status_listener", {"sid": 1}, namespace="/pgagent"
            )
            await sio.emit("get_job_states", {"sid": 1}, namespace="/pgagent")

        @sio.on("job_status_listener_started", namespace="/pgagent")
        async def on_started(data) -> None:
            joined[i] += 1

        @sio.on("job_states", namespace="/pgagent")
        async def on_states(data) -> None:
            states[i] = {j["job_id"]: j for j in data["jobs"]}

        return sio

    try:
        async with _serve_on(settings, port) as service:
            await until(
                lambda: service.servers[1].listener.status.state.value == "connected",
                "listener connected",
            )
            for i in range(n):
                sio = make(i)
                clients.append(sio)
                await sio.connect(
                    f"http://127.0.0.1:{port}",
                    namespaces=["/pgagent"],
                    transports=["websocket"],
                    wait_timeout=10,
                )
            await until(lambda: all(joined), "every client in its room")
        # Down: a run finishes while no instance watches.
        db.execute(
            "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus) VALUES (%s, 'f')",
            (job_id,),
        )
        started = time.monotonic()
        async with _serve_on(settings, port) as service:
            await until(lambda: all(j >= 2 for j in joined), "every client back", 60)
            back = time.monotonic() - started
            room = service.sio.manager.rooms["/pgagent"].get("server:1", {})
            assert len(room) == n
            await until(
                lambda: all(s.get(job_id, {}).get("status") == "f" for s in states),
                "every client caught up on the run that ended while down",
            )
        print(f"{n} clients back in their rooms {back:.1f} s after the restart")
    finally:
        for sio in clients:
            sio.reconnection = False
        await asyncio.gather(
            *(sio.disconnect() for sio in clients), return_exceptions=True
        )
        await session.close()
