"""Trends of a server or a job: runs per day by result, failure rate, p50/p95.

Days are calendar days in the viewer's time zone (an IANA name), so that a
bar says what the person looking at it calls "Tuesday".
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row

from .jobs import AnyConn

# pgAgent's run statuses grouped for a chart: internal errors are failures.
_DAYS = """
SELECT (r.jlgstart AT TIME ZONE %(tz)s)::date AS day,
       count(*) FILTER (WHERE r.jlgstatus = 's') AS succeeded,
       count(*) FILTER (WHERE r.jlgstatus IN ('f', 'i')) AS failed,
       count(*) FILTER (WHERE r.jlgstatus = 'd') AS aborted,
       count(*) FILTER (WHERE r.jlgstatus = 'r') AS running,
       percentile_cont(0.5) WITHIN GROUP
           (ORDER BY extract(epoch FROM r.jlgduration)) AS p50,
       percentile_cont(0.95) WITHIN GROUP
           (ORDER BY extract(epoch FROM r.jlgduration)) AS p95
FROM pgagent.pga_joblog r
WHERE r.jlgstart >= %(start)s AND r.jlgstart < %(end)s
  AND (%(job)s::int4 IS NULL OR r.jlgjobid = %(job)s::int4)
GROUP BY 1 ORDER BY 1
"""

_TOTAL = """
SELECT count(*) AS runs,
       count(*) FILTER (WHERE r.jlgstatus IN ('f', 'i')) AS failed,
       percentile_cont(0.5) WITHIN GROUP
           (ORDER BY extract(epoch FROM r.jlgduration)) AS p50,
       percentile_cont(0.95) WITHIN GROUP
           (ORDER BY extract(epoch FROM r.jlgduration)) AS p95
FROM pgagent.pga_joblog r
WHERE r.jlgstart >= %(start)s AND r.jlgstart < %(end)s
  AND (%(job)s::int4 IS NULL OR r.jlgjobid = %(job)s::int4)
"""

_PER_JOB = """
SELECT r.jlgjobid AS job_id, j.jobname AS job_name, count(*) AS runs,
       count(*) FILTER (WHERE r.jlgstatus IN ('f', 'i')) AS failed,
       percentile_cont(0.5) WITHIN GROUP
           (ORDER BY extract(epoch FROM r.jlgduration)) AS p50,
       percentile_cont(0.95) WITHIN GROUP
           (ORDER BY extract(epoch FROM r.jlgduration)) AS p95
FROM pgagent.pga_joblog r JOIN pgagent.pga_job j ON j.jobid = r.jlgjobid
WHERE r.jlgstart >= %(start)s AND r.jlgstart < %(end)s
GROUP BY 1, 2
"""

TOP = 10
MAX_DAYS = 366


def period(
    days: int | None, start: date | None, end: date | None, zone: ZoneInfo
) -> tuple[datetime, datetime]:
    """The [start, end) instants of a range of whole days in ``zone``.

    Either ``days`` (ending today) or ``start`` and ``end`` (both included).
    Raises ValueError for an empty, reversed or too long range.
    """
    if start is not None or end is not None:
        if start is None or end is None:
            raise ValueError("give both 'from' and 'to', or 'days'")
        if end < start:
            raise ValueError("'to' is before 'from'")
        first, last = start, end
    else:
        today = datetime.now(zone).date()
        first, last = today - timedelta(days=(days or 7) - 1), today
    if (last - first).days + 1 > MAX_DAYS:
        raise ValueError(f"at most {MAX_DAYS} days")
    if last >= date.max - timedelta(days=1) or first <= date.min + timedelta(days=1):
        raise ValueError("the range is out of the calendar")
    begin = datetime.combine(first, datetime.min.time(), zone)
    finish = datetime.combine(last + timedelta(days=1), datetime.min.time(), zone)
    return begin, finish


def _ratio(failed: int, runs: int) -> float | None:
    return round(failed / runs, 4) if runs else None


async def trends(
    conn: AnyConn,
    begin: datetime,
    end: datetime,
    zone: ZoneInfo,
    job_id: int | None = None,
) -> dict[str, Any]:
    """Runs per day by result with p50/p95 (seconds), totals, and, for a
    server, the slowest and most failing jobs. Days without runs are zeros.
    """
    params = {"tz": zone.key, "start": begin, "end": end, "job": job_id}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_DAYS, params)
        by_day = {row["day"]: row for row in await cur.fetchall()}
        await cur.execute(_TOTAL, params)
        total = await cur.fetchone() or {}
        per_job: list[dict[str, Any]] = []
        if job_id is None:
            await cur.execute(_PER_JOB, params)
            per_job = await cur.fetchall()
    days = []
    day = begin.date()
    while day < end.date():
        row = by_day.get(day, {})
        counts = {
            k: int(row.get(k) or 0)
            for k in ("succeeded", "failed", "aborted", "running")
        }
        runs = sum(counts.values())
        days.append(
            {
                "day": day.isoformat(),
                **counts,
                "runs": runs,
                "failure_rate": _ratio(counts["failed"], runs),
                "p50": row.get("p50"),
                "p95": row.get("p95"),
            }
        )
        day += timedelta(days=1)
    for job in per_job:
        job["failure_rate"] = _ratio(job["failed"], job["runs"])
    runs_total = int(total.get("runs") or 0)
    failed_total = int(total.get("failed") or 0)
    return {
        "from": begin.date().isoformat(),
        "to": (end.date() - timedelta(days=1)).isoformat(),
        "time_zone": zone.key,
        "job_id": job_id,
        "days": days,
        "total": {
            "runs": runs_total,
            "failed": failed_total,
            "failure_rate": _ratio(failed_total, runs_total),
            "p50": total.get("p50"),
            "p95": total.get("p95"),
        },
        "slowest": sorted(
            (j for j in per_job if j["p95"] is not None),
            key=lambda j: -float(j["p95"]),
        )[:TOP],
        "most_failing": sorted(
            (j for j in per_job if j["failed"]),
            key=lambda j: (-j["failed"], -(j["failure_rate"] or 0)),
        )[:TOP],
    }


CSV_COLUMNS = (
    "day",
    "runs",
    "succeeded",
    "failed",
    "aborted",
    "running",
    "failure_rate",
    "p50",
    "p95",
)


def to_csv(result: dict[str, Any]) -> str:
    """The per-day rows as CSV with a header line (durations in seconds)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for day in result["days"]:
        writer.writerow(["" if day[c] is None else day[c] for c in CSV_COLUMNS])
    return out.getvalue()
