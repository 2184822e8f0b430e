"""Alerts for real: pgAgent's failures reach a real SMTP server as digests."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pgagent_watch import samples
from pgagent_watch.samples import Step

from .alerts_support import (
    alert_ids,
    alert_settings,
    alerts_ready,
    html_of,
    make_user,
    outbox,
    subscribe,
    text_of,
    write_failures,
)
from .fix_cluster import running_service, until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("forget_users")]


async def test_a_failing_batch_step_arrives_naming_the_step_and_its_output(
    cluster, db, make_job, live_agent, inbox
):
    noisy = (
        "C:\\Windows\\system32> dir \"quoted\" 'single'\n"
        "<script>alert(1)</script> & done\n" + "x" * 30_000
    )
    script = f"cat <<'EOF'\n{noisy}\nEOF\nexit 1"
    job_id = make_job(
        [Step("1 prepare", "SELECT 1"), Step("2 export", script, kind="b")]
    )
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        await alerts_ready(running)
        _, address, token = make_user(db)
        async with httpx.AsyncClient(base_url=running.url) as http:
            auth = {"Authorization": f"Bearer {token}"}
            answer = await http.put(
                "/api/subscriptions",
                json={"server_id": 1, "job_id": job_id},
                headers=auth,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["statuses"] == ["failed"]
            samples.run_now(db, job_id)
            await until(lambda: inbox.to(address), "the digest", limit=60)
            # The mail can arrive a moment before the outbox records it.
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                listed = (await http.get("/api/alerts?state=sent", headers=auth)).json()
                if listed or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert [a["job_id"] for a in listed] == [job_id]
    mail = inbox.to(address)[0]
    name = db.execute(
        "SELECT jobname FROM pgagent.pga_job WHERE jobid = %s", (job_id,)
    ).fetchone()[0]
    assert mail["Subject"] == f"{name} failed on test"
    assert mail["Message-ID"] and mail["From"] and mail["Date"]
    text = text_of(mail)
    assert "failing step: 2 export (result 1)" in text
    assert "    C:\\Windows\\system32> dir \"quoted\" 'single'" in text
    assert "    <script>alert(1)</script> & done" in text
    html = html_of(mail)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; done" in html
    assert f"/#/servers/1/jobs/{job_id}/runs/" in html


async def test_a_burst_of_1000_failures_leaves_as_at_most_4_digests(
    cluster, db, make_job, inbox
):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    settings = alert_settings(cluster, inbox.port, window=120, batch=250, settle=1)
    async with running_service(settings) as running:
        await alerts_ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        run_ids = write_failures(db, job_id, 1000)
        await until(
            lambda: sum(len(alert_ids(m)) for m in inbox.to(address)) >= 1000,
            "1000 alerts in digests",
            limit=90,
        )
    mails = inbox.to(address)
    assert len(mails) <= 4
    ids = [i for m in mails for i in alert_ids(m)]
    assert len(ids) == len(set(ids)) == 1000
    counted = sum(int(m["X-PgAgent-Watch-Count"]) for m in mails)
    assert counted == 1000
    for m in mails:
        n = int(m["X-PgAgent-Watch-Count"])
        assert f"x{n}" in text_of(m)
        assert m["Subject"].startswith(f"{n} runs failed (1 job) on test:")
    sent_runs = {r[4] for r in outbox(db, address) if r[1] == "sent"}
    assert sent_runs == set(run_ids)
