"""Several instances: browsers shared over Redis, one listener per server.

- Browsers: python-socketio's ``AsyncRedisManager`` carries every emit to
  every instance, so a browser on instance A gets the events that instance
  B's listener saw. Messages on the bus are the wire events (ids, statuses,
  names), never step output. The pub/sub connection has no read timeout
  (an idle channel is normal); a subscription lost without an error (a
  half-open connection, a Redis that dropped the client) is found by a
  probe this instance sends to itself every ``probe_interval``: if two in a
  row do not come back within ``probe_timeout`` the subscription is torn
  down and python-socketio's own retry loop subscribes again. (A count of
  subscribers against instances, ``PUBSUB NUMSUB``, would tell that some
  instance lost it; the probe tells each instance that it did.)
- Listening: exactly one instance listens to a server at a time. The
  listener takes a PostgreSQL session advisory lock on its own listening
  connection; while another instance holds it, the listener waits in
  ``standby``, connected, trying again every ``standby_interval``. When the
  holder dies its backend goes and the lock with it. The replay mark is
  saved in the state database after every batch the holder publishes, and
  the next holder resumes from it: nothing is lost; the events of the last
  batch before a crash may arrive twice (their ``event_id`` tells).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import psycopg
import socketio
from psycopg_pool import AsyncConnectionPool

from .push import Pusher
from .replay import CursorState

logger = logging.getLogger("pgagent_watch.scaleout")

# pg_try_advisory_lock(int, int): "pgws", then 2 for "the listener".
LOCK_CLASS = 0x70677773
LOCK_LISTENER = 2
_PROBE_SID = "pgagent-watch-probe"


class RedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """The Redis client manager, with a self-check of its own subscription."""

    def __init__(
        self,
        url: str,
        channel: str,
        probe_interval: float,
        probe_timeout: float,
    ) -> None:
        super().__init__(
            url,
            channel=channel,
            # No read timeout: a quiet channel is not a dead one; the probe is.
            redis_options={"socket_timeout": None, "socket_keepalive": True},
            logger=logging.getLogger("pgagent_watch.scaleout.redis"),
        )
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.resubscribes = 0
        self.probes_lost = 0
        self._probe_id = 0
        self._probe_back = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()

    def _redis_connect(self) -> None:
        # python-socketio makes a new client on every retry and drops the old
        # one unclosed; redis-py's own retries may then subscribe it again, a
        # subscriber nobody reads, which Redis buffers for until its limit.
        old = (self.pubsub, self.redis)
        super()._redis_connect()
        if old[0] is not None or old[1] is not None:
            task = asyncio.get_running_loop().create_task(self._close_old(*old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_old(self, pubsub: Any, client: Any) -> None:
        for thing in (pubsub, client):
            if thing is None:
                continue
            try:
                await asyncio.wait_for(thing.aclose(), self.probe_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("closing an old Redis client: %s", exc)

    async def close(self) -> None:
        """Close the current and the old clients (call after the listen task)."""
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self._close_old(self.pubsub, self.redis)

    async def _handle_callback(self, message: dict[str, Any]) -> None:
        if (
            message.get("sid") == _PROBE_SID
            and message.get("host_id") == self.host_id
            and message.get("id") == self._probe_id
        ):
            self._probe_back.set()
            return
        await super()._handle_callback(message)

    async def probe(self) -> bool:
        """Publish a probe to this instance; True if it came back in time."""
        self._probe_id += 1
        self._probe_back.clear()
        message = {
            "method": "callback",
            "host_id": self.host_id,
            "sid": _PROBE_SID,
            "namespace": "/",
            "id": self._probe_id,
            "args": [],
        }
        try:
            await asyncio.wait_for(
                self.redis.publish(self.channel, json.dumps(message)),
                self.probe_timeout,
            )
            await asyncio.wait_for(self._probe_back.wait(), self.probe_timeout)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        return True

    async def watch(self) -> None:
        """Probe for ever; tear the subscription down when a probe is lost."""
        while True:
            await asyncio.sleep(self.probe_interval)
            # Two probes lost in a row: one alone may have been in flight
            # while python-socketio was already subscribing again by itself.
            if self.redis is None or await self.probe() or await self.probe():
                continue
            self.probes_lost += 1
            logger.warning(
                "the Redis subscription did not answer in %.1f s: subscribing again",
                self.probe_timeout,
            )
            await self.resubscribe()
            # python-socketio waits at least 1 s before it subscribes again;
            # a probe before that would only tear the new subscription down.
            await asyncio.sleep(self.probe_timeout + 2)

    async def resubscribe(self) -> None:
        """Drop the pub/sub connection; the manager's retry loop makes a new one."""
        self.resubscribes += 1
        pubsub = self.pubsub
        if pubsub is None:
            return
        try:
            await asyncio.wait_for(pubsub.aclose(), self.probe_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("closing the pub/sub connection: %s", exc)


_SAVE = """
INSERT INTO pgagent_watch.listener_mark (server, mark, max_id, seen, saved_at)
VALUES (%s, %s, %s, %s, now())
ON CONFLICT (server) DO UPDATE SET mark = EXCLUDED.mark, max_id = EXCLUDED.max_id,
    seen = EXCLUDED.seen, saved_at = now()
"""
_LOAD = "SELECT mark, max_id, seen FROM pgagent_watch.listener_mark WHERE server = %s"


class ListenLock:
    """One server's listen lock and its shared replay mark (the Listener's coordinator).

    ``acquire`` runs on the listener's own connection, so the lock lives and
    dies with it. ``save`` never waits: the latest state is written by
    ``run``, a task of the service, one write at a time.
    """

    def __init__(
        self,
        server_name: str,
        pool: AsyncConnectionPool,
        ready: asyncio.Event,
        pusher: Pusher,
    ) -> None:
        self.server_name = server_name
        self.pool = pool
        self.ready = ready
        self.pusher = pusher
        self._pending: tuple[int, int, dict[str, int]] | None = None
        self._batch = 0
        self._wake = asyncio.Event()

    async def acquire(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Try the lock on the listening connection; True if this session holds it."""
        cur = await conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_LISTENER)
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    async def load(self) -> CursorState | None:
        """The mark the last holder saved, or None if there is none yet."""
        await asyncio.wait_for(self.ready.wait(), 30)
        async with self.pool.connection(timeout=10) as conn:
            row = await (await conn.execute(_LOAD, (self.server_name,))).fetchone()
        if row is None:
            return None
        seen = {int(k): int(v) for k, v in (row[2] or {}).items()}
        return CursorState(mark=int(row[0]), max_id=int(row[1]), seen=seen)

    def save(self, state: CursorState) -> None:
        """Remember the state to write; copied now, as the cursor moves on."""
        # The events of this state are in the pusher's latest batch: the
        # mark is written only once that batch has left (else a crash in
        # between would lose them from every browser).
        self._batch = self.pusher.submitted
        self._pending = (
            state.mark,
            state.max_id,
            {str(k): v for k, v in state.seen.items()},
        )
        self._wake.set()

    async def flush(self) -> None:
        """Write the latest state once its events have left, if there is one."""
        await self.pusher.wait_emitted(self._batch)
        pending, self._pending = self._pending, None
        if pending is None:
            return
        mark, max_id, seen = pending
        try:
            async with self.pool.connection(timeout=5) as conn:
                await conn.execute(
                    _SAVE, (self.server_name, mark, max_id, json.dumps(seen))
                )
        except BaseException:
            if self._pending is None:
                self._pending = pending
            raise

    async def run(self) -> None:
        """Write each saved state, coalescing, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("saving the mark of %s: %s", self.server_name, exc)
                await asyncio.sleep(1)
                self._wake.set()
