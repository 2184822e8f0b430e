"""The capture schema: install, upgrade, remove, and never fail pgAgent's writes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from pgagent_watch import capture, samples
from pgagent_watch.cluster import Agent, Cluster, wait_until
from pgagent_watch.errors import CaptureError
from pgagent_watch.samples import Step

from .fix_cluster import WAIT, unique


@pytest.fixture
def scratch_db(cluster: Cluster) -> Iterator[psycopg.Connection]:
    """A database of its own with pgAgent's schema, for install and uninstall."""
    name = unique("scratch").replace("-", "_")
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
        )
    try:
        with psycopg.connect(cluster.dsn(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgagent")
            yield conn
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(
                psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(name)
                )
            )


def trigger_names(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'pgagent_watch%'"
    ).fetchall()
    return {r[0] for r in rows}


def test_install_twice_is_the_same_as_once(scratch_db: psycopg.Connection) -> None:
    assert capture.install(scratch_db) == capture.CAPTURE_VERSION
    first = trigger_names(scratch_db)
    assert capture.install(scratch_db) == capture.CAPTURE_VERSION
    assert trigger_names(scratch_db) == first
    assert len(first) == 6
    assert capture.installed_version(scratch_db) == capture.CAPTURE_VERSION


def test_install_over_an_older_version_upgrades_in_place(
    scratch_db: psycopg.Connection,
) -> None:
    capture.install(scratch_db)
    job_id = samples.create_job(scratch_db, "kept", [Step("a", "SELECT 1")])
    scratch_db.execute(
        "UPDATE pgagent_watch.version SET version = 0 WHERE component = 'capture'"
    )
    capture.install(scratch_db)
    assert capture.installed_version(scratch_db) == capture.CAPTURE_VERSION
    # The events captured before the upgrade are still there.
    row = scratch_db.execute(
        "SELECT count(*) FROM pgagent_watch.event WHERE job_id = %s", (job_id,)
    ).fetchone()
    assert row == (1,)


def test_a_newer_installed_version_is_refused(scratch_db: psycopg.Connection) -> None:
    capture.install(scratch_db)
    scratch_db.execute(
        "UPDATE pgagent_watch.version SET version = 999 WHERE component = 'capture'"
    )
    with pytest.raises(CaptureError, match="newer"):
        capture.install(scratch_db)


def test_install_without_pgagent_says_what_to_do(cluster: Cluster) -> None:
    with psycopg.connect(cluster.dsn("template1"), autocommit=True) as conn:
        with pytest.raises(CaptureError, match="CREATE EXTENSION pgagent"):
            capture.install(conn)


def test_uninstall_removes_everything_install_added(
    scratch_db: psycopg.Connection,
) -> None:
    capture.install(scratch_db)
    capture.uninstall(scratch_db)
    assert trigger_names(scratch_db) == set()
    row = scratch_db.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgagent_watch'"
    ).fetchone()
    assert row == (0,)
    row = scratch_db.execute(
        "SELECT to_regclass('pgagent.pgagent_watch_joblog_job_run')"
    ).fetchone()
    assert row == (None,)
    # pgAgent keeps working without us.
    samples.create_job(scratch_db, "after", [Step("a", "SELECT 1")])


def test_each_status_change_is_one_event(
    db: psycopg.Connection, make_job: object
) -> None:
    job_id = samples.create_job(db, unique(), [Step("a", "SELECT 1")], enabled=False)
    row = db.execute(
        "INSERT INTO pgagent.pga_joblog (jlgjobid) VALUES (%s) RETURNING jlgid",
        (job_id,),
    ).fetchone()
    assert row is not None
    run_id = row[0]
    # An update that does not change the status is no event.
    db.execute(
        "UPDATE pgagent.pga_joblog SET jlgduration = '1 s' WHERE jlgid = %s", (run_id,)
    )
    db.execute(
        "UPDATE pgagent.pga_joblog SET jlgstatus = 'f' WHERE jlgid = %s", (run_id,)
    )
    # pgAgent's claim of a job (jobagentid, jobnextrun) is no job event either.
    db.execute(
        "UPDATE pgagent.pga_job SET jobnextrun = now() WHERE jobid = %s", (job_id,)
    )
    db.execute(
        "UPDATE pgagent.pga_job SET jobname = jobname || '!' WHERE jobid = %s",
        (job_id,),
    )
    rows = db.execute(
        "SELECT kind, status FROM pgagent_watch.event WHERE job_id = %s ORDER BY id",
        (job_id,),
    ).fetchall()
    assert rows == [("job", "created"), ("run", "r"), ("run", "f"), ("job", "changed")]


def test_a_long_multibyte_output_keeps_the_notification_small(
    db: psycopg.Connection,
) -> None:
    # C9: the output never travels in the notification.
    job_id = samples.create_job(
        db, unique("日本語"), [Step("a", "SELECT 1")], enabled=False
    )
    step = db.execute(
        "SELECT jstid FROM pgagent.pga_jobstep WHERE jstjobid = %s", (job_id,)
    ).fetchone()
    assert step is not None
    with psycopg.connect(db.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgagent_watch")
        run = db.execute(
            "INSERT INTO pgagent.pga_joblog (jlgjobid) VALUES (%s) RETURNING jlgid",
            (job_id,),
        ).fetchone()
        assert run is not None
        output = "失敗しました 🚨" * 5000
        db.execute(
            "INSERT INTO pgagent.pga_jobsteplog (jsljlgid, jsljstid, jslstatus,"
            " jslresult, jsloutput) VALUES (%s, %s, 'f', 1, %s)",
            (run[0], step[0], output),
        )
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
    assert payloads
    assert all(len(p.encode()) < 100 for p in payloads)


BREAKAGES = {
    "the event table dropped": "DROP TABLE pgagent_watch.event",
    "every insert refused": (
        "ALTER TABLE pgagent_watch.event ADD CONSTRAINT broken CHECK (false) NOT VALID"
    ),
    "the notify function gone": "DROP FUNCTION pgagent_watch.notify(bigint, text)",
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_capture_never_breaks_a_running_pgagent_job(
    db: psycopg.Connection, make_job: object, live_agent: Agent, breakage: str
) -> None:
    job_id = make_job(  # type: ignore[operator]
        [
            Step("1 wait", "sleep 1", kind="b"),
            Step("2 fail", "exit 4", kind="b"),
        ]
    )
    samples.run_now(db, job_id)
    # Break it while the run is in progress, then let the run end.
    assert wait_until(
        lambda: db.execute(
            "SELECT 1 FROM pgagent.pga_jobsteplog l JOIN pgagent.pga_joblog r"
            " ON r.jlgid = l.jsljlgid WHERE r.jlgjobid = %s AND l.jslstatus = 'r'",
            (job_id,),
        ).fetchone(),
        WAIT,
    )
    db.execute(BREAKAGES[breakage])
    try:
        assert wait_until(
            lambda: (
                db.execute(
                    "SELECT jlgstatus FROM pgagent.pga_joblog WHERE jlgjobid = %s"
                    " AND jlgstatus <> 'r'",
                    (job_id,),
                ).fetchone()
                == ("f",)
            ),
            WAIT,
        )
        steps = db.execute(
            "SELECT l.jslstatus, l.jslresult FROM pgagent.pga_jobsteplog l"
            " JOIN pgagent.pga_joblog r ON r.jlgid = l.jsljlgid"
            " WHERE r.jlgjobid = %s ORDER BY l.jslid",
            (job_id,),
        ).fetchall()
        assert steps == [("s", 0), ("f", 4)]
    finally:
        if breakage == "every insert refused":
            db.execute("ALTER TABLE pgagent_watch.event DROP CONSTRAINT broken")
        capture.install(db)


def test_events_older_than_the_retention_are_pruned(db: psycopg.Connection) -> None:
    job_id = samples.create_job(
        db, unique("old"), [Step("a", "SELECT 1")], enabled=False
    )
    db.execute(
        "UPDATE pgagent_watch.event SET at = now() - interval '15 days'"
        " WHERE job_id = %s",
        (job_id,),
    )
    db.execute(
        "UPDATE pgagent.pga_job SET jobdesc = 'recent' WHERE jobid = %s", (job_id,)
    )
    capture.prune(db, timedelta(days=14))
    rows = db.execute(
        "SELECT status FROM pgagent_watch.event WHERE job_id = %s", (job_id,)
    ).fetchall()
    assert rows == [("changed",)]


def test_uninstall_twice_is_the_same_as_once(scratch_db: psycopg.Connection) -> None:
    capture.install(scratch_db)
    capture.uninstall(scratch_db)
    capture.uninstall(scratch_db)
    assert trigger_names(scratch_db) == set()


def test_event_ids_never_repeat_across_uninstall_and_install(
    scratch_db: psycopg.Connection,
) -> None:
    # Consumers (the outbox) remember ids: a reinstall must not hand them out again.
    capture.install(scratch_db)
    first = samples.create_job(scratch_db, "one", [Step("a", "SELECT 1")])
    before = scratch_db.execute(
        "SELECT max(id) FROM pgagent_watch.event WHERE job_id = %s", (first,)
    ).fetchone()
    capture.uninstall(scratch_db)
    capture.install(scratch_db)
    second = samples.create_job(scratch_db, "two", [Step("a", "SELECT 1")])
    after = scratch_db.execute(
        "SELECT min(id) FROM pgagent_watch.event WHERE job_id = %s", (second,)
    ).fetchone()
    assert before is not None and after is not None
    assert after[0] > before[0]
