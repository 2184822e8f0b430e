"""The commands and endpoints around alerts: send-test-alert, reset-mark (C11),
the test button's endpoint and the demo's mail catcher."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from pgagent_watch.samples import Step

from .alerts_support import (
    alert_settings,
    alerts_ready,
    eventually,
    make_user,
    subscribe,
    text_of,
    write_failures,
)
from .fix_cluster import running_service, settings_for, until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("forget_users")]


def config(folder: Path, dsn: str, smtp_port: int) -> Path:
    path = folder / "watch.toml"
    path.write_text(
        f'[[servers]]\nname = "test"\ndsn = "{dsn}"\n\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "plain"\n'
        'sender = "Jobs · Überwachung <jobs@example.test>"\n'
    )
    return path


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pgagent_watch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode()


async def test_send_test_alert_reports_the_servers_answer(cluster, inbox, tmp_path):
    path = config(tmp_path, cluster.dsn(), inbox.port)
    code, out = await cli("send-test-alert", "-c", str(path), "--to", "me@example.test")
    assert code == 0, out
    assert "2.0.0 queued as test" in out
    mail = inbox.to("me@example.test")[0]
    assert mail["Subject"] == "pgagent-watch test message"
    assert mail["From"].addresses[0].display_name == "Jobs · Überwachung"
    assert "alerts reach you" in text_of(mail)
    inbox.reject.add("gone@example.test")
    code, out = await cli(
        "send-test-alert", "-c", str(path), "--to", "gone@example.test"
    )
    assert code == 1 and "550" in out and "refused" in out
    code, out = await cli("send-test-alert", "-c", str(path), "--to", "not an address")
    assert code == 1 and "not an e-mail address" in out


async def test_a_mark_ahead_of_the_server_is_reported_and_reset_mark_clears_it(
    cluster, db, tmp_path, inbox
):
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        await alerts_ready(running)
    # As after a restore into a new cluster: a mark far above its counter.
    db.execute(
        "UPDATE pgagent_watch.alert_cursor SET mark = 2^40 WHERE server_name = 'test'"
    )
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        engine = running.service.alerts.engine
        await until(lambda: engine.errors[1], "the mark error")
        async with httpx.AsyncClient(base_url=running.url) as http:
            health = (await http.get("/healthz")).json()
        assert health["status"] == "degraded"
        error = health["alerts"]["servers"]["1"]["error"]
        assert "ahead of the server's transaction counter" in error
        assert "reset-mark" in error
        code, out = await cli(
            "reset-mark",
            "-c",
            str(config(tmp_path, cluster.dsn(), 25)),
            "--server",
            "test",
        )
        assert code == 0 and "reset" in out, out
        engine.poke()
        await until(lambda: engine.errors[1] is None, "the cursor reading again")
    code, out = await cli(
        "reset-mark", "-c", str(config(tmp_path, cluster.dsn(), 25)), "--server", "nope"
    )
    assert code == 2 and "no server named 'nope'" in out


async def test_the_test_endpoint_and_the_mail_catcher(cluster, db, make_job):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    settings = settings_for(
        cluster,
        alerts={"mail_catcher": True, "window": 2, "settle": 0.2, "poll_interval": 0.5},
    )
    async with running_service(settings) as running:
        await alerts_ready(running)
        async with httpx.AsyncClient(base_url=running.url) as http:
            # Before any user: the anonymous administrator may test any address
            # (sending the CSRF token /api/me gives, as the page does).
            csrf = {"X-CSRF-Token": (await http.get("/api/me")).json()["csrf_token"]}
            r = await http.post(
                "/api/alerts/test", json={"to": "x@example.test"}, headers=csrf
            )
            assert r.status_code == 200 and r.json()["ok"] is True, r.text
            bad = await http.post(
                "/api/alerts/test", json={"to": "no address"}, headers=csrf
            )
            assert bad.status_code == 502
            assert "not an e-mail address" in bad.json()["detail"]["error"]

            user_id, address, token = make_user(db)
            _, _, admin = make_user(db, role="admin")
            subscribe(db, user_id, job_id)
            write_failures(db, job_id, 3)
            mine = {"Authorization": f"Bearer {token}"}
            other = await http.post(
                "/api/alerts/test", json={"to": "x@example.test"}, headers=mine
            )
            assert other.status_code == 403
            own = await http.post("/api/alerts/test", json={}, headers=mine)
            assert own.status_code == 200
            assert (await http.get("/api/mailcatcher", headers=mine)).status_code == 403
            boss = {"Authorization": f"Bearer {admin}"}

            async def caught() -> list[Any]:
                got = (await http.get("/api/mailcatcher", headers=boss)).json()
                return [
                    m for m in got if address in m["to"] and "failed" in m["subject"]
                ]

            mails = await eventually(caught, "the digest in the mail catcher")
    assert mails[0]["subject"].startswith("3 runs failed (1 job) on test")
    assert "<table" in mails[0]["html"] and "x3" in mails[0]["text"]


def test_smtp_host_in_the_environment_replaces_the_demos_mail_catcher(
    cluster, monkeypatch
):
    from pgagent_watch.service import Service

    monkeypatch.setenv("SMTP_HOST", "mail.example.test")
    monkeypatch.setenv("SMTP_PORT", "2525")
    settings = settings_for(cluster, alerts={"mail_catcher": True})
    service = Service(settings)
    assert service.alerts.catcher is None
    assert service.alerts.smtp.describe() == "smtp mail.example.test:2525 (plain)"
