"""Live push over Socket.IO: the ``/pgagent`` namespace and its fan-out.

The event names are those of the pgAdmin extension this project grew from,
so that its front end could talk to this server. Each server has a room;
a client joins it with ``start_job_status_listener {sid}``. Bad input gets
``job_status_listener_error {sid, code, error}`` and the connection stays up.

Fan-out: python-socketio's cost is per recipient and per frame, so when
events come one at a time each leaves at once as ``job_status_update``;
when 16 or more are waiting for one room they leave together as one
``job_status_batch {sid, events}`` frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import engineio
import socketio

from .access import Principal
from .events import JobEvent, JobStatusUpdate

if TYPE_CHECKING:
    from .service import Service

logger = logging.getLogger("pgagent_watch.push")


class _BadFrameFilter(logging.Filter):
    """engineio logs a full traceback for every undecodable frame a client
    sends; anyone could fill the log that way. Keep one short line a second.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last = 0.0
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("message async handler error"):
            return True
        record.exc_info = None
        record.exc_text = None
        now = time.monotonic()
        if now - self._last < 1.0:
            self.dropped += 1
            return False
        self._last = now
        record.msg = "undecodable message from a client (more are not logged)"
        record.args = ()
        return True


BAD_FRAMES = _BadFrameFilter()
logging.getLogger("engineio.server").addFilter(BAD_FRAMES)

NAMESPACE = "/pgagent"
MAX_ID = 2**31 - 1
# Events in one job_status_batch frame: a burst after a long outage leaves as
# several frames of bounded size, not one that a client refuses.
MAX_BATCH = 200
# Fewer events than this waiting for one room leave as single updates.
BATCH_FROM = 16


def room(server_id: int) -> str:
    return f"server:{server_id}"


class BadRequest(ValueError):
    """A socket event whose payload is not what the protocol says."""

    def __init__(self, code: str, message: str, sid: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.sid = sid


def _int_field(data: Any, name: str, *, missing_code: str = "BAD_REQUEST") -> int:
    if not isinstance(data, dict):
        raise BadRequest("BAD_REQUEST", f"expected an object with '{name}'")
    if name not in data or data[name] is None:
        raise BadRequest(missing_code, f"'{name}' is required")
    value = data[name]
    # bool is an int in Python, never an id here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("BAD_REQUEST", f"'{name}' must be an integer")
    if not 1 <= value <= MAX_ID:
        raise BadRequest("BAD_REQUEST", f"'{name}' is out of range")
    return value


def server_id_of(data: Any) -> int:
    """The ``sid`` of a listener request; raises BadRequest with a stable code."""
    return _int_field(data, "sid", missing_code="NO_SERVER_ID")


Handler = Callable[[str, Principal, Any], Awaitable[Any]]


class _Bucket:
    """A token bucket: ``burst`` events at once, ``rate`` a second after that."""

    __slots__ = ("last", "strikes", "tokens")

    def __init__(self, burst: int) -> None:
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.strikes = 0

    def take(self, rate: float, burst: int) -> bool:
        now = time.monotonic()
        self.tokens = min(float(burst), self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.strikes = 0
            return True
        self.strikes += 1
        return False


class PgAgentNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """The socket protocol; every rule about who may see what is the Principal's."""

    def __init__(self, service: Service) -> None:
        super().__init__(NAMESPACE)
        self.service = service
        # Extra events other modules register (subscriptions, ...).
        self.extra_handlers: dict[str, Handler] = {}
        self._buckets: dict[str, _Bucket] = {}

    async def _rate_limited(self, sid: str) -> dict[str, Any] | None:
        """None if the client may send this event, else the error it gets."""
        limits = self.service.settings.limits
        bucket = self._buckets.get(sid)
        if bucket is None:
            bucket = self._buckets[sid] = _Bucket(limits.socket_burst)
        if bucket.take(limits.socket_rate, limits.socket_burst):
            return None
        if bucket.strikes > limits.socket_strikes:
            logger.warning("socket %s: rate limit ignored, disconnected", sid)
            self._buckets.pop(sid, None)
            await self.disconnect(sid)
            return None
        payload = {"sid": None, "code": "RATE_LIMITED", "error": "too many events"}
        if bucket.strikes == 1:
            # Once per run of refusals: the error itself must not flood.
            await self.emit("job_status_listener_error", payload, to=sid)
        return payload

    async def _principal(self, sid: str) -> Principal | None:
        session = await self.get_session(sid)
        principal = session.get("principal")
        return principal if isinstance(principal, Principal) else None

    async def on_connect(
        self, sid: str, environ: dict[str, Any], auth: Any = None
    ) -> None:
        principal = await self.service.authenticate_socket(environ, auth)
        if principal is None:
            raise socketio.exceptions.ConnectionRefusedError(
                {"code": "UNAUTHORIZED", "error": "sign in or give an API token"}
            )
        await self.save_session(sid, {"principal": principal})
        await self.emit("connected", {"sid": sid, "user": principal.name}, to=sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        logger.debug("socket %s gone (%s)", sid, reason)

    async def _error(self, sid: str, exc: BadRequest) -> dict[str, Any]:
        payload = {"sid": exc.sid, "code": exc.code, "error": str(exc)}
        await self.emit("job_status_listener_error", payload, to=sid)
        return payload

    async def _visible_server(self, sid: str, data: Any) -> tuple[Principal, int]:
        principal = await self._principal(sid)
        server_id = server_id_of(data)
        if server_id not in self.service.servers:
            raise BadRequest(
                "SERVER_NOT_FOUND", f"no server with id {server_id}", server_id
            )
        if principal is None or not principal.can_see(server_id):
            raise BadRequest("FORBIDDEN", "you may not watch this server", server_id)
        return principal, server_id

    async def on_start_job_status_listener(self, sid: str, data: Any = None) -> Any:
        try:
            _, server_id = await self._visible_server(sid, data)
        except BadRequest as exc:
            return await self._error(sid, exc)
        await self.enter_room(sid, room(server_id))
        status = self.service.servers[server_id].listener.status
        payload = {
            "sid": server_id,
            "state": status.state.value,
            "reason": status.reason,
        }
        await self.emit("job_status_listener_started", payload, to=sid)
        return payload

    async def on_stop_job_status_listener(self, sid: str, data: Any = None) -> Any:
        try:
            server_id = server_id_of(data)
        except BadRequest as exc:
            return await self._error(sid, exc)
        await self.leave_room(sid, room(server_id))
        payload = {"sid": server_id}
        await self.emit("job_status_listener_stopped", payload, to=sid)
        return payload

    async def on_keep_alive(self, sid: str, data: Any = None) -> Any:
        payload = {"time": datetime.now(UTC).isoformat()}
        await self.emit("keep_alive", payload, to=sid)
        return payload

    async def on_get_job_states(self, sid: str, data: Any = None) -> Any:
        """The current state of every job of a server, for a client that joins late."""
        try:
            _, server_id = await self._visible_server(sid, data)
        except BadRequest as exc:
            return await self._error(sid, exc)
        try:
            jobs = await self.service.job_states(server_id)
        except Exception as exc:
            logger.warning("job states of server %s: %s", server_id, exc)
            return await self._error(
                sid,
                BadRequest(
                    "SERVER_UNAVAILABLE", "the server cannot be read now", server_id
                ),
            )
        payload = {"sid": server_id, "jobs": jsonable(jobs)}
        await self.emit("job_states", payload, to=sid)
        return payload

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Route registered extra events; unknown events get a clear answer.

        Every event a client sends first passes its rate limit: past it the
        event is refused with ``RATE_LIMITED`` and the connection stays up,
        unless the client keeps on past ``[limits] socket_strikes`` refusals.
        """
        if event == "disconnect" and args:
            self._buckets.pop(args[0], None)
        elif event != "connect" and args and isinstance(args[0], str):
            refused = await self._rate_limited(args[0])
            if refused is not None:
                return refused
        handler_name = f"on_{event}"
        if hasattr(self, handler_name) or event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0] if args else None
        if event in self.extra_handlers and isinstance(sid, str):
            principal = await self._principal(sid)
            data = args[1] if len(args) > 1 else None
            if principal is None:
                return None
            try:
                return await self.extra_handlers[event](sid, principal, data)
            except BadRequest as exc:
                return await self._error(sid, exc)
        if isinstance(sid, str):
            return await self._error(
                sid, BadRequest("UNKNOWN_EVENT", f"unknown event {event[:40]!r}")
            )
        return None


def jsonable(value: Any) -> Any:
    """Datetimes as ISO 8601 text, recursively; everything else as it is."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class Pusher:
    """The hub consumer that emits events to each server's room.

    When idle, an event leaves at once. After a flush, the events that arrive
    wait for as long as that flush took (at most ``coalesce`` seconds) and
    leave together, one frame per room, so that under load the cost is a frame
    per tick, not per event, and with few clients nothing waits.
    """

    def __init__(self, sio: socketio.AsyncServer, coalesce: float) -> None:
        self.sio = sio
        self.coalesce = coalesce
        self._pending: dict[int, list[JobStatusUpdate]] = defaultdict(list)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.frames = 0
        self.events = 0
        # Batches submitted, and of those, emitted (for the Redis manager:
        # handed to Redis). A shared replay mark may only move past events
        # that have left (scaleout.ListenLock waits on this).
        self.submitted = 0
        self.emitted = 0
        self._emitted_changed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._flush()

    async def flush(self) -> int:
        """Emit every event waiting now, without waiting for the next tick."""
        return await self._flush()

    def submit(self, events: Sequence[JobEvent]) -> None:
        for event in events:
            self._pending[event.server_id].append(event.to_wire())
        self.submitted += 1
        self._wake.set()

    async def wait_emitted(self, batch: int) -> None:
        """Return once the ``batch``-th submitted batch has been emitted."""
        while self.emitted < batch:
            self._emitted_changed.clear()
            await self._emitted_changed.wait()

    def server_state(self, server_id: int, state: str, reason: str | None) -> None:
        payload = {"sid": server_id, "state": state, "reason": reason}
        task = asyncio.get_running_loop().create_task(
            self.sio.emit(
                "server_status", payload, room=room(server_id), namespace=NAMESPACE
            )
        )
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            began = loop.time()
            try:
                sent = await self._flush()
            except Exception:
                logger.exception("push flush failed")
                sent = 0
            if sent and self.coalesce > 0:
                # The flush only queued the frames: let each socket's writer
                # send them, so that the time taken is the flush's whole cost.
                await asyncio.sleep(0)
                cost = loop.time() - began
                # Under load, let the next events gather for as long as the
                # last flush took (the push then uses at most half the loop),
                # never longer than a tick. With few clients a flush costs
                # microseconds: events leave nearly one by one, at once.
                await asyncio.sleep(min(cost, self.coalesce))

    async def _flush(self) -> int:
        pending, self._pending = self._pending, defaultdict(list)
        upto = self.submitted
        sent = 0
        try:
            for server_id, waiting in pending.items():
                for start in range(0, len(waiting), MAX_BATCH):
                    batch = waiting[start : start + MAX_BATCH]
                    sent += await self._emit(server_id, batch)
        finally:
            # Failed or not, these are done with: never wait on them again.
            self.emitted = max(self.emitted, upto)
            self._emitted_changed.set()
        return sent

    async def _emit(self, server_id: int, updates: list[JobStatusUpdate]) -> int:
        # A few events (a job's run starting, several jobs at the top of the
        # minute) leave one by one as job_status_update, which every client of
        # the original protocol understands; only a real burst is worth the
        # batch frame.
        if len(updates) < BATCH_FROM:
            for update in updates:
                await self._send(server_id, "job_status_update", update)
            self.frames += len(updates)
        else:
            await self._send(
                server_id, "job_status_batch", {"sid": server_id, "events": updates}
            )
            self.frames += 1
        self.events += len(updates)
        return len(updates)

    async def _send(self, server_id: int, event: str, data: Any) -> None:
        """Send one frame to a room, encoded once for all its clients.

        python-socketio's own emit starts a task per recipient; with the
        in-process manager the same engine.io packet (its encoding is cached)
        goes straight to each socket's queue instead. Any other manager (Redis,
        shared by several instances) gets the ordinary emit.
        """
        target = room(server_id)
        if type(self.sio.manager) is not socketio.AsyncManager:
            await self.sio.emit(event, data, room=target, namespace=NAMESPACE)
            return
        pkt = self.sio.packet_class(
            socketio.packet.EVENT, namespace=NAMESPACE, data=[event, data]
        )
        encoded = pkt.encode()
        frames = encoded if isinstance(encoded, list) else [encoded]
        eio_pkts = [engineio.packet.Packet(engineio.packet.MESSAGE, f) for f in frames]
        for _sid, eio_sid in self.sio.manager.get_participants(NAMESPACE, target):
            for eio_pkt in eio_pkts:
                await self.sio.eio.send_packet(eio_sid, eio_pkt)


_background: set[asyncio.Task[Any]] = set()
