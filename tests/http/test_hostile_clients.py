"""Hostile HTTP and WebSocket clients on real sockets (issue 8, items 1, 2, 5 and 8): every
limit holds on partial input as bytes arrive, a client that pipelines without reading is
stopped and cut off, and while one client attacks, another is served promptly."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kichat.http import HttpServer
from kichat.http import websocket as ws

from conftest import UNIT, eventually
from http_harness import BIG_BODY, next_frame, read_until_closed, serve, ws_open
from wsframes import client_frame, close_payload

# What one read from a socket can bring (asyncio and uvloop read at most 256 KiB at a time).
ONE_READ = 256 * 1024


class Watch:
    """Samples, every millisecond, the most any HTTP connection of ``server`` holds."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.max_held = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            for conn in list(self.server.http_connections):
                if conn.reader is not None:
                    self.max_held = max(self.max_held, conn.reader.held)
            await asyncio.sleep(0.001)

    def stop(self) -> None:
        self._task.cancel()


async def timed_requests(server: HttpServer, count: int) -> list[float]:
    """An ordinary client: ``count`` keep-alive GETs one after the other; their latencies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    latencies = []
    try:
        for _ in range(count):
            start = time.monotonic()
            writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10 * UNIT)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.005)
    finally:
        writer.close()
    return latencies


async def flood(server: HttpServer, first: bytes, more: bytes, limit: int) -> tuple[bytes, int]:
    """Send ``first`` then ``more`` over and over (``limit`` bytes at most) while reading;
    stop when the server answers and hangs up. Returns (its answer, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    reply = asyncio.ensure_future(read_until_closed(reader))
    sent = 0
    with contextlib.suppress(ConnectionError):
        writer.write(first)
        sent += len(first)
        while sent < limit and not reply.done():
            writer.write(more)
            sent += len(more)
            await writer.drain()
            await asyncio.sleep(0)  # let the reading side see the answer as it comes
    answer = await asyncio.wait_for(reply, 10 * UNIT)
    writer.close()
    return answer, sent


async def attacked(server: HttpServer, attack: Awaitable[Any]) -> tuple[Any, list[float]]:
    """Run ``attack`` while an ordinary client makes 20 requests; both results."""
    result, latencies = await asyncio.gather(attack, timed_requests(server, 20))
    return result, latencies


# ------------------------------------------------------------------ item 1: partial heads


async def test_endless_request_line_is_refused_with_414_at_the_limit() -> None:
    async with serve(max_header_size=4096) as (server, events):
        watch = Watch(server)
        (answer, sent), latencies = await attacked(
            server, flood(server, b"GET /", b"a" * 1024, 64 * 1024 * 1024)
        )
        watch.stop()
    assert answer.startswith(b"HTTP/1.1 414"), answer[:80]
    assert b'"code":"uri_too_long"' in answer
    # Before: the line was buffered without limit (1 GiB in 2 s on one connection).
    assert watch.max_held <= 4096 + ONE_READ
    assert sent < 64 * 1024 * 1024  # the server hung up long before the attacker's own limit
    assert max(latencies) < 1.0 * UNIT
    assert not [e for e in events if e[0] == "request" and e[2] != "/ok"]


async def test_endless_header_value_is_refused_with_431_while_others_are_served() -> None:
    async with serve(max_header_size=4096) as (server, _):
        watch = Watch(server)
        first = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: "
        (answer, _sent), latencies = await attacked(
            server, flood(server, first, b"a" * 100, 64 * 1024 * 1024)
        )
        watch.stop()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert watch.max_held <= 4096 + ONE_READ
    # Before: header fragments joined by repeated += pinned the loop (3-10 s for /healthz).
    assert max(latencies) < 1.0 * UNIT


async def test_many_small_headers_past_the_limit_are_refused() -> None:
    async with serve(max_header_size=4096) as (server, _):
        answer, _ = await flood(server, b"GET / HTTP/1.1\r\n", b"X-A: b\r\n", 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 431")


async def test_head_trickled_slowly_gets_408_at_its_deadline() -> None:
    timeout = 0.5 * UNIT
    async with serve(request_timeout=timeout, keepalive_timeout=10) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\n")
        answer = asyncio.ensure_future(read_until_closed(reader))
        while not answer.done():  # slowloris: a valid header line now and then
            writer.write(b"X-a: b\r\n")
            await asyncio.wait([answer], timeout=0.05 * UNIT)
        elapsed = time.monotonic() - start
        writer.close()
    assert answer.result().startswith(b"HTTP/1.1 408")
    # A deadline from the first byte, not an idle timer that each byte restarts.
    assert timeout * 0.9 <= elapsed < timeout + 2 * UNIT


async def test_each_pipelined_request_gets_its_own_deadline() -> None:
    timeout = 0.6 * UNIT
    async with serve(request_timeout=timeout) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(6):  # 6 requests spread over more than one timeout, each quick
            writer.write(b"GET /ok HTTP/1.1\r\nHo")
            await asyncio.sleep(timeout / 4)
            writer.write(b"st: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
            assert head.startswith(b"HTTP/1.1 200")
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
        writer.close()


async def test_chunked_trailers_that_never_end_are_refused() -> None:
    async with serve(max_header_size=4096) as (server, _):
        first = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: "
        answer, _ = await flood(server, first, b"t" * 100, 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 431")


async def test_chunked_body_in_one_byte_chunks_counts_its_framing() -> None:
    async with serve(max_header_size=1024, max_body_size=1000) as (server, events):
        # 1-byte chunks cost 6 bytes of framing each: refused before 1000 body bytes.
        first = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer, _ = await flood(server, first, b"1\r\nx\r\n" * 100, 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413")
    assert not [e for e in events if e[0] == "request"]


async def test_body_trickled_in_tiny_pieces_is_held_once() -> None:
    size = 20_000
    async with serve(max_body_size=size) as (server, events):
        watch = Watch(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /upload HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 10):
            writer.write(b"0123456789")
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
        watch.stop()
        writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert ("request", "POST", "/upload", {}, b"0123456789" * (size // 10)) in events
    assert watch.max_held <= size + 200


async def test_a_client_that_sends_a_whole_large_upload_before_reading_gets_its_413() -> None:
    """Python's http.client writes the whole body, then reads. The refusal comes at the head;
    the server must go on dropping what arrives (16 MiB here, several MiB of it already in the
    kernel's buffers) rather than reset the connection, which would destroy the answer."""

    def upload(port: int) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * UNIT)
        try:
            conn.request("POST", "/upload", body=b"u" * (16 << 20))
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    async with serve(max_body_size=1000) as (server, events):
        status, body = await asyncio.to_thread(upload, server.port)
        assert not [e for e in events if e[0] == "request"]
        # ... and the server is left with nothing of it.
        await eventually(lambda: not server.http_connections, 5 * UNIT, "connection closed")
    assert (status, b'"code":"body_too_large"' in body) == (413, True), (status, body)


# ------------------------------------------------------------------ item 2: pipelining


def _client_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that barely reads
    sock.setblocking(False)
    return sock


async def _pipeline_until(sock: socket.socket, request: bytes,
                          done: Callable[[], bool]) -> int:  # fmt: skip
    """Send ``request`` pipelined, never reading, until ``done()``; bytes sent."""
    batch = request * 50
    sent = 0
    while not done():
        try:
            sent += sock.send(batch)
        except BlockingIOError:
            await asyncio.sleep(0.005)
        except ConnectionError:
            break
    return sent


async def test_pipelining_client_that_never_reads_is_paused_then_cut_off() -> None:
    async with serve(write_timeout=0.5 * UNIT, keepalive_timeout=30) as (server, events):
        loop = asyncio.get_running_loop()
        sock = _client_socket()
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await eventually(lambda: len(server.http_connections) == 1)
        [conn] = server.http_connections

        def stopped() -> bool:
            return conn.reading_paused and conn.writing_paused

        await asyncio.wait_for(
            _pipeline_until(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n", stopped), 10 * UNIT
        )
        # What the server holds for this client, while it is stopped: the transport's
        # write buffer (one response past the high-water mark), a few parsed requests, and
        # at most one read of unparsed bytes.
        assert conn.transport is not None and conn.reader is not None
        assert conn.transport.get_write_buffer_size() <= 64 * 1024 + BIG_BODY + 1024
        assert len(conn.queue) <= 4
        assert conn.reader.held <= ONE_READ
        answered = len([e for e in events if e[0] == "request"])
        # Before: requests queued without bound (50 MiB/s) and nothing ended it.
        await eventually(lambda: not server.http_connections, 10 * UNIT, "the cut-off")
        assert len([e for e in events if e[0] == "request"]) == answered  # nothing after
        sock.close()


async def test_slow_reader_that_keeps_reading_is_not_cut_off() -> None:
    async with serve(write_timeout=1.0 * UNIT) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1024)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        received = 0
        want = 4 * BIG_BODY
        while received < want:  # about 1.5 write timeouts in all, but always progressing
            chunk = await asyncio.wait_for(reader.read(32 * 1024), 5 * UNIT)
            assert chunk, "the server cut off a client that was reading"
            received += chunk.count(b"x")
            await asyncio.sleep(1.0 * UNIT * 1.5 / 8)
        writer.close()


async def test_many_pipelined_requests_are_answered_in_order_across_pauses() -> None:
    count = 300
    async with serve() as (server, events):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        batch = b"".join(
            b"POST /n/%d HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (i, i % 7, b"b" * (i % 7))
            if i % 3 == 0 else b"GET /n/%d?x=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (i, i)
            for i in range(count)
        )  # fmt: skip
        writer.write(batch + b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
        replies = await asyncio.wait_for(reader.read(), 20 * UNIT)
        writer.close()
    paths = [line.split(b'"path":"')[1].split(b'"')[0] for line in replies.split(b"\r\n\r\n")[1:]]
    assert paths == [b"/n/%d" % i for i in range(count)] + [b"/last"]
    bodies = {e[2]: e[4] for e in events if e[0] == "request"}
    assert bodies["/n/299"] == b""
    assert bodies["/n/297"] == b"b" * (297 % 7)


# ------------------------------------------------------------------ WebSocket (items 5, 8)


async def _until_close(reader: asyncio.StreamReader) -> tuple[list[tuple[int, bytes]], int]:
    frames = []
    while True:
        opcode, payload = await next_frame(reader)
        frames.append((opcode, payload))
        if opcode == ws.OP_CLOSE:
            return frames, struct.unpack(">H", payload[:2])[0]


async def test_fragment_flood_is_closed_with_1009() -> None:
    async with serve() as (server, events):
        reader, writer = await ws_open(server, "?max=65536")
        empty = client_frame(ws.OP_CONTINUATION, b"", fin=False)
        writer.write(client_frame(ws.OP_TEXT, b"4", fin=False))
        closing = asyncio.ensure_future(_until_close(reader))
        sent = 0
        with contextlib.suppress(ConnectionError):
            while not closing.done() and sent < 10_000_000:
                writer.write(empty * 10_000)  # Before: 20 M of these added 153 MiB
                sent += 10_000
                await writer.drain()
                await asyncio.sleep(0)
        _, code = await asyncio.wait_for(closing, 5 * UNIT)
        writer.close()
        await eventually(lambda: ("close", 1009) in events)
    assert code == ws.CLOSE_TOO_BIG
    assert not [e for e in events if e[0] == "message"]


async def test_message_read_together_with_a_bad_frame_is_delivered_before_the_close() -> None:
    async with serve() as (server, events):
        reader, writer = await ws_open(server)
        writer.write(  # one write, one TCP segment: Autobahn 3.2
            client_frame(ws.OP_TEXT, b"hello")
            + client_frame(ws.OP_TEXT, b"bad", rsv=0x20)
            + client_frame(ws.OP_TEXT, b"never")
        )
        frames, code = await _until_close(reader)
        writer.close()
        await eventually(lambda: ("close", 1002) in events)
    assert frames[0] == (ws.OP_TEXT, b"hello")
    assert code == ws.CLOSE_PROTOCOL_ERROR
    assert [e for e in events if e[0] in ("message", "close")] == [
        ("message", "hello"),
        ("close", 1002),
    ]


async def test_invalid_utf8_fails_before_the_fragmented_message_ends() -> None:
    async with serve() as (server, events):
        reader, writer = await ws_open(server)
        writer.write(client_frame(ws.OP_TEXT, "κόσμε".encode(), fin=False))
        writer.write(client_frame(ws.OP_CONTINUATION, b"\xf4\x90\x80\x80", fin=False))
        _, code = await _until_close(reader)  # no third fragment needed
        writer.close()
    assert code == ws.CLOSE_INVALID_PAYLOAD
    assert not [e for e in events if e[0] == "message"]


async def test_ping_flood_from_a_client_that_never_reads_is_answered_once() -> None:
    limit = 16 * 1024
    async with serve() as (server, events):
        _, writer = await ws_open(server, f"?limit={limit}")
        [sock] = server.websockets
        sock.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        ping = client_frame(ws.OP_PING, b"p" * 125)
        for _ in range(40):  # 40 x 2000 pings: about 10 MB of pongs if each were answered
            writer.write(ping * 2000)
            await writer.drain()
            if ("paused",) in events:
                break
        await eventually(lambda: ("paused",) in events)
        for _ in range(5):
            writer.write(ping * 2000)
            await writer.drain()
        assert sock.write_buffer_size <= limit + 2 * len(ping)
        writer.close()


@pytest.mark.parametrize("split", [1, 7, 1000])
async def test_large_message_in_small_writes_arrives_whole(split: int) -> None:
    payload = bytes(range(256)) * 200
    async with serve() as (server, events):
        reader, writer = await ws_open(server, "?max=100000")
        frame = client_frame(ws.OP_BINARY, payload)
        for pos in range(0, len(frame), split * 97):
            writer.write(frame[pos : pos + split * 97])
        opcode, echoed = await next_frame(reader)
        writer.write(client_frame(ws.OP_CLOSE, close_payload(1000)))
        writer.close()
    assert (opcode, echoed) == (ws.OP_BINARY, payload)
    assert ("message", payload) in events
