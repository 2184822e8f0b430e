"""The alert engine: a durable consumer of each server's event table.

It is a hub consumer only to be woken: ``submit`` sets a flag. It reads the
event table itself through an EventCursor whose state lives in the state
database (``alert_cursor``), and writes the outbox rows of the events that
match a subscription AND the cursor's new state in one transaction, with the
cursor row locked. A crash before the commit leaves both as they were (the
events are read again); after it, both moved: no alert lost, none doubled.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import ReplayMarkError
from ..events import JobEvent
from ..replay import CursorState, EventCursor
from . import subscriptions
from .digest import output_head

if TYPE_CHECKING:
    from ..service import MonitoredServer, Service

logger = logging.getLogger("pgagent_watch.alerts")

AnyConn = psycopg.AsyncConnection[Any]

_MATCHING = """
SELECT s.user_id, s.job_id, s.statuses, s.channel, u.email
FROM pgagent_watch.subscription s
JOIN pgagent_watch.app_user u ON u.id = s.user_id
WHERE s.server_id = %s AND NOT u.disabled
  AND (u.role = 'admin' OR EXISTS (
        SELECT 1 FROM pgagent_watch.user_grant g
        WHERE g.user_id = u.id AND g.server_name IN (%s, '*')))
"""

# The step run that made a run fail: the failed one, else the aborted one,
# else one left in 'r' (pgAgent could not write its end: output cut in the
# middle of a UTF-8 character makes its UPDATE fail, and the run ends 'f').
_FAILING_STEP = """
SELECT DISTINCT ON (sl.jsljlgid) sl.jsljlgid, st.jstname, sl.jslresult,
       left(sl.jsloutput, %s), sl.jslstatus
FROM pgagent.pga_jobsteplog sl
LEFT JOIN pgagent.pga_jobstep st ON st.jstid = sl.jsljstid
WHERE sl.jsljlgid = ANY(%s) AND sl.jslstatus IN ('f', 'd', 'r')
ORDER BY sl.jsljlgid, sl.jslstatus = 'f' DESC, sl.jslstatus = 'd' DESC,
         sl.jslid DESC
"""

_INSERT = """
INSERT INTO pgagent_watch.alert (user_id, recipient, channel, server_id,
    server_name, event_id, status, job_id, job_name, run_id, event_at, duration,
    detail, not_before)
VALUES (%(user_id)s, %(recipient)s, %(channel)s, %(server_id)s, %(server_name)s,
    %(event_id)s, %(status)s, %(job_id)s, %(job_name)s, %(run_id)s,
    %(event_at)s, %(duration)s, %(detail)s,
    greatest(now(), (
        SELECT max(a.created_at) + make_interval(secs => %(min_interval)s)
        FROM pgagent_watch.alert a
        WHERE %(min_interval)s > 0 AND a.recipient = %(recipient)s
          AND a.channel = %(channel)s AND a.server_id = %(server_id)s
          AND a.job_id IS NOT DISTINCT FROM %(job_id)s)))
ON CONFLICT (server_name, event_id, recipient, channel) DO NOTHING
"""


class AlertEngine:
    """Turns matching events into outbox rows, exactly once, for every server."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings.alerts
        self._wake: dict[int, asyncio.Event] = {
            sid: asyncio.Event() for sid in service.servers
        }
        # server id -> the reason its cursor cannot go on (C11), or None.
        self.errors: dict[int, str | None] = {sid: None for sid in service.servers}
        self.written = 0
        # Event ids the hub handed over since the last read, per server.
        self._notified: dict[int, set[int]] = {sid: set() for sid in service.servers}
        # Servers whose cursor has been read (or made) at least once.
        self.started: set[int] = set()
        self.on_written: list[Any] = []

    # -- hub consumer: never blocks ------------------------------------------
    def submit(self, events: Sequence[JobEvent]) -> None:
        for event in events:
            wake = self._wake.get(event.server_id)
            if wake is not None:
                self._notified[event.server_id].add(event.event_id)
                wake.set()

    def server_state(self, server_id: int, state: str, reason: str | None) -> None:
        if state == "connected" and server_id in self._wake:
            self._wake[server_id].set()

    def poke(self) -> None:
        for wake in self._wake.values():
            wake.set()

    async def run(self) -> None:
        """One loop per server, until cancelled."""
        await self.service.state_ready.wait()
        async with asyncio.TaskGroup() as group:
            for server in self.service.servers.values():
                group.create_task(self._loop(server), name=f"alerts-{server.id}")

    async def _loop(self, server: MonitoredServer) -> None:
        wake = self._wake[server.id]
        delay = self.settings.backoff_initial
        last_full = -float("inf")
        while True:
            with_timeout = self.settings.poll_interval
            # The hub's wake-ups read only what is new or was named; the
            # timer's full read moves the mark (and is the safety net).
            full = time.monotonic() - last_full >= self.settings.poll_interval
            try:
                await self.process(server, full=full)
                if full:
                    last_full = time.monotonic()
                self.started.add(server.id)
                if self.errors[server.id] is not None:
                    logger.info("alert cursor of %s is reading again", server.id)
                self.errors[server.id] = None
                delay = self.settings.backoff_initial
            except asyncio.CancelledError:
                raise
            except ReplayMarkError as exc:
                if self.errors[server.id] != str(exc):
                    logger.error("alerts of server %s: %s", server.config.name, exc)
                self.errors[server.id] = str(exc)
                with_timeout = max(with_timeout, 30)
            except Exception as exc:
                logger.warning(
                    "alerts of server %s: %s; retrying in %.0f s",
                    server.config.name,
                    str(exc).strip().splitlines()[0] if str(exc) else repr(exc),
                    delay,
                )
                with_timeout = delay
                delay = min(delay * 2, self.settings.backoff_max)
            try:
                await asyncio.wait_for(wake.wait(), with_timeout)
            except TimeoutError:
                pass
            wake.clear()

    async def process(self, server: MonitoredServer, *, full: bool = True) -> int:
        """Read the server's new events and write their alerts; return how many.

        Raises ReplayMarkError when the stored mark lies ahead of the server's
        transaction counter (a restore into a new cluster): nothing is read
        until ``pgagent-watch reset-mark`` clears it.
        """
        name = server.config.name
        async with (
            self.service.state_pool.connection(timeout=10) as st,
            server.pool.connection(timeout=10) as src,
        ):
            async with st.transaction():
                cur = await st.execute(
                    "SELECT mark, max_id, seen FROM pgagent_watch.alert_cursor"
                    " WHERE server_name = %s FOR UPDATE",
                    (name,),
                )
                row = await cur.fetchone()
                if row is None:
                    # First start: alerts begin now, not with the history.
                    cursor = EventCursor(server.id)
                    await cursor.start_from_now(src)
                    assert cursor.state is not None
                    await self._save(st, name, cursor.state, insert=True)
                    logger.info("alert cursor of %s starts now", name)
                    return 0
                state = CursorState(
                    int(row[0]),
                    int(row[1]),
                    {int(k): int(v) for k, v in row[2].items()},
                )
                before = copy.deepcopy(state)
                cursor = EventCursor(server.id, state)
                await cursor.check_mark(src)
                notified, self._notified[server.id] = self._notified[server.id], set()
                if full:
                    events = await cursor.read_full(src)
                else:
                    events = await cursor.read_live(src, notified)
                written = await self._handle(st, src, server, events) if events else 0
                if state != before:
                    await self._save(st, name, state)
        if written:
            self.written += written
            for callback in self.on_written:
                callback()
        return written

    @staticmethod
    async def _save(
        st: AnyConn, name: str, state: CursorState, insert: bool = False
    ) -> None:
        seen = Jsonb({str(k): v for k, v in state.seen.items()})
        if insert:
            await st.execute(
                "INSERT INTO pgagent_watch.alert_cursor"
                " (server_name, mark, max_id, seen)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (server_name) DO NOTHING",
                (name, state.mark, state.max_id, seen),
            )
        else:
            await st.execute(
                "UPDATE pgagent_watch.alert_cursor SET mark = %s, max_id = %s,"
                " seen = %s, changed_at = now() WHERE server_name = %s",
                (state.mark, state.max_id, seen, name),
            )

    async def _handle(
        self,
        st: AnyConn,
        src: AnyConn,
        server: MonitoredServer,
        events: Sequence[JobEvent],
    ) -> int:
        """Delete subscriptions of deleted jobs; write the matching alerts."""
        deleted = [
            e.job_id
            for e in events
            if e.kind == "job" and e.status == "deleted" and e.job_id is not None
        ]
        if deleted:
            cur = await st.execute(
                "DELETE FROM pgagent_watch.subscription"
                " WHERE server_id = %s AND job_id = ANY(%s)",
                (server.id, deleted),
            )
            if cur.rowcount:
                logger.info(
                    "%d subscriptions of deleted jobs of %s removed",
                    cur.rowcount,
                    server.config.name,
                )
        alertable = [
            (e, word)
            for e in events
            if (word := subscriptions.run_status_word(e.kind, e.status)) is not None
        ]
        if not alertable:
            return 0
        cur = await st.execute(_MATCHING, (server.id, server.config.name))
        subs = await cur.fetchall()
        if not subs:
            return 0
        rows: list[dict[str, Any]] = []
        for event, word in alertable:
            for user_id, job_id, statuses, channel, email in subs:
                # An event of no job (agent down) concerns every job.
                if job_id is not None and event.job_id not in (None, job_id):
                    continue
                if word not in statuses:
                    continue
                recipient = email if channel == subscriptions.EMAIL else channel
                if not recipient:
                    continue
                rows.append(self._row(server, event, word, user_id, recipient, channel))
        if not rows:
            return 0
        await self._add_details(src, rows)
        async with st.cursor() as cur:
            await cur.executemany(_INSERT, rows)
        return len(rows)

    def _row(
        self,
        server: MonitoredServer,
        event: JobEvent,
        word: str,
        user_id: int,
        recipient: str,
        channel: str,
    ) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "recipient": recipient,
            "channel": channel,
            "server_id": server.id,
            "server_name": server.config.name,
            "event_id": event.event_id,
            "status": word,
            "job_id": event.job_id,
            "job_name": event.job_name,
            "run_id": event.run_id,
            "event_at": event.at,
            "duration": event.duration,
            "detail": {
                "letter": event.status,
                "kind": event.kind,
                "back_to_normal": event.kind != "run" and event.status == "end",
                **_extra(event),
            },
            "min_interval": float(self.settings.min_interval),
        }

    async def _add_details(self, src: AnyConn, rows: list[dict[str, Any]]) -> None:
        """The failing step of each failed run, with the first lines of its output."""
        run_ids = sorted(
            {r["run_id"] for r in rows if r["status"] == "failed" and r["run_id"]}
        )
        steps: dict[int, tuple[Any, Any, Any, Any]] = {}
        if run_ids:
            cur = await src.execute(
                _FAILING_STEP, (self.settings.output_chars + 1, run_ids)
            )
            steps = {int(r[0]): (r[1], r[2], r[3], r[4]) for r in await cur.fetchall()}
        for r in rows:
            step = steps.get(r["run_id"]) if r["status"] == "failed" else None
            if step is not None:
                r["detail"]["step_name"] = step[0]
                r["detail"]["step_result"] = step[1]
                r["detail"]["output"] = output_head(
                    step[2], self.settings.output_lines, self.settings.output_chars
                )
                if step[3] == "r":
                    r["detail"]["output"] = (
                        "(pgAgent did not record the end of this step: see its log)"
                    )
            r["detail"] = Jsonb(r["detail"])

    def health(self) -> dict[str, Any]:
        return {
            str(sid): {
                "cursor": "error" if err else "ok",
                "error": err,
                "started": sid in self.started,
            }
            for sid, err in self.errors.items()
        }


def _extra(event: JobEvent) -> dict[str, Any]:
    """The small facts a derived event carries (agent host, since when, ...)."""
    keep: dict[str, Any] = {}
    for key in ("reason", "host", "since", "expected_at", "agent"):
        if key in event.extra and isinstance(event.extra[key], str | int | float):
            keep[key] = event.extra[key]
    return keep


# Forget the alert cursor of a server: its alerts start again from now. The
# way out of a ReplayMarkError (a state database restored into a new cluster).
RESET_MARK_SQL = "DELETE FROM pgagent_watch.alert_cursor WHERE server_name = %s"
