"""The dispatcher: groups waiting alerts per recipient and channel, then sends.

Per group, the first alert after a quiet spell leaves at once (after
``settle`` seconds, so that a burst leaves as one digest); after a digest,
alerts wait until ``window`` seconds have passed or ``batch`` of them are
waiting. Any number of dispatchers may share one outbox:

- a group is claimed with its ``alert_group`` row locked (SKIP LOCKED), so
  two instances never start two digests of one group at once;
- alert rows are claimed by one statement, ``UPDATE ... WHERE id IN (SELECT
  ... FOR UPDATE SKIP LOCKED) RETURNING``, so no row is in two digests;
- a claim older than ``claim_timeout`` belongs to a dispatcher that died and
  is taken back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from ..config import AlertSettings
from . import digest
from .channels import Channel, DeliveryError, Message

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger("pgagent_watch.alerts")

AnyConn = psycopg.AsyncConnection[Any]

_RECLAIM = """
UPDATE pgagent_watch.alert SET state = 'pending', claimed_by = NULL
WHERE state = 'sending' AND claimed_at < now() - make_interval(secs => %s)
"""

_GROUPS = """
SELECT a.recipient, a.channel, count(*) AS waiting, min(a.created_at) AS oldest,
       g.last_sent_at, g.retry_at, now() AS now
FROM pgagent_watch.alert a
LEFT JOIN pgagent_watch.alert_group g USING (recipient, channel)
WHERE a.state = 'pending' AND a.not_before <= now()
GROUP BY a.recipient, a.channel, g.last_sent_at, g.retry_at
"""

_PRUNE = """
DELETE FROM pgagent_watch.alert
WHERE state IN ('sent', 'failed', 'dead')
  AND created_at < now() - make_interval(secs => %s)
"""

_NEXT_NOT_BEFORE = """
SELECT min(not_before) - now() FROM pgagent_watch.alert
WHERE state = 'pending' AND not_before > now()
"""

_CLAIM = """
UPDATE pgagent_watch.alert
SET state = 'sending', claimed_at = now(), claimed_by = %(me)s,
    attempts = attempts + 1
WHERE id IN (
    SELECT id FROM pgagent_watch.alert
    WHERE recipient = %(recipient)s AND channel = %(channel)s
      AND state = 'pending' AND not_before <= now()
    ORDER BY id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED)
RETURNING id, recipient, channel, server_id, server_name, event_id, status,
    job_id, job_name, run_id, event_at, duration, detail, attempts
"""


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def backoff(settings: AlertSettings, failures: int) -> float:
    """Seconds before the next try after ``failures`` failures in a row."""
    return float(
        min(settings.backoff_max, settings.backoff_initial * 2 ** max(0, failures - 1))
    )


def quiet_until(settings: AlertSettings, now: datetime) -> datetime | None:
    """The end of the quiet hours if ``now`` lies inside them, else None."""
    if not settings.quiet_hours:
        return None
    start_s, end_s = settings.quiet_hours.split("-")
    start, end = time.fromisoformat(start_s), time.fromisoformat(end_s)
    local = now.astimezone(ZoneInfo(settings.quiet_timezone))
    t = local.timetz().replace(tzinfo=None)
    inside = start <= t < end if start <= end else (t >= start or t < end)
    if not inside:
        return None
    end_at = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if end_at <= local:
        end_at += timedelta(days=1)
    return end_at


class Dispatcher:
    """Sends the outbox's alerts through their channels; one per process."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: AlertSettings,
        channels: dict[str, Channel],
        *,
        public_url: str | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.channels = channels
        self.public_url = public_url
        self.ready = ready
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.domain = socket.getfqdn() or "localhost"
        self._wake = asyncio.Event()
        self.digests = 0
        self.failures = 0
        self.last_error: str | None = None
        # On shutdown, how long a delivery in flight may take to finish.
        self.grace = 10.0
        self._pruned_at = -float("inf")

    def poke(self) -> None:
        """New alerts are waiting: look now."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch until cancelled; a failing tick is logged and retried."""
        if self.ready is not None:
            await self.ready.wait()
        while True:
            wait = self.settings.poll_interval
            try:
                wait = min(wait, await self.tick())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("alert dispatch failed: %s", exc)
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.05, wait))
            except TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> float:
        """Send every group that is due; return seconds until the next may be."""
        async with self.pool.connection(timeout=10) as conn:
            await conn.execute(_RECLAIM, (self.settings.claim_timeout,))
            if loop_time() - self._pruned_at > 3600:
                self._pruned_at = loop_time()
                pruned = await conn.execute(
                    _PRUNE, (self.settings.retention_days * 86400,)
                )
                if pruned.rowcount:
                    logger.info("pruned %d old alerts", pruned.rowcount)
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_GROUPS)
            groups = await cur.fetchall()
            row = await (await conn.execute(_NEXT_NOT_BEFORE)).fetchone()
        soonest = self.settings.poll_interval
        if row and row[0] is not None:
            soonest = min(soonest, row[0].total_seconds())
        due: list[tuple[str, str]] = []
        for g in groups:
            at = self._due_at(g)
            wait = (at - g["now"]).total_seconds()
            if wait <= 0:
                due.append((g["recipient"], g["channel"]))
            else:
                soonest = min(soonest, wait)
        if due:
            limit = asyncio.Semaphore(8)

            async def one(recipient: str, channel: str) -> None:
                async with limit:
                    await self._send_group(recipient, channel)

            results = await asyncio.gather(
                *(one(r, c) for r, c in due), return_exceptions=True
            )
            for result in results:
                if isinstance(result, Exception):
                    logger.warning("alert group failed: %s", result)
            soonest = 0.05
        return soonest

    def _due_at(self, g: dict[str, Any]) -> datetime:
        """When a group may leave: settle, window (unless a batch is full), retry."""
        at: datetime = g["oldest"] + timedelta(seconds=self.settings.settle)
        if g["last_sent_at"] is not None and g["waiting"] < self.settings.batch:
            at = max(at, g["last_sent_at"] + timedelta(seconds=self.settings.window))
        if g["retry_at"] is not None:
            at = max(at, g["retry_at"])
        quiet = quiet_until(self.settings, max(at, g["now"]))
        if quiet is not None:
            at = max(at, quiet)
        return at

    async def _claim(
        self, conn: AnyConn, recipient: str, channel: str
    ) -> tuple[list[dict[str, Any]], Any]:
        """Claim a due digest's rows, the group locked; [] if not ours or not due."""
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO pgagent_watch.alert_group (recipient, channel)"
                " VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (recipient, channel),
            )
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT g.last_sent_at, g.retry_at, now() AS now,"
                " (SELECT count(*) FROM pgagent_watch.alert a"
                "  WHERE a.recipient = g.recipient AND a.channel = g.channel"
                "  AND a.state = 'pending' AND a.not_before <= now()) AS waiting,"
                " (SELECT min(created_at) FROM pgagent_watch.alert a"
                "  WHERE a.recipient = g.recipient AND a.channel = g.channel"
                "  AND a.state = 'pending' AND a.not_before <= now()) AS oldest"
                " FROM pgagent_watch.alert_group g"
                " WHERE recipient = %s AND channel = %s FOR UPDATE SKIP LOCKED",
                (recipient, channel),
            )
            group = await cur.fetchone()
            # Locked: another dispatcher is claiming this group right now.
            if group is None or not group["waiting"]:
                return [], None
            if self._due_at(group) > group["now"]:
                return [], None
            await cur.execute(
                _CLAIM,
                {
                    "me": self.me,
                    "recipient": recipient,
                    "channel": channel,
                    "batch": self.settings.batch,
                },
            )
            rows = await cur.fetchall()
            if rows:
                await conn.execute(
                    "UPDATE pgagent_watch.alert_group SET last_sent_at = now()"
                    " WHERE recipient = %s AND channel = %s",
                    (recipient, channel),
                )
            return rows, group["last_sent_at"]

    async def _send_group(self, recipient: str, channel_name: str) -> None:
        async with self.pool.connection(timeout=10) as conn:
            rows, previous = await self._claim(conn, recipient, channel_name)
        if not rows:
            return
        ids = [r["id"] for r in rows]
        message = digest.build(rows, self.public_url, self.domain)
        attempt = asyncio.ensure_future(self._attempt(channel_name, recipient, message))
        try:
            outcome = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # Shutting down: a delivery in flight may finish (for a bounded
            # time) and be recorded, so that it is not sent again after the
            # restart; one that does not finish gives its rows back.
            try:
                outcome = await asyncio.wait_for(attempt, self.grace)
            except (asyncio.CancelledError, TimeoutError):
                async with self.pool.connection(timeout=5) as conn:
                    await self._release(conn, ids, "interrupted by shutdown", previous)
                raise asyncio.CancelledError from None
            await self._record(recipient, channel_name, ids, message, outcome, previous)
            raise
        await self._record(recipient, channel_name, ids, message, outcome, previous)

    async def _attempt(
        self, channel_name: str, recipient: str, message: Message
    ) -> str | DeliveryError:
        """The server's answer, or the DeliveryError; never raises otherwise."""
        channel = self.channels.get(channel_name)
        if channel is None:
            return DeliveryError(
                f"channel {channel_name!r} is not configured", permanent=True
            )
        # A send must end well before its claim could be taken back.
        limit = self.settings.claim_timeout / 2
        try:
            return await asyncio.wait_for(channel.send(recipient, message), limit)
        except DeliveryError as exc:
            return exc
        except TimeoutError:
            return DeliveryError(f"channel {channel_name}: no answer in {limit:g} s")
        except Exception as exc:
            logger.exception("channel %s crashed", channel_name)
            return DeliveryError(f"channel {channel_name} crashed: {exc!r}"[:300])

    async def _record(
        self,
        recipient: str,
        channel_name: str,
        ids: list[int],
        message: Message,
        outcome: str | DeliveryError,
        previous: Any,
    ) -> None:
        if isinstance(outcome, DeliveryError):
            self.failures += 1
            self.last_error = str(outcome)
            async with self.pool.connection(timeout=10) as conn:
                await self._failed(
                    conn, recipient, channel_name, ids, outcome, previous
                )
            return
        self.digests += 1
        async with self.pool.connection(timeout=10) as conn:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE pgagent_watch.alert SET state = 'sent', sent_at = now(),"
                    " subject = %s, message_id = %s, last_error = NULL"
                    " WHERE id = ANY(%s) AND claimed_by = %s",
                    (message.subject, message.message_id, ids, self.me),
                )
                await conn.execute(
                    "UPDATE pgagent_watch.alert_group SET failures = 0,"
                    " retry_at = NULL, last_sent_at = now()"
                    " WHERE recipient = %s AND channel = %s",
                    (recipient, channel_name),
                )
        logger.info(
            "digest of %d alerts sent through %s: %s",
            len(ids),
            channel_name,
            digest.one_line(outcome, 120),
        )

    async def _release(
        self, conn: AnyConn, ids: Sequence[int], why: str, previous: Any
    ) -> None:
        await conn.execute(
            "UPDATE pgagent_watch.alert SET state = 'pending', claimed_by = NULL,"
            " attempts = greatest(attempts - 1, 0), last_error = %s"
            " WHERE id = ANY(%s) AND claimed_by = %s AND state = 'sending'",
            (why, list(ids), self.me),
        )

    async def _failed(
        self,
        conn: AnyConn,
        recipient: str,
        channel: str,
        ids: Sequence[int],
        exc: DeliveryError,
        previous: Any,
    ) -> None:
        """Permanent: failed with the answer. Transient: wait, or dead letter."""
        error = str(exc)[:1000]
        async with conn.transaction():
            if exc.permanent:
                await conn.execute(
                    "UPDATE pgagent_watch.alert SET state = 'failed', last_error = %s"
                    " WHERE id = ANY(%s) AND claimed_by = %s",
                    (error, list(ids), self.me),
                )
                await conn.execute(
                    "UPDATE pgagent_watch.alert_group SET last_sent_at = %s"
                    " WHERE recipient = %s AND channel = %s",
                    (previous, recipient, channel),
                )
                logger.warning("alerts to %s failed for good: %s", channel, error)
                return
            cur = await conn.execute(
                "UPDATE pgagent_watch.alert_group SET failures = failures + 1,"
                " last_sent_at = %s WHERE recipient = %s AND channel = %s"
                " RETURNING failures",
                (previous, recipient, channel),
            )
            row = await cur.fetchone()
            failures = int(row[0]) if row else 1
            delay = backoff(self.settings, failures)
            await conn.execute(
                "UPDATE pgagent_watch.alert_group"
                " SET retry_at = now() + make_interval(secs => %s)"
                " WHERE recipient = %s AND channel = %s",
                (delay, recipient, channel),
            )
            await conn.execute(
                "UPDATE pgagent_watch.alert SET last_error = %s, claimed_by = NULL,"
                " state = CASE WHEN attempts >= %s THEN 'dead' ELSE 'pending' END"
                " WHERE id = ANY(%s) AND claimed_by = %s",
                (error, self.settings.max_attempts, list(ids), self.me),
            )
        logger.warning(
            "alerts through %s not sent (%s); next try in %.0f s", channel, error, delay
        )

    def health(self) -> dict[str, Any]:
        return {
            "digests": self.digests,
            "failures": self.failures,
            "last_error": self.last_error,
        }
