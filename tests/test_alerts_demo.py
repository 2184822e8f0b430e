"""Done when: in the demo, subscribing to the failing job makes its failures
arrive as digests in the mail catcher, grouped by --alert-window."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from pgagent_watch import samples, users
from pgagent_watch.cluster import free_port

from .test_demo import read_lines

pytestmark = pytest.mark.slow


async def test_the_demo_mails_the_failing_jobs_digests_to_its_mail_catcher() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pgagent_watch",
        "demo",
        "--port",
        str(port),
        "--alert-window",
        "4",
        "--alert-batch",
        "100",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = await read_lines(proc, {"database", "page"})
        page = lines["page"].rstrip("/")
        with psycopg.connect(lines["database"], autocommit=True) as conn:
            row = conn.execute(
                "SELECT id FROM pgagent_watch.app_user WHERE email = 'admin@localhost'"
            ).fetchone()
            if row is None:  # before sign-in lands, make the demo's admin here
                row = conn.execute(
                    "INSERT INTO pgagent_watch.app_user (name, email, role)"
                    " VALUES ('alerts-admin', 'admin@localhost', 'admin') RETURNING id"
                ).fetchone()
            token = users.TOKEN_PREFIX + "demo-alerts-" + "x" * 20
            conn.execute(
                "INSERT INTO pgagent_watch.api_token (user_id, token_hash)"
                " VALUES (%s, %s)",
                (row[0], users.token_hash(token)),
            )
            jobs = dict(
                conn.execute("SELECT jobname, jobid FROM pgagent.pga_job").fetchall()
            )
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=page, headers=auth) as http:
            answer = await http.put(
                "/api/subscriptions",
                json={"server_id": 1, "job_id": jobs["nightly-export"]},
            )
            assert answer.status_code == 200, answer.text
            with psycopg.connect(lines["database"], autocommit=True) as conn:
                samples.run_now(conn, jobs["nightly-export"])
            deadline = time.monotonic() + 60
            while True:
                caught = (await http.get("/api/mailcatcher")).json()
                digests = [m for m in caught if "nightly-export" in m["subject"]]
                if digests:
                    break
                assert time.monotonic() < deadline, "no digest in the mail catcher"
                await asyncio.sleep(0.3)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    mail = digests[0]
    assert mail["to"] == ["admin@localhost"]
    # The demo's own schedule may add a failure to the same digest.
    assert mail["subject"] in (
        "nightly-export failed on demo",
        "2 runs failed (1 job) on demo: nightly-export",
    )
    assert "failing step: 2 export (result 1)" in mail["text"]
    assert "disk quota exceeded" in mail["text"]
    assert f"http://127.0.0.1:{port}/#/servers/1/jobs/" in mail["html"]
