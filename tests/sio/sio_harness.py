"""A tiny Socket.IO application on a real port, for tests that drive real clients against it.

Events it understands (namespace "/"):
  join(room)          -> joins the room, acks ["joined", room]
  leave(room)         -> leaves the room, acks ["left", room]
  echo(*args)         -> acks with the same arguments
  echo-event(*args)   -> emits "echo" back with the same arguments
  ask(*args)          -> emits "question" to the client with an ack callback; the client's
                         answer is recorded in ``Harness.answers``
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from kichat.http import HttpServer, Request, Response, WebSocketUpgrade
from kichat.sio import Ack, ConnectRefused, Server, Socket


@dataclass
class Harness:
    sio: Server
    http: HttpServer
    url: str
    connects: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    disconnects: list[tuple[str, str]] = field(default_factory=list)
    answers: list[list[Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        return self.http.port

    async def wait_for(self, predicate: Any, within: float) -> None:
        """Wait until ``predicate()`` is true, re-checking whenever the app state changes and
        at least every 50 ms (for state the application does not announce)."""
        async with asyncio.timeout(within):
            while not predicate():
                self.changed.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)


def b64(data: bytes) -> dict[str, str]:
    return {"$bin": base64.b64encode(data).decode()}


@asynccontextmanager
async def serve_sio(**options: Any) -> AsyncIterator[Harness]:
    refuse = options.pop("refuse_token", None)
    send_buffer_size = options.pop("send_buffer_size", None)
    # Every test client comes from 127.0.0.1, swarms of them at once: tests of the per-client
    # budgets set their own.
    options.setdefault("pending_per_client", 10_000)
    sio = Server(**options)
    nsp = sio.of("/")

    async def handler(request: Request) -> Response | WebSocketUpgrade:
        if request.path == "/socket.io/":
            return await sio.handle(request)
        return Response.error(404, "not_found", "no such path")

    http = HttpServer(
        handler,
        max_body_size=options.get("max_payload", 1_000_000) + 1024,
        send_buffer_size=send_buffer_size,
    )
    await sio.start()
    await http.start("127.0.0.1", 0)
    h = Harness(sio, http, f"http://127.0.0.1:{http.port}")

    @nsp.on_connect
    def connect(sock: Socket, auth: dict[str, Any]) -> None:
        if refuse is not None and auth.get("token") == refuse:
            raise ConnectRefused("unauthorized", {"hint": "bad token"})
        h.connects.append((sock.sid, auth))
        h.changed.set()

    @nsp.on_disconnect
    def disconnect(sock: Socket, reason: str) -> None:
        h.disconnects.append((sock.sid, reason))
        h.changed.set()

    @nsp.on("join")
    def join(sock: Socket, args: list[Any], ack: Ack | None) -> None:
        sock.join(args[0])
        h.changed.set()
        if ack:
            ack("joined", args[0])

    @nsp.on("leave")
    def leave(sock: Socket, args: list[Any], ack: Ack | None) -> None:
        sock.leave(args[0])
        if ack:
            ack("left", args[0])

    @nsp.on("echo")
    def echo(sock: Socket, args: list[Any], ack: Ack | None) -> None:
        if ack:
            ack(*args)

    @nsp.on("echo-event")
    def echo_event(sock: Socket, args: list[Any], ack: Ack | None) -> None:
        sock.emit("echo", *args)

    @nsp.on("ask")
    def ask(sock: Socket, args: list[Any], ack: Ack | None) -> None:
        sock.emit("question", *args, callback=lambda *answer: h.answers.append(list(answer)))

    try:
        yield h
    finally:
        await sio.close()
        await http.close(grace_period=1.0)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
