"""Reading pgAgent's own tables: jobs, their current state, runs and step runs."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any, NotRequired, TypedDict

import psycopg
from psycopg.rows import dict_row

AnyConn = psycopg.AsyncConnection[Any]


class JobState(TypedDict):
    """One job as the overview shows it."""

    job_id: int
    job_name: str
    description: str
    enabled: bool
    next_run: datetime | None
    last_run: datetime | None
    agent_pid: int | None
    host_agent: str
    run_id: int | None
    status: str | None
    run_start: datetime | None
    run_duration: float | None
    current_step: str | None
    failed_step: str | None
    # The job's open health conditions (detect.Condition.as_dict()).
    health: NotRequired[list[dict[str, Any]]]


# One statement per server, however many jobs: the latest run of each job
# through the (jlgjobid, jlgid) index that capture installs.
_JOB_STATES = """
SELECT j.jobid AS job_id, j.jobname AS job_name, j.jobdesc AS description,
       j.jobenabled AS enabled, j.jobnextrun AS next_run, j.joblastrun AS last_run,
       j.jobagentid AS agent_pid, j.jobhostagent AS host_agent,
       r.jlgid AS run_id, r.jlgstatus AS status, r.jlgstart AS run_start,
       extract(epoch FROM r.jlgduration)::float8 AS run_duration,
       cs.jstname AS current_step, fs.jstname AS failed_step
FROM pgagent.pga_job j
LEFT JOIN LATERAL (
    SELECT jlgid, jlgstatus, jlgstart, jlgduration FROM pgagent.pga_joblog
    WHERE jlgjobid = j.jobid ORDER BY jlgid DESC LIMIT 1
) r ON true
LEFT JOIN LATERAL (
    SELECT st.jstname FROM pgagent.pga_jobsteplog sl
    JOIN pgagent.pga_jobstep st ON st.jstid = sl.jsljstid
    WHERE r.jlgstatus = 'r' AND sl.jsljlgid = r.jlgid AND sl.jslstatus = 'r'
    ORDER BY sl.jslid DESC LIMIT 1
) cs ON true
LEFT JOIN LATERAL (
    SELECT st.jstname FROM pgagent.pga_jobsteplog sl
    JOIN pgagent.pga_jobstep st ON st.jstid = sl.jsljstid
    WHERE r.jlgstatus IN ('f', 'i', 'd') AND sl.jsljlgid = r.jlgid
      AND sl.jslstatus IN ('f', 'd')
    ORDER BY sl.jslid LIMIT 1
) fs ON true
"""


async def job_states(conn: AnyConn, job_id: int | None = None) -> list[JobState]:
    """Every job of the server (or one) with its latest run, by name."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if job_id is None:
            await cur.execute(_JOB_STATES + " ORDER BY lower(j.jobname), j.jobid")
        else:
            await cur.execute(_JOB_STATES + " WHERE j.jobid = %s", (job_id,))
        return await cur.fetchall()  # type: ignore[return-value]


# --- One job: its steps, schedules, runs and step runs ------------------------

_JOB = """
SELECT j.jobid AS job_id, j.jobname AS job_name, j.jobdesc AS description,
       j.jobenabled AS enabled, j.jobnextrun AS next_run, j.joblastrun AS last_run,
       j.jobcreated AS created, j.jobchanged AS changed,
       j.jobagentid AS agent_pid, j.jobhostagent AS host_agent,
       c.jclname AS job_class, current_setting('TimeZone') AS server_timezone
FROM pgagent.pga_job j
LEFT JOIN pgagent.pga_jobclass c ON c.jclid = j.jobjclid
WHERE j.jobid = %s
"""

_STEPS = """
SELECT jstid AS step_id, jstname AS step_name, jstdesc AS description,
       jstenabled AS enabled, jstkind AS kind, jstcode AS code,
       jstdbname AS dbname, jstonerror AS on_error
FROM pgagent.pga_jobstep WHERE jstjobid = %s
ORDER BY jstname, jstid
"""

_SCHEDULES = """
SELECT s.jscid, s.jscname, s.jscdesc, s.jscenabled, s.jscstart, s.jscend,
       s.jscminutes, s.jschours, s.jscweekdays, s.jscmonthdays, s.jscmonths,
       coalesce((SELECT json_agg(json_build_object(
                     'date', e.jexdate, 'time', e.jextime) ORDER BY e.jexid)
                 FROM pgagent.pga_exception e WHERE e.jexscid = s.jscid),
                '[]'::json) AS exceptions
FROM pgagent.pga_schedule s WHERE s.jscjobid = %s
ORDER BY s.jscname, s.jscid
"""

# pgAgent's own function says when a schedule fires next. It is asked one
# schedule at a time: for some schedules it raises (it builds "2027-2-29" for
# a February without a 29th), and one such schedule must not hide the job.
_NEXT_RUN = """
SELECT pgagent.pga_next_schedule(jscid, jscstart, jscend, jscminutes, jschours,
                                 jscweekdays, jscmonthdays, jscmonths) AS next_run
FROM pgagent.pga_schedule WHERE jscid = %s
"""

# Keyset pagination on the (jlgjobid, jlgid) index: the same cost on page
# one and page ten thousand of a job with a million runs.
_RUNS = """
SELECT r.jlgid AS run_id, r.jlgstatus AS status, r.jlgstart AS start,
       extract(epoch FROM r.jlgduration)::float8 AS duration,
       fs.jstname AS failed_step
FROM pgagent.pga_joblog r
LEFT JOIN LATERAL (
    SELECT st.jstname FROM pgagent.pga_jobsteplog sl
    JOIN pgagent.pga_jobstep st ON st.jstid = sl.jsljstid
    WHERE r.jlgstatus IN ('f', 'i', 'd') AND sl.jsljlgid = r.jlgid
      AND sl.jslstatus IN ('f', 'd')
    ORDER BY sl.jslid LIMIT 1
) fs ON true
WHERE r.jlgjobid = %s AND r.jlgid < %s
ORDER BY r.jlgid DESC
LIMIT %s
"""

# Output is cut at OUTPUT_PREVIEW characters here; the whole text is a
# download of its own, never a socket message.
OUTPUT_PREVIEW = 64 * 1024

_STEP_RUNS = """
SELECT sl.jslid AS step_run_id, sl.jsljstid AS step_id, st.jstname AS step_name,
       st.jstkind AS kind, sl.jslstatus AS status, sl.jslresult AS result,
       sl.jslstart AS start, extract(epoch FROM sl.jslduration)::float8 AS duration,
       left(sl.jsloutput, %s) AS output,
       coalesce(length(sl.jsloutput), 0) AS output_length,
       coalesce(octet_length(sl.jsloutput), 0) AS output_bytes
FROM pgagent.pga_jobsteplog sl
LEFT JOIN pgagent.pga_jobstep st ON st.jstid = sl.jsljstid
WHERE sl.jsljlgid = %s
ORDER BY sl.jslid
"""


class RunsPage(TypedDict):
    runs: list[dict[str, Any]]
    next_before: int | None


def _rows(conn: AnyConn) -> psycopg.AsyncCursor[dict[str, Any]]:
    """A cursor whose rows are dicts; every query it runs is a constant here."""
    return conn.cursor(row_factory=dict_row)


async def _next_run(conn: AnyConn, schedule_id: int) -> tuple[Any, str | None]:
    """(next run, None) as pgAgent computes it, or (None, its error's text)."""
    try:
        async with _rows(conn) as cur:
            await cur.execute(_NEXT_RUN, (schedule_id,))
            row = await cur.fetchone()
    except psycopg.DataError as exc:
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (row["next_run"] if row else None), None


async def job_detail(conn: AnyConn, job_id: int) -> dict[str, Any] | None:
    """A job with its steps and schedules (in words), or None if there is none.

    Each schedule carries ``words`` (``schedules.describe``) and ``next_run``
    as pgAgent's ``pga_next_schedule`` computes it.
    """
    from . import schedules

    async with _rows(conn) as cur:
        await cur.execute(_JOB, (job_id,))
        job = await cur.fetchone()
        if job is None:
            return None
        await cur.execute(_STEPS, (job_id,))
        job["steps"] = await cur.fetchall()
        await cur.execute(_SCHEDULES, (job_id,))
        rows = await cur.fetchall()
    out = []
    for row in rows:
        exceptions = [
            schedules.Exception_(
                date.fromisoformat(e["date"]) if e["date"] else None,
                time.fromisoformat(e["time"]) if e["time"] else None,
            )
            for e in row["exceptions"]
        ]
        schedule = schedules.Schedule.from_row(row, exceptions)
        next_run, next_error = await _next_run(conn, row["jscid"])
        out.append(
            {
                "schedule_id": row["jscid"],
                "name": row["jscname"],
                "description": row["jscdesc"],
                "enabled": row["jscenabled"],
                "start": row["jscstart"],
                "end": row["jscend"],
                "next_run": next_run,
                "next_run_error": next_error,
                "words": schedules.describe(schedule, job["server_timezone"]),
                "exceptions": row["exceptions"],
            }
        )
    job["schedules"] = out
    states = await job_states(conn, job_id)
    if states:
        state = states[0]
        job.update(
            run_id=state["run_id"],
            status=state["status"],
            run_start=state["run_start"],
            run_duration=state["run_duration"],
            current_step=state["current_step"],
        )
    return job


MAX_ID = 2**31 - 1


async def runs(
    conn: AnyConn, job_id: int, before: int | None = None, limit: int = 50
) -> RunsPage:
    """A job's runs newest first, ``limit`` at a time, older than run ``before``.

    ``next_before`` is the ``before`` of the next (older) page, None at the end.
    """
    async with _rows(conn) as cur:
        await cur.execute(
            _RUNS, (job_id, MAX_ID if before is None else before, limit + 1)
        )
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return {"runs": rows, "next_before": rows[-1]["run_id"] if more else None}


async def run_detail(conn: AnyConn, job_id: int, run_id: int) -> dict[str, Any] | None:
    """One run of a job with its step runs (output cut at OUTPUT_PREVIEW)."""
    async with _rows(conn) as cur:
        await cur.execute(
            "SELECT jlgid AS run_id, jlgjobid AS job_id, jlgstatus AS status,"
            " jlgstart AS start, extract(epoch FROM jlgduration)::float8 AS duration"
            " FROM pgagent.pga_joblog WHERE jlgid = %s AND jlgjobid = %s",
            (run_id, job_id),
        )
        run = await cur.fetchone()
        if run is None:
            return None
        await cur.execute(_STEP_RUNS, (OUTPUT_PREVIEW, run_id))
        steps = await cur.fetchall()
    for s in steps:
        s["output_truncated"] = s["output_length"] > OUTPUT_PREVIEW
    run["step_runs"] = steps
    return run


async def step_run_output(
    conn: AnyConn, job_id: int, run_id: int, step_run_id: int
) -> tuple[str, str] | None:
    """(step name, whole output) of one step run of this job's run, or None."""
    async with _rows(conn) as cur:
        await cur.execute(
            "SELECT coalesce(st.jstname, '') AS step_name,"
            " coalesce(sl.jsloutput, '') AS output"
            " FROM pgagent.pga_jobsteplog sl"
            " JOIN pgagent.pga_joblog r ON r.jlgid = sl.jsljlgid"
            " LEFT JOIN pgagent.pga_jobstep st ON st.jstid = sl.jsljstid"
            " WHERE sl.jslid = %s AND sl.jsljlgid = %s AND r.jlgjobid = %s",
            (step_run_id, run_id, job_id),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    return row["step_name"], row["output"]


# --- Actions --------------------------------------------------------------------


async def run_now(conn: AnyConn, job_id: int) -> dict[str, Any] | None:
    """Ask pgAgent to run the job at its next poll, as pgAdmin does.

    Returns the job's enabled flag and agent pid after the update, or None
    when there is no such job. A disabled job is not touched.
    """
    async with _rows(conn) as cur:
        await cur.execute(
            "UPDATE pgagent.pga_job SET jobnextrun = now()"
            " WHERE jobid = %s AND jobenabled AND jobagentid IS NULL"
            " RETURNING jobid AS job_id, jobnextrun AS next_run",
            (job_id,),
        )
        return await cur.fetchone()


async def set_enabled(conn: AnyConn, job_id: int, enabled: bool) -> bool:
    """Enable or disable a job; False when there is no such job."""
    cur = await conn.execute(
        "UPDATE pgagent.pga_job SET jobenabled = %s WHERE jobid = %s", (enabled, job_id)
    )
    return cur.rowcount == 1


# The usual duration of each job: the median of its last 20 finished runs,
# read backwards on the (jlgjobid, jlgid) index, whatever the history's size.
_USUAL = """
SELECT j.jobid AS job_id,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x.d)
        FROM (SELECT extract(epoch FROM r.jlgduration)::float8 AS d
              FROM pgagent.pga_joblog r
              WHERE r.jlgjobid = j.jobid AND r.jlgduration IS NOT NULL
              ORDER BY r.jlgid DESC LIMIT 20) x) AS usual
FROM pgagent.pga_job j
"""


async def summary(conn: AnyConn) -> dict[str, Any]:
    """The server's TimeZone and each job's usual duration in seconds."""
    async with _rows(conn) as cur:
        await cur.execute("SELECT current_setting('TimeZone') AS tz")
        zone = await cur.fetchone()
        await cur.execute(_USUAL)
        rows = await cur.fetchall()
    return {
        "server_timezone": zone["tz"] if zone else None,
        "usual_duration": {
            str(r["job_id"]): r["usual"] for r in rows if r["usual"] is not None
        },
    }
