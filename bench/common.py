"""What every benchmark shares: its cluster, its processes, the writer, the stats."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pgagent_watch import capture, samples
from pgagent_watch.cluster import Cluster, free_port
from pgagent_watch.demo import prepare_database


class BenchError(RuntimeError):
    """A benchmark could not run (a process died, a wait ran out)."""


class Proc:
    """A helper process of ``bench.procs``, talked to in JSON lines."""

    def __init__(self, role: str, *args: str, ready: bool = False) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.procs", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        if ready:
            self.read(timeout=60)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdout is not None
        # The helpers answer each command with one line, so nothing else
        # waits in the buffer; a dead one ends the stream.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise BenchError(f"{self.role} gave no answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"{self.role} exited ({self.proc.poll()})")
        return dict(json.loads(line))

    def ask(self, cmd: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout=600)

    gc_log: Path | None = None

    def gc_pause(self, since: float) -> float | None:
        """The longest garbage-collection pause (ms) of the service since then.

        None for a process that does not log its collections (the baseline).
        """
        if self.gc_log is None:
            return None
        if not self.gc_log.exists():
            return 0.0
        longest = 0.0
        for line in self.gc_log.read_text().splitlines():
            entry = json.loads(line)
            if entry["t"] >= since:
                longest = max(longest, float(entry["ms"]))
        return longest

    def rss(self) -> int:
        return _status_kb(self.pid, "VmRSS") * 1024

    def cpu(self) -> float:
        """Seconds of CPU the process has used: a figure the shared machine
        disturbs less than the wall clock."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss(self) -> int:
        return _status_kb(self.pid, "VmHWM") * 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} for pid {pid}")


@dataclass
class Bed:
    """A throwaway cluster with pgagent and capture, and a job to write runs of."""

    cluster: Cluster
    job_id: int
    step_ids: list[int]

    @property
    def dsn(self) -> str:
        return str(self.cluster.dsn())

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)


@contextlib.contextmanager
def bed(steps: int = 2) -> Iterator[Bed]:
    """A fresh cluster for one benchmark, destroyed afterwards."""
    cluster = Cluster()
    try:
        cluster.start()
        prepare_database(cluster.dsn())
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            job_id = samples.create_job(
                conn,
                "bench",
                [
                    samples.Step(f"{i} step", code="SELECT 1")
                    for i in range(1, steps + 1)
                ],
            )
            rows = conn.execute(
                "SELECT jstid FROM pgagent.pga_jobstep WHERE jstjobid = %s"
                " ORDER BY jstname",
                (job_id,),
            ).fetchall()
        yield Bed(cluster, job_id, [int(r[0]) for r in rows])
    finally:
        cluster.destroy()


@contextlib.contextmanager
def service(
    b: Bed, *, deflate: bool = False, bare: bool = False
) -> Iterator[tuple[Proc, str]]:
    """The service (or the bare baseline) in its own process; yields it and its URL."""
    port = free_port()
    args = ["--dsn", b.dsn, "--port", str(port)]
    if deflate:
        args.append("--deflate")
    gc_log = b.cluster.folder / f"gc-{port}.jsonl"
    if not bare:
        args += ["--gc-log", str(gc_log)]
    proc = Proc("bare-sio" if bare else "serve", *args, ready=True)
    proc.gc_log = None if bare else gc_log
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@contextlib.contextmanager
def helper(role: str, b: Bed | None = None) -> Iterator[Proc]:
    args = ["--dsn", b.dsn] if b is not None else []
    proc = Proc(role, *args)
    try:
        yield proc
    finally:
        proc.stop()


def healthz(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
        return dict(json.load(resp))


def listener_events(url: str) -> int:
    return int(healthz(url)["servers"]["1"]["events"])


# --- the writer ----------------------------------------------------------------

RUN_INSERT = (
    "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus) VALUES (%s, 'r')"
    " RETURNING jlgid"
)
RUN_END = (
    "UPDATE pgagent.pga_joblog SET jlgstatus = 's', jlgduration = now() - jlgstart"
    " WHERE jlgid = %s"
)
STEP_INSERT = (
    "INSERT INTO pgagent.pga_jobsteplog (jsljlgid, jsljstid, jslstatus)"
    " VALUES (%s, %s, 'r') RETURNING jslid"
)
STEP_END = (
    "UPDATE pgagent.pga_jobsteplog SET jslstatus = 's', jslresult = 0,"
    " jslduration = now() - jslstart, jsloutput = '' WHERE jslid = %s"
)
CHANGES_PER_RUN = 6


class Writer:
    """Writes runs as pgAgent does: each status change its own transaction.

    A run is: insert the run (``r``), insert and finish two step runs, finish
    the run (``s``): six status changes, six commits.
    """

    def __init__(self, b: Bed) -> None:
        self.bed = b
        self.conn = b.connect()
        self.durations: list[float] = []
        # The row the last statement returned: the ids of the run and step run.
        self.last: Any = None

    def close(self) -> None:
        self.conn.close()

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        t = time.perf_counter()
        cur = self.conn.execute(sql, params, prepare=True)
        row = cur.fetchone() if cur.description else None
        self.durations.append(time.perf_counter() - t)
        return row

    def changes(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """The statements of runs, for ever; ids flow back through ``last``."""
        steps = self.bed.step_ids[:2]
        while True:
            yield RUN_INSERT, (self.bed.job_id,)
            run_id = self.last[0]
            for step in steps:
                yield STEP_INSERT, (run_id, step)
                step_run = self.last[0]
                yield STEP_END, (step_run,)
            yield RUN_END, (run_id,)

    def write(self, n: int, rate: float | None = None) -> float:
        """Commit n status changes, at ``rate`` a second or as fast as possible.

        Returns the rate achieved (changes a second).
        """
        gen = self.changes()
        start = time.perf_counter()
        for i in range(n):
            if rate:
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sql, params = next(gen)
            self.last = self._one(sql, params)
        elapsed = time.perf_counter() - start
        return n / elapsed if elapsed > 0 else float("inf")

    def burst(self, n: int, chunk: int = 500) -> float:
        """Commit n status changes as fast as possible, ``chunk`` to a commit.

        Half are runs inserted as ``r``, half the same runs finished. Returns
        the seconds it took.
        """
        start = time.perf_counter()
        left = n
        while left > 0:
            k = min(chunk, max(1, left // 2))
            ids = self.conn.execute(
                "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus)"
                " SELECT %s, 'r' FROM generate_series(1, %s) RETURNING jlgid",
                (self.bed.job_id, k),
            ).fetchall()
            left -= k
            if left <= 0:
                break
            done = min(k, left)
            self.conn.execute(
                "UPDATE pgagent.pga_joblog SET jlgstatus = 's',"
                " jlgduration = now() - jlgstart WHERE jlgid = ANY(%s)",
                ([r[0] for r in ids[:done]],),
            )
            left -= done
        return time.perf_counter() - start


def floor_latencies(
    conn: psycopg.Connection[Any], arrivals: list[list[float]]
) -> list[float]:
    """Milliseconds from each event's stamp to its arrival at the bare LISTEN."""
    if not arrivals:
        return []
    ids = [int(a[0]) for a in arrivals]
    rows = conn.execute(
        "SELECT id, extract(epoch FROM at)::float8 FROM pgagent_watch.event"
        " WHERE id = ANY(%s)",
        (ids,),
    ).fetchall()
    at = {int(r[0]): float(r[1]) for r in rows}
    return [(t - at[int(i)]) * 1000 for i, t in arrivals if int(i) in at]


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    values = sorted(values)
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    n = len(values)
    return {
        "n": n,
        "p50": values[min(n - 1, int(0.50 * n))],
        "p99": values[min(n - 1, int(0.99 * n))],
        "max": values[-1],
    }


def set_capture(conn: psycopg.Connection[Any], on: bool) -> None:
    if on:
        capture.install(conn)
    else:
        capture.uninstall(conn)


def load() -> str:
    """The machine's load, for the record: the machine is shared."""
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "?"
