"""A small HTTP/1.1 server on asyncio protocols, with a WebSocket upgrade path.

Why not a framework: the gateway keeps thousands of WebSocket connections open and writes the
same pre-built frame to each of them. Measured on our machines (bench/stack-choice.md), a
connection held by this module costs about 1.4 KiB of Python memory against about 13 KiB under
aiohttp, and a broadcast writes bytes straight to each transport. HTTP here serves the REST API,
health checks and Engine.IO long-polling: a handful of requests per second per client.

What it does: HTTP/1.1 with keep-alive and pipelining (one request handled at a time per
connection, in order, and flow control: see :class:`HttpProtocol`), ``Expect: 100-continue``,
limits on header and body sizes enforced as bytes arrive (:mod:`kichat.http.request`), a
deadline for each request, a timeout for idle keep-alive connections and for clients that do
not read their answers, cancellation of the handler when the client goes away, and the
RFC 6455 upgrade to :class:`~kichat.http.wsconn.WebSocket`.

The application is one coroutine function ``handler(request) -> Response | WebSocketUpgrade``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, cast

import orjson

from kichat.http import websocket as ws
from kichat.http.request import HttpRequestError, Request, RequestReader
from kichat.http.wsconn import WebSocket, WebSocketUpgrade

log = logging.getLogger("kichat.http")

_REASONS: Final = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 204: "No Content",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long",
    426: "Upgrade Required", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}  # fmt: skip
# Requests parsed ahead of the one being handled, at most, on one connection.
_MAX_PIPELINED: Final = 4
# After refusing a request: how long to keep reading (and dropping) what the client still
# sends, so that our answer is not destroyed by a reset (see _reject). A time bound, not a
# byte bound: dropped bytes cost no memory, and a client that writes a whole large upload
# before it reads (Python's http.client does) has several MiB in flight in loopback's
# kernel buffers alone; a byte bound reset it instead of letting it read the 413.
_LINGER: Final = 2.0
# What HttpProtocol's one timer is waiting for.
_RECEIVING, _IDLE, _WRITING, _LINGERING = range(4)


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int = 200, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.status = status
        self.body = body
        self.headers = list(headers)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, orjson.dumps(obj), [("Content-Type", "application/json"), *headers])

    @classmethod
    def text(
        cls, text: str, status: int = 200, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        body = text.encode("utf-8")
        return cls(status, body, [("Content-Type", "text/plain; charset=UTF-8"), *headers])

    @classmethod
    def error(cls, status: int, code: str, message: str, **extra: Any) -> Response:
        """The gateway's one JSON error shape: ``{"error": {"code", "message", ...}}``."""
        return cls.json({"error": {"code": code, "message": message, **extra}}, status)


Handler = Callable[[Request], Awaitable[Response | WebSocketUpgrade]]


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode("ascii"))


def serialize_response(resp: Response, *, keep_alive: bool, head: bool = False) -> bytes:
    lines = [_status_line(resp.status)]
    for name, value in resp.headers:
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if resp.status != 304:  # a 304's length would be the cached body's: say none
        lines.append(b"Content-Length: %d\r\n" % len(resp.body))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(resp.body)
    return b"".join(lines)


# Another process may serve a connection: called with the start of a request on an idle
# connection (at least its request line) and the transport; True if it took the connection.
Redirect = Callable[[bytes, asyncio.Transport], bool]
_REQUEST_LINE_LIMIT: Final = 8 * 1024  # what a redirect may look at before the request is ours


class HttpServer:
    """Owns the listening socket and every connection, for a clean shutdown."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_header_size: int = 16 * 1024,
        max_body_size: int = 1_100_000,
        request_timeout: float = 30.0,
        keepalive_timeout: float = 30.0,
        websocket_close_timeout: float = 3.0,
        write_timeout: float = 30.0,
        send_buffer_size: int | None = None,
    ) -> None:
        self.handler = handler
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.websocket_close_timeout = websocket_close_timeout
        # An HTTP client whose responses make no progress out of the write buffer for this
        # long (it pipelines and never reads) is cut off.
        self.write_timeout = write_timeout
        # SO_SNDBUF for accepted sockets. None keeps the kernel's autotuning; a cap bounds the
        # kernel memory a client that stops reading can pin, and makes the slow-client cut-off
        # (the outbound buffer limit) take effect after a predictable amount of data.
        self.send_buffer_size = send_buffer_size
        # Set by ``kichat serve --workers``: hand connections to the worker owning their session.
        self.redirect: Redirect | None = None
        self.http_connections: set[HttpProtocol] = set()
        self.websockets: set[WebSocket] = set()
        self._http_drained = asyncio.Event()
        self._ws_drained = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.closing = False  # responses now end their connection (no keep-alive)

    async def start(
        self,
        host: str,
        port: int,
        *,
        backlog: int = 2048,
        start_serving: bool = True,
        reuse_port: bool = False,
    ) -> None:
        """Bind ``host:port`` (raising OSError if it is taken); accept connections now, or
        from :meth:`serve` on (``start_serving=False``: bind early, serve once ready).
        ``reuse_port``: several processes listen on the port, the kernel spreads connections."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self), host, port, backlog=backlog, reuse_address=True,
            reuse_port=reuse_port or None, start_serving=start_serving,
        )  # fmt: skip

    async def serve(self) -> None:
        assert self._server is not None, "server not started"
        await self._server.start_serving()

    async def start_unix(self, path: str) -> asyncio.Server:
        """Also serve on a Unix socket (the workers of one server ask each other there)."""
        loop = asyncio.get_running_loop()
        return await loop.create_unix_server(lambda: HttpProtocol(self), path)

    async def adopt(self, sock: socket.socket, data: bytes) -> None:
        """Serve a connection another process accepted, ``data`` being what it read of it."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        _, protocol = await loop.connect_accepted_socket(lambda: HttpProtocol(self), sock=sock)
        if data:
            protocol.data_received(data, redirectable=False)

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self, grace_period: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish and WebSocket closing handshakes
        complete, within ``grace_period`` seconds in all; then cut what is left.

        WebSocket applications are expected to have closed their connections first (the
        Socket.IO server tells clients to reconnect elsewhere); anything left is closed with
        1001 "going away". A response sent from now on ends its connection.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_period
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.http_connections):
            conn.close_when_idle()
        for sock in list(self.websockets):
            sock.close(ws.CLOSE_GOING_AWAY, "server shutting down")
        await _wait_until_empty(self.http_connections, self._http_drained, deadline - loop.time())
        await _wait_until_empty(self.websockets, self._ws_drained, deadline - loop.time())
        for conn in list(self.http_connections):
            conn.abort()
        for sock in list(self.websockets):
            sock.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def forget_http(self, conn: HttpProtocol) -> None:
        self.http_connections.discard(conn)
        if not self.http_connections:
            self._http_drained.set()

    def forget_websocket(self, sock: WebSocket) -> None:
        self.websockets.discard(sock)
        if not self.websockets:
            self._ws_drained.set()


async def _wait_until_empty(items: set[Any], drained: asyncio.Event, grace_period: float) -> None:
    if not items or grace_period <= 0:
        return
    drained.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(drained.wait(), grace_period)


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection until it closes or becomes a WebSocket.

    Flow control: requests are parsed only while fewer than ``_MAX_PIPELINED`` wait (and their
    bodies stay under ``max_body_size`` together) and while the transport's write buffer is
    under its high-water mark; otherwise reading pauses, and what was received stays in the
    :class:`RequestReader` (one read at most). A client that pipelines without reading the
    answers is thus stopped, and cut off once its writes make no progress for
    ``write_timeout``.

    One timer at a time, by state: a request being received must be complete within
    ``request_timeout`` of its first byte; an idle keep-alive connection closes after
    ``keepalive_timeout``; stalled writes abort after ``write_timeout``; a refused request
    lingers (reading and dropping) for ``_LINGER`` seconds so that the client gets the answer.
    """

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.reader: RequestReader | None = None
        self.queue: deque[Request] = deque()
        self.queued_bytes = 0
        self.requests = 0  # requests parsed on this connection
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind: tuple[int, int] | None = None
        self.closing = False
        self.reading_paused = False
        self.writing_paused = False
        self.write_buffered = 0  # write buffer size when the write timer was armed
        self.head = b""  # the start of a request a redirect has not decided on yet

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        if self.server.send_buffer_size is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.server.send_buffer_size)
        self.reader = RequestReader(
            max_header_size=self.server.max_header_size,
            max_body_size=self.server.max_body_size,
            peer=self.peer,
        )
        self.server.http_connections.add(self)
        self._update_timer()

    def data_received(self, data: bytes, *, redirectable: bool = True) -> None:
        if self.closing:
            return  # lingering after a refusal, or closing: drop it
        assert self.reader is not None
        if redirectable and self._at_request_start():
            data = self._redirect(data)
            if not data:
                return
        self.reader.feed(data)
        self._pump()

    def _at_request_start(self) -> bool:
        """A redirect is configured and nothing of a request is buffered or being handled."""
        return (
            self.server.redirect is not None
            and self.task is None
            and not self.queue
            and self.reader is not None
            and self.reader.buffered == 0
        )

    def _redirect(self, data: bytes) -> bytes:
        """A new request on an idle connection: let the redirect look at its request line
        first. Returns the bytes to parse here (empty: wait for more, or taken elsewhere)."""
        head = self.head + data
        if b"\n" not in head and len(head) < _REQUEST_LINE_LIMIT:
            self.head = head
            return b""
        self.head = b""
        assert self.server.redirect is not None and self.transport is not None
        if self.server.redirect(head, self.transport):
            self.closing = True
            self._disarm()
            self.server.forget_http(self)
            self.transport.close()  # our descriptor only: the connection lives on elsewhere
            return b""
        return head

    def eof_received(self) -> bool | None:
        if self.closing:
            self._close()  # the client has read our refusal and hung up: stop lingering
        return None  # close the transport

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_timer()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.closing:
            self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._disarm()
        self.server.forget_http(self)
        if self.task is not None and not self.task.done():
            # The client went away: whatever the handler waits for (a long-poll) is moot.
            self.task.cancel()
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.queue.clear()

    # -- requests in, handlers out -----------------------------------------------------------

    def _pump(self) -> None:
        """Parse received bytes into requests while the connection may take more work, then
        set reading, the handler and the timer to match."""
        reader = self.reader
        transport = self.transport
        if reader is None or transport is None or self.closing:
            return
        try:
            while (
                len(self.queue) < _MAX_PIPELINED
                and self.queued_bytes <= self.server.max_body_size
                and not self.writing_paused
            ):
                request = reader.next_request()
                if request is None:
                    break
                self.requests += 1
                self.queue.append(request)
                self.queued_bytes += len(request.body)
                if reader.upgraded or not request.keep_alive:
                    break  # whatever follows is not HTTP for us to parse
        except HttpRequestError as exc:
            self._reject(exc.status, exc.code, exc.message)
            return
        if reader.take_continue():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Bytes left unparsed mean the connection has work enough: read no more for now.
        hold = reader.buffered > 0 or reader.upgraded
        if hold != self.reading_paused:
            self.reading_paused = hold
            if hold:
                transport.pause_reading()
            else:
                transport.resume_reading()
        self._next()
        self._update_timer()

    def _next(self) -> None:
        if self.task is not None or not self.queue or self.closing or self.writing_paused:
            return
        request = self.queue.popleft()
        self.queued_bytes -= len(request.body)
        self.task = asyncio.get_running_loop().create_task(self._handle(request))

    async def _handle(self, request: Request) -> None:
        keep_alive = request.keep_alive
        try:
            result = await self.server.handler(request)
        except asyncio.CancelledError:
            self.task = None
            raise
        except Exception:
            log.exception("request handler failed: %s %s", request.method, request.path)
            result = Response.error(
                500, "internal_error", "the server failed to handle this request"
            )
        self.task = None
        if self.closing or self.transport is None:
            return
        if isinstance(result, WebSocketUpgrade):
            self._upgrade(request, result)
            return
        if (self.reader is not None and self.reader.upgraded) or self.server.closing:
            # After an upgrade request the byte stream is no longer HTTP; a closing server
            # ends each connection after its response.
            keep_alive = False
        self.transport.write(
            serialize_response(result, keep_alive=keep_alive, head=request.method == "HEAD")
        )
        if not keep_alive:
            self._close()
            return
        self._pump()

    def _upgrade(self, request: Request, upgrade: WebSocketUpgrade) -> None:
        assert self.transport is not None and self.reader is not None
        problem = _check_websocket_request(request)
        if problem is not None:
            status, message = problem
            headers = [("Sec-WebSocket-Version", "13")] if status == 426 else []
            resp = Response.json(
                {"error": {"code": "bad_websocket_request", "message": message}}, status, headers
            )
            self.transport.write(serialize_response(resp, keep_alive=False))
            self._close()
            return
        key = request.headers["sec-websocket-key"].strip()
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws.accept_key(key).encode("ascii") + b"\r\n\r\n"
        )
        tail = self.reader.take_tail()
        self.closing = True
        self._disarm()
        self.server.forget_http(self)
        transport = self.transport
        self.transport = None
        self.reader = None
        sock = WebSocket(self.server, transport, request, upgrade)
        transport.set_protocol(sock)
        if self.reading_paused:
            transport.resume_reading()
        sock.start(upgrade.factory, tail)

    def _reject(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` and close, lingering so that the answer reaches the client."""
        transport = self.transport
        if transport is None or self.closing:
            return
        self.queue.clear()
        resp = Response.error(status, code, message)
        transport.write(serialize_response(resp, keep_alive=False))
        if self.task is not None or not transport.can_write_eof():
            self._close()
            return
        # Closing now, with the client's bytes unread, would make the kernel answer with a
        # reset that can destroy the response in flight. Send FIN, drop what still comes,
        # close when the client does or after _LINGER seconds.
        self.closing = True
        transport.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        self._arm(_LINGER, _LINGERING)

    def _close(self, *, abort: bool = False) -> None:
        self.closing = True
        self._disarm()
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    # -- timers and shutdown -----------------------------------------------------------------

    def _update_timer(self) -> None:
        """Arm the timer that the connection's state calls for (see the class docstring)."""
        reader = self.reader
        if self.closing or reader is None:
            return
        kind: tuple[int, int] | None
        if self.writing_paused:
            kind = (_WRITING, 0)
        elif reader.in_request and not self.reading_paused:
            kind = (_RECEIVING, self.requests)  # a new request gets a new deadline
        elif self.task is None and not self.queue:
            kind = (_IDLE, 0)
        else:
            kind = None  # a handler is working
        if kind == self.timer_kind:
            return
        if kind is None:
            self._disarm()
            return
        server = self.server
        delays = {_WRITING: server.write_timeout, _RECEIVING: server.request_timeout,
                  _IDLE: server.keepalive_timeout}  # fmt: skip
        if kind[0] == _WRITING and self.transport is not None:
            self.write_buffered = self.transport.get_write_buffer_size()
        self._arm(delays[kind[0]], kind[0], kind[1])

    def _arm(self, delay: float, kind: int, tag: int = 0) -> None:
        self._disarm()
        self.timer_kind = (kind, tag)
        self.timer = asyncio.get_running_loop().call_later(delay, self._timed_out, kind)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_kind = None

    def _timed_out(self, kind: int) -> None:
        self.timer = None
        self.timer_kind = None
        transport = self.transport
        if transport is None:
            return
        if kind == _WRITING:
            buffered = transport.get_write_buffer_size()
            if buffered < self.write_buffered:
                self._update_timer()  # slow but moving: another period from here
                return
            log.debug("aborting %s: no write progress in %.0f s", self.peer,
                      self.server.write_timeout)  # fmt: skip
            self._close(abort=True)
        elif kind == _RECEIVING:
            if self.task is None and not self.queue:
                self._reject(408, "request_timeout", "the request did not arrive in time")
            else:
                self._close()
        elif kind == _LINGERING:
            self._close(abort=True)
        elif self.task is None:
            self._close()  # idle keep-alive connection

    def close_when_idle(self) -> None:
        if self.task is None and self.transport is not None:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _check_websocket_request(request: Request) -> tuple[int, str] | None:
    h = request.headers
    if request.method != "GET":
        return 400, "a WebSocket handshake must be a GET request"
    if "websocket" not in h.get("upgrade", "").lower():
        return 400, "missing 'Upgrade: websocket' header"
    if "upgrade" not in (t.strip() for t in h.get("connection", "").lower().split(",")):
        return 400, "missing 'Connection: Upgrade' header"
    if h.get("sec-websocket-version", "").strip() != "13":
        return 426, "only WebSocket version 13 is supported"
    if not ws.is_valid_key(h.get("sec-websocket-key", "").strip()):
        return 400, "invalid Sec-WebSocket-Key"
    return None
