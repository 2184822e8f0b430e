"""The jobs API against the real cluster and the real pgAgent daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pgagent_watch import samples, users
from pgagent_watch.cluster import Cluster
from tests.fix_cluster import Running, running_service, settings_for, unique, until

# C7: Windows paths, quotes, markup and 30 kB of text, NUL-free.
C7_HEAD = (
    'C:\\Windows\\system32> copy "C:\\Program Files\\app\\it\'s.txt" D:\\\r\n'
    "<script>alert('x')</script> \"><img src=x onerror=alert(1)> https://example.org/\n"
    "tab\there & ampersand &amp; ünïcödé ✓ 𝄞\n"
)
C7_OUTPUT = C7_HEAD + ("0123456789abcdef" * 64 + "\n") * 30


@contextlib.asynccontextmanager
async def api(watch: Running) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends the CSRF token, as the page does, once /api/me has one."""
    async with httpx.AsyncClient(base_url=watch.url, timeout=30) as http:
        me = await http.get("/api/me")
        if me.status_code == 200 and me.json().get("csrf_token"):
            http.headers["X-CSRF-Token"] = me.json()["csrf_token"]
        yield http


async def wait_run(
    db: psycopg.Connection, job_id: int, limit: float = 60
) -> tuple[int, str]:
    """The first finished run of a job: (jlgid, status)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT jlgid, jlgstatus FROM pgagent.pga_joblog"
            " WHERE jlgjobid = %s AND jlgstatus <> 'r' ORDER BY jlgid DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        if row:
            return int(row[0]), str(row[1])
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish a run")


def delete_runs(db: psycopg.Connection, job_id: int) -> None:
    """Remove what insert_runs wrote (it has no step runs to cascade to)."""
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("DELETE FROM pgagent.pga_joblog WHERE jlgjobid = %s", (job_id,))


def insert_runs(db: psycopg.Connection, job_id: int, n: int) -> None:
    """n finished runs of a job written straight into pga_joblog, triggers off.

    Capture's triggers are not the subject here, and a million events
    would only slow the test.
    """
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(
            "INSERT INTO pgagent.pga_joblog"
            " (jlgjobid, jlgstatus, jlgstart, jlgduration)"
            " SELECT %s, CASE WHEN g %% 10 = 0 THEN 'f' ELSE 's' END,"
            " now() - (%s - g) * interval '1 minute', (g %% 7) * interval '1 second'"
            " FROM generate_series(1, %s) g",
            (job_id, n, n),
        )


async def test_a_step_output_downloads_exactly_as_written(
    watch: Running,
    db: psycopg.Connection,
    make_job: Callable[..., int],
    live_agent: Any,
    cluster: Cluster,
) -> None:
    source = Path(cluster.folder) / f"c7-{os.getpid()}.txt"
    source.write_bytes(C7_OUTPUT.encode("utf-8"))
    source.chmod(0o644)
    job_id = make_job([samples.Step("1 print", f"cat '{source}'; exit 3", kind="b")])
    samples.run_now(db, job_id)
    run_id, status = await wait_run(db, job_id)
    assert status == "f"
    stored = db.execute(
        "SELECT jslid, jsloutput FROM pgagent.pga_jobsteplog WHERE jsljlgid = %s",
        (run_id,),
    ).fetchone()
    assert stored is not None
    step_run_id, output = stored
    assert output == C7_OUTPUT  # pgAgent keeps the bytes as they were written

    async with api(watch) as http:
        base = f"/api/servers/1/jobs/{job_id}/runs/{run_id}"
        run = (await http.get(base)).json()
        step = run["step_runs"][0]
        assert step["result"] == 3 and step["status"] == "f"
        assert step["output"] == output and not step["output_truncated"]
        got = await http.get(f"{base}/step-runs/{step_run_id}/output")
    assert got.status_code == 200
    assert got.headers["content-type"] == "text/plain; charset=utf-8"
    assert got.headers["content-disposition"].startswith("attachment; filename=")
    assert got.content == output.encode("utf-8")
    assert len(got.content) > 30_000


async def test_runs_page_newest_first_without_overlap(
    watch: Running, db: psycopg.Connection, make_job: Callable[..., int]
) -> None:
    job_id = make_job([samples.Step("1 x", "SELECT 1")])
    insert_runs(db, job_id, 120)
    seen: list[int] = []
    before: int | None = None
    pages = 0
    async with api(watch) as http:
        while True:
            params: dict[str, Any] = {"limit": 50}
            if before is not None:
                params["before"] = before
            page = (
                await http.get(f"/api/servers/1/jobs/{job_id}/runs", params=params)
            ).json()
            seen.extend(r["run_id"] for r in page["runs"])
            pages += 1
            before = page["next_before"]
            if before is None:
                break
    assert pages == 3
    assert len(seen) == 120 and seen == sorted(set(seen), reverse=True)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/servers/1/jobs/0", 422),
        ("/api/servers/1/jobs/2147483648", 422),
        ("/api/servers/1/jobs/abc", 422),
        ("/api/servers/1/jobs/2147483000", 404),
        ("/api/servers/99/jobs/1", 404),
        ("/api/servers/1/jobs/2147483000/runs", 404),
        ("/api/servers/1/jobs/1/runs?before=0", 422),
        ("/api/servers/1/jobs/1/runs?limit=100000", 422),
        ("/api/servers/1/jobs/1/runs/2147483000", 404),
        ("/api/servers/1/jobs/1/runs/1/step-runs/2147483000/output", 404),
        ("/api/servers/1/trends?tz=Not/AZone", 422),
        ("/api/servers/1/trends?from=2026-02-01&to=2026-01-01", 422),
        ("/api/servers/1/trends?days=9999", 422),
    ],
)
async def test_bad_ids_and_parameters_are_4xx(
    watch: Running, path: str, code: int
) -> None:
    async with api(watch) as http:
        got = await http.get(path)
    assert got.status_code == code, got.text


async def test_a_run_of_another_job_is_not_found(
    watch: Running, db: psycopg.Connection, make_job: Callable[..., int]
) -> None:
    mine = make_job([samples.Step("1 x", "SELECT 1")])
    other = make_job([samples.Step("1 x", "SELECT 1")])
    insert_runs(db, other, 1)
    row = db.execute(
        "SELECT max(jlgid) FROM pgagent.pga_joblog WHERE jlgjobid = %s", (other,)
    ).fetchone()
    assert row is not None
    async with api(watch) as http:
        got = await http.get(f"/api/servers/1/jobs/{mine}/runs/{row[0]}")
    assert got.status_code == 404


@pytest.mark.slow
async def test_history_stays_fast_on_a_job_with_a_million_runs(
    watch: Running, db: psycopg.Connection, make_job: Callable[..., int]
) -> None:
    job_id = make_job([samples.Step("1 x", "SELECT 1")])
    insert_runs(db, job_id, 1_000_000)
    try:
        db.execute("ANALYZE pgagent.pga_joblog")
        async with api(watch) as http:
            url = f"/api/servers/1/jobs/{job_id}/runs"
            first = (await http.get(url, params={"limit": 50})).json()
            timings = []
            before = first["next_before"]
            for _ in range(5):
                start = time.perf_counter()
                page = (
                    await http.get(url, params={"limit": 50, "before": before})
                ).json()
                timings.append(time.perf_counter() - start)
                before = page["next_before"]
            # Deep in the history: the 900,000th run (once to warm the cache).
            await http.get(url, params={"limit": 50, "before": before - 900_000})
            start = time.perf_counter()
            deep = await http.get(url, params={"limit": 50, "before": before - 900_000})
            timings.append(time.perf_counter() - start)
            start = time.perf_counter()
            detail = await http.get(f"/api/servers/1/jobs/{job_id}")
            timings.append(time.perf_counter() - start)
            other = {}
            for what, path in [
                ("summary", "/api/servers/1/jobs-summary"),
                ("job trends 30 d", f"/api/servers/1/jobs/{job_id}/trends?days=30"),
                ("server trends 90 d", "/api/servers/1/trends?days=90"),
            ]:
                start = time.perf_counter()
                assert (await http.get(path)).status_code == 200
                other[what] = round((time.perf_counter() - start) * 1000)
        assert len(deep.json()["runs"]) == 50 and detail.status_code == 200
        print(f"runs pages on 1M runs: {[round(t * 1000, 1) for t in timings]} ms")
        print(f"on 1M runs, in ms: {other}")
        assert max(timings) < 0.25
        assert max(other.values()) < 5000
    finally:
        # A million rows would slow every later test that reads the history.
        delete_runs(db, job_id)


async def test_run_now_enable_and_disable_do_what_they_say(
    watch: Running,
    db: psycopg.Connection,
    make_job: Callable[..., int],
    live_agent: Any,
) -> None:
    job_id = make_job([samples.Step("1 x", "SELECT 1")])
    base = f"/api/servers/1/jobs/{job_id}"
    async with api(watch) as http:
        got = await http.post(f"{base}/run-now")
        assert got.status_code == 200, got.text
        assert "will start" in got.json()["message"]
        run_id, status = await wait_run(db, job_id)
        assert status == "s"
        again = await http.post(f"{base}/runs/{run_id}/retry")
        assert again.status_code == 409 and "did not fail" in again.json()["detail"]

        off = await http.post(f"{base}/disable")
        assert off.json()["enabled"] is False
        refused = await http.post(f"{base}/run-now")
        assert refused.status_code == 409 and "disabled" in refused.json()["detail"]
        on = await http.post(f"{base}/enable")
        assert on.json() == {
            "job_id": job_id,
            "enabled": True,
            "message": on.json()["message"],
        }
    row = db.execute(
        "SELECT jobenabled FROM pgagent.pga_job WHERE jobid = %s", (job_id,)
    ).fetchone()
    assert row == (True,)


async def test_a_viewer_is_refused_actions_with_a_clear_403(
    cluster: Cluster, db: psycopg.Connection, make_job: Callable[..., int]
) -> None:
    # A state database of its own, so that the users made here do not sign
    # everybody else out of the shared cluster.
    state_db = "page_viewer_" + str(os.getpid())
    db.execute(f'CREATE DATABASE "{state_db}"')
    settings = settings_for(cluster, state_dsn=cluster.dsn(dbname=state_db))
    job_id = make_job([samples.Step("1 x", "SELECT 1")])
    async with running_service(settings) as watch:
        await until(lambda: watch.service.state_ready.is_set(), "state ready")
        async with watch.service.state_pool.connection() as conn:
            user_id = await users.create_user(conn, "vera", "viewer")
            token = await users.create_token(conn, user_id)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            base_url=watch.url, headers=headers, timeout=30
        ) as http:
            assert (await http.get(f"/api/servers/1/jobs/{job_id}")).status_code == 200
            for action in ("run-now", "disable", "enable"):
                got = await http.post(f"/api/servers/1/jobs/{job_id}/{action}")
                assert got.status_code == 403
                assert "vera (viewer) may not" in got.json()["detail"]
    row = db.execute(
        "SELECT jobenabled, jobnextrun > now() - interval '1 minute'"
        " FROM pgagent.pga_job WHERE jobid = %s",
        (job_id,),
    ).fetchone()
    assert row is not None and row[0] is True


async def test_trends_count_runs_per_day_and_export_csv(
    watch: Running, db: psycopg.Connection, make_job: Callable[..., int]
) -> None:
    job_id = make_job([samples.Step("1 x", "SELECT 1")], name=unique("trend"))
    insert_runs(db, job_id, 30)  # the last 30 minutes; every 10th failed
    today = datetime.now(UTC).date()
    async with api(watch) as http:
        got = (
            await http.get(f"/api/servers/1/jobs/{job_id}/trends", params={"days": 7})
        ).json()
        assert len(got["days"]) == 7 and got["days"][-1]["day"] <= today.isoformat()
        assert got["total"]["runs"] == 30 and got["total"]["failed"] == 3
        assert got["total"]["failure_rate"] == 0.1
        assert got["total"]["p95"] >= got["total"]["p50"]
        server = (await http.get("/api/servers/1/trends", params={"days": 14})).json()
        assert len(server["days"]) == 14
        assert (
            any(j["job_id"] == job_id for j in server["most_failing"])
            or len(server["most_failing"]) == 10
        )
        start = (today - timedelta(days=2)).isoformat()
        csv = await http.get(
            f"/api/servers/1/jobs/{job_id}/trends",
            params={"from": start, "to": today.isoformat(), "format": "csv"},
        )
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0] == "day,runs,succeeded,failed,aborted,running,failure_rate,p50,p95"
    assert len(lines) == 4


async def test_a_megabyte_of_output_comes_over_http_never_on_the_socket(
    watch: Running,
    db: psycopg.Connection,
    make_job: Callable[..., int],
    live_agent: Any,
    client_factory: Callable[..., Any],
) -> None:
    # C15: the socket carries statuses; the output is fetched when wanted.
    client = await client_factory(watch.url)
    await client.call("start_job_status_listener", {"sid": 1})
    marker = "MARKER-" + unique("c15")
    script = (
        f"i=0; while [ $i -lt 20000 ]; do echo '{marker} {'x' * 40} '$i; "
        "i=$((i+1)); done"
    )
    job_id = make_job([samples.Step("1 loud", script, kind="b")])
    samples.run_now(db, job_id)
    await client.wait_for(
        lambda c: any(
            u["job_id"] == job_id and u["kind"] == "run" and u["status"] == "s"
            for u in c.updates()
        ),
        "the run to succeed",
        limit=60,
    )
    assert marker not in repr(client.received)
    row = db.execute(
        "SELECT r.jlgid, s.jslid, octet_length(s.jsloutput)"
        " FROM pgagent.pga_joblog r JOIN pgagent.pga_jobsteplog s"
        " ON s.jsljlgid = r.jlgid WHERE r.jlgjobid = %s",
        (job_id,),
    ).fetchone()
    assert row is not None and row[2] > 1_000_000
    run_id, step_run_id, size = row
    async with api(watch) as http:
        base = f"/api/servers/1/jobs/{job_id}/runs/{run_id}"
        run = (await http.get(base)).json()
        assert run["step_runs"][0]["output_truncated"] is True
        assert run["step_runs"][0]["output_bytes"] == size
        whole = await http.get(f"{base}/step-runs/{step_run_id}/output")
    assert len(whole.content) == size and whole.text.count(marker) == 20000


async def test_a_schedule_pgagent_cannot_compute_does_not_hide_the_job(
    watch: Running, db: psycopg.Connection, make_job: Callable[..., int]
) -> None:
    # pga_next_schedule builds "YYYY-2-30" for "the 30th, in February" and
    # raises; the job's page still opens, and says so.
    job_id = make_job([samples.Step("1 x", "SELECT 1")], enabled=False)
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(
            "INSERT INTO pgagent.pga_schedule (jscjobid, jscname, jscminutes,"
            " jscmonthdays, jscmonths) VALUES (%s, 'never', %s, %s, %s)",
            (
                job_id,
                [m == 0 for m in range(60)],
                [d == 29 for d in range(32)],
                [m == 1 for m in range(12)],
            ),
        )
    async with api(watch) as http:
        got = await http.get(f"/api/servers/1/jobs/{job_id}")
    assert got.status_code == 200, got.text
    (schedule,) = got.json()["schedules"]
    assert schedule["next_run"] is None
    assert "out of range" in schedule["next_run_error"]
    assert schedule["words"].startswith("every hour, on the 30th day of the month")
