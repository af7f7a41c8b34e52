"""What a client sends is bounded in depth and in size everywhere it is kept or walked
(issue 8, item 3), at the wire: over WebSocket, over long-polling, and through the
binary-attachment path.

Deeply nested JSON is a protocol error for that connection only (a close frame on WebSocket, a
400 on polling), one short log line, never a 5xx or a traceback; nesting within the limit still
works end to end. Binary attachments and events waiting behind a busy handler count against
maxPayload. Before: a nested packet escaped as RecursionError (HTTP 500 on polling, a dropped
connection without a close frame, 164 KB of log for a 2 KB packet).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from kichat.sio.parser import MAX_DEPTH

from conftest import UNIT
from sio_harness import Harness, serve_sio


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


# Just past the limit, past orjson's own limit (1024) and past Python's recursion limit.
DEPTHS = [MAX_DEPTH + 1, 1000, 1100, 5000]


async def recv_json_after(sock: ClientConnection, prefix: str) -> Any:
    msg = await asyncio.wait_for(sock.recv(), 5 * UNIT)
    assert isinstance(msg, str) and msg.startswith(prefix), msg
    return json.loads(msg[len(prefix) :])


async def joined_socket(h: Harness, room: str = "r") -> ClientConnection:
    sock = await connect(f"ws://127.0.0.1:{h.port}/socket.io/?EIO=4&transport=websocket")
    await recv_json_after(sock, "0")
    await sock.send("40")
    await recv_json_after(sock, "40")
    await sock.send(f'421["join","{room}"]')
    await recv_json_after(sock, "431")
    return sock


async def polling_session(http: httpx.AsyncClient, h: Harness) -> str:
    base = f"{h.url}/socket.io/?EIO=4&transport=polling"
    handshake = await http.get(base)
    sid: str = json.loads(handshake.text[1:])["sid"]
    assert (await http.post(f"{base}&sid={sid}", content="40")).text == "ok"
    assert (await http.get(f"{base}&sid={sid}")).text.startswith("40")
    return f"{base}&sid={sid}"


def assert_one_short_line(records: list[logging.LogRecord]) -> None:
    """At INFO (the default level) one line; at any level, nothing long, no traceback."""
    for record in records:
        assert record.exc_info is None
        assert len(record.getMessage()) < 160, record.getMessage()[:300]
    info = [r for r in records if r.levelno >= logging.INFO]
    assert len(info) == 1, [r.getMessage() for r in info]
    assert info[0].levelno == logging.INFO
    assert "nested deeper" in info[0].getMessage()


@pytest.mark.parametrize("depth", DEPTHS)
async def test_nested_event_over_websocket_closes_only_that_connection(
    depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kichat")
    async with serve_sio() as h:
        bystander = await joined_socket(h)
        culprit = await joined_socket(h)
        caplog.clear()
        await culprit.send('42["echo",' + nested(depth) + "]")
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(culprit.recv(), 5 * UNIT)
        # A close frame with the protocol-error code, not a dropped TCP connection.
        assert culprit.close_code == 1002
        assert culprit.close_reason == "parse error"
        assert h.sio.stats.parse_errors == 1
        # Nobody else noticed.
        h.sio.of("/").emit("news", {"n": 1}, to="r")
        assert (await recv_json_after(bystander, "42"))[:2] == ["news", {"n": 1}]
        assert_one_short_line(caplog.records)
        await bystander.close()


@pytest.mark.parametrize("depth", DEPTHS)
async def test_nested_event_over_polling_is_a_400(
    depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kichat")
    async with serve_sio() as h, httpx.AsyncClient(timeout=10 * UNIT) as http:
        url = await polling_session(http, h)
        caplog.clear()
        reply = await http.post(url, content='42["echo",' + nested(depth) + "]")
        assert reply.status_code == 400
        assert reply.json() == {"code": 3, "message": "Bad request"}
        # The session is over: its next poll says so.
        assert (await http.get(url)).status_code == 400
        assert_one_short_line(caplog.records)


@pytest.mark.parametrize("depth", [MAX_DEPTH, 900, 5000])
async def test_nested_placeholder_in_a_binary_event_is_a_400(depth: int) -> None:
    # The binary path walks the data again (to put the attachments in place).
    packet = '451-["echo",' + nested(depth - 1, '{"_placeholder":true,"num":0}') + "]"
    async with serve_sio() as h, httpx.AsyncClient(timeout=10 * UNIT) as http:
        url = await polling_session(http, h)
        reply = await http.post(url, content=packet + "\x1ebAQID")
        assert reply.status_code == 400
        assert reply.json() == {"code": 3, "message": "Bad request"}
        assert h.sio.stats.parse_errors == 1


async def test_nesting_up_to_the_limit_round_trips_with_binary() -> None:
    # The argument list is level 1: an argument may nest MAX_DEPTH - 1 levels.
    arg = nested(MAX_DEPTH - 2, '{"_placeholder":true,"num":0}')
    async with serve_sio() as h:
        sock = await joined_socket(h)
        await sock.send('451-7["echo",' + arg + "]")
        await sock.send(b"\x01\x02\x03")
        head = await asyncio.wait_for(sock.recv(), 5 * UNIT)
        assert head == "461-7[" + arg + "]"
        assert await asyncio.wait_for(sock.recv(), 5 * UNIT) == b"\x01\x02\x03"
        await sock.send("427[" + '"echo",' + nested(MAX_DEPTH - 1) + "]")
        assert await asyncio.wait_for(sock.recv(), 5 * UNIT) == "437[" + nested(MAX_DEPTH - 1) + "]"
        assert h.sio.stats.parse_errors == 0
        await sock.close()


async def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[" * 5000 + "{" * 5000
    async with serve_sio() as h:
        sock = await joined_socket(h)
        await sock.send(
            json.dumps(["echo", text, {"k": text}], separators=(",", ":")).join(["421", ""])
        )
        assert await recv_json_after(sock, "431") == [text, {"k": text}]
        await sock.close()


async def test_binary_attachments_together_are_bounded_by_max_payload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kichat")
    async with serve_sio(max_payload=100_000) as h:
        sock = await joined_socket(h)
        head = '455-["echo",' + ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(5))
        await sock.send(head + "]")
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(5):
                await sock.send(b"\x00" * 30_000)  # each fits; together they do not
            await asyncio.wait_for(sock.recv(), 5 * UNIT)
        assert sock.close_code == 1002
        assert h.sio.stats.parse_errors == 1
        assert "binary packet larger than maxPayload" in caplog.text


async def test_events_waiting_behind_a_busy_handler_are_bounded_in_bytes() -> None:
    async with serve_sio(max_payload=100_000) as h:
        gate = asyncio.Event()

        @h.sio.of("/").on("slow")
        async def slow(sock: Any, args: list[Any], ack: Any) -> None:
            await gate.wait()

        sock = await joined_socket(h)
        await sock.send('42["slow"]')  # busy from now on: what follows waits in the inbox
        big = '42["echo","' + "x" * 30_000 + '"]'
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(4):  # 3 x 30 KB wait; the 4th would take the inbox past 100 KB
                await sock.send(big)
            await asyncio.wait_for(sock.recv(), 5 * UNIT)
        [(_, reason)] = h.disconnects
        assert reason == "forced close"
        gate.set()
