"""A throwaway PostgreSQL cluster and a real pgAgent daemon, for the demo and tests.

initdb, pg_ctl and postgres refuse to run as root. When we are root the cluster
runs as the ``postgres`` system user that Debian's package creates, and its
folder is handed to that user; otherwise it runs as the current user.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import PgAgentWatchError

logger = logging.getLogger("pgagent_watch.cluster")


class ClusterError(PgAgentWatchError, RuntimeError):
    """The throwaway cluster or the pgAgent daemon could not be started."""


def find_bindir() -> Path:
    """Return the folder of the PostgreSQL server binaries (initdb, pg_ctl).

    Raises ClusterError when no server binaries are installed.
    """
    explicit = os.environ.get("PGAGENT_WATCH_PG_BINDIR")
    candidates = [explicit] if explicit else []
    try:
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        )
        candidates.append(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    # Debian and Ubuntu keep the server binaries off PATH, one folder a major.
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists():
            return Path(folder)
    raise ClusterError(
        "PostgreSQL server binaries not found: install the 'postgresql' package "
        "or set PGAGENT_WATCH_PG_BINDIR"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[list[str], int | None, int | None]:
    """The command prefix, uid and gid under which the cluster must run."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root needs the 'postgres' system user "
            "(created by the postgresql package) to own the cluster"
        ) from None
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


class Cluster:
    """A PostgreSQL cluster in a temporary folder, on a private port.

    The socket lives in the cluster's own folder and the server listens on
    127.0.0.1 only, so it never collides with a server already on 5432.
    """

    def __init__(self, port: int | None = None, base: str | None = None) -> None:
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="pgagent-watch-", dir=base))
        self.data = self.folder / "data"
        self.logfile = self.folder / "postgres.log"
        self._prefix, self._uid, self._gid = _run_as()
        self.running = False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for a database of this cluster."""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres"

    def url(self, dbname: str = "postgres") -> str:
        """The same as dsn(), as a URL that psql accepts."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _pg(self, tool: str, *args: str, check: bool = True) -> None:
        cmd = [*self._prefix, str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise ClusterError(f"{tool} failed: {proc.stderr.strip() or proc.stdout}")

    def start(self) -> Cluster:
        """Create the cluster, start it and wait until it accepts connections."""
        if self._uid is not None:
            os.chown(self.folder, self._uid, self._gid or -1)
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# pgagent-watch throwaway cluster\n"
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.folder}'\n"
                "max_connections = 300\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "shared_buffers = 128MB\n"
                "log_min_messages = warning\n"
            )
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start (or restart after stop_server) the postmaster and wait for it."""
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "start")
        self.running = True

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the postmaster, keeping the data folder."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
        self.running = False

    def restart(self) -> None:
        """Restart PostgreSQL: every connection is dropped, the data stays."""
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-m",
            "fast",
            "-w",
            "restart",
        )
        self.running = True

    def destroy(self) -> None:
        """Stop the server and remove the folder."""
        if self.running:
            self.stop_server("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


class Agent:
    """A real pgAgent daemon in the foreground, polling often."""

    def __init__(self, dsn: str, poll_seconds: int = 1, logfile: Path | None = None):
        self.dsn = dsn
        self.poll_seconds = poll_seconds
        self.logfile = logfile or Path(
            tempfile.mkstemp(prefix="pgagent-", suffix=".log")[1]
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        path = shutil.which("pgagent") or "/usr/bin/pgagent"
        if not Path(path).exists():
            raise ClusterError("pgagent not found: install the 'pgagent' package")
        return path

    def start(self) -> Agent:
        """Start the daemon; it registers itself in pgagent.pga_jobagent."""
        cmd = [
            self.binary(),
            "-f",
            "-t",
            str(self.poll_seconds),
            "-l",
            "1",
            "-s",
            str(self.logfile),
            self.dsn,
        ]
        # Its own session, so that a Ctrl-C meant for us is not also its.
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, start_new_session=True
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """Stop the daemon with SIGTERM, then SIGKILL if it lingers."""
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        # The batch steps it started (a shell, its sleep) share its process
        # group: they must not outlive the daemon.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def kill(self) -> None:
        """Kill the daemon (and the batch steps it started) without warning."""
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def wait_until(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    """Poll a callable until it returns a true value or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False
