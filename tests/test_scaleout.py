"""Several instances on one real Redis, against the same test cluster (issue 8)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from pgagent_watch import samples
from pgagent_watch.cluster import free_port
from pgagent_watch.config import load_settings
from pgagent_watch.samples import Step

from .fix_cluster import WAIT, run_updates, running_service, settings_for, until
from .netutil import StallProxy

FINISHED = {"s", "f", "i", "d"}

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
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


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """A real redis-server on a free port, nothing saved."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + WAIT
    while True:
        with contextlib.suppress(OSError):
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def cluster_settings(pg, redis_url: str):
    """settings_for(), with the [cluster] section (a name settings_for takes)."""
    base = settings_for(pg).model_dump(mode="python")
    base["servers"] = [{"name": "test", "dsn": pg.dsn()}]
    base["cluster"] = {
        "redis_url": redis_url,
        "standby_interval": 0.2,
        "probe_interval": 0.5,
        "probe_timeout": 1,
    }
    base.pop("state_dsn", None)
    return load_settings(**base)


@contextlib.asynccontextmanager
async def instances(settings, n: int) -> AsyncIterator[list]:
    async with contextlib.AsyncExitStack() as stack:
        out = [
            await stack.enter_async_context(running_service(settings)) for _ in range(n)
        ]
        yield out


def states(running) -> list[str]:
    return [r.service.servers[1].listener.status.state.value for r in running]


def _finished(job_id: int):
    return lambda c: any(
        k == "run" and s in FINISHED for k, s in run_updates(c.updates(), job_id)
    )


async def test_three_instances_share_browsers_and_exactly_one_listens(
    cluster, db, redis_port, client_factory, make_job, live_agent
):
    url = f"redis://127.0.0.1:{redis_port}/0"
    bus = aioredis.Redis.from_url(url)
    sizes: list[int] = []
    pubsub = bus.pubsub()
    await pubsub.subscribe("pgagent-watch")

    async def record() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                sizes.append(len(message["data"]))
                assert b"output" not in message["data"]

    recorder = asyncio.create_task(record())
    try:
        async with instances(cluster_settings(cluster, url), 3) as running:
            await until(
                lambda: sorted(states(running)) == ["connected", "standby", "standby"],
                "one listener connected, two in standby",
            )
            clients = []
            for r in running:
                for _ in range(2):
                    c = await client_factory(r.url)
                    answer = await c.call("start_job_status_listener", {"sid": 1})
                    assert answer["sid"] == 1
                    clients.append(c)
            job_id = make_job([Step("1 ok", "SELECT 1"), Step("2 ok", "SELECT 2")])
            samples.run_now(db, job_id)
            for c in clients:
                await c.wait_for(_finished(job_id), "the run on every instance")
            await asyncio.sleep(0.5)  # time for a double to show up
            for c in clients:
                ids = [u["event_id"] for u in c.updates() if u["job_id"] == job_id]
                assert len(ids) == len(set(ids)), "an event arrived twice"
                assert run_updates(c.updates(), job_id) == [
                    ("run", "r"),
                    ("step", "r"),
                    ("step", "s"),
                    ("step", "r"),
                    ("step", "s"),
                    ("run", "s"),
                ]
            async with httpx.AsyncClient() as http:
                for r in running:
                    health = (await http.get(f"{r.url}/healthz")).json()
                    assert health["servers"]["1"]["state"] in ("connected", "standby")
                    assert health["status"] == "ok", health
        assert sizes and max(sizes) < 4096, max(sizes, default=0)
        print(f"bus messages: {len(sizes)}, largest {max(sizes)} bytes")
    finally:
        recorder.cancel()
        with contextlib.suppress(BaseException):
            await recorder
        await pubsub.aclose()
        await bus.aclose()


async def test_a_subscription_redis_drops_is_made_again(
    cluster, db, redis_port, client_factory, make_job
):
    """C14: Redis kills the pub/sub clients (as its output buffer limit does)."""
    url = f"redis://127.0.0.1:{redis_port}/0"
    settings = cluster_settings(cluster, url)
    async with instances(settings, 2) as running:
        await until(
            lambda: sorted(states(running)) == ["connected", "standby"], "one listens"
        )
        standby = next(r for r in running if states([r]) == ["standby"])
        client = await client_factory(standby.url)
        await client.call("start_job_status_listener", {"sid": 1})
        bus = aioredis.Redis.from_url(url)
        killed = await bus.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 2
        job_id = make_job([Step("ok", "SELECT 1")])
        # Until it is subscribed again an emit is lost; the page resyncs on
        # reconnect, and here we only ask that the bus works again.
        deadline = time.monotonic() + WAIT
        while ("run", "s") not in run_updates(client.updates(), job_id):
            assert time.monotonic() < deadline, "no event after the kill"
            db.execute(
                "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus) VALUES (%s, 's')",
                (job_id,),
            )
            await asyncio.sleep(0.5)
        # Both subscribed again, and they stay so (no tearing down in a loop).
        await until(
            lambda: all(r.service.redis.pubsub is not None for r in running),
            "both have a pub/sub",
        )
        for _ in range(3):
            numsub = await bus.pubsub_numsub("pgagent-watch")
            if numsub[0][1] == 2:
                break
            await asyncio.sleep(1)
        assert numsub[0][1] == 2, numsub
        await asyncio.sleep(2)
        assert (await bus.pubsub_numsub("pgagent-watch"))[0][1] == 2
        await bus.aclose()


async def test_a_silent_subscription_is_found_by_the_probe_and_made_again(
    cluster, redis_port
):
    """C14: the path to Redis goes silent with no error; the probe notices."""
    proxy = await StallProxy("127.0.0.1", redis_port).start()
    try:
        behind = cluster_settings(cluster, f"redis://127.0.0.1:{proxy.port}/0")
        async with running_service(behind) as watch:
            manager = watch.service.redis
            await until(lambda: manager.pubsub is not None, "subscribed")
            assert await manager.probe()
            proxy.stall()
            await until(lambda: manager.resubscribes >= 1, "the loss found")
            deadline = time.monotonic() + WAIT
            while not await manager.probe():
                assert time.monotonic() < deadline, "never subscribed again"
            # End the stalled connections while the service can still see
            # them close, so that redis-py closes its side.
            await proxy.close()
            await asyncio.sleep(0.2)
    finally:
        await proxy.close()


async def test_killing_the_listening_instance_moves_listening_with_no_event_lost(
    cluster, db, redis_port, client_factory, make_job, live_agent, tmp_path: Path
):
    url = f"redis://127.0.0.1:{redis_port}/0"
    exe = Path(sys.executable).with_name("pgagent-watch")
    procs: dict[int, subprocess.Popen] = {}
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PGAGENT_WATCH_LISTENER__SAFETY_INTERVAL": "2",
        "PGAGENT_WATCH_LISTENER__HEARTBEAT_INTERVAL": "1",
        "PGAGENT_WATCH_CLUSTER__STANDBY_INTERVAL": "0.2",
    }
    try:
        for _ in range(2):
            port = free_port()
            config = tmp_path / f"instance-{port}.toml"
            config.write_text(
                f'[[servers]]\nname = "test"\ndsn = "{cluster.dsn()}"\n'
                f'[web]\nport = {port}\n[cluster]\nredis_url = "{url}"\n'
            )
            procs[port] = subprocess.Popen(  # noqa: ASYNC220
                [str(exe), "serve", "-c", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        for proc in procs.values():
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), WAIT)
            assert line.startswith("page:"), line

        async def listener_states() -> dict[int, str]:
            out = {}
            async with httpx.AsyncClient() as http:
                for port, proc in procs.items():
                    if proc.poll() is not None:
                        continue
                    health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
                    out[port] = health["servers"]["1"]["state"]
            return out

        seen: dict[int, str] = {}
        deadline = time.monotonic() + WAIT
        while sorted(seen.values()) != ["connected", "standby"]:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.1)
            seen = await listener_states()
        holder = next(p for p, s in seen.items() if s == "connected")
        survivor = next(p for p in procs if p != holder)
        client = await client_factory(f"http://127.0.0.1:{survivor}")
        await client.call("start_job_status_listener", {"sid": 1})

        job_id = make_job(
            [Step(f"{i} wait", "SELECT pg_sleep(0.3)") for i in range(1, 6)]
        )
        samples.run_now(db, job_id)
        await client.wait_for(
            lambda c: ("step", "s") in run_updates(c.updates(), job_id),
            "the run under way",
        )
        procs[holder].send_signal(signal.SIGKILL)
        procs[holder].wait(WAIT)
        killed_at = time.monotonic()
        deadline = killed_at + WAIT
        while (await listener_states()).get(survivor) != "connected":
            assert time.monotonic() < deadline, "no takeover"
            await asyncio.sleep(0.1)
        takeover = time.monotonic() - killed_at
        await client.wait_for(_finished(job_id), "the end of the run after takeover")
        by_id = {
            u["event_id"]: (u["kind"], u["status"])
            for u in client.updates()
            if u["job_id"] == job_id and u["kind"] in ("run", "step")
        }
        story = [by_id[i] for i in sorted(by_id)]
        assert story == [("run", "r")] + [("step", "r"), ("step", "s")] * 5 + [
            ("run", "s")
        ]
        print(f"listening taken over {takeover:.1f} s after SIGKILL")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def test_bus_messages_hold_ids_and_statuses_only():
    """The wire event carries no output: what the bus would carry stays small."""
    from datetime import UTC, datetime

    from pgagent_watch.events import JobEvent

    event = JobEvent(
        server_id=1,
        event_id=1,
        xid=1,
        at=datetime.now(UTC),
        kind="step",
        job_id=1,
        job_name="j" * 200,
        run_id=1,
        step_id=1,
        step_run_id=1,
        step_name="s" * 200,
        status="f",
        result=1,
        duration=1.0,
        extra={},
    )
    wire = json.dumps(event.to_wire())
    assert "output" not in wire and len(wire) < 1024
