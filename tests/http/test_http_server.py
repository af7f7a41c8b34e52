"""The HTTP/1.1 + WebSocket server on real sockets, with real clients (raw TCP, websockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from kichat.http import HttpServer, Request, Response, WebSocketUpgrade

from conftest import UNIT, eventually
from http_harness import Echo, raw, serve


async def test_keep_alive_pipelined_requests_are_answered_in_order() -> None:
    async with serve() as (server, events):
        data = (
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /fast?a=1&a=2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /last HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        reply = await raw(server, data)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert reply.index(b'"/slow"') < reply.index(b'"/fast"') < reply.index(b'"/last"')
    assert ("request", "GET", "/fast", {"a": "1"}, b"") in events
    assert ("request", "POST", "/last", {}, b"hello") in events


async def test_handler_exception_becomes_a_json_500_and_the_server_lives_on() -> None:
    async with serve() as (server, _):
        reply = await raw(server, b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 500")
        assert b'"code":"internal_error"' in reply
        ok = await raw(server, b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", b"413"),
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
    ],
    ids=["headers-too-large", "body-too-large", "garbage"],
)
async def test_bad_requests_get_a_clear_status_and_json(
    request_bytes: bytes, status: bytes
) -> None:
    async with serve(max_body_size=1000) as (server, events):
        reply = await raw(server, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status)
    assert b'"error":{"code"' in reply
    assert not [e for e in events if e[0] == "request"]


async def test_chunked_body_over_the_limit_is_refused() -> None:
    async with serve(max_body_size=10) as (server, _):
        body = b"B\r\nhello world\r\n0\r\n\r\n"
        reply = await raw(server, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert reply.startswith(b"HTTP/1.1 413")


async def test_expect_100_continue() -> None:
    async with serve() as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"abc")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_idle_and_incomplete_connections_are_closed() -> None:
    async with serve(keepalive_timeout=0.2 * UNIT, request_timeout=0.2 * UNIT) as (server, _):
        idle = await raw(server, b"GET / HTTP/1.1\r\n\r\n")  # keep-alive, then idle
        assert idle.startswith(b"HTTP/1.1 200")
        partial = await raw(server, b"GET / HTTP/1.1\r\nHost:")  # never finishes
        assert partial.startswith(b"HTTP/1.1 408")


async def test_client_going_away_cancels_the_handler() -> None:
    async with serve() as (server, events):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /wait HTTP/1.1\r\n\r\n")
        await eventually(lambda: any(e[:3] == ("request", "GET", "/wait") for e in events))
        writer.close()
        await eventually(lambda: ("cancelled",) in events, what="the handler cancelled")


async def test_websocket_echo_ping_and_client_close() -> None:
    async with serve() as (server, events):
        async with connect(f"ws://127.0.0.1:{server.port}/ws", compression=None) as client:
            await client.send("hi")
            assert await client.recv() == "hi"
            await client.send(b"\x00\x01")
            assert await client.recv() == b"\x00\x01"
            pong = await client.ping()
            await asyncio.wait_for(pong, 2 * UNIT)
        await eventually(lambda: ("close", 1000) in events, what="the close seen")


async def test_server_initiated_close_and_protocol_errors() -> None:
    async with serve() as (server, _):
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as client:
            await client.send("close-me")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(client.recv(), 2 * UNIT)
            assert client.close_code == 4000
        async with connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as client:
            await client.send("x" * 5000)  # over the server's 1000-byte message limit
            with pytest.raises(websockets.ConnectionClosedError):
                await asyncio.wait_for(client.recv(), 2 * UNIT)
            assert client.close_code == 1009


async def test_bytes_sent_right_after_the_handshake_are_not_lost() -> None:
    async with serve() as (server, events):
        # A masked text frame "hi" glued to the upgrade request in one write.
        frame = bytes([0x81, 0x82, 1, 2, 3, 4, ord("h") ^ 1, ord("i") ^ 2])
        request = (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        reply = await raw(server, request + frame, read_until_close=False)
        assert reply.startswith(b"HTTP/1.1 101")
        await eventually(lambda: ("message", "hi") in events, what="the glued frame")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"426"),
        (b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: nope\r\n", b"400"),
    ],
)
async def test_bad_websocket_handshakes_are_refused(headers: bytes, status: bytes) -> None:
    async with serve() as (server, _):
        request = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + headers
        reply = await raw(server, request + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 " + status)


async def test_write_limit_reports_a_client_that_does_not_read() -> None:
    async with serve() as (server, events):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1024)
        writer.write(
            b"GET /ws?limit=65536 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        await reader.readuntil(b"\r\n\r\n")
        [sock] = server.websockets
        chunk = b"\x82\x7e\xff\xff" + b"x" * 65535  # one 64 KiB binary frame, pre-built
        for _ in range(400):  # far more than the kernel buffers hold
            sock.write(chunk)
            if ("paused",) in events:
                break
            await asyncio.sleep(0)
        assert ("paused",) in events
        writer.close()


async def test_graceful_close_finishes_requests_and_says_going_away() -> None:
    events: list[Any] = []
    started = asyncio.Event()

    async def handler(request: Request) -> Response | WebSocketUpgrade:
        if request.path == "/ws":
            return WebSocketUpgrade(lambda s: Echo(s, events))
        started.set()
        await asyncio.sleep(0.2 * UNIT)
        return Response.text("done")

    server = HttpServer(handler)
    await server.start("127.0.0.1", 0)
    client = await connect(f"ws://127.0.0.1:{server.port}/ws")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow HTTP/1.1\r\n\r\n")  # keep-alive, yet closed after the answer
    await asyncio.wait_for(started.wait(), 5 * UNIT)
    loop = asyncio.get_running_loop()
    closing = loop.time()
    await server.close(grace_period=5.0 * UNIT)
    assert loop.time() - closing < 5.0 * UNIT  # done when the request is, not at the deadline
    reply = await reader.read()
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"done")
    assert b"connection: close" in reply.lower()
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(client.recv(), 2 * UNIT)
    assert client.close_code == 1001
    writer.close()
