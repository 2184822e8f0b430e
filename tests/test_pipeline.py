"""The main job, for real: pgAgent runs jobs and a socket client sees each change."""

from __future__ import annotations

import psycopg

from pgagent_watch import samples
from pgagent_watch.cluster import Agent
from pgagent_watch.samples import Step

from .fix_cluster import WAIT, Running, run_updates, until

FINISHED = {"s", "f", "i", "d"}


async def run_and_collect(
    watch: Running, client_factory, db: psycopg.Connection, job_id: int
):
    client = await client_factory(watch.url)
    await client.call("start_job_status_listener", {"sid": 1})
    samples.run_now(db, job_id)
    await client.wait_for(
        lambda c: any(
            k == "run" and s in FINISHED for k, s in run_updates(c.updates(), job_id)
        ),
        f"the end of a run of job {job_id}",
    )
    return client, run_updates(client.updates(), job_id)


async def test_a_succeeding_sql_step_reaches_the_client_in_order(
    watch, client_factory, db, make_job, live_agent
):
    job_id = make_job([Step("ok", "SELECT 1")])
    _, story = await run_and_collect(watch, client_factory, db, job_id)
    assert story == [("run", "r"), ("step", "r"), ("step", "s"), ("run", "s")]


async def test_a_failing_sql_step_fails_the_run(
    watch, client_factory, db, make_job, live_agent
):
    job_id = make_job([Step("boom", "SELECT 1/0")])
    client, story = await run_and_collect(watch, client_factory, db, job_id)
    assert story == [("run", "r"), ("step", "r"), ("step", "f"), ("run", "f")]
    final = [u for u in client.updates() if u["job_id"] == job_id][-1]
    assert final["status_text"] == "failed"
    assert final["job_name"]
    assert final["duration"] is not None and final["duration"] >= 0
    for field in (
        "sid",
        "job_id",
        "job_name",
        "run_id",
        "step_id",
        "status",
        "status_text",
        "timestamp",
        "duration",
        "event_id",
    ):
        assert field in final


async def test_a_batch_step_with_a_nonzero_exit_fails_with_its_code(
    watch, client_factory, db, make_job, live_agent
):
    job_id = make_job(
        [Step("1 sql", "SELECT 1"), Step("2 exit", "echo out; exit 3", kind="b")]
    )
    client, story = await run_and_collect(watch, client_factory, db, job_id)
    assert story == [
        ("run", "r"),
        ("step", "r"),
        ("step", "s"),
        ("step", "r"),
        ("step", "f"),
        ("run", "f"),
    ]
    failed_step = [
        u for u in client.updates() if u["job_id"] == job_id and u["kind"] == "step"
    ][-1]
    assert failed_step["step_name"] == "2 exit"
    assert failed_step["result"] == 3


async def test_an_ignored_step_failure_lets_the_run_succeed(
    watch, client_factory, db, make_job, live_agent
):
    job_id = make_job(
        [
            Step("1 first", "SELECT 1"),
            Step("2 optional", "SELECT * FROM no_such_table", on_error="i"),
            Step("3 last", "echo done", kind="b"),
        ]
    )
    _, story = await run_and_collect(watch, client_factory, db, job_id)
    assert story == [
        ("run", "r"),
        ("step", "r"),
        ("step", "s"),
        ("step", "r"),
        ("step", "i"),
        ("step", "r"),
        ("step", "s"),
        ("run", "s"),
    ]


async def test_a_run_whose_agent_died_is_reported_aborted(
    watch, client_factory, db, make_job, live_agent: Agent
):
    job_id = make_job([Step("long", "sleep 60", kind="b")])
    client = await client_factory(watch.url)
    await client.call("start_job_status_listener", {"sid": 1})
    samples.run_now(db, job_id)
    await client.wait_for(
        lambda c: ("step", "r") in run_updates(c.updates(), job_id),
        "the long step to start",
    )
    live_agent.kill()
    # A new agent removes the dead one and aborts its runs.
    live_agent.start()
    await client.wait_for(
        # pgAgent aborts the run, then its step run, in one transaction.
        lambda c: (
            {("run", "d"), ("step", "d")} <= set(run_updates(c.updates(), job_id))
        ),
        "the run to be aborted",
        limit=WAIT * 2,
    )
    story = run_updates(client.updates(), job_id)
    assert story[:2] == [("run", "r"), ("step", "r")]
    assert ("step", "d") in story
    row = db.execute(
        "SELECT jlgstatus FROM pgagent.pga_joblog WHERE jlgjobid = %s", (job_id,)
    ).fetchone()
    assert row == ("d",)


async def test_a_late_client_gets_every_jobs_current_state(
    watch, client_factory, db, make_job, live_agent
):
    job_id = make_job([Step("ok", "SELECT 1")])
    samples.run_now(db, job_id)
    await until(
        lambda: db.execute(
            "SELECT 1 FROM pgagent.pga_joblog WHERE jlgjobid = %s AND jlgstatus = 's'",
            (job_id,),
        ).fetchone(),
        "the run to succeed",
    )
    client = await client_factory(watch.url)
    answer = await client.call("get_job_states", {"sid": 1})
    job = next(j for j in answer["jobs"] if j["job_id"] == job_id)
    assert job["status"] == "s"
    assert client.events("job_states")


async def test_two_runs_started_together_keep_their_own_order_and_failure(
    watch, client_factory, db, make_job, live_agent
):
    # C8: two jobs start in the same second, each with several steps.
    good = make_job([Step("1 a", "SELECT 1"), Step("2 b", "echo ok", kind="b")])
    bad = make_job(
        [Step("1 a", "SELECT 1"), Step("2 b", "echo no >&2; exit 9", kind="b")]
    )
    client = await client_factory(watch.url)
    await client.call("start_job_status_listener", {"sid": 1})
    db.execute(
        "UPDATE pgagent.pga_job SET jobnextrun = now() WHERE jobid = ANY(%s)",
        ([good, bad],),
    )

    def ended(c, job_id):
        return any(
            k == "run" and s in FINISHED for k, s in run_updates(c.updates(), job_id)
        )

    await client.wait_for(lambda c: ended(c, good) and ended(c, bad), "both runs")
    steps = [("run", "r"), ("step", "r"), ("step", "s"), ("step", "r")]
    assert run_updates(client.updates(), good) == [*steps, ("step", "s"), ("run", "s")]
    assert run_updates(client.updates(), bad) == [*steps, ("step", "f"), ("run", "f")]
    failed = [u for u in client.updates() if u["kind"] == "step" and u["status"] == "f"]
    assert [(u["job_id"], u["step_name"], u["result"]) for u in failed] == [
        (bad, "2 b", 9)
    ]
    run_ids = {
        u["run_id"]
        for u in client.updates()
        if u["job_id"] == bad and u["kind"] in ("run", "step")
    }
    assert len(run_ids) == 1
