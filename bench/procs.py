"""The processes of a benchmark other than the writer: ``python -m bench.procs ROLE``.

Each runs apart from the writer and from the others, so that the service's
event loop never shares a process with the clients that measure it.

- ``serve``: the real service (``Service`` under uvicorn, as ``serve`` runs it);
- ``bare-sio``: the baseline, a bare python-socketio server with one LISTEN
  connection that emits every event to the room on its own (one emit per event);
- ``clients``: N Socket.IO clients over websockets, recording arrivals;
- ``floor``: a bare LISTEN on a raw connection, recording arrivals;
- ``listeners``: the per-client design's database side, one connection and
  LISTEN per browser, each draining its notifications.

The servers print one JSON line once ready and run until SIGTERM. The others
read one JSON command a line on stdin and answer one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import re
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

NAMESPACE = "/pgagent"
ROOM = "server:1"
_EVENT_ID = re.compile(r'"event_id":(\d+)')
_STAMP = re.compile(r'"timestamp":"([^"]+)"')


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _commands() -> Any:
    """Yield the JSON commands read from stdin, one a line, until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while True:
        line = await reader.readline()
        if not line:
            return
        yield json.loads(line)


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    values.sort()
    n = len(values)

    def at(q: float) -> float:
        return values[min(n - 1, int(q * n))]

    return {"n": n, "p50": at(0.50), "p99": at(0.99), "max": values[-1]}


# --- the servers --------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    from pgagent_watch.config import load_settings
    from pgagent_watch.server import make_server
    from pgagent_watch.service import Service

    settings = load_settings(
        servers=[{"name": "bench", "dsn": args.dsn}],
        web={"host": "127.0.0.1", "port": args.port},
        log_level="warning",
    )
    service = Service(settings)
    server = make_server(service, "127.0.0.1", args.port)
    if args.gc_log:
        _log_gc_pauses(Path(args.gc_log))
    if args.deflate:
        # The baseline of the memory benchmark: what the default would cost.
        server.config.ws_per_message_deflate = True
    task = asyncio.create_task(server.serve())
    listener = service.servers[1].listener
    while not (server.started and listener.status.state.value == "connected"):
        if task.done():
            await task
            raise SystemExit("the service stopped before it was ready")
        await asyncio.sleep(0.02)
    _say({"ready": True, "role": "serve"})
    await task


def _log_gc_pauses(path: Path) -> None:
    """Append each garbage collection of 2 ms or more to a file, as JSON lines.

    A full collection stops the event loop; the benchmarks set these pauses
    beside the latencies they cause.
    """
    began: dict[int, float] = {}
    out = path.open("a", buffering=1)

    def callback(phase: str, info: dict[str, Any]) -> None:
        gen = int(info["generation"])
        if phase == "start":
            began[gen] = time.perf_counter()
            return
        ms = (time.perf_counter() - began.pop(gen, time.perf_counter())) * 1000
        if ms >= 2:
            out.write(
                json.dumps({"t": time.time(), "gen": gen, "ms": round(ms, 1)}) + "\n"
            )

    gc.callbacks.append(callback)


async def _bare_sio(args: argparse.Namespace) -> None:
    """python-socketio with nothing of ours: one room emit per event."""
    import socketio
    import uvicorn

    sio = socketio.AsyncServer(
        async_mode="asgi",
        cors_allowed_origins=[],
        max_http_buffer_size=64 * 1024,
        logger=False,
        engineio_logger=False,
    )

    @sio.on("connect", namespace=NAMESPACE)  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: Any, auth: Any = None) -> None:
        await sio.emit(
            "connected", {"sid": sid, "user": "bench"}, to=sid, namespace=NAMESPACE
        )

    @sio.on("start_job_status_listener", namespace=NAMESPACE)  # type: ignore[untyped-decorator]
    async def start(sid: str, data: Any = None) -> dict[str, Any]:
        await sio.enter_room(sid, ROOM, namespace=NAMESPACE)
        payload = {"sid": 1, "state": "connected", "reason": None}
        await sio.emit(
            "job_status_listener_started", payload, to=sid, namespace=NAMESPACE
        )
        return payload

    @sio.on("get_job_states", namespace=NAMESPACE)  # type: ignore[untyped-decorator]
    async def states(sid: str, data: Any = None) -> dict[str, Any]:
        payload = {"sid": 1, "jobs": []}
        await sio.emit("job_states", payload, to=sid, namespace=NAMESPACE)
        return payload

    async def listen() -> None:
        conn = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
        await conn.execute("LISTEN pgagent_watch")
        cur = await conn.execute("SELECT coalesce(max(id), 0) FROM pgagent_watch.event")
        row = await cur.fetchone()
        last = int(row[0]) if row else 0
        query = (
            "SELECT id, at, kind, job_id, jlgid, jstid, jslid, status"
            " FROM pgagent_watch.event WHERE id > %s ORDER BY id"
        )
        while True:
            async for _ in conn.notifies(timeout=1.0, stop_after=1):
                pass
            cur = await conn.execute(query, (last,))
            for r in await cur.fetchall():
                last = max(last, int(r[0]))
                update = {
                    "sid": 1,
                    "event_id": r[0],
                    "kind": r[2],
                    "job_id": r[3],
                    "job_name": "bench",
                    "run_id": r[4],
                    "step_id": r[5],
                    "step_run_id": r[6],
                    "step_name": None,
                    "status": r[7],
                    "status_text": r[7],
                    "result": None,
                    "timestamp": r[1].isoformat(),
                    "duration": None,
                }
                await sio.emit(
                    "job_status_update", update, room=ROOM, namespace=NAMESPACE
                )

    config = uvicorn.Config(
        socketio.ASGIApp(sio),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="off",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    listening = asyncio.create_task(listen())
    while not server.started:
        if task.done() or listening.done():
            raise SystemExit("the bare server did not start")
        await asyncio.sleep(0.02)
    _say({"ready": True, "role": "bare-sio"})
    await task
    listening.cancel()


# --- the clients --------------------------------------------------------------


class _Clients:
    """N Socket.IO clients speaking the protocol over aiohttp websockets.

    A browser parses frames in native code; a full python-socketio client per
    browser would measure the clients' own cost rather than the server's. These
    speak Engine.IO 4 / Socket.IO 5 themselves (open, namespace connect,
    ping-pong, events) and only look for the two fields they need in a frame.
    """

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.counts: list[int] = []
        self.ids: list[set[int]] | None = None
        self.latencies: list[float] = []
        # Every stride-th client records latencies (1: all). Spread over the
        # room, since the first clients to join are also the first served.
        self.stride: int = 1
        self.first = 0.0
        self.last = 0.0
        self.frames = 0
        self.changed = asyncio.Event()

    async def connect(self, url: str, n: int, states: bool) -> dict[str, Any]:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False)
            )
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        errors: list[str] = []
        start = len(self.sockets)
        sem = asyncio.Semaphore(50)

        async def one(index: int) -> None:
            async with sem:
                try:
                    await self._open(ws_url, index, states)
                except Exception as exc:
                    errors.append(repr(exc)[:200])

        self.counts.extend([0] * n)
        await asyncio.gather(*(one(start + i) for i in range(n)))
        return {"connected": len(self.sockets), "errors": errors[:5]}

    async def _open(self, ws_url: str, index: int, states: bool) -> None:
        assert self.session is not None
        # compress=15: offer permessage-deflate as browsers do.
        ws = await self.session.ws_connect(ws_url, compress=15, max_msg_size=0)
        opened = await ws.receive_str(timeout=30)
        if not opened.startswith("0"):
            raise RuntimeError(f"unexpected open packet {opened[:40]!r}")
        await ws.send_str(f"40{NAMESPACE},")
        joined = asyncio.get_running_loop().create_future()
        self.sockets.append(ws)
        self.tasks.append(asyncio.create_task(self._read(ws, index, joined)))
        await ws.send_str(f'42{NAMESPACE},["start_job_status_listener",{{"sid":1}}]')
        if states:
            await ws.send_str(f'42{NAMESPACE},["get_job_states",{{"sid":1}}]')
        await asyncio.wait_for(joined, 30)

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, index: int, joined: Any
    ) -> None:
        prefix = f"42{NAMESPACE},"
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data: str = msg.data
            if data == "2":
                await ws.send_str("3")
                continue
            if not data.startswith(prefix):
                continue
            body = data[len(prefix) :]
            if body.startswith('["job_status_'):
                now = time.time()
                if body.startswith('["job_status_listener_started"'):
                    if not joined.done():
                        joined.set_result(True)
                    continue
                ids = _EVENT_ID.findall(body)
                if not ids:
                    continue
                self.frames += 1
                self.counts[index] += len(ids)
                if self.ids is not None:
                    self.ids[index].update(int(i) for i in ids)
                if index % self.stride == 0:
                    for stamp in _STAMP.findall(body):
                        self.latencies.append(
                            now - datetime.fromisoformat(stamp).timestamp()
                        )
                if not self.first:
                    self.first = now
                self.last = now
                self.changed.set()

    def reset(self, track_ids: bool, sample: int) -> None:
        self.counts = [0] * len(self.counts)
        self.ids = [set() for _ in self.counts] if track_ids else None
        self.latencies = []
        self.first = self.last = 0.0
        self.frames = 0
        self.stride = max(1, len(self.counts) // sample) if sample else 1

    async def wait(self, expect: int, limit: float) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        while min(self.counts, default=expect) < expect:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
        lost = duplicates = None
        if self.ids is not None:
            lost = sum(max(0, expect - len(s)) for s in self.ids)
            duplicates = sum(
                c - len(s) for c, s in zip(self.counts, self.ids, strict=True)
            )
        return {
            "counts_min": min(self.counts, default=0),
            "counts_max": max(self.counts, default=0),
            "delivered": sum(self.counts),
            "frames": self.frames,
            "first": self.first,
            "last": self.last,
            "lost_ids": lost,
            "duplicates": duplicates,
            "latency": _percentiles([x * 1000 for x in self.latencies]),
        }

    async def close(self) -> None:
        for ws in self.sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.sockets.clear()
        self.tasks.clear()
        self.counts.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None


async def _clients(args: argparse.Namespace) -> None:
    clients = _Clients()
    async for cmd in _commands():
        op = cmd["cmd"]
        if op == "connect":
            _say(await clients.connect(cmd["url"], cmd["n"], cmd.get("states", False)))
        elif op == "reset":
            clients.reset(cmd.get("track_ids", False), cmd.get("sample", 0))
            # The instrument must not pause: 500 clients in one process make
            # full collections of 100 ms and more, which would show as the
            # service's latency. No collection while measuring.
            gc.collect()
            gc.disable()
            _say({"ok": True})
        elif op == "wait":
            result = await clients.wait(cmd["expect"], cmd.get("timeout", 30))
            gc.enable()
            _say(result)
        elif op == "close":
            await clients.close()
            _say({"ok": True})
    await clients.close()


# --- the database side --------------------------------------------------------


async def _floor(args: argparse.Namespace) -> None:
    """A bare LISTEN: the least time a notification can take to arrive."""
    conn = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
    await conn.execute("LISTEN pgagent_watch")
    arrivals: list[tuple[int, float]] = []
    changed = asyncio.Event()

    async def pump() -> None:
        async for notice in conn.notifies():
            now = time.time()
            with contextlib.suppress(ValueError):
                arrivals.append((int(notice.payload.split(",", 1)[0]), now))
            changed.set()

    pumping = asyncio.create_task(pump())
    async for cmd in _commands():
        if cmd["cmd"] == "reset":
            arrivals = []
            _say({"ok": True})
        elif cmd["cmd"] == "wait":
            deadline = time.monotonic() + cmd.get("timeout", 30)
            while len(arrivals) < cmd["expect"] and time.monotonic() < deadline:
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.5)
            _say({"arrivals": arrivals})
    pumping.cancel()


async def _listeners(args: argparse.Namespace) -> None:
    """The per-client design: one connection and LISTEN per browser."""
    conns: list[psycopg.AsyncConnection[Any]] = []
    tasks: list[asyncio.Task[None]] = []
    received = 0

    async def drain(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal received
        with contextlib.suppress(Exception):
            async for _ in conn.notifies():
                received += 1

    async for cmd in _commands():
        if cmd["cmd"] == "open":
            error = None
            while len(conns) < cmd["n"]:
                try:
                    conn = await psycopg.AsyncConnection.connect(
                        args.dsn, autocommit=True, application_name="per-client"
                    )
                    await conn.execute("LISTEN pgagent_watch")
                except psycopg.Error as exc:
                    error = str(exc).strip().splitlines()[-1][:200]
                    break
                conns.append(conn)
                tasks.append(asyncio.create_task(drain(conn)))
            _say({"opened": len(conns), "error": error, "received": received})
        elif cmd["cmd"] == "close":
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for conn in conns:
                with contextlib.suppress(Exception):
                    await conn.close()
            conns.clear()
            tasks.clear()
            _say({"ok": True, "received": received})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.procs")
    parser.add_argument(
        "role", choices=["serve", "bare-sio", "clients", "floor", "listeners"]
    )
    parser.add_argument("--dsn", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--gc-log", default="")
    args = parser.parse_args()
    role = {
        "serve": _serve,
        "bare-sio": _bare_sio,
        "clients": _clients,
        "floor": _floor,
        "listeners": _listeners,
    }[args.role]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us with SIGTERM
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(role(args))


if __name__ == "__main__":
    main()
