"""Fault 4 of issue 8: the service SIGKILLed with alerts in the outbox and
events unread; after a restart every alert is sent exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pgagent_watch.cluster import free_port
from pgagent_watch.samples import Step

from .alerts_support import (
    alert_ids,
    make_user,
    outbox,
    subscribe,
    write_failures,
)
from .fix_cluster import until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("forget_users")]


def config(folder: Path, dsn: str, smtp_port: int, window: float) -> Path:
    path = folder / f"watch-{smtp_port}.toml"
    path.write_text(
        f"""
[[servers]]
name = "test"
dsn = "{dsn}"

[listener]
safety_interval = 2
heartbeat_interval = 1
backoff_initial = 0.1
backoff_max = 1

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "plain"
timeout = 2

[alerts]
window = {window}
# Rows the killed instance was sending are taken back after this.
claim_timeout = 6
settle = 0.2
poll_interval = 0.5
backoff_initial = 0.2
backoff_max = 1
"""
    )
    return path


@contextlib.contextmanager
def serve(path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgagent_watch",
            "serve",
            "-c",
            str(path),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def cursor_started(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                health = (await http.get("/healthz")).json()
                if health["alerts"]["servers"]["1"]["started"]:
                    return
            assert time.monotonic() < deadline, "the service did not start"
            await asyncio.sleep(0.1)


async def test_a_sigkilled_service_sends_every_alert_exactly_once_after_restart(
    cluster, db, make_job, inbox, tmp_path
):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    down = free_port()
    with serve(config(tmp_path, cluster.dsn(), down, window=1)) as (proc, url):
        await cursor_started(url)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        write_failures(db, job_id, 5)
        await until(
            lambda: (
                (rows := outbox(db, address))
                and len(rows) == 5
                and all(r[2] >= 1 for r in rows)
            ),
            "alerts tried while SMTP is down",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # Events nobody read: the service is dead.
    write_failures(db, job_id, 3)
    with serve(config(tmp_path, cluster.dsn(), inbox.port, window=1)) as (_, url):
        await until(
            lambda: sum(len(alert_ids(m)) for m in inbox.to(address)) >= 8,
            "eight alerts after the restart",
        )
        await cursor_started(url)
    ids = [i for m in inbox.to(address) for i in alert_ids(m)]
    assert len(ids) == len(set(ids)) == 8
    rows = outbox(db, address)
    assert len(rows) == 8 and {r[1] for r in rows} == {"sent"}
