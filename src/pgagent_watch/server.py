"""Running the ASGI app under uvicorn, in the current event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Generator

import uvicorn

from .errors import PgAgentWatchError
from .service import Service
from .web import create_app

logger = logging.getLogger("pgagent_watch.server")


class _Server(uvicorn.Server):
    """uvicorn's server, but a signal ends serve() instead of killing the process.

    uvicorn re-raises SIGTERM after its shutdown, which would skip our own
    clean-up (the demo's cluster and daemon); here the signal only asks to
    exit, and the caller decides what follows.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM)
        try:
            for sig in handled:
                loop.add_signal_handler(sig, self._ask_exit)
        except (NotImplementedError, RuntimeError):  # not the main thread
            yield
            return
        try:
            yield
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    service: Service | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first, then send what is waiting, and only then let
        # uvicorn close the connections: in-flight deliveries are finished.
        for server in self.servers:
            server.close()
        if self.service is not None:
            await self.service.drain()
        await super().shutdown(sockets)

    def _ask_exit(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


class ServeError(PgAgentWatchError, OSError):
    """The web server could not start (most often: the port is taken)."""


def make_server(service: Service, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for the service; websockets only through the websockets lib."""
    config = uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        lifespan="on",
        log_level="warning",
        ws="websockets-sansio",
        # Per-message deflate costs about 50 KB a connection; frames are small.
        ws_per_message_deflate=False,
        ws_max_size=64 * 1024,
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = _Server(config)
    server.service = service

    def abort_peer(peer: tuple[str, int]) -> bool:
        # A dropped client may never read again: abort its connection, which
        # frees the buffers and ends the writer that waits on it.
        for conn in list(server.server_state.connections):
            client = getattr(conn, "client", None)
            if client is not None and tuple(client) == peer:
                conn.transport.abort()
                return True
        return False

    service.sio.eio.abort_peer = abort_peer
    return server


async def serve(
    service: Service,
    host: str,
    port: int,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; call on_ready once the port accepts."""
    server = make_server(service, host, port)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        if on_ready is not None:
            on_ready()

    watcher = asyncio.create_task(announce())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise ServeError(f"could not serve on {host}:{port} (is the port taken?)")
