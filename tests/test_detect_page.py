"""Health conditions on the page, in a real Chromium: a badge comes and goes live."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import psycopg
import pytest
from playwright.async_api import Browser, async_playwright, expect

from pgagent_watch.cluster import Agent, Cluster
from pgagent_watch.samples import Step

from .test_detect import agent_host, detecting, wait_agent_registered

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium"),
]

SECONDS = 15_000  # ms


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        await browser.close()


async def test_health_badges_appear_and_clear_on_the_page_as_conditions_do(
    cluster: Cluster,
    db: psycopg.Connection,
    make_job,
    live_agent: Agent,
    chromium: Browser,
):
    job_id = make_job([Step("ok", "SELECT 1")])
    await wait_agent_registered(db)
    pid, _ = agent_host(db)
    async with detecting(cluster) as watch:
        context = await chromium.new_context()
        try:
            page = await context.new_page()
            await page.goto(watch.url + "/#/")
            await page.wait_for_selector("body[data-ready=true]")
            row = page.locator(f"tr.job[data-job-id='{job_id}']")
            await expect(row).to_be_visible()

            # C2: claimed an hour ago, no run in progress: overdue.
            db.execute(
                "UPDATE pgagent.pga_job SET jobagentid = %s,"
                " joblastrun = now() - interval '1 hour',"
                " jobnextrun = now() - interval '1 hour' WHERE jobid = %s",
                (pid, job_id),
            )
            badge = row.locator(".badge.health.overdue")
            await expect(badge).to_be_visible(timeout=SECONDS)
            assert "since" in (await badge.get_attribute("title") or "")
            db.execute(
                "UPDATE pgagent.pga_job SET jobagentid = NULL WHERE jobid = %s",
                (job_id,),
            )
            await expect(badge).to_have_count(0, timeout=SECONDS)

            # The agent dies while a job is scheduled: the server shows it.
            db.execute(
                "UPDATE pgagent.pga_job SET jobnextrun = now() + interval '1 hour'"
                " WHERE jobid = %s",
                (job_id,),
            )
            live_agent.kill()
            try:
                down = page.locator(".badge.health.agent_down")
                await expect(down.first).to_be_visible(timeout=SECONDS)
            finally:
                live_agent.start()
            await expect(down).to_have_count(0, timeout=SECONDS)
        finally:
            await context.close()
