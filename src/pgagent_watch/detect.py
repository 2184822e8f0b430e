"""Health detection: the failures pgAgent itself does not report become events.

pgAgent writes what it runs and says nothing when it does not run. Each
server gets a Detector that reads, in one statement per tick, the agents,
the enabled jobs with their latest run and just enough history, and finds
four conditions:

- ``agent_down``: no agent alive (``pga_jobagent`` empty, or no row whose
  ``jagpid`` is a live backend that started before the agent logged in),
  while an enabled job is scheduled or a run is in progress;
- ``overdue``: an enabled job whose next run passed more than a grace ago
  with no run started, or a job an agent claimed (``jobagentid``) with no
  run in progress for longer than the grace;
- ``stuck``: a run in ``r`` longer than its limit (the job's own maximum,
  else a multiple of its usual duration), or whose agent is no longer alive;
- ``flapping``: a job whose recent runs changed between success and failure
  many times in a window.

Each condition is reported once: a ``start`` event when it begins and an
``end`` event when it clears, written into the server's own
``pgagent_watch.event`` table with the same notification as the capture
triggers send, so that the listener, the push and the alerts treat them as
any other event. Which conditions are open is derived from that table when
detection (re)starts, so a restart never announces one twice. Only the
instance whose listener is ``connected`` detects: with the listen lock,
that is one instance per server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from fastapi import APIRouter, HTTPException, Request
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from . import audit
from .config import DetectSettings
from .deps import JobIdPath, ServerIdPath, ServiceDep, Who, visible_server
from .events import DERIVED_KINDS, RUN_STATUS_TEXT, JobEvent
from .listener import Listener, ListenerState
from .push import jsonable

logger = logging.getLogger("pgagent_watch.detect")

AnyConn = psycopg.AsyncConnection[Any]
# (kind, job_id, run_id): agent_down has neither, stuck has both.
Key = tuple[str, int | None, int | None]

_TEXT_LIMIT = 200


# One statement per server and tick, however many jobs. Only the latest run
# of each job is read (through capture's (jlgjobid, jlgid) index): pgAgent
# claims a job before it starts a run and releases it when the run ends, so
# a run still in 'r' is its job's latest. History is read only for jobs with
# a run in progress, and flapping looks at a bounded number of recent runs.
_SNAPSHOT = """
WITH agent AS (
    SELECT a.jagpid AS pid, a.jagstation AS host, a.jaglogintime AS login,
           -- A pid can be reused after a restart: the agent's backend must
           -- have started before the agent logged in. backend_start is null
           -- for another role's sessions without pg_read_all_stats: then the
           -- pid alone decides, as pgAgent itself does.
           EXISTS (
               SELECT 1 FROM pg_stat_activity p
               WHERE p.pid = a.jagpid
                 AND (p.backend_start IS NULL OR p.backend_start <= a.jaglogintime)
           ) AS alive
    FROM pgagent.pga_jobagent a
), job AS (
    SELECT j.jobid AS job_id, j.jobname AS name, j.jobenabled AS enabled,
           j.jobnextrun AS next_run, j.joblastrun AS last_claim,
           j.jobagentid AS agent_pid,
           r.jlgid AS run_id, r.jlgstatus AS run_status, r.jlgstart AS run_start,
           r.jlgstart + r.jlgduration AS run_end,
           cs.step, h.runs AS history_runs, h.usual,
           fl.changes AS flap_changes, fl.runs AS flap_runs
    FROM pgagent.pga_job j
    LEFT JOIN LATERAL (
        SELECT jlgid, jlgstatus, jlgstart, jlgduration FROM pgagent.pga_joblog
        WHERE jlgjobid = j.jobid ORDER BY jlgid DESC LIMIT 1
    ) r ON true
    LEFT JOIN LATERAL (
        SELECT st.jstname AS step FROM pgagent.pga_jobsteplog sl
        JOIN pgagent.pga_jobstep st ON st.jstid = sl.jsljstid
        WHERE r.jlgstatus = 'r' AND sl.jsljlgid = r.jlgid AND sl.jslstatus = 'r'
        ORDER BY sl.jslid DESC LIMIT 1
    ) cs ON true
    LEFT JOIN LATERAL (
        SELECT count(*) AS runs,
               percentile_cont(%(percentile)s) WITHIN GROUP (
                   ORDER BY extract(epoch FROM l.jlgduration)::float8) AS usual
        FROM (
            SELECT jlgstatus, jlgduration FROM pgagent.pga_joblog
            WHERE r.jlgstatus = 'r' AND jlgjobid = j.jobid AND jlgid < r.jlgid
            ORDER BY jlgid DESC LIMIT %(history)s
        ) l
        WHERE l.jlgstatus = 's' AND l.jlgduration IS NOT NULL
    ) h ON true
    -- Flapping looks at the job's last flap_runs runs. Their first id comes
    -- from an index-only walk back through capture's index: given a plain
    -- "ORDER BY jlgid DESC LIMIT n" the planner may sort every run of a job
    -- with a long history (one a second for a year) instead.
    LEFT JOIN LATERAL (
        SELECT min(jlgid) AS from_id FROM (
            SELECT jlgid FROM pgagent.pga_joblog
            WHERE j.jobenabled AND jlgjobid = j.jobid
            ORDER BY jlgjobid DESC, jlgid DESC LIMIT %(flap_runs)s
        ) last
    ) fr ON true
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE prev IS NOT NULL AND ok <> prev) AS changes,
               count(*) AS runs
        FROM (
            SELECT jlgstatus = 's' AS ok,
                   lag(jlgstatus = 's') OVER (ORDER BY jlgid) AS prev
            FROM pgagent.pga_joblog
            WHERE j.jobenabled AND jlgjobid = j.jobid AND jlgid >= fr.from_id
              AND jlgstatus IN ('s', 'f', 'i') AND jlgstart > now() - %(window)s
        ) w
    ) fl ON true
    WHERE j.jobenabled OR r.jlgstatus = 'r'
)
SELECT now(),
       (SELECT coalesce(jsonb_agg(to_jsonb(agent) ORDER BY login DESC), '[]')
        FROM agent),
       (SELECT coalesce(jsonb_agg(to_jsonb(job)), '[]') FROM job)
"""

_AGENTS = """
SELECT a.jagpid, a.jagstation, a.jaglogintime,
       EXISTS (
           SELECT 1 FROM pg_stat_activity p
           WHERE p.pid = a.jagpid
             AND (p.backend_start IS NULL OR p.backend_start <= a.jaglogintime)
       )
FROM pgagent.pga_jobagent a ORDER BY a.jaglogintime DESC
"""

# The latest derived event of each condition; those that are a 'start' are
# open. Read when detection (re)starts, not on every tick, through capture's
# partial index on derived events (the kinds are DERIVED_KINDS, written out
# so that the planner can match the index's predicate).
_OPEN = """
SELECT DISTINCT ON (e.kind, e.job_id, e.jlgid)
       e.id, e.kind, e.job_id, e.jlgid, e.status, e.at, e.extra, j.jobname
FROM pgagent_watch.event e
LEFT JOIN pgagent.pga_job j ON j.jobid = e.job_id
WHERE e.kind IN ('agent_down', 'overdue', 'stuck', 'flapping')
ORDER BY e.kind, e.job_id, e.jlgid, e.id DESC
"""

# The same payload as the capture triggers send, through the same function
# (which skips the notification when the queue is nearly full).
_WRITE = """
WITH ins AS (
    INSERT INTO pgagent_watch.event (kind, job_id, jlgid, status, extra)
    SELECT x.kind, x.job_id, x.jlgid, x.status, x.extra
    FROM jsonb_to_recordset(%s) AS x(
        kind text, job_id integer, jlgid integer, status text, extra jsonb)
    RETURNING id, at, kind, job_id, jlgid, status
)
SELECT id, at, kind, job_id, jlgid, status,
       pgagent_watch.notify(id, kind || ',' || coalesce(job_id::text, '') || ','
                                || coalesce(jlgid::text, '') || ',,' || status)::text
FROM ins ORDER BY id
"""


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _short(value: Any) -> str | None:
    return value[:_TEXT_LIMIT] if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One row of ``pga_jobagent``, with whether its backend is alive."""

    pid: int
    host: str
    login: datetime | None
    alive: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "login": _iso(self.login),
            "alive": self.alive,
        }


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What one tick knows of one job: enough to decide every condition."""

    job_id: int
    name: str
    enabled: bool
    next_run: datetime | None
    last_claim: datetime | None
    agent_pid: int | None
    run_id: int | None
    run_status: str | None
    run_start: datetime | None
    run_end: datetime | None
    step: str | None
    history_runs: int
    usual: float | None
    flap_changes: int
    flap_runs: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobFacts:
        return cls(
            job_id=int(d["job_id"]),
            name=str(d["name"]),
            enabled=bool(d["enabled"]),
            next_run=_time(d.get("next_run")),
            last_claim=_time(d.get("last_claim")),
            agent_pid=d.get("agent_pid"),
            run_id=d.get("run_id"),
            run_status=d.get("run_status"),
            run_start=_time(d.get("run_start")),
            run_end=_time(d.get("run_end")),
            step=d.get("step"),
            history_runs=int(d.get("history_runs") or 0),
            usual=d.get("usual"),
            flap_changes=int(d.get("flap_changes") or 0),
            flap_runs=int(d.get("flap_runs") or 0),
        )

    @property
    def running(self) -> bool:
        return self.run_status == "r"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The result of one tick's statement; ``now`` is the server's clock."""

    now: datetime
    agents: list[AgentInfo]
    jobs: list[JobFacts]


@dataclass(frozen=True, slots=True)
class JobOverride:
    """Per-job thresholds; None falls back to the ``[detect]`` settings."""

    detect: bool = True
    overdue_grace: float | None = None
    max_duration: float | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """A condition that holds now, with the details its start event carries."""

    kind: str
    job_id: int | None
    run_id: int | None
    job_name: str | None
    extra: dict[str, Any]

    @property
    def key(self) -> Key:
        return (self.kind, self.job_id, self.run_id)


@dataclass(frozen=True, slots=True)
class Condition:
    """An open condition: its start event was written, its end not yet."""

    kind: str
    job_id: int | None
    run_id: int | None
    job_name: str | None
    opened_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)
    event_id: int | None = None

    @property
    def key(self) -> Key:
        return (self.kind, self.job_id, self.run_id)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of an open condition, as the API and job states show it."""
        return {
            "kind": self.kind,
            "job_id": self.job_id,
            "job_name": self.job_name,
            "run_id": self.run_id,
            "opened_at": self.opened_at.isoformat(),
            "since": self.extra.get("since"),
            "event_id": self.event_id,
            "extra": self.extra,
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """One event to write: a condition starts or ends."""

    kind: str
    job_id: int | None
    run_id: int | None
    job_name: str | None
    status: str
    extra: dict[str, Any]

    @property
    def key(self) -> Key:
        return (self.kind, self.job_id, self.run_id)


def stuck_limit(
    job: JobFacts, settings: DetectSettings, override: JobOverride
) -> float | None:
    """The longest a run of this job may stay in ``r``, in seconds; None: no limit.

    The job's own maximum if set; otherwise ``stuck_multiple`` times its
    usual duration (never below ``stuck_floor``) once it has
    ``stuck_min_runs`` successful runs in its recent history; otherwise
    ``stuck_default`` (0 means none).
    """
    if override.max_duration is not None:
        return override.max_duration
    if job.history_runs >= settings.stuck_min_runs and job.usual is not None:
        return max(settings.stuck_floor, settings.stuck_multiple * job.usual)
    if settings.stuck_default > 0:
        return max(settings.stuck_floor, settings.stuck_default)
    return None


def evaluate(
    snap: Snapshot,
    open_keys: set[Key],
    settings: DetectSettings,
    overrides: Mapping[int, JobOverride],
    no_agent_for: float | None,
    last_agent: AgentInfo | None = None,
) -> dict[Key, Finding]:
    """Every condition that holds in this snapshot, by key.

    ``open_keys`` are the conditions already open: some hold on longer once
    reported (hysteresis), so that they are not reported on every change.
    ``no_agent_for`` is how long (seconds) no agent has been seen alive, None
    while one is; ``last_agent`` the last agent seen, for its host when
    ``pga_jobagent`` is empty.
    """
    found: list[Finding | None] = [
        _agent_down(snap, open_keys, settings, no_agent_for, last_agent)
    ]
    alive = {a.pid for a in snap.agents if a.alive}
    for job in snap.jobs:
        override = overrides.get(job.job_id, JobOverride())
        if not override.detect:
            continue
        found.append(_stuck(job, snap.now, alive, stuck_limit(job, settings, override)))
        if job.enabled:
            grace = (
                override.overdue_grace
                if override.overdue_grace is not None
                else settings.overdue_grace
            )
            found.append(_overdue(job, snap.now, grace))
            found.append(_flapping(job, open_keys, settings))
    return {f.key: f for f in found if f is not None}


def _agent_down(
    snap: Snapshot,
    open_keys: set[Key],
    settings: DetectSettings,
    no_agent_for: float | None,
    last_agent: AgentInfo | None,
) -> Finding | None:
    """No agent alive, for the grace, while a job needs one."""
    if no_agent_for is None or no_agent_for < settings.agent_grace:
        return None
    # Down once a job is scheduled (or running) with no agent alive; once
    # reported, it stays down while any job is enabled, so that the instant
    # between a new agent aborting the old runs and registering itself is
    # not "back to normal".
    if ("agent_down", None, None) in open_keys:
        needed = any(j.enabled or j.running for j in snap.jobs)
    else:
        needed = any(
            (j.enabled and j.next_run is not None) or j.running for j in snap.jobs
        )
    if not needed or any(a.alive for a in snap.agents):
        return None
    last = snap.agents[0] if snap.agents else last_agent
    since = snap.now - timedelta(seconds=no_agent_for)
    return Finding(
        "agent_down",
        None,
        None,
        None,
        {
            "since": since.isoformat(),
            "host": _short(last.host) if last else None,
            "pid": last.pid if last else None,
            "login": _iso(last.login) if last else None,
            "agents": len(snap.agents),
        },
    )


def _stuck(
    job: JobFacts, now: datetime, alive: set[int], limit: float | None
) -> Finding | None:
    """A run in ``r`` past its limit, or whose agent is no longer alive."""
    if not job.running or job.run_id is None or job.run_start is None:
        return None
    # A run in 'r' with no claiming agent is someone's manual edit: only its
    # age can tell.
    gone = job.agent_pid is not None and job.agent_pid not in alive
    too_long = limit is not None and (now - job.run_start).total_seconds() > limit
    if not (gone or too_long):
        return None
    return Finding(
        "stuck",
        job.job_id,
        job.run_id,
        job.name,
        {
            "since": _iso(job.run_start),
            "cause": "agent gone" if gone else "too long",
            "age": (now - job.run_start).total_seconds(),
            "limit": limit,
            "usual": job.usual,
            "history_runs": job.history_runs,
            "agent_pid": job.agent_pid,
            "step": _short(job.step),
        },
    )


def _flapping(
    job: JobFacts, open_keys: set[Key], settings: DetectSettings
) -> Finding | None:
    """Many changes between success and failure; once open, half as many hold."""
    threshold = settings.flapping_changes
    if ("flapping", job.job_id, None) in open_keys:
        threshold = threshold // 2 + 1
    if job.flap_changes < threshold:
        return None
    return Finding(
        "flapping",
        job.job_id,
        None,
        job.name,
        {
            "changes": job.flap_changes,
            "runs": job.flap_runs,
            "window": settings.flapping_window,
        },
    )


def _overdue(job: JobFacts, now: datetime, grace: float) -> Finding | None:
    """An overdue job, or None.

    A job with a run in progress is not overdue (it may be stuck). A claimed
    job (``jobagentid`` set) with no run in progress has an agent that will
    never release it; it is measured from its claim or its last run's end,
    whichever is later, so that the instants between pgAgent's claim and its
    run's first row, or between a run's end and the release, never count.
    """
    if job.running:
        return None
    if job.agent_pid is not None:
        marks = [t for t in (job.last_claim, job.run_end) if t is not None]
        ref = max(marks) if marks else job.next_run
        if ref is None or (now - ref).total_seconds() <= grace:
            return None
        since = job.next_run or ref
    else:
        if job.next_run is None or (now - job.next_run).total_seconds() <= grace:
            return None
        since = job.next_run
    extra = {
        "since": since.isoformat(),
        "late": (now - since).total_seconds(),
        "grace": grace,
        "claimed_by": job.agent_pid,
        "last_run": job.run_id,
    }
    return Finding("overdue", job.job_id, None, job.name, extra)


def _end_extra(cond: Condition, snap: Snapshot) -> dict[str, Any]:
    """Why a condition ended, and how long it lasted (seconds)."""
    jobs = {j.job_id: j for j in snap.jobs}
    job = jobs.get(cond.job_id) if cond.job_id is not None else None
    extra: dict[str, Any] = {
        "duration": max(0.0, (snap.now - cond.opened_at).total_seconds()),
        "since": cond.extra.get("since"),
    }
    if cond.kind == "agent_down":
        alive = [a for a in snap.agents if a.alive]
        if alive:
            extra.update(
                cause="agent alive", host=_short(alive[0].host), pid=alive[0].pid
            )
        else:
            extra["cause"] = "no job enabled"
    elif job is None:
        extra["cause"] = "job disabled or deleted"
    elif cond.kind == "stuck":
        if job.run_id == cond.run_id and job.running:
            extra["cause"] = "within its limit"
        else:
            extra["cause"] = "run ended"
            if job.run_id == cond.run_id:
                extra["status"] = job.run_status
    elif cond.kind == "overdue":
        extra["cause"] = "run started" if job.running else "rescheduled"
    elif cond.kind == "flapping":
        extra.update(cause="steady", changes=job.flap_changes)
    return extra


def _span(seconds: float) -> str:
    """A duration for people: "45 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    total = round(seconds)
    if total < 120:
        return f"{total} s"
    minutes = total // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


_END_REASONS = {
    "no job enabled": "no job is enabled any more",
    "job disabled or deleted": "the job was disabled or deleted",
    "within its limit": "back within its limit",
    "run started": "a run started",
    "rescheduled": "its next run was moved",
    "steady": "steady again",
}


def _reason(kind: str, status: str, extra: Mapping[str, Any]) -> str:
    """One line for people (alerts show it as "why"), from an event's details."""
    cause = extra.get("cause")
    if status == "end":
        if cause == "agent alive":
            return f"an agent is alive again (pid {extra['pid']} on {extra['host']})"
        if cause == "run ended":
            ended = RUN_STATUS_TEXT.get(str(extra.get("status")), "gone")
            return f"the run ended ({ended})"
        return _END_REASONS.get(str(cause), str(cause))
    if kind == "agent_down":
        if extra.get("pid") is None:
            return "no agent is alive"
        return f"no agent is alive; the last was pid {extra['pid']} on {extra['host']}"
    if kind == "stuck":
        age = _span(float(extra.get("age") or 0))
        if cause == "agent gone":
            return f"its agent (pid {extra['agent_pid']}) is gone; running for {age}"
        usual = extra.get("usual")
        was = f", usually {_span(float(usual))}" if usual is not None else ""
        return f"running for {age}{was}; the limit is {_span(float(extra['limit']))}"
    if kind == "overdue":
        late = _span(float(extra.get("late") or 0))
        if extra.get("claimed_by") is not None:
            return (
                f"claimed by agent pid {extra['claimed_by']} but not running;"
                f" due {late} ago"
            )
        return f"due {late} ago and not started"
    return (
        f"{extra.get('changes')} changes between success and failure"
        f" in its last {extra.get('runs')} runs"
    )


def transitions(
    open_conditions: Mapping[Key, Condition],
    found: Mapping[Key, Finding],
    snap: Snapshot,
) -> list[Transition]:
    """The events that take the open conditions to those found: ends, then starts."""
    out: list[Transition] = []
    for key, cond in open_conditions.items():
        if key not in found:
            out.append(
                Transition(
                    cond.kind,
                    cond.job_id,
                    cond.run_id,
                    cond.job_name,
                    "end",
                    _with_reason(cond.kind, "end", _end_extra(cond, snap)),
                )
            )
    for key, finding in found.items():
        if key not in open_conditions:
            out.append(
                Transition(
                    finding.kind,
                    finding.job_id,
                    finding.run_id,
                    finding.job_name,
                    "start",
                    _with_reason(finding.kind, "start", finding.extra),
                )
            )
    return out


def _with_reason(kind: str, status: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "reason": _reason(kind, status, extra)}


async def read_snapshot(conn: AnyConn, settings: DetectSettings) -> Snapshot:
    """Run the tick's one statement against a monitored server."""
    params = {
        "percentile": settings.stuck_percentile,
        "history": settings.stuck_history,
        "flap_runs": 4 * settings.flapping_changes,
        "window": timedelta(seconds=settings.flapping_window),
    }
    async with conn.transaction():
        # With many jobs the estimated cost crosses JIT's thresholds, and
        # compiling the statement takes longer than running it (650 ms
        # against 185 ms for 2,000 jobs).
        await conn.execute("SET LOCAL jit = off")
        cur = await conn.execute(_SNAPSHOT, params)
        row = await cur.fetchone()
    assert row is not None
    agents = [
        AgentInfo(
            pid=int(a["pid"]),
            host=str(a.get("host") or ""),
            login=_time(a.get("login")),
            alive=bool(a.get("alive")),
        )
        for a in row[1]
    ]
    return Snapshot(row[0], agents, [JobFacts.from_json(j) for j in row[2]])


async def read_agents(conn: AnyConn) -> list[AgentInfo]:
    """The agents of a server, newest login first."""
    cur = await conn.execute(_AGENTS)
    return [
        AgentInfo(pid=r[0], host=r[1] or "", login=r[2], alive=bool(r[3]))
        for r in await cur.fetchall()
    ]


async def read_open(conn: AnyConn) -> dict[Key, Condition]:
    """The conditions whose latest event in the event table is a start."""
    cur = await conn.execute(_OPEN)
    out: dict[Key, Condition] = {}
    for event_id, kind, job_id, run_id, status, at, extra, name in await cur.fetchall():
        if status == "start":
            cond = Condition(kind, job_id, run_id, name, at, extra or {}, event_id)
            out[cond.key] = cond
    return out


async def write_transitions(
    conn: AnyConn, items: Sequence[Transition]
) -> list[tuple[int, datetime, Transition]]:
    """Write the events (and notify) in one statement; return (id, at, item).

    The job's name goes into ``extra`` too, where the event readers find it
    once the job is deleted (as they do for capture's job events).
    """
    rows = [
        {
            "kind": t.kind,
            "job_id": t.job_id,
            "jlgid": t.run_id,
            "status": t.status,
            "extra": {**t.extra, "name": _short(t.job_name)}
            if t.job_id is not None
            else t.extra,
        }
        for t in items
    ]
    cur = await conn.execute(_WRITE, (Jsonb(rows),))
    by_key = {(t.kind, t.job_id, t.run_id, t.status): t for t in items}
    out = []
    for event_id, at, kind, job_id, run_id, status, _ in await cur.fetchall():
        out.append((event_id, at, by_key[(kind, job_id, run_id, status)]))
    return out


_SETTINGS_READ = """
SELECT job_id, detect, overdue_grace, max_duration FROM pgagent_watch.job_setting
WHERE server_name = %s
"""
_SETTINGS_DELETE = """
DELETE FROM pgagent_watch.job_setting WHERE server_name = %s AND job_id = %s
"""
_SETTINGS_WRITE = """
INSERT INTO pgagent_watch.job_setting
    (server_name, job_id, detect, overdue_grace, max_duration, changed_by)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (server_name, job_id) DO UPDATE SET
    detect = EXCLUDED.detect, overdue_grace = EXCLUDED.overdue_grace,
    max_duration = EXCLUDED.max_duration, changed_by = EXCLUDED.changed_by,
    changed_at = now()
"""


class JobSettingStore:
    """Per-job thresholds in the state database, cached for a while.

    Until the state database is ready every job has the defaults.
    """

    def __init__(
        self, pool: AsyncConnectionPool, ready: asyncio.Event, ttl: float = 60
    ) -> None:
        self.pool = pool
        self.ready = ready
        self.ttl = ttl
        self._cache: dict[str, tuple[float, dict[int, JobOverride]]] = {}

    async def for_server(self, server_name: str) -> dict[int, JobOverride]:
        """Every override of a server's jobs; an empty map when unreadable."""
        cached = self._cache.get(server_name)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        if not self.ready.is_set():
            return {}
        try:
            async with self.pool.connection(timeout=5) as conn:
                cur = await conn.execute(_SETTINGS_READ, (server_name,))
                rows = await cur.fetchall()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("job settings of %s not read: %s", server_name, exc)
            return cached[1] if cached else {}
        out = {r[0]: JobOverride(r[1], r[2], r[3]) for r in rows}
        self._cache[server_name] = (time.monotonic(), out)
        return out

    async def put(
        self, server_name: str, job_id: int, value: JobOverride, by: str
    ) -> None:
        """Store a job's thresholds; the defaults remove its row."""
        async with self.pool.connection(timeout=5) as conn:
            if value == JobOverride():
                await conn.execute(_SETTINGS_DELETE, (server_name, job_id))
            else:
                await conn.execute(
                    _SETTINGS_WRITE,
                    (
                        server_name,
                        job_id,
                        value.detect,
                        value.overdue_grace,
                        value.max_duration,
                        by,
                    ),
                )
        self._cache.pop(server_name, None)


class Detector:
    """Finds the health conditions of one server, on a timer and after events.

    A hub consumer: a run or job event asks for a tick soon (never more than
    one per ``min_interval``); its own derived events are ignored.
    """

    def __init__(
        self,
        server_id: int,
        server_name: str,
        listener: Listener,
        pool: AsyncConnectionPool,
        settings: DetectSettings,
        job_settings: JobSettingStore,
    ) -> None:
        self.server_id = server_id
        self.server_name = server_name
        self.listener = listener
        self.pool = pool
        self.settings = settings
        self.job_settings = job_settings
        self._open: dict[Key, Condition] = {}
        # Whether _open was read from the event table since detection
        # (re)started: another instance may have written in between.
        self._synced = False
        self._wake = asyncio.Event()
        self._no_agent_since: float | None = None
        self._last_agent: AgentInfo | None = None
        self._viewed: tuple[float, list[Condition]] | None = None
        self.agents: list[AgentInfo] = []
        self.checked_at: datetime | None = None
        self.error: str | None = None
        self.ticks = 0
        self.last_tick_seconds: float | None = None

    @property
    def active(self) -> bool:
        """Whether this instance detects for the server: its listener is connected."""
        return self.listener.status.state == ListenerState.CONNECTED

    def open_conditions(self) -> list[Condition]:
        """The open conditions as this instance last knew them, oldest first."""
        if self.active and self._synced:
            conds = list(self._open.values())
        elif self._viewed is not None:
            conds = list(self._viewed[1])
        else:
            conds = []
        return sorted(conds, key=lambda c: c.opened_at)

    async def conditions(self) -> list[Condition]:
        """The open conditions; read from the event table when not detecting here.

        An instance on standby reads them (at most every few seconds), so that
        its page and API show what the detecting instance found.
        """
        if self.active and self._synced:
            return self.open_conditions()
        viewed = self._viewed
        if viewed is None or time.monotonic() - viewed[0] > 2:
            async with self.pool.connection(timeout=5) as conn:
                conds = list((await read_open(conn)).values())
            self._viewed = (time.monotonic(), conds)
        return self.open_conditions()

    async def _refresh_view(self) -> None:
        """On standby: keep the view of what the detecting instance found fresh."""
        if self.listener.status.state != ListenerState.STANDBY:
            return
        try:
            async with self.pool.connection(timeout=5) as conn:
                conds = list((await read_open(conn)).values())
            self._viewed = (time.monotonic(), conds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("health view of %s not read: %s", self.server_name, exc)

    def counts(self) -> dict[str, int]:
        """How many conditions of each kind are open, every kind named."""
        seen = Counter(c.kind for c in self.open_conditions())
        return {kind: seen.get(kind, 0) for kind in DERIVED_KINDS}

    def status(self) -> dict[str, Any]:
        """What /healthz shows of detection for this server."""
        return {
            "active": self.active,
            "checked_at": _iso(self.checked_at),
            "error": self.error,
            "ticks": self.ticks,
            "last_tick_seconds": self.last_tick_seconds,
            "open": self.counts(),
        }

    def poke(self) -> None:
        """Ask for a tick soon."""
        self._wake.set()

    # Hub consumer.
    def submit(self, events: Sequence[JobEvent]) -> None:
        if any(
            e.server_id == self.server_id and e.kind in ("run", "job") for e in events
        ):
            self.poke()

    def server_state(self, server_id: int, state: str, reason: str | None) -> None:
        if server_id != self.server_id:
            return
        if state != ListenerState.CONNECTED.value:
            self._synced = False
        if state != ListenerState.STOPPED.value:
            self.poke()

    async def run(self) -> None:
        """Detect until cancelled; a failed tick is logged and retried later."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows
            # a cancellation that comes as the event is set (the listener's
            # "stopped" pokes us as the service stops), and the task lingers.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.interval):
                    await self._wake.wait()
            self._wake.clear()
            if not self.active:
                self._synced = False
                await self._refresh_view()
                continue
            try:
                await self.tick()
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                text = str(exc).strip()
                self.error = text.splitlines()[0][:300] if text else repr(exc)
                if isinstance(exc, psycopg.Error | OSError | TimeoutError):
                    logger.warning("detection on %s: %s", self.server_name, self.error)
                else:
                    logger.exception("detection on %s crashed", self.server_name)
            # Events come in bursts (a run writes several): one tick for all.
            await asyncio.sleep(self.settings.min_interval)

    async def tick(self) -> list[Transition]:
        """Read the server once, write the events of what started or ended.

        Returns the transitions written. Raises what the database raises; the
        open conditions change only once their events are written.
        """
        started = time.monotonic()
        overrides = await self.job_settings.for_server(self.server_name)
        async with self.pool.connection(timeout=5) as conn:
            if not self._synced:
                self._open = await read_open(conn)
                self._synced = True
                self._viewed = None
                # What this instance saw before a pause is no longer news.
                self._no_agent_since = None
                logger.info(
                    "detection on %s: %d open conditions",
                    self.server_name,
                    len(self._open),
                )
            snap = await read_snapshot(conn, self.settings)
            if any(a.alive for a in snap.agents):
                self._no_agent_since = None
                self._last_agent = next(a for a in snap.agents if a.alive)
            elif self._no_agent_since is None:
                self._no_agent_since = time.monotonic()
            no_agent_for = (
                None
                if self._no_agent_since is None
                else time.monotonic() - self._no_agent_since
            )
            found = evaluate(
                snap,
                set(self._open),
                self.settings,
                overrides,
                no_agent_for,
                self._last_agent,
            )
            items = transitions(self._open, found, snap)
            written = await write_transitions(conn, items) if items else []
        for event_id, at, item in written:
            if item.status == "end":
                self._open.pop(item.key, None)
            else:
                self._open[item.key] = Condition(
                    item.kind,
                    item.job_id,
                    item.run_id,
                    item.job_name,
                    at,
                    item.extra,
                    event_id,
                )
            logger.info(
                "server %s: %s %s%s",
                self.server_name,
                item.kind,
                item.status,
                f" (job {item.job_name or item.job_id})" if item.job_id else "",
            )
        self.agents = snap.agents
        self.checked_at = snap.now
        self.ticks += 1
        self.last_tick_seconds = time.monotonic() - started
        return items


class DetectCollector(Collector):
    """Prometheus figures of detection, read from the detectors at scrape time.

    ``pgagent_watch_health_open{server,kind}``: open conditions (as this
    instance knows them); ``pgagent_watch_detect_active{server}``: 1 where
    this instance detects; ``pgagent_watch_detect_tick_seconds{server}``: how
    long the last check took. Register it in the service's registry.
    """

    def __init__(self, detectors: Mapping[int, Detector]) -> None:
        self.detectors = detectors

    def collect(self) -> Iterator[Metric]:
        open_ = GaugeMetricFamily(
            "pgagent_watch_health_open",
            "Open health conditions by kind",
            labels=["server", "kind"],
        )
        active = GaugeMetricFamily(
            "pgagent_watch_detect_active",
            "1 where this instance detects for the server",
            labels=["server"],
        )
        tick = GaugeMetricFamily(
            "pgagent_watch_detect_tick_seconds",
            "Seconds the last health check of the server took",
            labels=["server"],
        )
        for detector in self.detectors.values():
            name = detector.server_name
            for kind, count in detector.counts().items():
                open_.add_metric([name, kind], count)
            active.add_metric([name], 1.0 if detector.active else 0.0)
            if detector.last_tick_seconds is not None:
                tick.add_metric([name], detector.last_tick_seconds)
        yield open_
        yield active
        yield tick


# The API: open conditions and agents of a server, and per-job thresholds.
router = APIRouter(tags=["health"])


class JobHealthSettings(BaseModel):
    """A job's own thresholds; null means the ``[detect]`` setting."""

    detect: bool = True
    overdue_grace: float | None = Field(default=None, ge=0, le=10**7)
    max_duration: float | None = Field(default=None, gt=0, le=10**7)


@router.get("/api/servers/{server_id}/health")
async def server_health(server_id: ServerIdPath, who: Who, service: ServiceDep) -> Any:
    """The open health conditions of a server, and its agents."""
    visible_server(service, server_id, who)
    detector = service.detectors.get(server_id)
    if detector is None:
        raise HTTPException(404, "health detection is off for this server")
    try:
        conditions = await detector.conditions()
        if detector.active and detector.checked_at is not None:
            agents = detector.agents
        else:
            async with detector.pool.connection(timeout=5) as conn:
                agents = await read_agents(conn)
    except Exception as exc:
        logger.warning("health of server %s: %s", server_id, exc)
        raise HTTPException(503, "the server cannot be read now") from None
    counts = Counter(c.kind for c in conditions)
    return jsonable(
        {
            "server_id": server_id,
            "detecting": detector.active,
            "checked_at": detector.checked_at,
            "error": detector.error,
            "counts": {kind: counts.get(kind, 0) for kind in DERIVED_KINDS},
            "conditions": [c.as_dict() for c in conditions],
            "agents": [a.as_dict() for a in agents],
        }
    )


@router.get("/api/servers/{server_id}/jobs/{job_id}/health-settings")
async def get_job_health_settings(
    server_id: ServerIdPath, job_id: JobIdPath, who: Who, service: ServiceDep
) -> JobHealthSettings:
    """A job's own thresholds (nulls where the defaults apply)."""
    visible_server(service, server_id, who)
    name = service.servers[server_id].config.name
    value = (await service.job_settings.for_server(name)).get(job_id, JobOverride())
    return JobHealthSettings(
        detect=value.detect,
        overdue_grace=value.overdue_grace,
        max_duration=value.max_duration,
    )


@router.put("/api/servers/{server_id}/jobs/{job_id}/health-settings")
async def put_job_health_settings(
    server_id: ServerIdPath,
    job_id: JobIdPath,
    body: JobHealthSettings,
    who: Who,
    service: ServiceDep,
    request: Request,
) -> JobHealthSettings:
    """Set a job's own thresholds; operators and administrators only (audited)."""
    visible_server(service, server_id, who)
    if not who.can_operate(server_id):
        await audit.record(
            service,
            who,
            "job.health_settings",
            request=request,
            server_id=server_id,
            target=f"job {job_id}",
            ok=False,
        )
        raise HTTPException(403, "operators and administrators only")
    if not service.state_ready.is_set():
        raise HTTPException(503, "the state database is not ready")
    server = service.servers[server_id]
    await service.job_settings.put(
        server.config.name,
        job_id,
        JobOverride(body.detect, body.overdue_grace, body.max_duration),
        who.name,
    )
    detector = service.detectors.get(server_id)
    if detector is not None:
        detector.poke()
    await audit.record(
        service,
        who,
        "job.health_settings",
        request=request,
        server_id=server_id,
        target=f"job {job_id}",
        detail=body.model_dump(mode="json"),
    )
    return body
