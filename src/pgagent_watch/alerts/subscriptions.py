"""Subscriptions: (user, server, one job or every job, statuses, channel).

A user sees and changes only their own. The statuses are words, the same in
the API, the socket event and the outbox; pgAgent's run letters are accepted
as aliases (``f`` and ``i`` are ``failed``, ``s`` ``succeeded``, ``d``
``aborted``, ``r`` ``started``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

import psycopg

from ..errors import PgAgentWatchError

AnyConn = psycopg.AsyncConnection[Any]

RUN_STATUSES = ("failed", "succeeded", "aborted", "started")
DERIVED_STATUSES = ("stuck", "overdue", "agent_down", "flapping")
STATUSES = RUN_STATUSES + DERIVED_STATUSES
DEFAULT_STATUSES = ("failed",)
_LETTERS = {"f": "failed", "i": "failed", "s": "succeeded", "d": "aborted"}
_LETTERS["r"] = "started"
EMAIL = "email"


class SubscriptionError(PgAgentWatchError, ValueError):
    """A subscription that cannot be accepted; ``code`` is the socket's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Subscription(TypedDict):
    id: int
    server_id: int
    job_id: int | None
    statuses: list[str]
    channel: str


def run_status_word(kind: str, status: str | None) -> str | None:
    """The subscription word of an event, or None if no one subscribes to it.

    Runs map by their letter; derived events (kind ``stuck``, ...) alert when
    they start, and again when they end ("back to normal").
    """
    if kind == "run" and status is not None and status in _LETTERS:
        return _LETTERS[status]
    if kind in DERIVED_STATUSES and status in ("start", "end"):
        return kind
    return None


def check_statuses(statuses: Any) -> list[str]:
    """Normalise a list of statuses; raise SubscriptionError for anything else."""
    if statuses is None:
        return list(DEFAULT_STATUSES)
    if not isinstance(statuses, list | tuple) or not statuses:
        raise SubscriptionError(
            "BAD_REQUEST", "'statuses' must be a non-empty list of statuses"
        )
    out: list[str] = []
    for value in statuses:
        if not isinstance(value, str):
            raise SubscriptionError("BAD_REQUEST", "a status is a string")
        word = _LETTERS.get(value, value)
        if word not in STATUSES:
            raise SubscriptionError(
                "BAD_REQUEST",
                f"unknown status {value[:20]!r}: one of {', '.join(STATUSES)}"
                " (or pgAgent's letters f, i, s, d, r)",
            )
        if word not in out:
            out.append(word)
    return out


def check_channel(channel: Any, channels: Iterable[str], email: str | None) -> str:
    """``email`` (the user's address) or the name of a configured channel."""
    if channel is None:
        channel = EMAIL
    if not isinstance(channel, str):
        raise SubscriptionError("BAD_REQUEST", "'channel' must be a string")
    if channel == EMAIL:
        if not email:
            raise SubscriptionError(
                "BAD_REQUEST", "your user has no e-mail address to send alerts to"
            )
        return channel
    if channel not in set(channels):
        known = ", ".join([EMAIL, *sorted(channels)])
        raise SubscriptionError(
            "BAD_REQUEST", f"unknown channel {channel[:40]!r}: one of {known}"
        )
    return channel


_COLUMNS = "id, server_id, job_id, statuses, channel"


def _row(row: Sequence[Any]) -> Subscription:
    return {
        "id": int(row[0]),
        "server_id": int(row[1]),
        "job_id": None if row[2] is None else int(row[2]),
        "statuses": list(row[3]),
        "channel": row[4],
    }


async def list_for_user(conn: AnyConn, user_id: int) -> list[Subscription]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM pgagent_watch.subscription"  # noqa: S608
        " WHERE user_id = %s ORDER BY server_id, job_id NULLS FIRST, id",
        (user_id,),
    )
    return [_row(r) for r in await cur.fetchall()]


async def upsert(
    conn: AnyConn,
    user_id: int,
    server_id: int,
    job_id: int | None,
    statuses: list[str],
    channel: str,
) -> Subscription:
    """Create or replace the subscription of this user to this target."""
    cur = await conn.execute(
        "INSERT INTO pgagent_watch.subscription"  # noqa: S608
        " (user_id, server_id, job_id, statuses, channel) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (user_id, server_id, (coalesce(job_id, 0)), channel)"
        " DO UPDATE SET statuses = EXCLUDED.statuses, changed_at = now()"
        f" RETURNING {_COLUMNS}",
        (user_id, server_id, job_id, statuses, channel),
    )
    row = await cur.fetchone()
    assert row is not None
    return _row(row)


async def delete(conn: AnyConn, user_id: int, subscription_id: int) -> bool:
    cur = await conn.execute(
        "DELETE FROM pgagent_watch.subscription WHERE id = %s AND user_id = %s",
        (subscription_id, user_id),
    )
    return cur.rowcount > 0


async def delete_target(
    conn: AnyConn, user_id: int, server_id: int, job_id: int | None, channel: str
) -> int:
    cur = await conn.execute(
        "DELETE FROM pgagent_watch.subscription WHERE user_id = %s"
        " AND server_id = %s AND coalesce(job_id, 0) = coalesce(%s, 0)"
        " AND channel = %s",
        (user_id, server_id, job_id, channel),
    )
    return cur.rowcount


async def job_exists(conn: AnyConn, job_id: int) -> bool:
    """Whether pgAgent has this job (read on the monitored server)."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pgagent.pga_job WHERE jobid = %s)", (job_id,)
    )
    row = await cur.fetchone()
    return bool(row and row[0])
