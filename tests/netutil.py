"""Network tools for the fault tests: a proxy that can stall, a raw websocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from typing import Any

from pgagent_watch.cluster import free_port


class StallProxy:
    """A TCP proxy that can stop forwarding while keeping both sockets open.

    ``stall()`` freezes the connections open now; connections made later
    are forwarded as usual, as a half-broken network path would behave.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> StallProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pipe: dict[str, Any] = {"stalled": False, "writers": [writer, up_writer]}
        self._pipes.append(pipe)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(pipe, src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        pipe: dict[str, Any],
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(Exception):
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if pipe["stalled"]:
                    # Swallow for ever; never close: the peer sees silence.
                    await asyncio.Event().wait()
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(Exception):
            dst.close()

    def stall(self) -> None:
        for pipe in self._pipes:
            pipe["stalled"] = True

    async def close(self) -> None:
        """End every connection; calling it again does nothing."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pipe in self._pipes:
            for w in pipe["writers"]:
                with contextlib.suppress(Exception):
                    w.close()
        self._pipes.clear()


class RawWebSocket:
    """A websocket client by hand, so that a test decides when it reads (never)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, recv_buffer: int | None = 4096) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer is not None:
            # Set before connect: a small window the kernel cannot grow.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        return cls(reader, writer)

    async def send_frame(self, payload: bytes, opcode: int = 1) -> None:
        """One masked frame, as a client must send it."""
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 2**16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        await self.send_frame(text.encode())

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
