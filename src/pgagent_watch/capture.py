"""Install, upgrade and remove the capture schema in a monitored database."""

from __future__ import annotations

import logging
from datetime import timedelta
from importlib import resources

import psycopg

from .errors import CaptureError

logger = logging.getLogger("pgagent_watch.capture")

CAPTURE_VERSION = 1
CHANNEL = "pgagent_watch"
# Any constant: serialises concurrent installs against one database.
_INSTALL_LOCK = 0x70677761  # "pgwa"


def _script(name: str) -> str:
    return resources.files("pgagent_watch").joinpath("sql", name).read_text()


def installed_version(conn: psycopg.Connection) -> int | None:
    """The capture version installed in this database, or None."""
    row = conn.execute(
        "SELECT to_regclass('pgagent_watch.version') IS NOT NULL"
    ).fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute(
        "SELECT version FROM pgagent_watch.version WHERE component = 'capture'"
    ).fetchone()
    return int(row[0]) if row else None


def has_pgagent(conn: psycopg.Connection) -> bool:
    """Whether pgAgent's own schema (its job log tables) is in this database."""
    row = conn.execute(
        "SELECT to_regclass('pgagent.pga_joblog') IS NOT NULL"
    ).fetchone()
    return bool(row and row[0])


def install(conn: psycopg.Connection) -> int:
    """Create or upgrade the capture schema; return the version now installed.

    Idempotent: running it again, or over an older version, upgrades in place.
    Raises CaptureError when pgAgent's schema is missing or a newer capture
    version is already installed.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
        if not has_pgagent(conn):
            raise CaptureError(
                "pgAgent's schema is not in this database: run "
                "'CREATE EXTENSION pgagent' first"
            )
        before = installed_version(conn)
        if before is not None and before > CAPTURE_VERSION:
            raise CaptureError(
                f"capture version {before} is newer than this pgagent-watch "
                f"({CAPTURE_VERSION}); upgrade pgagent-watch"
            )
        conn.execute(_script("capture.sql").encode())
    logger.info("capture installed (version %s, was %s)", CAPTURE_VERSION, before)
    return CAPTURE_VERSION


def uninstall(conn: psycopg.Connection) -> None:
    """Remove the capture triggers, functions and event table.

    The schema itself goes too when nothing else of pgagent-watch is in it.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
        row = conn.execute(
            "SELECT to_regclass('pgagent_watch.version') IS NOT NULL"
        ).fetchone()
        if not row or not row[0]:
            return  # nothing of ours here (or removed already)
        conn.execute(_script("uninstall.sql").encode())
        left = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = 'pgagent_watch'"
            " AND c.relname <> 'version' AND c.relkind IN ('r', 'p')"
        ).fetchone()
        others = conn.execute("SELECT count(*) FROM pgagent_watch.version").fetchone()
        if left and others and left[0] == 0 and others[0] == 0:
            conn.execute("DROP SCHEMA pgagent_watch CASCADE")
    logger.info("capture removed")


PRUNE_SQL = "DELETE FROM pgagent_watch.event WHERE at < now() - %s"


def prune(conn: psycopg.Connection, retention: timedelta) -> int:
    """Delete events older than the retention; return how many went."""
    return conn.execute(PRUNE_SQL, (retention,)).rowcount
