"""Creating pgAgent jobs as pgAdmin does: for the demo, the tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg


@dataclass(frozen=True)
class Step:
    """One step of a job: SQL (``s``) run in ``dbname``, or a batch (``b``) script."""

    name: str
    code: str
    kind: Literal["s", "b"] = "s"
    on_error: Literal["f", "s", "i"] = "f"
    dbname: str = "postgres"
    enabled: bool = True


def every_minutes(minutes: Sequence[int] | None = None) -> dict[str, list[bool]]:
    """A schedule on the given minutes of every hour (every minute by default).

    pgAgent reads an all-false array as "any", so only minutes are set.
    """
    chosen = set(range(60)) if minutes is None else set(minutes)
    return {"minutes": [m in chosen for m in range(60)]}


def create_job(
    conn: psycopg.Connection,
    name: str,
    steps: Sequence[Step],
    *,
    schedule: dict[str, list[bool]] | None = None,
    enabled: bool = True,
    description: str = "",
) -> int:
    """Create a job with its steps (and a schedule); return its jobid.

    pgAgent runs the steps of a job in the order of their names, not of
    their creation: number them to fix the order.

    A job without a schedule runs only when asked (``run_now``).
    """
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO pgagent.pga_job (jobjclid, jobname, jobdesc, jobenabled)"
            " VALUES ((SELECT min(jclid) FROM pgagent.pga_jobclass), %s, %s, %s)"
            " RETURNING jobid",
            (name, description, enabled),
        ).fetchone()
        assert row is not None
        job_id = int(row[0])
        for step in steps:
            conn.execute(
                "INSERT INTO pgagent.pga_jobstep (jstjobid, jstname, jstkind,"
                " jstcode, jstdbname, jstonerror, jstenabled)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    job_id,
                    step.name,
                    step.kind,
                    step.code,
                    step.dbname if step.kind == "s" else "",
                    step.on_error,
                    step.enabled,
                ),
            )
        if schedule is not None:
            conn.execute(
                "INSERT INTO pgagent.pga_schedule (jscjobid, jscname, jscminutes)"
                " VALUES (%s, %s, %s)",
                (job_id, f"{name} schedule", schedule["minutes"]),
            )
    return job_id


RUN_NOW_SQL = "UPDATE pgagent.pga_job SET jobnextrun = now() WHERE jobid = %s"


def run_now(conn: psycopg.Connection, job_id: int) -> None:
    """Ask pgAgent to run a job at its next poll, as pgAdmin's "Run now" does."""
    conn.execute(RUN_NOW_SQL, (job_id,))


def demo_jobs(conn: psycopg.Connection) -> dict[str, int]:
    """The demo's jobs: one succeeds, one fails, one runs long, one has steps."""
    minute = every_minutes()
    jobs = {
        "heartbeat": create_job(
            conn,
            "heartbeat",
            [Step("touch", "SELECT now()")],
            schedule=minute,
            description="Succeeds every minute.",
        ),
        "nightly-export": create_job(
            conn,
            "nightly-export",
            [
                Step("1 prepare", "SELECT 1"),
                Step(
                    "2 export",
                    "printf '%s\\n' 'exporting orders to C:\\exports\\orders.csv'; "
                    "echo 'error: disk quota exceeded'; exit 1",
                    kind="b",
                ),
            ],
            schedule=minute,
            description="Fails every minute: its batch step exits with 1.",
        ),
        "long-batch": create_job(
            conn,
            "long-batch",
            [Step("sleep", "echo start; sleep 20; echo done", kind="b")],
            schedule=every_minutes(range(0, 60, 2)),
            description="A batch step that runs 20 s, every two minutes.",
        ),
        "warehouse-refresh": create_job(
            conn,
            "warehouse-refresh",
            [
                Step("1 vacuum", "SELECT pg_sleep(1)"),
                Step("2 optional cleanup", "SELECT * FROM no_such_table", on_error="i"),
                Step("3 report", "echo 'report written'", kind="b"),
            ],
            schedule=every_minutes(range(0, 60, 3)),
            description="Three steps; the middle one fails and is ignored.",
        ),
    }
    for job_id in jobs.values():
        run_now(conn, job_id)
    return jobs
