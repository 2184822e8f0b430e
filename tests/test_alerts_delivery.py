"""Delivery faults: SMTP down, slow, refusing the login or one recipient of
three; a web hook that fails or never answers; addresses that are not."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web

from pgagent_watch.cluster import free_port
from pgagent_watch.samples import Step

from .alerts_support import (
    Inbox,
    alert_ids,
    alert_settings,
    alerts_ready,
    make_user,
    outbox,
    subscribe,
    write_failures,
)
from .fix_cluster import running_service, until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("forget_users")]


def states(db: psycopg.Connection, address: str) -> list[str]:
    return [r[1] for r in outbox(db, address)]


async def ready(running: Any) -> None:
    await alerts_ready(running)


async def test_a_refused_login_fails_for_good_with_the_servers_answer(
    cluster, db, make_job, monkeypatch
):
    box = Inbox()
    box.login = ("watch", "right password")
    await box.start(auth=True)
    # The classic variables of the pgAdmin extension.
    monkeypatch.setenv("SMTP_USER", "watch")
    monkeypatch.setenv("SMTP_PASS", "wrong password")
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    try:
        settings = alert_settings(cluster, box.port)
        assert settings.smtp.user == "watch"
        assert "wrong" not in repr(settings)
        async with running_service(settings) as running:
            await ready(running)
            user_id, address, _ = make_user(db)
            subscribe(db, user_id, job_id)
            write_failures(db, job_id, 2)
            await until(lambda: states(db, address) == ["failed"] * 2, "failed rows")
            rows = outbox(db, address)
            assert all("535" in r[3] and "login refused" in r[3] for r in rows)
            assert all(r[2] == 1 for r in rows)
            await asyncio.sleep(1)
            assert all(r[2] == 1 for r in outbox(db, address)), "it retried"
        monkeypatch.setenv("SMTP_PASS", "right password")
        async with running_service(alert_settings(cluster, box.port)) as running:
            await ready(running)
            write_failures(db, job_id, 1)
            await until(lambda: box.to(address), "a mail after a good login")
    finally:
        await box.stop()


async def test_one_refused_recipient_of_three_fails_only_itself(
    cluster, db, make_job, inbox
):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        await ready(running)
        people = [make_user(db) for _ in range(3)]
        for user_id, _, _ in people:
            subscribe(db, user_id, job_id)
        inbox.reject.add(people[1][1])
        write_failures(db, job_id, 1)
        await until(
            lambda: inbox.to(people[0][1]) and inbox.to(people[2][1]),
            "the two good recipients' mail",
        )
        await until(lambda: states(db, people[1][1]) == ["failed"], "refused row")
    assert "550" in outbox(db, people[1][1])[0][3]
    assert states(db, people[0][1]) == states(db, people[2][1]) == ["sent"]


async def test_alerts_wait_while_smtp_is_down_and_leave_grouped_when_back(
    cluster, db, make_job
):
    port = free_port()
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    async with running_service(alert_settings(cluster, port)) as running:
        await ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        write_failures(db, job_id, 3)
        await until(
            lambda: (
                (rows := outbox(db, address))
                and all(r[2] >= 2 and r[1] == "pending" for r in rows)
            ),
            "retries while SMTP is down",
        )
        assert "cannot reach" in outbox(db, address)[0][3]
        write_failures(db, job_id, 2)
        await until(lambda: len(outbox(db, address)) == 5, "five rows")
        box = await Inbox().start(port)
        try:
            await until(lambda: box.to(address), "the mail after SMTP came back")
            await asyncio.sleep(0.5)
            mails = box.to(address)
        finally:
            await box.stop()
    assert len(mails) == 1, [m["Subject"] for m in mails]
    assert len(alert_ids(mails[0])) == 5
    assert states(db, address) == ["sent"] * 5


async def test_a_slow_smtp_server_times_out_then_delivers(cluster, db, make_job, inbox):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    inbox.delay = 2.5
    settings = alert_settings(cluster, inbox.port)
    settings = settings.model_copy(
        update={"smtp": settings.smtp.model_copy(update={"timeout": 0.5})}
    )
    async with running_service(settings) as running:
        await ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        write_failures(db, job_id, 1)
        await until(
            lambda: (
                (rows := outbox(db, address))
                and rows[0][3]
                and "did not answer" in rows[0][3]
            ),
            "a timeout",
        )
        inbox.delay = 0
        await until(lambda: inbox.to(address), "the mail once the server is quick")
    assert len(inbox.to(address)) == 1


async def test_an_address_that_is_not_one_fails_clearly(cluster, db, make_job, inbox):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        await ready(running)
        user_id, _, _ = make_user(db, "not an address")
        subscribe(db, user_id, job_id)
        write_failures(db, job_id, 1)
        await until(lambda: states(db, "not an address") == ["failed"], "failed")
    assert "not an e-mail address" in outbox(db, "not an address")[0][3]


class Hook:
    """A local web hook: answers 500, never answers, or takes the message."""

    def __init__(self) -> None:
        self.mode = "fail"
        self.received: list[tuple[dict[str, Any], str]] = []
        self.release = asyncio.Event()
        self.port = free_port()
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)

    async def handle(self, request: web.Request) -> web.Response:
        if self.mode == "fail":
            return web.Response(status=500, text="broken")
        if self.mode == "silent":
            await self.release.wait()
            return web.Response(status=504)
        self.received.append(
            (await request.json(), request.headers.get("Authorization", ""))
        )
        return web.Response(text="ok")

    async def start(self) -> Hook:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self.release.set()
        await self.runner.cleanup()


PASSWORD = "p@ss/w:rd#1"


async def test_a_web_hook_that_fails_or_hangs_retries_then_dead_letters_and_resends(
    cluster, db, make_job, caplog
):
    caplog.set_level(logging.DEBUG)
    hook = await Hook().start()
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    settings = alert_settings(
        cluster,
        None,
        max_attempts=2,
        channels={
            "ops": {
                "url": f"json://127.0.0.1:{hook.port}/hook?rto=1&cto=1",
                "user": "watch",
                "password": PASSWORD,
            }
        },
    )
    try:
        async with running_service(settings) as running:
            await ready(running)
            user_id, _, token = make_user(db)
            subscribe(db, user_id, job_id, channel="ops")
            write_failures(db, job_id, 1)
            await until(lambda: states(db, "ops")[-1:] == ["dead"], "a dead letter")
            hook.mode = "silent"
            write_failures(db, job_id, 1)
            await until(
                lambda: (
                    states(db, "ops")[-1:] == ["dead"] and len(states(db, "ops")) >= 2
                ),
                "a second dead letter",
                limit=60,
            )
            hook.mode = "ok"
            auth = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=running.url) as http:
                dead = (await http.get("/api/alerts?state=dead", headers=auth)).json()
                assert {a["channel"] for a in dead} == {"ops"}
                assert len(dead) >= 2
                for a in dead:
                    answer = await http.post(
                        f"/api/alerts/{a['id']}/resend", headers=auth
                    )
                    assert answer.status_code == 200
                    assert answer.json()["state"] == "pending"
                await until(lambda: len(hook.received) >= 1, "the resent alerts")
                shown = (await http.get("/api/alerts", headers=auth)).text
                health = (await http.get("/healthz")).text
        await until(lambda: set(states(db, "ops")) == {"sent"}, "all sent")
    finally:
        await hook.stop()
    body, authorization = hook.received[0]
    assert "failed" in body["title"]
    assert base64.b64decode(authorization.split()[1]).decode() == f"watch:{PASSWORD}"
    errors = " ".join(r[3] or "" for r in outbox(db, "ops")) + shown + health
    seen = errors + caplog.text
    for secret in (PASSWORD, "p%40ss"):
        assert secret not in seen
