"""A small application on :class:`kichat.http.HttpServer` for the HTTP tests, and raw-socket
helpers to talk to it the way real (and hostile) clients do."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kichat.http import HttpServer, Request, Response, WebSocket, WebSocketUpgrade

from conftest import UNIT


class Echo:
    """A WebSocket application that echoes and records what happens to it."""

    def __init__(self, sock: WebSocket, log: list[Any]) -> None:
        self.sock = sock
        self.log = log

    def on_message(self, data: str | bytes) -> None:
        self.log.append(("message", data))
        if data == "close-me":
            self.sock.close(4000, "as asked")
        elif isinstance(data, str):
            self.sock.send_text(data)
        else:
            self.sock.send_binary(data)

    def on_close(self, code: int, reason: str) -> None:
        self.log.append(("close", code))

    def on_pause_writing(self) -> None:
        self.log.append(("paused",))

    def on_resume_writing(self) -> None:
        self.log.append(("resumed",))


@asynccontextmanager
async def serve(**options: Any) -> AsyncIterator[tuple[HttpServer, list[Any]]]:
    events: list[Any] = []

    async def handler(request: Request) -> Response | WebSocketUpgrade:
        events.append(("request", request.method, request.path, request.query, request.body))
        if request.path == "/ws":
            limit = int(request.query.get("limit", 1 << 20))
            size = int(request.query.get("max", 1000))
            return WebSocketUpgrade(
                lambda s: Echo(s, events), max_message_size=size, write_limit=limit
            )
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/wait":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                events.append(("cancelled",))
                raise
        if request.path == "/slow":
            await asyncio.sleep(0.3 * UNIT)
        if request.path == "/big":
            return Response.text("x" * BIG_BODY)
        return Response.json({"path": request.path, "peer": request.peer})

    server = HttpServer(handler, **options)
    await server.start("127.0.0.1", 0)
    try:
        yield server, events
    finally:
        await server.close(grace_period=1.0)


async def raw(server: HttpServer, data: bytes, *, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    try:
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 5 * UNIT)
        return await asyncio.wait_for(reader.read(65536), 5 * UNIT)
    finally:
        writer.close()


BIG_BODY = 64 * 1024
HANDSHAKE = (
    b"GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
)


async def ws_open(
    server: HttpServer, query: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand on a raw TCP connection (to send what no library would)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16))
    writer.write(HANDSHAKE.replace(b"{query}", query.encode()).replace(b"{key}", key))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def next_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (unmasked): (opcode, payload)."""
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5 * UNIT)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", await reader.readexactly(8))[0]
    return b0 & 0x0F, await reader.readexactly(n)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed or reset the connection."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data
