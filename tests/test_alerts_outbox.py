"""The outbox: several dispatchers, stale claims, restarts; each alert once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pgagent_watch.alerts.channels import SmtpChannel
from pgagent_watch.alerts.dispatcher import Dispatcher, quiet_until
from pgagent_watch.config import AlertSettings, SmtpSettings
from pgagent_watch.samples import Step

from .alerts_support import (
    alert_ids,
    alert_settings,
    alerts_ready,
    make_user,
    outbox,
    subscribe,
    text_of,
    write_failures,
)
from .fix_cluster import running_service, unique, until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("forget_users")]


@pytest.fixture
async def state(watch: Any) -> Any:
    """The state schema in place (the service migrates it at start)."""
    await until(lambda: watch.service.state_ready.is_set(), "the state schema")
    return watch


def fill(
    db: psycopg.Connection, recipient: str, n: int, state: str = "pending"
) -> None:
    """Outbox rows as the engine writes them (event ids unique per recipient)."""
    db.execute(
        "INSERT INTO pgagent_watch.alert (recipient, channel, server_id, server_name,"
        " event_id, status, job_id, job_name, run_id, event_at, state, claimed_at,"
        " claimed_by) SELECT %s, 'email', 1, 'test', -g, 'failed', 1, 'filler', g,"
        " now(), %s, CASE WHEN %s = 'sending' THEN now() - interval '1 hour' END,"
        " CASE WHEN %s = 'sending' THEN 'a dead dispatcher' END"
        " FROM generate_series(1, %s) g",
        (recipient, state, state, state, n),
    )


@contextlib.asynccontextmanager
async def dispatchers(
    cluster: Any, port: int, count: int, **alerts: Any
) -> AsyncIterator[list[Dispatcher]]:
    settings = AlertSettings(
        **{"window": 0.3, "batch": 30, "settle": 0, "poll_interval": 0.2, **alerts}
    )
    channel = SmtpChannel(SmtpSettings(host="127.0.0.1", port=port, timeout=5))
    pools = [
        AsyncConnectionPool(
            cluster.dsn(),
            min_size=1,
            max_size=3,
            open=False,
            kwargs={"autocommit": True},
        )
        for _ in range(count)
    ]
    tasks = []
    out = []
    for pool in pools:
        await pool.open()
        d = Dispatcher(pool, settings, {"email": channel})
        out.append(d)
        tasks.append(asyncio.create_task(d.run()))
    try:
        yield out
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in pools:
            await pool.close()


async def test_two_dispatchers_on_one_outbox_send_each_alert_once(
    cluster, db, inbox, state
):
    people = [f"{unique('two')}@example.test" for _ in range(4)]
    for person in people:
        fill(db, person, 100)
    async with dispatchers(cluster, inbox.port, 2) as pair:
        await until(
            lambda: all({r[1] for r in outbox(db, p)} == {"sent"} for p in people),
            "every row sent",
            limit=60,
        )
        assert all(d.digests for d in pair), "one dispatcher did all the work"
    for person in people:
        ids = [i for m in inbox.to(person) for i in alert_ids(m)]
        assert len(ids) == len(set(ids)) == 100
        assert all(len(alert_ids(m)) <= 30 for m in inbox.to(person))


async def test_a_stale_claim_is_taken_back_and_sent_once(cluster, db, inbox, watch):
    person = f"{unique('stale')}@example.test"
    fill(db, person, 5, state="sending")
    async with dispatchers(cluster, inbox.port, 1, claim_timeout=60):
        await until(lambda: inbox.to(person), "the reclaimed rows")
    assert sorted(i for m in inbox.to(person) for i in alert_ids(m)) == [
        r[0] for r in outbox(db, person)
    ]


async def test_a_restart_with_alerts_waiting_sends_each_exactly_once(
    cluster, db, make_job, inbox
):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    # First life: a long window holds all but the first digest back.
    first = alert_settings(cluster, inbox.port, window=600, settle=0.2)
    async with running_service(first) as running:
        await alerts_ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        write_failures(db, job_id, 1)
        await until(lambda: inbox.to(address), "the first digest")
        write_failures(db, job_id, 7)
        await until(lambda: len(outbox(db, address)) == 8, "eight rows")
    # Between lives: events nobody has read yet.
    run_ids = write_failures(db, job_id, 4)
    second = alert_settings(cluster, inbox.port, window=1, settle=0.2)
    async with running_service(second) as running:
        await until(
            lambda: sum(len(alert_ids(m)) for m in inbox.to(address)) >= 12,
            "twelve alerts",
        )
        await asyncio.sleep(1)
    ids = [i for m in inbox.to(address) for i in alert_ids(m)]
    assert len(ids) == len(set(ids)) == 12
    assert set(run_ids) <= {r[4] for r in outbox(db, address)}


def test_quiet_hours_hold_alerts_until_they_end() -> None:
    s = AlertSettings(quiet_hours="22:00-07:00", quiet_timezone="Europe/Paris")
    night = datetime(2026, 1, 10, 23, 30, tzinfo=UTC)  # 00:30 in Paris
    until_at = quiet_until(s, night)
    assert until_at is not None
    assert until_at.astimezone(UTC) == datetime(2026, 1, 11, 6, 0, tzinfo=UTC)
    assert quiet_until(s, datetime(2026, 1, 10, 12, 0, tzinfo=UTC)) is None


async def test_the_minimum_interval_holds_a_jobs_next_alert_back(
    cluster, db, make_job, inbox
):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    settings = alert_settings(cluster, inbox.port, window=0.1, settle=0, min_interval=2)
    async with running_service(settings) as running:
        await alerts_ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        write_failures(db, job_id, 1)
        await until(lambda: inbox.to(address), "the first alert")
        write_failures(db, job_id, 1)
        await until(lambda: len(inbox.to(address)) == 2, "the second alert")
        depth = await running.service.alerts.outbox_depth()
    sent = db.execute(
        "SELECT sent_at FROM pgagent_watch.alert WHERE recipient = %s ORDER BY id",
        (address,),
    ).fetchall()
    assert (sent[1][0] - sent[0][0]).total_seconds() >= 1.9
    assert depth["sent"] >= 2 and set(depth) >= {"pending", "dead", "failed"}


async def test_a_shutdown_lets_the_delivery_in_flight_finish_and_records_it(
    cluster, db, make_job, inbox
):
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    inbox.delay = 1
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        await alerts_ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        write_failures(db, job_id, 1)
        await until(
            lambda: [r[1] for r in outbox(db, address)] == ["sending"], "in flight"
        )
    assert len(inbox.to(address)) == 1
    assert [r[1] for r in outbox(db, address)] == ["sent"]
    inbox.delay = 0
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        await alerts_ready(running)
        await asyncio.sleep(1)
    assert len(inbox.to(address)) == 1


async def test_derived_events_alert_when_they_start_and_when_they_end(
    cluster, db, make_job, inbox
):
    job_id = make_job([Step("1 slow", "SELECT 1")], enabled=False)
    name = db.execute(
        "SELECT jobname FROM pgagent.pga_job WHERE jobid = %s", (job_id,)
    ).fetchone()[0]
    async with running_service(alert_settings(cluster, inbox.port, window=0.5)) as r:
        await alerts_ready(r)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id, statuses=["stuck", "agent_down"])

        def derived(kind: str, status: str, job: int | None, reason: str) -> None:
            # As the detector writes them: same table, same notification.
            db.execute(
                "INSERT INTO pgagent_watch.event (kind, job_id, status, extra)"
                " VALUES (%s, %s, %s, jsonb_build_object('reason', %s::text))",
                (kind, job, status, reason),
            )

        derived("stuck", "start", job_id, "running for 2 h, usually 3 min")
        await until(lambda: len(inbox.to(address)) == 1, "the stuck alert")
        derived("stuck", "end", job_id, "run ended")
        await until(lambda: len(inbox.to(address)) == 2, "back to normal")
        derived("agent_down", "start", None, "no agent alive")
        await until(lambda: len(inbox.to(address)) == 3, "agent down")
    subjects = [m["Subject"] for m in inbox.to(address)]
    assert subjects == [
        f"{name} is stuck on test",
        f"{name} back to normal on test (was stuck)",
        "pgAgent's agent is down on test",
    ]
    assert "why: running for 2 h, usually 3 min" in text_of(inbox.to(address)[0])


async def test_quiet_hours_keep_alerts_waiting(cluster, db, make_job, inbox):
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=1)).strftime("%H:%M")
    end = (now + timedelta(minutes=3)).strftime("%H:%M")
    job_id = make_job([Step("1 boom", "SELECT 1/0")], enabled=False)
    settings = alert_settings(cluster, inbox.port, quiet_hours=f"{start}-{end}")
    async with running_service(settings) as running:
        await alerts_ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        write_failures(db, job_id, 1)
        await until(lambda: outbox(db, address), "the alert written")
        await asyncio.sleep(1.5)
    assert [r[1] for r in outbox(db, address)] == ["pending"]
    assert inbox.to(address) == []
    # Leave nothing waiting for the services of later tests.
    db.execute("DELETE FROM pgagent_watch.alert WHERE recipient = %s", (address,))
