"""Back-pressure: a browser that stops reading costs a bounded amount, then goes.

python-engineio gives each client an unbounded ``asyncio.Queue`` of packets;
a writer task per client drains it into the websocket, and that writer
waits while the client does not read (uvicorn pauses the transport past its
high-water mark). Emitting never waits, so nobody else slows down, but the
stalled client's queue would grow until its ping timeout (40 s by default)
with every event of its rooms. Here the queue refuses packets past
``[limits] client_queue_max``: the client is dropped at once (its rooms
left, so nothing more is queued for it), and the packets it held are freed.
A dropped browser reconnects and asks for the current job states again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import engineio
import socketio

logger = logging.getLogger("pgagent_watch.flow")


class BoundedQueue(asyncio.Queue[Any]):
    """An Engine.IO send queue that never blocks and never grows past its limit.

    ``None`` (Engine.IO's "writer, stop" sentinel) is always accepted.
    """

    def __init__(self, server: BoundedEngineIO, limit: int) -> None:
        super().__init__()
        self._server = server
        self.limit = limit
        self.overflowed = False

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def put_nowait(self, item: Any) -> None:
        if item is not None and self.qsize() >= self.limit:
            if not self.overflowed:
                self.overflowed = True
                self._server.overflow(self)
            return
        super().put_nowait(item)

    def discard(self) -> None:
        """Free every packet waiting; the writer is told to stop."""
        while not self.empty():
            self.get_nowait()
            self.task_done()
        super().put_nowait(None)


class BoundedEngineIO(engineio.AsyncServer):  # type: ignore[misc]
    """engineio's server with bounded per-client send queues."""

    client_queue_max = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dropped = 0
        self._closing: set[asyncio.Task[Any]] = set()
        # Each client's (host, port), to find its connection when dropped.
        self._peers: dict[str, tuple[str, int]] = {}
        # Set by the web server: aborts the TCP connection of a peer, so that
        # a writer blocked on a stalled socket ends and the buffers are freed.
        self.abort_peer: Callable[[tuple[str, int]], bool] | None = None

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect" and len(args) >= 2 and isinstance(args[1], dict):
            client = args[1].get("asgi.scope", {}).get("client")
            if client:
                self._peers[args[0]] = (str(client[0]), int(client[1]))
        elif event == "disconnect" and args:
            self._peers.pop(args[0], None)
        return await super()._trigger_event(event, *args, **kwargs)

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return BoundedQueue(self, self.client_queue_max)

    def overflow(self, queue: BoundedQueue) -> None:
        """Drop the client whose queue is full, from a task of its own."""
        # Only on overflow, once per client: a scan is cheap enough.
        for sid, sock in list(self.sockets.items()):  # noqa: B007
            if sock.queue is queue:
                break
        else:
            return
        self.dropped += 1
        logger.warning(
            "client %s stopped reading (%d packets queued): dropped", sid, queue.limit
        )
        queue.discard()
        task = asyncio.get_running_loop().create_task(self._drop(sid, sock))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _drop(self, sid: str, sock: Any) -> None:
        peer = self._peers.get(sid)
        try:
            # abort: no CLOSE packet (it could not be delivered) and no wait
            # for the writer, which may stay blocked on the stalled socket.
            await sock.close(
                wait=False, abort=True, reason=self.reason.SERVER_DISCONNECT
            )
        except Exception:
            logger.exception("dropping client %s", sid)
        self.sockets.pop(sid, None)
        if peer is not None and self.abort_peer is not None:
            self.abort_peer(peer)


class AsyncServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server on the bounded Engine.IO server."""

    def _engineio_server_class(self) -> type[BoundedEngineIO]:
        return BoundedEngineIO
