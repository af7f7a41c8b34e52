"""PusherConnection against small scripted WebSocket servers, for what the simulator cannot do
on purpose: send malformed frames, close without a code, never finish the handshake, and show
the request headers we sent. They are real ``websockets`` servers on loopback, not mocks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from kichat.errors import ConfigError, PusherFatalError
from kichat.kick.pusher import PusherConnection
from kichat.kick.pusher.connection import DEFAULT_USER_AGENT

from conftest import UNIT, eventually
from pusher_helpers import Recorder, fast_backoff, pusher_tasks

CHANNEL = "chatrooms.668.v2"
ESTABLISHED = json.dumps(
    {
        "event": "pusher:connection_established",
        "data": json.dumps({"socket_id": "1.2", "activity_timeout": 120}),
    }
)

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def scripted_server(handler: Handler) -> AsyncIterator[tuple[str, list[ServerConnection]]]:
    """A WebSocket server running ``handler`` for every connection; yields (url, connections)."""
    connections: list[ServerConnection] = []

    async def run(ws: ServerConnection) -> None:
        connections.append(ws)
        await handler(ws)

    async with serve(run, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/app/key?protocol=7", connections


async def next_subscribe(ws: ServerConnection) -> str:
    async for message in ws:
        frame = json.loads(message)
        if frame["event"] == "pusher:subscribe":
            channel: str = frame["data"]["channel"]
            return channel
    raise AssertionError("client went away before subscribing")


def connection(url: str, recorder: Recorder, **kwargs: Any) -> PusherConnection:
    kwargs.setdefault("backoff", fast_backoff())
    return PusherConnection(url, on_event=recorder, **kwargs)


async def test_malformed_frames_are_counted_and_skipped() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(ESTABLISHED)
        channel = await next_subscribe(ws)
        for bad in ("not json", "[1,2]", '{"data":"{}"}', '{"event":"E","data":"{}"}'):
            await ws.send(bad)
        ack = {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"}
        await ws.send(json.dumps(ack))
        await ws.send(json.dumps({"event": "E", "channel": channel, "data": '{"ok":true}'}))
        await ws.wait_closed()

    recorder = Recorder()
    async with scripted_server(handler) as (url, _):
        conn = connection(url, recorder)
        conn.start()
        await conn.subscribe(CHANNEL)
        assert await recorder.next() == (CHANNEL, "E", '{"ok":true}')
        status = conn.status()
        assert status.malformed_frames == 4
        assert status.state == "connected"
        assert status.connect_attempts == 1
        await conn.close()


async def test_pusher_error_then_a_close_without_code_uses_the_error_code() -> None:
    # Protocol < 6 style: the code travels only in pusher:error; the close frame has none.
    async def handler(ws: ServerConnection) -> None:
        error = {"code": 4001, "message": "App key key does not exist in this cluster"}
        await ws.send(json.dumps({"event": "pusher:error", "data": error}))
        await ws.close()

    recorder = Recorder()
    async with scripted_server(handler) as (url, connections):
        conn = connection(url, recorder)
        conn.start()
        with pytest.raises(PusherFatalError) as info:
            await conn.subscribe(CHANNEL)
        assert info.value.code == 4001
        assert "does not exist" in info.value.message
        status = conn.status()
        assert (status.state, status.last_close_code) == ("fatal", 4001)
        assert status.fatal_error is not None
        await asyncio.sleep(0.5 * UNIT)  # asserting an absence: no reconnect attempt
        assert len(connections) == 1
        await conn.close()


async def test_no_connection_established_is_a_handshake_timeout() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()  # accepts the WebSocket, never speaks Pusher

    recorder = Recorder()
    async with scripted_server(handler) as (url, connections):
        conn = connection(url, recorder, open_timeout=0.3 * UNIT)
        conn.start()
        await eventually(lambda: conn.reconnects_by_code.get("stale", 0) >= 2)
        assert len(connections) >= 2
        assert "connection_established" in conn.status().last_close_reason
        await conn.close()


async def test_user_agent_and_extra_headers_are_sent() -> None:
    seen: list[dict[str, str]] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(dict(ws.request.headers.raw_items()))
        await ws.send(ESTABLISHED)
        await ws.wait_closed()

    recorder = Recorder()
    async with scripted_server(handler) as (url, _):
        conn = connection(url, recorder, extra_headers={"Accept-Language": "en"})
        conn.start()
        await eventually(lambda: conn.state == "connected")
        await conn.close()
        conn = connection(url, recorder, extra_headers={"User-Agent": "custom/1"})
        conn.start()
        await eventually(lambda: conn.state == "connected")
        await conn.close()
    assert seen[0]["User-Agent"] == DEFAULT_USER_AGENT
    assert seen[0]["Accept-Language"] == "en"
    assert seen[1]["User-Agent"] == "custom/1"


async def test_close_sends_1000_and_cancels_everything() -> None:
    codes: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.send(ESTABLISHED)
        await ws.wait_closed()
        codes.append(ws.close_code)

    recorder = Recorder()
    async with scripted_server(handler) as (url, _):
        conn = connection(url, recorder)
        conn.start()
        await eventually(lambda: conn.state == "connected")
        assert pusher_tasks()  # reader and writer are running
        await conn.close()
        assert conn.state == "closed"
        assert pusher_tasks() == set()
        await eventually(lambda: codes == [1000], what="server saw close 1000")


def test_an_invalid_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        PusherConnection("http://example.invalid/app/key", on_event=Recorder())
