"""The page in a real Chromium, against the real service and the real pgAgent."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from pgagent_watch import samples, users
from pgagent_watch.cluster import Cluster
from tests.fix_cluster import Running, running_service, settings_for, unique, until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium"),
]

SECONDS = 15_000  # ms: "within seconds", with room for a busy CI machine
HOSTILE = (
    '<script>alert(1)</script>"><img src=x onerror=alert(2)> https://evil.example/'
)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        await b.close()


class Tab:
    """A page with what its console said and every URL it asked for."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.console: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("request", lambda r: self.requests.append(r.url))

        async def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            await d.dismiss()

        page.on("dialog", dialog)

    def _console(self, msg: ConsoleMessage) -> None:
        self.console.append(f"{msg.type}: {msg.text}")

    async def open(self, fragment: str = "#/") -> Page:
        await self.page.goto(self.base + "/" + fragment)
        await self.page.wait_for_selector("body[data-ready=true]")
        return self.page

    def check_clean(self) -> None:
        """No CSP violation, no script error, no request outside the service."""
        bad = [m for m in self.console if "Content Security Policy" in m]
        assert not bad, bad
        outside = [u for u in self.requests if not u.startswith(self.base)]
        assert not outside, outside
        assert not self.dialogs, self.dialogs


@pytest.fixture
async def tab(browser: Browser, watch: Running) -> AsyncIterator[Tab]:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    t = Tab(page, watch.url)
    yield t
    await context.close()
    assert not errors, errors


def row(page: Page, job_id: int) -> Any:
    return page.locator(f"tr.job[data-job-id='{job_id}']")


async def test_a_failing_job_turns_red_without_a_reload(
    tab: Tab, db: psycopg.Connection, make_job: Callable[..., int], live_agent: Any
) -> None:
    job_id = make_job(
        [
            samples.Step("1 ok", "SELECT 1"),
            samples.Step("2 boom", "echo about to fail; exit 1", kind="b"),
        ]
    )
    page = await tab.open()
    await expect(row(page, job_id)).to_be_visible()
    samples.run_now(db, job_id)
    start = time.monotonic()
    await expect(row(page, job_id).locator(".badge.f")).to_be_visible(timeout=SECONDS)
    took = time.monotonic() - start
    print(f"badge red {took:.1f} s after run now (pgAgent polls every 1 s)")
    failed = page.locator("#counts [data-count=failed24] strong")
    assert int(await failed.inner_text()) >= 1
    tab.check_clean()


async def test_run_now_on_a_jobs_page_starts_a_run_the_page_shows(
    tab: Tab, db: psycopg.Connection, make_job: Callable[..., int], live_agent: Any
) -> None:
    job_id = make_job([samples.Step("1 wait", "SELECT pg_sleep(1)")])
    page = await tab.open(f"#/servers/1/jobs/{job_id}")
    await expect(page.locator("table.runs td.empty")).to_have_text("never ran")
    await page.locator("button.run-now").click()
    dialog = page.locator("dialog#confirm")
    await expect(dialog).to_be_visible()
    await dialog.locator("button.ok").click()
    await expect(page.locator(".toast.ok")).to_contain_text("will start")
    first = page.locator("table.runs tbody tr").first
    await expect(first.locator(".badge")).to_have_text("succeeded", timeout=SECONDS)
    rows = db.execute(
        "SELECT count(*) FROM pgagent.pga_joblog WHERE jlgjobid = %s", (job_id,)
    ).fetchone()
    assert rows == (1,)
    tab.check_clean()


async def test_a_long_output_is_folded_and_downloads_whole(
    tab: Tab, db: psycopg.Connection, make_job: Callable[..., int], live_agent: Any
) -> None:
    name = unique("long-output")
    script = (
        'i=0; while [ $i -lt 400 ]; do echo "line $i C:\\\\Temp\\\\x <b>"; '
        "i=$((i+1)); done; exit 2"
    )
    job_id = make_job([samples.Step("1 chatty", script, kind="b")], name=name)
    samples.run_now(db, job_id)
    deadline = time.monotonic() + 30
    got = None
    while time.monotonic() < deadline and got is None:
        got = db.execute(
            "SELECT r.jlgid, s.jsloutput FROM pgagent.pga_joblog r"
            " JOIN pgagent.pga_jobsteplog s ON s.jsljlgid = r.jlgid"
            " WHERE r.jlgjobid = %s AND r.jlgstatus <> 'r'",
            (job_id,),
        ).fetchone()
        await asyncio.sleep(0.2)
    assert got is not None
    run_id, output = got
    assert output.count("\n") >= 400

    page = await tab.open(f"#/servers/1/jobs/{job_id}/runs/{run_id}")
    step = page.locator("article.step-run").first
    pre = step.locator("pre.output")
    await expect(pre).to_have_class("output folded")
    assert len(await pre.inner_text()) < len(output) / 10
    unfold = step.locator("button.unfold")
    await expect(unfold).to_contain_text("Show all")
    async with page.expect_download() as info:
        await step.locator("a.download").click()
    download = await info.value
    path = await download.path()
    assert path is not None
    assert await asyncio.to_thread(path.read_bytes) == output.encode("utf-8")
    await unfold.click()
    assert await pre.text_content() == output
    tab.check_clean()


async def test_untrusted_names_and_output_stay_text(
    tab: Tab, db: psycopg.Connection, make_job: Callable[..., int], live_agent: Any
) -> None:
    job_id = make_job(
        [
            samples.Step(
                "1 " + HOSTILE,
                "printf '%s' '" + HOSTILE.replace("'", "") + "'",
                kind="b",
            )
        ],
        name=unique("x") + HOSTILE,
    )
    samples.run_now(db, job_id)
    page = await tab.open()
    await expect(row(page, job_id).locator(".badge.s")).to_be_visible(timeout=SECONDS)
    assert HOSTILE in await row(page, job_id).locator("td.name").inner_text()
    run_link = row(page, job_id).locator("td.last a")
    await run_link.click()
    await expect(page.locator("article.step-run pre.output")).to_contain_text(
        "<script>"
    )
    assert await page.locator("img[src=x]").count() == 0
    assert await page.locator("main script").count() == 0
    tab.check_clean()


async def test_times_are_in_the_viewers_zone_with_the_servers_on_hover(
    browser: Browser,
    watch: Running,
    db: psycopg.Connection,
    make_job: Callable[..., int],
) -> None:
    # C5: the server runs in UTC, the viewer sits in Chicago.
    job_id = make_job([samples.Step("1 x", "SELECT 1")])
    db.execute(
        "INSERT INTO pgagent.pga_schedule (jscjobid, jscname, jscminutes, jschours)"
        " VALUES (%s, 'morning', %s, %s)",
        (
            job_id,
            [m == 54 for m in range(60)],
            [h == 7 for h in range(24)],
        ),
    )
    zone = db.execute("SHOW TimeZone").fetchone()
    assert zone is not None and zone[0] in ("UTC", "Etc/UTC")
    context = await browser.new_context(timezone_id="America/Chicago", locale="en-US")
    try:
        page = await context.new_page()
        await page.goto(f"{watch.url}/#/servers/1/jobs/{job_id}")
        words = page.locator(".schedules .words")
        await expect(words).to_have_text(f"every day at 07:54 ({zone[0]})")
        when = page.locator(".schedules li time")
        # 07:54 UTC is 01:54 in Chicago in winter (CST) and 02:54 in summer.
        assert (await when.inner_text()).endswith(("1:54 AM", "2:54 AM"))
        title = await when.get_attribute("title")
        assert title is not None and "7:54" in title and zone[0] in title
    finally:
        await context.close()


async def test_the_banner_says_when_the_live_connection_is_lost_and_back(
    tab: Tab, watch: Running, db: psycopg.Connection, make_job: Callable[..., int]
) -> None:
    job_id = make_job([samples.Step("1 x", "SELECT 1")])
    page = await tab.open()
    await expect(page.locator("#live")).to_have_text("live")
    for sid in list(watch.service.sio.manager.get_participants("/pgagent", None)):
        await watch.service.sio.disconnect(sid[0], namespace="/pgagent")
    banner = page.locator("#banner")
    await expect(banner).to_have_class("banner down", timeout=SECONDS)
    # While the page is away, the job is disabled: the page catches up.
    db.execute(
        "UPDATE pgagent.pga_job SET jobenabled = false WHERE jobid = %s", (job_id,)
    )
    await expect(banner).to_have_class("banner back", timeout=SECONDS)
    await expect(row(page, job_id)).to_have_class("job none disabled", timeout=SECONDS)


@pytest.mark.slow
async def test_the_overview_of_500_jobs_loads_and_stays_responsive(
    tab: Tab, db: psycopg.Connection, live_agent: Any
) -> None:
    prefix = unique("bulk")
    with db.transaction():
        db.execute(
            "INSERT INTO pgagent.pga_job (jobjclid, jobname, jobenabled)"
            " SELECT (SELECT min(jclid) FROM pgagent.pga_jobclass),"
            " %s || '-' || g, true"
            " FROM generate_series(1, 500) g",
            (prefix,),
        )
        db.execute(
            "INSERT INTO pgagent.pga_jobstep (jstjobid, jstname, jstkind, jstcode,"
            " jstdbname) SELECT jobid, '1 x', 's', 'SELECT 1', 'postgres'"
            " FROM pgagent.pga_job WHERE jobname LIKE %s",
            (prefix + "-%",),
        )
    try:
        start = time.monotonic()
        page = await tab.open()
        await expect(page.locator("tr.job").nth(499)).to_be_attached()
        loaded = time.monotonic() - start
        assert await page.locator("tr.job").count() >= 500
        # 50 of them run at once while we type into the filter.
        db.execute(
            "UPDATE pgagent.pga_job SET jobnextrun = now() WHERE jobid IN"
            " (SELECT jobid FROM pgagent.pga_job WHERE jobname LIKE %s"
            " ORDER BY jobid LIMIT 50)",
            (prefix + "-%",),
        )
        lags = []
        for _ in range(10):
            t0 = time.monotonic()
            await page.evaluate("1")
            lags.append(time.monotonic() - t0)
            await page.wait_for_timeout(200)
        t0 = time.monotonic()
        await page.locator("#filters input[name=name]").fill(prefix + "-137")
        visible = page.locator("tr.job:not([hidden])")
        await expect(visible).to_have_count(1)
        filtered = time.monotonic() - t0
        await expect(
            page.locator("#counts [data-count=succeeded] strong")
        ).not_to_have_text("0", timeout=SECONDS)
        print(
            f"500 jobs: loaded in {loaded:.2f} s, filter in {filtered * 1000:.0f} ms,"
            f" worst event-loop answer {max(lags) * 1000:.0f} ms"
        )
        assert loaded < 10 and filtered < 2 and max(lags) < 1
    finally:
        db.execute(
            "DELETE FROM pgagent.pga_job WHERE jobname LIKE %s", (prefix + "-%",)
        )
    tab.check_clean()


_users = itertools.count(1)


@pytest.fixture
async def signed_in(
    browser: Browser, cluster: Cluster, db: psycopg.Connection
) -> AsyncIterator[Tab]:
    """A tab signed in as an operator, on a service with a state database of
    its own (so that its users sign nobody else out)."""
    state_db = f"page_user_{os.getpid()}_{next(_users)}"
    db.execute(f'CREATE DATABASE "{state_db}"')
    settings = settings_for(cluster, state_dsn=cluster.dsn(dbname=state_db))
    async with running_service(settings) as watch:
        await until(lambda: watch.service.state_ready.is_set(), "state ready")
        async with httpx.AsyncClient(base_url=watch.url) as http:
            login = await http.get("/login")
        assert login.status_code == 200, "the sign-in page is missing"
        password = "a long enough password 42"
        async with watch.service.state_pool.connection() as conn:
            await users.create_user(
                conn, "olga", "operator", email="olga@example.org", password=password
            )
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        tab = Tab(page, watch.url)
        await page.goto(watch.url + "/login")
        await page.locator("input[name=name]").fill("olga")
        await page.locator("input[name=password]").fill(password)
        await page.locator("button[type=submit]").click()
        await page.wait_for_selector("body[data-ready=true]")
        got = await page.evaluate(
            "fetch('/api/subscriptions', {credentials: 'same-origin'})"
            ".then((r) => r.status)"
        )
        try:
            assert got == 200, "the subscriptions API is missing"
            yield tab
        finally:
            await context.close()


async def test_a_subscription_toggled_survives_a_reload(
    signed_in: Tab, make_job: Callable[..., int]
) -> None:
    job_id = make_job([samples.Step("1 x", "SELECT 1")])
    page = await signed_in.open()
    toggle = row(page, job_id).locator(".alert-toggle")
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    await toggle.click()
    await expect(row(page, job_id).locator(".alert-toggle")).to_have_attribute(
        "aria-pressed", "true"
    )
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]")
    await expect(row(page, job_id).locator(".alert-toggle")).to_have_attribute(
        "aria-pressed", "true"
    )
    signed_in.check_clean()


async def test_a_subscribed_jobs_failure_shows_a_toast(
    signed_in: Tab,
    db: psycopg.Connection,
    make_job: Callable[..., int],
    live_agent: Any,
) -> None:
    name = unique("followed")
    job_id = make_job([samples.Step("1 break", "exit 4", kind="b")], name=name)
    page = await signed_in.open()
    await row(page, job_id).locator(".alert-toggle").click()
    await expect(row(page, job_id).locator(".alert-toggle")).to_have_attribute(
        "aria-pressed", "true"
    )
    samples.run_now(db, job_id)
    toast = page.locator(".toast.bad", has_text=name)
    await expect(toast).to_contain_text("failed", timeout=SECONDS)
    await expect(toast).to_contain_text('at step "1 break"')
    link = await toast.locator("a").get_attribute("href")
    assert link is not None and link.startswith(f"#/servers/1/jobs/{job_id}/runs/")
    signed_in.check_clean()


async def test_the_page_fits_a_phone_and_works_from_the_keyboard(
    browser: Browser, watch: Running, make_job: Callable[..., int]
) -> None:
    # One long word of a name must wrap, not widen the page.
    name = unique("a-phone") + "_" + "x" * 90
    job_id = make_job([samples.Step("1 x", "SELECT 1")], name=name)
    context = await browser.new_context(
        viewport={"width": 390, "height": 800}, is_mobile=True
    )
    try:
        page = await context.new_page()
        await page.goto(watch.url + "/")
        await page.wait_for_selector("body[data-ready=true]")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        await page.locator("#filters input[name=name]").fill("a-phone")
        link = page.locator(f"tr.job[data-job-id='{job_id}'] td.name a")
        await link.focus()
        await page.keyboard.press("Enter")
        await expect(page).to_have_url(f"{watch.url}/#/servers/1/jobs/{job_id}")
        await expect(page.locator("button.run-now")).to_be_visible()
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        await context.close()


async def test_trends_draw_charts_with_a_csv_and_absent_apis_hide_their_panels(
    tab: Tab, watch: Running
) -> None:
    page = await tab.open("#/trends")
    await expect(page.locator(".trends .uplot")).to_have_count(2)
    await page.locator(".range button[data-days='30']").click()
    await expect(page.locator("a.csv")).to_have_attribute("href", re.compile("days=30"))
    href = await page.locator("a.csv").get_attribute("href")
    assert href is not None and "format=csv" in href and "days=30" in href
    async with httpx.AsyncClient(base_url=watch.url) as http:
        csv = await http.get(href)
    assert csv.text.startswith("day,runs,succeeded,failed")
    assert len(csv.text.splitlines()) == 31
    await page.goto(watch.url + "/#/alerts")
    await expect(page.locator("main h2")).to_have_text("Alerts")
    assert await page.locator("main p.error").count() == 0
    tab.check_clean()


async def test_a_caught_mail_shows_as_it_arrived_in_a_frame_that_runs_nothing(
    browser: Browser, cluster: Cluster
) -> None:
    settings = settings_for(cluster, alerts={"mail_catcher": True})
    async with running_service(settings) as watch:
        await until(lambda: watch.service.state_ready.is_set(), "state ready")
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            tab = Tab(await context.new_page(), watch.url)
            page = await tab.open("#/alerts")
            await page.locator("form.test-mail input[name=to]").fill("ops@example.org")
            await page.locator("form.test-mail button[type=submit]").click()
            await expect(page.locator(".toast.ok")).to_contain_text("ops@example.org")
            await page.reload()
            await page.wait_for_selector("body[data-ready=true]")
            mail = page.locator(".mailcatcher article.mail").first
            await expect(mail).to_contain_text("ops@example.org")
            frame = mail.locator("iframe.mail-html")
            assert await frame.get_attribute("sandbox") == ""
            src = await frame.get_attribute("src")
            assert src is not None and src.startswith("/api/mailcatcher/")
            body = page.frame_locator(".mailcatcher iframe.mail-html").first
            await expect(body.locator("body")).not_to_be_empty()
            async with httpx.AsyncClient(base_url=watch.url) as http:
                got = await http.get(src)
            csp = got.headers["content-security-policy"]
            assert "sandbox" in csp and "default-src 'none'" in csp
            assert "script-src" not in csp
            assert await page.locator(".mailcatcher").count() == 1
            tab.check_clean()
        finally:
            await context.close()
