"""Health detection with the real pgAgent daemon: down, overdue, stuck, flapping.

Thresholds are short; every wait ends on the event it waits for. Tests that
kill the session's daemon start it again before they end, since no other
test's job runs while it is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pgagent_watch import samples
from pgagent_watch.cluster import Agent, Cluster
from pgagent_watch.config import DetectSettings
from pgagent_watch.detect import (
    DetectCollector,
    JobFacts,
    JobOverride,
    Snapshot,
    _span,
    evaluate,
    stuck_limit,
)
from pgagent_watch.events import JobEvent, PayloadError, parse_payload
from pgagent_watch.samples import Step

from .fix_cluster import (
    WAIT,
    Client,
    Running,
    run_updates,
    running_service,
    settings_for,
    unique,
    until,
    wait_connected,
)

FAST = {
    "interval": 0.5,
    "min_interval": 0.1,
    "agent_grace": 0,
    "overdue_grace": 3,
    "stuck_floor": 1,
    "stuck_min_runs": 3,
    "stuck_default": 3600,
    "flapping_window": 300,
    "flapping_changes": 3,
}


class Watch:
    """A running service with short thresholds, and its socket clients."""

    def __init__(self, running: Running) -> None:
        self.url = running.url
        self.service = running.service
        self.detector = running.service.detectors[1]
        self.clients: list[Client] = []

    async def client(self) -> Client:
        """A socket client in server 1's room; closed before the service stops."""
        client = await Client().connect(self.url)
        self.clients.append(client)
        await client.call("start_job_status_listener", {"sid": 1})
        return client


@contextlib.asynccontextmanager
async def detecting(cluster: Cluster, **detect: Any) -> AsyncIterator[Watch]:
    """The service with short thresholds, once it has detected at least once."""
    settings = settings_for(cluster, detect={**FAST, **detect})
    async with running_service(settings) as running:
        await wait_connected(running)
        watch = Watch(running)
        await until(lambda: watch.detector.ticks > 0, "a first detection")
        await asyncio.wait_for(running.service.state_ready.wait(), WAIT)
        try:
            yield watch
        finally:
            for client in watch.clients:
                with contextlib.suppress(Exception):
                    await client.close()


def derived(
    client: Client, kind: str, status: str, job_id: int | None = None
) -> list[dict[str, Any]]:
    """The client's updates of one derived kind and status (of one job)."""
    return [
        u
        for u in client.updates()
        if u["kind"] == kind
        and u["status"] == status
        and (job_id is None or u["job_id"] == job_id)
    ]


def finished_runs(db: psycopg.Connection, job_id: int) -> list[str]:
    rows = db.execute(
        "SELECT jlgstatus FROM pgagent.pga_joblog WHERE jlgjobid = %s"
        " AND jlgstatus <> 'r' ORDER BY jlgid",
        (job_id,),
    ).fetchall()
    return [r[0] for r in rows]


async def run_to_end(db: psycopg.Connection, job_id: int) -> str:
    """Run a job now and wait for the run to end; return its status."""
    before = len(finished_runs(db, job_id))
    samples.run_now(db, job_id)
    await until(
        lambda: len(finished_runs(db, job_id)) > before, f"a run of job {job_id}"
    )
    return finished_runs(db, job_id)[-1]


def agent_host(db: psycopg.Connection, pid: int | None = None) -> tuple[int, str]:
    """The pid and host of the live agent (the newest one)."""
    row = db.execute(
        "SELECT jagpid, jagstation FROM pgagent.pga_jobagent a"
        " WHERE EXISTS (SELECT 1 FROM pg_stat_activity p WHERE p.pid = a.jagpid)"
        " ORDER BY jaglogintime DESC LIMIT 1"
    ).fetchone()
    assert row is not None, "no live agent"
    return int(row[0]), str(row[1])


async def wait_agent_registered(db: psycopg.Connection) -> None:
    await until(
        lambda: db.execute(
            "SELECT 1 FROM pgagent.pga_jobagent a WHERE EXISTS"
            " (SELECT 1 FROM pg_stat_activity p WHERE p.pid = a.jagpid)"
        ).fetchone(),
        "the agent to register",
    )


# C1: the worker died, its run and step run stay 'r', its agent is gone.
async def test_a_killed_agent_is_down_and_its_run_stuck_until_a_new_agent_aborts_it(
    cluster, db, make_job, live_agent: Agent
):
    async with detecting(cluster) as watch:
        client = await watch.client()
        job_id = make_job([Step("long", "sleep 60", kind="b")])
        await wait_agent_registered(db)
        pid, host = agent_host(db)
        samples.run_now(db, job_id)
        await client.wait_for(
            lambda c: ("step", "r") in run_updates(c.updates(), job_id),
            "the long step to start",
        )
        run_id = next(
            u["run_id"]
            for u in client.updates()
            if u["job_id"] == job_id and u["kind"] == "run"
        )

        live_agent.kill()
        killed = time.monotonic()
        await client.wait_for(
            lambda c: (
                derived(c, "agent_down", "start")
                and derived(c, "stuck", "start", job_id)
            ),
            "agent down and the run stuck",
        )
        reported_in = time.monotonic() - killed
        down = derived(client, "agent_down", "start")[-1]
        assert down["extra"]["host"] == host
        assert down["extra"]["pid"] == pid
        assert down["status_text"] == "no agent alive"
        stuck = derived(client, "stuck", "start", job_id)[-1]
        assert stuck["run_id"] == run_id
        assert stuck["extra"]["cause"] == "agent gone"
        assert stuck["extra"]["reason"].startswith(f"its agent (pid {pid}) is gone")
        assert down["extra"]["reason"] == (
            f"no agent is alive; the last was pid {pid} on {host}"
        )
        assert stuck["extra"]["agent_pid"] == pid
        assert stuck["extra"]["step"] == "long"
        assert stuck["job_name"]
        assert reported_in < 5, reported_in

        async with httpx.AsyncClient(base_url=watch.url) as http:
            health = (await http.get("/api/servers/1/health")).json()
            jobs = (await http.get("/api/servers/1/jobs")).json()
            servers = (await http.get("/api/servers")).json()
            healthz = (await http.get("/healthz")).json()
        kinds = {(c["kind"], c["job_id"]) for c in health["conditions"]}
        assert {("agent_down", None), ("stuck", job_id)} <= kinds
        assert health["detecting"] is True
        assert {"pid": pid, "alive": False, "host": host} in [
            {k: a[k] for k in ("pid", "alive", "host")} for a in health["agents"]
        ]
        job = next(j for j in jobs if j["job_id"] == job_id)
        assert [(h["kind"], h["run_id"]) for h in job["health"]] == [("stuck", run_id)]
        assert servers[0]["health"]["agent_down"] == 1
        assert servers[0]["health"]["stuck"] >= 1
        detect = healthz["servers"]["1"]["detect"]
        assert detect["active"] is True and detect["error"] is None
        assert detect["open"]["agent_down"] == 1
        registry = CollectorRegistry()
        registry.register(DetectCollector(watch.service.detectors))
        scraped = generate_latest(registry).decode()
        assert 'pgagent_watch_health_open{kind="agent_down",server="test"} 1.0' in (
            scraped
        )
        assert 'pgagent_watch_detect_active{server="test"} 1.0' in scraped

        # A new agent removes the dead one and aborts its run: both clear.
        live_agent.start()
        await client.wait_for(
            lambda c: (
                derived(c, "agent_down", "end") and derived(c, "stuck", "end", job_id)
            ),
            "agent down and stuck to clear",
        )
        end = derived(client, "stuck", "end", job_id)[-1]
        assert end["extra"]["status"] == "d"
        assert end["extra"]["cause"] == "run ended"
        assert end["extra"]["reason"] == "the run ended (aborted)"
        assert derived(client, "agent_down", "end")[-1]["extra"]["cause"] == (
            "agent alive"
        )
        assert len(derived(client, "stuck", "start", job_id)) == 1
        assert len(derived(client, "agent_down", "start")) == 1
        # The events can reach the client before the detector has noted them.
        await until(lambda: not watch.detector.open_conditions(), "no open condition")


# C3: PostgreSQL restarted and the agent exited instead of reconnecting.
async def test_an_agent_that_exits_when_postgresql_restarts_is_reported_down(
    cluster, live_agent: Agent
):
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        job_id = samples.create_job(conn, unique("c3"), [Step("ok", "SELECT 1")])
        # Disabled: only this test writes its runs.
        idle_id = samples.create_job(
            conn, unique("c3-idle"), [Step("x", "SELECT 1")], enabled=False
        )
        # Due later: the server still needs an agent.
        conn.execute(
            "UPDATE pgagent.pga_job SET jobnextrun = now() + interval '1 hour'"
            " WHERE jobid = %s",
            (job_id,),
        )
        await wait_agent_registered(conn)
        _, host = agent_host(conn)
    try:
        async with detecting(cluster) as watch:
            client = await watch.client()
            listener = watch.service.servers[1].listener
            reconnects = listener.status.reconnects
            await asyncio.to_thread(cluster.restart)
            # Written at once, maybe before the listener is back: not lost.
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                run = conn.execute(
                    "INSERT INTO pgagent.pga_joblog (jlgjobid) VALUES (%s)"
                    " RETURNING jlgid",
                    (idle_id,),
                ).fetchone()
                assert run is not None
                conn.execute(
                    "UPDATE pgagent.pga_joblog SET jlgstatus = 's' WHERE jlgid = %s",
                    (run[0],),
                )
            await until(lambda: not live_agent.alive(), "pgAgent to exit", WAIT)
            await client.wait_for(
                lambda c: derived(c, "agent_down", "start"), "agent down"
            )
            down = derived(client, "agent_down", "start")[-1]
            assert down["extra"]["host"] == host
            assert listener.status.reconnects > reconnects
            await client.wait_for(
                lambda c: (
                    run_updates(c.updates(), idle_id) == [("run", "r"), ("run", "s")]
                ),
                "the run written during the restart",
            )

            # The listener came back: a new agent's run arrives, every step.
            live_agent.start()
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                samples.run_now(conn, job_id)
            await client.wait_for(
                lambda c: ("run", "s") in run_updates(c.updates(), job_id),
                "the run after the restart",
            )
            assert run_updates(client.updates(), job_id) == [
                ("run", "r"),
                ("step", "r"),
                ("step", "s"),
                ("run", "s"),
            ]
            await client.wait_for(
                lambda c: derived(c, "agent_down", "end"), "agent down to clear"
            )
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "UPDATE pgagent.pga_job SET jobenabled = false WHERE jobid = %s",
                (job_id,),
            )
        if not live_agent.alive():
            live_agent.start()


async def test_a_job_due_an_hour_ago_with_no_agent_is_overdue_until_one_runs_it(
    cluster, db, make_job, live_agent: Agent
):
    async with detecting(cluster) as watch:
        client = await watch.client()
        job_id = make_job([Step("ok", "SELECT 1")])
        live_agent.kill()
        due = db.execute(
            "UPDATE pgagent.pga_job SET jobnextrun = now() - interval '1 hour'"
            " WHERE jobid = %s RETURNING jobnextrun",
            (job_id,),
        ).fetchone()
        assert due is not None
        try:
            await client.wait_for(
                lambda c: derived(c, "overdue", "start", job_id), "overdue"
            )
            overdue = derived(client, "overdue", "start", job_id)[-1]
            assert datetime.fromisoformat(overdue["extra"]["since"]) == due[0]
            assert overdue["extra"]["claimed_by"] is None
            assert overdue["extra"]["reason"] == "due 60 min ago and not started"
            assert overdue["status_text"] == "overdue"
            await client.wait_for(
                lambda c: derived(c, "agent_down", "start"), "agent down"
            )
        finally:
            live_agent.start()
        await client.wait_for(
            lambda c: derived(c, "overdue", "end", job_id), "overdue to clear"
        )
        assert derived(client, "overdue", "end", job_id)[-1]["extra"]["cause"] in (
            "run started",
            "rescheduled",
        )
        await until(lambda: finished_runs(db, job_id) == ["s"], "the late run")
        assert len(derived(client, "overdue", "start", job_id)) == 1


# C2: jobagentid left set, next run an hour ago, no run in progress.
async def test_a_job_left_claimed_with_no_run_is_overdue_and_a_restart_keeps_it_open(
    cluster, db, make_job, live_agent: Agent
):
    job_id = make_job([Step("ok", "SELECT 1")])
    await wait_agent_registered(db)
    pid, _ = agent_host(db)
    with db.transaction():
        db.execute(
            "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus, jlgstart,"
            " jlgduration) VALUES (%s, 's', now() - interval '61 minutes',"
            " interval '2 seconds')",
            (job_id,),
        )
        due = db.execute(
            "UPDATE pgagent.pga_job SET jobagentid = %s,"
            " joblastrun = now() - interval '61 minutes',"
            " jobnextrun = now() - interval '1 hour' WHERE jobid = %s"
            " RETURNING jobnextrun",
            (pid, job_id),
        ).fetchone()
    assert due is not None

    async with detecting(cluster) as watch:
        client = await watch.client()
        await client.wait_for(
            lambda c: any(
                c.kind == "overdue" and c.job_id == job_id
                for c in watch.service.detectors[1].open_conditions()
            ),
            "overdue",
        )
        conds = [
            c
            for c in watch.service.detectors[1].open_conditions()
            if c.job_id == job_id
        ]
        assert [c.kind for c in conds] == ["overdue"]
        assert conds[0].extra["claimed_by"] == pid
        assert conds[0].extra["reason"] == (
            f"claimed by agent pid {pid} but not running; due 60 min ago"
        )
        assert datetime.fromisoformat(conds[0].extra["since"]) == due[0]

    def starts() -> int:
        row = db.execute(
            "SELECT count(*) FROM pgagent_watch.event WHERE kind = 'overdue'"
            " AND job_id = %s AND status = 'start'",
            (job_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    assert starts() == 1
    # A new instance finds the condition open in the event table: no new start.
    async with detecting(cluster) as watch:
        client = await watch.client()
        detector = watch.service.detectors[1]
        ticks = detector.ticks
        await until(lambda: detector.ticks >= ticks + 2, "two more detections")
        assert starts() == 1
        assert [c.kind for c in detector.open_conditions() if c.job_id == job_id] == [
            "overdue"
        ]
        # Released, the job runs at once (it is due) and is no longer overdue.
        db.execute(
            "UPDATE pgagent.pga_job SET jobagentid = NULL WHERE jobid = %s", (job_id,)
        )
        await client.wait_for(
            lambda c: derived(c, "overdue", "end", job_id), "overdue to clear"
        )
        assert len(derived(client, "overdue", "end", job_id)) == 1
        assert derived(client, "overdue", "start", job_id) == []


async def test_a_job_that_alternates_success_and_failure_is_flapping_once(
    cluster, db, make_job, live_agent
):
    seq = unique("flap").replace("-", "_")
    db.execute(f'CREATE SEQUENCE "{seq}"')
    # Odd values succeed, even ones divide by zero: s, f, s, f, ...
    job_id = make_job([Step("flip", f"SELECT 1 / (nextval('\"{seq}\"') % 2)::int")])
    try:
        async with detecting(cluster) as watch:
            client = await watch.client()
            detector = watch.service.detectors[1]
            statuses = []
            for _ in range(6):
                statuses.append(await run_to_end(db, job_id))
            assert statuses == ["s", "f", "s", "f", "s", "f"]
            await client.wait_for(
                lambda c: derived(c, "flapping", "start", job_id), "flapping"
            )
            ticks = detector.ticks
            await until(lambda: detector.ticks >= ticks + 2, "two more detections")
            starts = derived(client, "flapping", "start", job_id)
            assert len(starts) == 1
            assert starts[0]["extra"]["changes"] >= 3
            assert derived(client, "flapping", "end", job_id) == []

            # Deleted, the job stops flapping; the end still names it.
            db.execute("DELETE FROM pgagent.pga_job WHERE jobid = %s", (job_id,))
            await client.wait_for(
                lambda c: derived(c, "flapping", "end", job_id), "flapping to end"
            )
            end = derived(client, "flapping", "end", job_id)[0]
            assert end["job_name"] == starts[0]["job_name"]
            assert end["extra"]["cause"] == "job disabled or deleted"
            assert len(derived(client, "flapping", "start", job_id)) == 1
    finally:
        db.execute(f'DROP SEQUENCE IF EXISTS "{seq}"')


async def test_a_run_far_longer_than_its_usual_duration_is_stuck_until_it_ends(
    cluster, db, make_job, live_agent
):
    job_id = make_job([Step("work", "SELECT 1")])
    async with detecting(cluster) as watch:
        client = await watch.client()
        for _ in range(3):
            assert await run_to_end(db, job_id) == "s"
        db.execute(
            "UPDATE pgagent.pga_jobstep SET jstcode = 'SELECT pg_sleep(4)'"
            " WHERE jstjobid = %s",
            (job_id,),
        )
        samples.run_now(db, job_id)
        await client.wait_for(
            lambda c: derived(c, "stuck", "start", job_id), "the run to be stuck"
        )
        stuck = derived(client, "stuck", "start", job_id)[-1]
        assert stuck["extra"]["cause"] == "too long"
        assert stuck["extra"]["limit"] == 1  # the floor: 3 x its usual is less
        assert stuck["extra"]["history_runs"] == 3
        assert stuck["extra"]["usual"] < 1
        await client.wait_for(
            lambda c: derived(c, "stuck", "end", job_id), "the run to end"
        )
        assert derived(client, "stuck", "end", job_id)[-1]["extra"]["status"] == "s"


async def test_a_jobs_own_maximum_set_through_the_api_makes_its_long_run_stuck(
    cluster, db, make_job, live_agent
):
    job_id = make_job([Step("work", "SELECT pg_sleep(3)")])
    async with detecting(cluster) as watch:
        client = await watch.client()
        url = f"/api/servers/1/jobs/{job_id}/health-settings"
        async with httpx.AsyncClient(base_url=watch.url) as http:
            # As the page does: the CSRF token /api/me gives.
            me = (await http.get("/api/me")).json()
            http.headers["X-CSRF-Token"] = me["csrf_token"]
            put = await http.put(url, json={"max_duration": 1})
            assert put.status_code == 200, put.text
            got = (await http.get(url)).json()
            assert got == {"detect": True, "overdue_grace": None, "max_duration": 1}
            bad = await http.put(url, json={"max_duration": -1})
            assert bad.status_code == 422
        samples.run_now(db, job_id)
        await client.wait_for(
            lambda c: derived(c, "stuck", "end", job_id), "stuck, then its end"
        )
        stuck = derived(client, "stuck", "start", job_id)[-1]
        assert stuck["extra"]["limit"] == 1
        assert stuck["extra"]["cause"] == "too long"


async def test_a_monitoring_role_without_read_all_stats_still_sees_the_agent_alive(
    cluster, db, live_agent
):
    role = unique("watcher").replace("-", "_")
    for statement in (
        'CREATE ROLE "{r}" LOGIN',
        'GRANT USAGE ON SCHEMA pgagent, pgagent_watch TO "{r}"',
        'GRANT SELECT ON ALL TABLES IN SCHEMA pgagent, pgagent_watch TO "{r}"',
        'GRANT INSERT ON pgagent_watch.event TO "{r}"',
        'GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgagent_watch TO "{r}"',
    ):
        db.execute(statement.format(r=role))
    await wait_agent_registered(db)
    pid, _ = agent_host(db)
    settings = settings_for(
        cluster,
        servers=[{"name": "test", "dsn": f"{cluster.dsn()} user={role}"}],
        state_dsn=cluster.dsn(),
        detect=FAST,
    )
    try:
        async with running_service(settings) as running:
            await wait_connected(running)
            detector = running.service.detectors[1]
            await until(lambda: detector.ticks >= 2, "two detections")
            assert detector.error is None
            assert any(a.pid == pid and a.alive for a in detector.agents)
            assert detector.counts()["agent_down"] == 0
    finally:
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')


# Without the daemon or the database: the rules themselves.
def _job(**kw: Any) -> JobFacts:
    base: dict[str, Any] = {
        "job_id": 1,
        "name": "j",
        "enabled": True,
        "next_run": None,
        "last_claim": None,
        "agent_pid": None,
        "run_id": None,
        "run_status": None,
        "run_start": None,
        "run_end": None,
        "step": None,
        "history_runs": 0,
        "usual": None,
        "flap_changes": 0,
        "flap_runs": 0,
    }
    base.update(kw)
    return JobFacts(**base)


NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_flapping_holds_down_to_half_its_threshold_once_open():
    settings = DetectSettings(flapping_changes=4)
    key = ("flapping", 1, None)
    snap = Snapshot(NOW, [], [_job(flap_changes=3)])
    assert key not in evaluate(snap, set(), settings, {}, None)
    assert key in evaluate(snap, {key}, settings, {}, None)
    quiet = Snapshot(NOW, [], [_job(flap_changes=2)])
    assert key not in evaluate(quiet, {key}, settings, {}, None)


def test_a_job_claimed_a_moment_ago_is_not_overdue():
    settings = DetectSettings(overdue_grace=300)
    claimed = _job(
        next_run=NOW - timedelta(hours=1),
        last_claim=NOW - timedelta(seconds=1),
        agent_pid=42,
        run_end=NOW - timedelta(hours=2),
    )
    assert evaluate(Snapshot(NOW, [], [claimed]), set(), settings, {}, None) == {}


def test_a_job_left_alone_or_given_its_own_grace_follows_its_own_setting():
    settings = DetectSettings(overdue_grace=300)
    late = _job(next_run=NOW - timedelta(seconds=100))
    snap = Snapshot(NOW, [], [late])
    assert evaluate(snap, set(), settings, {}, None) == {}
    own = {1: JobOverride(overdue_grace=60)}
    assert ("overdue", 1, None) in evaluate(snap, set(), settings, own, None)
    alone = {1: JobOverride(detect=False, overdue_grace=60)}
    assert evaluate(snap, set(), settings, alone, None) == {}


def test_no_agent_is_down_only_while_a_job_needs_one_and_after_the_grace():
    settings = DetectSettings(agent_grace=60)
    key = ("agent_down", None, None)
    scheduled = Snapshot(NOW, [], [_job(next_run=NOW + timedelta(hours=1))])
    assert key not in evaluate(scheduled, set(), settings, {}, 59.0)
    assert key in evaluate(scheduled, set(), settings, {}, 61.0)
    # Enabled but with no next run: nothing needs an agent yet...
    idle = Snapshot(NOW, [], [_job()])
    assert key not in evaluate(idle, set(), settings, {}, 61.0)
    # ...but once reported, down stays down until an agent is alive.
    assert key in evaluate(idle, {key}, settings, {}, 61.0)


def test_durations_in_reasons_read_as_people_say_them():
    assert [_span(s) for s in (45, 600, 3600 * 3 + 300, 86400 * 2 + 3600 * 4)] == [
        "45 s",
        "10 min",
        "3 h 5 min",
        "2 d 4 h",
    ]


def test_the_stuck_limit_is_the_jobs_own_then_learned_then_the_default():
    settings = DetectSettings(
        stuck_multiple=3, stuck_floor=10, stuck_min_runs=5, stuck_default=600
    )
    learned = _job(history_runs=5, usual=100.0)
    assert stuck_limit(learned, settings, JobOverride()) == 300
    assert stuck_limit(_job(history_runs=5, usual=1.0), settings, JobOverride()) == 10
    assert stuck_limit(_job(history_runs=2, usual=1.0), settings, JobOverride()) == 600
    assert stuck_limit(learned, settings, JobOverride(max_duration=5)) == 5


def test_derived_payloads_parse_and_carry_their_details_on_the_wire():
    notice = parse_payload("12,agent_down,,,,start")
    assert (notice.kind, notice.job_id, notice.status) == ("agent_down", None, "start")
    assert parse_payload("13,stuck,4,99,,end").run_id == 99
    event = JobEvent(
        1,
        13,
        1,
        NOW,
        "stuck",
        4,
        "j",
        99,
        None,
        None,
        None,
        "end",
        None,
        None,
        {"reason": "run ended"},
    )
    wire = event.to_wire()
    assert wire["extra"] == {"reason": "run ended"}
    assert wire["status_text"] == "no longer stuck"
    run = JobEvent(1, 14, 1, NOW, "run", 4, "j", 99, None, None, None, "s", None, 1.0)
    assert "extra" not in run.to_wire()


@pytest.mark.parametrize("payload", ["1,stuck,x,,,start", "1,late,,,,start"])
def test_bad_derived_payloads_are_refused(payload):
    with pytest.raises(PayloadError):
        parse_payload(payload)
