"""Reading pgAgent's own tables: jobs, their current state, runs and step runs."""

from __future__ import annotations

from datetime import datetime
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
       cs.jstname AS current_step
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
"""


async def job_states(conn: AnyConn, job_id: int | None = None) -> list[JobState]:
    """Every job of the server (or one) with its latest run, by name."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if job_id is None:
            await cur.execute(_JOB_STATES + " ORDER BY lower(j.jobname), j.jobid")
        else:
            await cur.execute(_JOB_STATES + " WHERE j.jobid = %s", (job_id,))
        return await cur.fetchall()  # type: ignore[return-value]
