"""kichat.sio against python-socketio's AsyncClient (a real third-party client)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio

from conftest import UNIT
from sio_harness import serve_sio


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_python_client_events_acks_and_broadcasts(transport: str) -> None:
    async with serve_sio() as h:
        client = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()

        @client.on("App\\Events\\ChatMessageEvent")  # type: ignore[misc]
        async def on_chat(data: dict[str, Any]) -> None:
            await got.put(("chat", (data,)))

        @client.on("echo")  # type: ignore[misc]
        async def on_echo(*args: Any) -> None:
            await got.put(("echo", args))

        # python-socketio passes every argument to handlers and never recovers a session, so it
        # opts out of recovery offsets: single-argument handlers then work as written.
        await client.connect(h.url, transports=[transport], auth={"recovery": False})
        assert await client.call("join", "room", timeout=5 * UNIT) == ("joined", "room")
        # python-socketio sends a tuple as several arguments.
        assert await client.call("echo", ({"x": [1, 2]}, b"\x00\x01"), timeout=5 * UNIT) == (
            {"x": [1, 2]}, b"\x00\x01",
        )  # fmt: skip
        await client.emit("echo-event", ("hello", b"bin"))
        assert await asyncio.wait_for(got.get(), 5 * UNIT) == ("echo", ("hello", b"bin"))
        h.sio.of("/").emit(r"App\Events\ChatMessageEvent", {"content": "hi"}, to="room")
        assert await asyncio.wait_for(got.get(), 5 * UNIT) == ("chat", ({"content": "hi"},))
        await client.disconnect()
        await h.wait_for(lambda: h.disconnects, 5 * UNIT)
        # python-engineio aborts its WebSocket on disconnect, which can drop the queued DISCONNECT
        # packet; either way a socket that opted out of recovery ends at once.
        assert h.disconnects[0][1] in ("client namespace disconnect", "transport close")


async def test_python_client_without_opt_out_sees_the_offset_argument() -> None:
    async with serve_sio() as h:
        client = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        @client.on("msg")  # type: ignore[misc]
        async def on_msg(*args: Any) -> None:
            await got.put(args)

        await client.connect(h.url, transports=["websocket"])
        await client.call("join", "room", timeout=5 * UNIT)
        h.sio.of("/").emit("msg", {"n": 1}, to="room")
        data, offset = await asyncio.wait_for(got.get(), 5 * UNIT)
        assert data == {"n": 1}
        assert offset == str(h.sio.of("/").log.last_offset)
        await client.disconnect()
