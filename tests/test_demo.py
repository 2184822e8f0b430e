"""The demo command, as a user runs it: its lines, its jobs, its clean exit."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgagent_watch import samples
from pgagent_watch.cluster import free_port

from .fix_cluster import WAIT

pytestmark = pytest.mark.slow


async def read_lines(
    proc: asyncio.subprocess.Process, wanted: set[str]
) -> dict[str, str]:
    """Read the demo's stdout until every wanted ``key: value`` line came."""
    found: dict[str, str] = {}
    assert proc.stdout is not None
    while not wanted <= found.keys():
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT * 2)
        if not line:
            raise AssertionError(f"the demo ended early; saw {found}")
        m = re.match(r"^(\w+): (.+)$", line.decode().strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


async def test_the_demo_prints_its_lines_pushes_its_jobs_and_cleans_up(
    client_factory: Any,
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pgagent_watch",
        "demo",
        "--port",
        str(port),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = await read_lines(proc, {"database", "page"})
        assert lines["page"] == f"http://127.0.0.1:{port}/"
        database = lines["database"]
        assert database.startswith("postgresql://")
        auth = {"token": lines["token"]} if "token" in lines else None
        client = await client_factory(lines["page"].rstrip("/"), auth=auth)
        await client.call("start_job_status_listener", {"sid": 1})
        with psycopg.connect(database, autocommit=True) as conn:
            jobs = dict(
                conn.execute("SELECT jobname, jobid FROM pgagent.pga_job").fetchall()
            )
            folder = Path(conn.execute("SHOW data_directory").fetchone()[0]).parent
            for name in ("heartbeat", "nightly-export"):
                samples.run_now(conn, jobs[name])

        def final(c: Any, job: str) -> list[str]:
            return [
                u["status"]
                for u in c.updates()
                if u["job_id"] == jobs[job]
                and u["kind"] == "run"
                and u["status"] != "r"
            ]

        await client.wait_for(
            lambda c: final(c, "nightly-export") and final(c, "heartbeat"), "both runs"
        )
        assert set(final(client, "nightly-export")) == {"f"}
        assert set(final(client, "heartbeat")) == {"s"}
        await client.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), WAIT)
    assert code == 0
    assert not folder.exists()
