"""The service's own state database: users, subscriptions, the outbox, marks.

Each component keeps its schema as numbered SQL files in
``sql/state/<component>/NNN_name.sql``; ``migrate`` applies, in one
transaction per file, every file above the version recorded for that
component in ``pgagent_watch.version``. Adding a file is all a migration
takes, and components never touch each other's numbering.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg

logger = logging.getLogger("pgagent_watch.state")

_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Any constant: serialises migrations of concurrent instances.
_MIGRATE_LOCK = 0x70677773  # "pgws"


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped, by component then version."""
    root: Traversable = resources.files("pgagent_watch").joinpath("sql", "state")
    out: list[Migration] = []
    for folder in sorted(root.iterdir(), key=lambda t: t.name):
        if not folder.is_dir():
            continue
        for item in sorted(folder.iterdir(), key=lambda t: t.name):
            m = _FILE.match(item.name)
            if m:
                out.append(
                    Migration(folder.name, int(m.group(1)), item.name, item.read_text())
                )
    # "core" first: the others may refer to its tables.
    out.sort(key=lambda m: (m.component != "core", m.component, m.version))
    return out


_VERSION_TABLE = """
CREATE SCHEMA IF NOT EXISTS pgagent_watch;
CREATE TABLE IF NOT EXISTS pgagent_watch.version (
    component text PRIMARY KEY,
    version integer NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
"""


async def migrate(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Bring the state schema up to date; return the names of the files applied."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        await conn.execute(_VERSION_TABLE.encode())
        cur = await conn.execute(
            "SELECT component, version FROM pgagent_watch.version"
            " WHERE component LIKE 'state.%%'"
        )
        have = {row[0].removeprefix("state."): row[1] for row in await cur.fetchall()}
        for m in migrations():
            if m.version <= have.get(m.component, 0):
                continue
            async with conn.transaction():
                await conn.execute(m.sql.encode())
                await conn.execute(
                    "INSERT INTO pgagent_watch.version (component, version)"
                    " VALUES (%s, %s) ON CONFLICT (component) DO UPDATE"
                    " SET version = EXCLUDED.version, installed_at = now()",
                    (f"state.{m.component}", m.version),
                )
            applied.append(f"{m.component}/{m.name}")
    if applied:
        logger.info("state schema: applied %s", ", ".join(applied))
    return applied
