"""The local stand-in for a ModelServer's Service: one stable port in front of the ready replicas.

Server replicas come and go (in-place restarts, roll-outs, roll-backs) and each listens on
its own free port, so the URL a user or a script holds must not point at one of them. Like
a ClusterIP Service, this TCP proxy listens on one port for the whole run and hands each
connection to a ready replica (round robin). With no ready replica it answers
``503 Service Unavailable`` with a JSON error, as a Service with no endpoints in front of
mlvisor's server would (the API promises 503 while nothing can serve).

It forwards bytes, not requests: HTTP keep-alive, streaming, gRPC (HTTP/2) and any client
work unchanged, and a connection stays with the replica it was given until either side closes
it. The gRPC port is a second proxy of the same kind; with no ready replica it closes the
connection, which a gRPC client reports as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Sequence

_NO_ENDPOINTS_BODY = json.dumps(
    {"error": "no ready replica: the model server is starting, restarting or failed"}
).encode()


class LocalService:
    """A TCP proxy on 127.0.0.1:<port> to whatever ``endpoints()`` returns at connect time."""

    def __init__(self, name: str, endpoints: Callable[[], Sequence[int]], host: str = "127.0.0.1",
                 port: int = 0, http: bool = True) -> None:
        self.name = name
        self.http = http
        """HTTP/1.1 clients get a 503 JSON answer when nothing is ready; others (gRPC) a closed connection."""
        self.host = host
        self._want_port = port
        self._endpoints = endpoints
        self._rr = itertools.count()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, self.host, self._want_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                if self.http:
                    await self._unavailable(reader, writer)
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        ports = list(self._endpoints())
        if not ports:
            return None
        start = next(self._rr)
        for i in range(len(ports)):
            port = ports[(start + i) % len(ports)]
            try:
                return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            except (OSError, TimeoutError):
                continue  # the replica just went away: try the next one
        return None

    async def _unavailable(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Read the request head first so the client sees the answer rather than a reset.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(_NO_ENDPOINTS_BODY)}\r\nconnection: close\r\n\r\n".encode()
            + _NO_ENDPOINTS_BODY
        )
        with contextlib.suppress(Exception):
            await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
