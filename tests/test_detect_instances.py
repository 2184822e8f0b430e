"""Health detection with several instances on one Redis: one detects, all show.

These need the listen lock and /metrics of the faults work (scaleout.py,
metrics.py); until those modules are in, they are skipped.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from pgagent_watch.cluster import Agent, free_port
from pgagent_watch.config import load_settings
from pgagent_watch.samples import Step

from .fix_cluster import WAIT, running_service, settings_for, until
from .test_detect import FAST, agent_host, wait_agent_registered

pytest.importorskip("pgagent_watch.scaleout", reason="no listen lock yet")
pytest.importorskip("pgagent_watch.metrics", reason="no /metrics yet")
pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free port, nothing saved."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + WAIT
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1) as s,
        ):
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def overdue_events(db: psycopg.Connection, job_id: int) -> list[str]:
    rows = db.execute(
        "SELECT status FROM pgagent_watch.event WHERE kind = 'overdue'"
        " AND job_id = %s ORDER BY id",
        (job_id,),
    ).fetchall()
    return [r[0] for r in rows]


async def test_of_two_instances_only_the_listening_one_detects_and_both_show_it(
    cluster, db, make_job, live_agent: Agent, redis_url
):
    job_id = make_job([Step("ok", "SELECT 1")])
    await wait_agent_registered(db)
    pid, _ = agent_host(db)
    # C2's state: claimed by a live agent an hour ago, no run in progress.
    db.execute(
        "UPDATE pgagent.pga_job SET jobagentid = %s,"
        " joblastrun = now() - interval '1 hour',"
        " jobnextrun = now() - interval '1 hour' WHERE jobid = %s",
        (pid, job_id),
    )
    cluster_section = {
        "redis_url": redis_url,
        "standby_interval": 0.2,
        "probe_interval": 0.5,
        "probe_timeout": 1,
    }
    # settings_for() takes "cluster" for the test cluster: add the section after.
    base = settings_for(cluster, detect=FAST).model_dump(mode="python")
    base["servers"] = [{"name": "test", "dsn": cluster.dsn()}]  # dumped masked
    base.pop("state_dsn", None)
    base["cluster"] = cluster_section
    settings = load_settings(**base)
    managers = [running_service(settings), running_service(settings)]
    both = [await m.__aenter__() for m in managers]
    stopped: set[int] = set()

    def state(i: int) -> str:
        return both[i].service.servers[1].listener.status.state.value

    try:
        await until(
            lambda: sorted(map(state, (0, 1))) == ["connected", "standby"],
            "one listener connected, one in standby",
        )
        await until(lambda: overdue_events(db, job_id) == ["start"], "overdue")
        active = 0 if state(0) == "connected" else 1
        other = 1 - active
        detecting = both[active].service.detectors[1]
        waiting = both[other].service.detectors[1]
        ticks = detecting.ticks
        await until(lambda: detecting.ticks >= ticks + 3, "more detections")
        assert waiting.ticks == 0
        assert overdue_events(db, job_id) == ["start"]

        # The standby instance shows what the other one found.
        async with httpx.AsyncClient(base_url=both[other].url) as http:
            health = (await http.get("/api/servers/1/health")).json()
            jobs = (await http.get("/api/servers/1/jobs")).json()
            servers = (await http.get("/api/servers")).json()
        assert health["detecting"] is False
        found = [c["kind"] for c in health["conditions"] if c["job_id"] == job_id]
        assert found == ["overdue"]
        assert any(a["pid"] == pid and a["alive"] for a in health["agents"])
        job = next(j for j in jobs if j["job_id"] == job_id)
        assert [h["kind"] for h in job["health"]] == ["overdue"]
        assert servers[0]["health"]["overdue"] >= 1

        # The detecting instance stops: the other takes over, announces
        # nothing twice, and reports the end.
        await managers[active].__aexit__(None, None, None)
        stopped.add(active)
        await until(lambda: state(other) == "connected", "the other to listen")
        await until(lambda: waiting.ticks >= 2, "the other to detect")
        assert overdue_events(db, job_id) == ["start"]
        db.execute(
            "UPDATE pgagent.pga_job SET jobagentid = NULL WHERE jobid = %s", (job_id,)
        )
        await until(lambda: overdue_events(db, job_id) == ["start", "end"], "the end")
    finally:
        for i, manager in enumerate(managers):
            if i not in stopped:
                await manager.__aexit__(None, None, None)
        # The shared mark would make the next instances replay every event
        # from here on: leave none behind for later tests.
        db.execute("DELETE FROM pgagent_watch.listener_mark WHERE server = 'test'")


async def test_metrics_show_open_conditions_and_whether_this_instance_detects(
    cluster, live_agent
):
    async with running_service(settings_for(cluster, detect=FAST)) as running:
        detector = running.service.detectors[1]
        await until(lambda: detector.ticks > 0, "a first detection")
        async with httpx.AsyncClient(base_url=running.url) as http:
            text = (await http.get("/metrics")).text
    assert 'pgagent_watch_detect_active{server="test"} 1.0' in text
    assert 'pgagent_watch_health_open{kind="stuck",server="test"}' in text
    assert 'pgagent_watch_detect_tick_seconds{server="test"}' in text
