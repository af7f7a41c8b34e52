"""A small HTTP/1.1 server on asyncio protocols, with a WebSocket upgrade path.

Why not a framework: the gateway keeps thousands of WebSocket connections open and writes the
same pre-built frame to each of them. Measured on our machines (bench/stack-choice.md), a
connection held by this module costs about 1.4 KiB of Python memory against about 13 KiB under
aiohttp, and a broadcast writes bytes straight to each transport. HTTP here serves the REST API,
health checks and Engine.IO long-polling: a handful of requests per second per client.

What it does: HTTP/1.1 with keep-alive and pipelining (one request handled at a time per
connection, in order), ``Expect: 100-continue``, limits on header and body sizes, a timeout
for reading a request and for idle keep-alive connections, cancellation of the handler when the
client goes away, and the RFC 6455 upgrade to :class:`WebSocket`.

The application is one coroutine function ``handler(request) -> Response | WebSocketUpgrade``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Protocol, cast
from urllib.parse import parse_qsl

import httptools
import orjson

from kichat.http import websocket as ws

log = logging.getLogger("kichat.http")

_REASONS: Final = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 204: "No Content",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    426: "Upgrade Required", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}  # fmt: skip
_MAX_PIPELINED: Final = 8


class Request:
    """One parsed HTTP request. Header names are lower-case; repeated headers are joined."""

    __slots__ = ("_query", "body", "headers", "keep_alive", "method", "path", "peer",
                 "query_string", "target")  # fmt: skip

    def __init__(
        self, method: str, target: str, headers: dict[str, str], body: bytes, peer: str
    ) -> None:
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.path = path
        self.query_string = query
        self.headers = headers
        self.body = body
        self.peer = peer
        self.keep_alive = True
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (first value wins), parsed on first use."""
        if self._query is None:
            q: dict[str, str] = {}
            for k, v in parse_qsl(self.query_string, keep_blank_values=True):
                q.setdefault(k, v)
            self._query = q
        return self._query


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


class WebSocketHandler(Protocol):
    """What a WebSocket application object receives. ``on_close`` is called exactly once."""

    def on_message(self, data: str | bytes) -> None: ...
    def on_close(self, code: int, reason: str) -> None: ...
    def on_pause_writing(self) -> None: ...
    def on_resume_writing(self) -> None: ...


class WebSocketUpgrade:
    """Returned by a request handler to accept a WebSocket on that request."""

    __slots__ = ("factory", "max_message_size", "write_limit")

    def __init__(
        self,
        factory: Callable[[WebSocket], WebSocketHandler],
        *,
        max_message_size: int = 1_000_000,
        write_limit: int = 4 * 1024 * 1024,
    ) -> None:
        self.factory = factory
        self.max_message_size = max_message_size
        self.write_limit = write_limit


Handler = Callable[[Request], Awaitable[Response | WebSocketUpgrade]]


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode("ascii"))


def serialize_response(resp: Response, *, keep_alive: bool, head: bool = False) -> bytes:
    lines = [_status_line(resp.status)]
    for name, value in resp.headers:
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    lines.append(b"Content-Length: %d\r\n" % len(resp.body))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(resp.body)
    return b"".join(lines)


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
        send_buffer_size: int | None = None,
    ) -> None:
        self.handler = handler
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.websocket_close_timeout = websocket_close_timeout
        # SO_SNDBUF for accepted sockets. None keeps the kernel's autotuning; a cap bounds the
        # kernel memory a client that stops reading can pin, and makes the slow-client cut-off
        # (the outbound buffer limit) take effect after a predictable amount of data.
        self.send_buffer_size = send_buffer_size
        self.http_connections: set[HttpProtocol] = set()
        self.websockets: set[WebSocket] = set()
        self._http_drained = asyncio.Event()
        self._ws_drained = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.closing = False  # responses now end their connection (no keep-alive)

    async def start(self, host: str, port: int, *, backlog: int = 2048) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self), host, port, backlog=backlog, reuse_address=True
        )

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
    """One HTTP/1.1 connection until it closes or becomes a WebSocket."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.parser: Any = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.reading_paused = False
        self.upgrade_tail: bytes | None = None
        # Per-request parse state.
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large: int = 0

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
        self.server.http_connections.add(self)
        self._arm(self.server.request_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.upgrade_tail is not None:
            # Bytes after an upgrade request belong to the next protocol; keep them for it.
            self.upgrade_tail += data
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The request that asked for an upgrade is complete; what follows belongs to the
            # new protocol and is replayed into it if the handler accepts the upgrade.
            offset = exc.args[0] if exc.args else len(data)
            self.upgrade_tail = data[offset:]
        except httptools.HttpParserError:
            self._reject(400, "bad_request", "malformed HTTP request")
            return
        if self._too_large:
            status = self._too_large
            code = "headers_too_large" if status == 431 else "body_too_large"
            self._reject(status, code, "request exceeds the size limit")
            return
        if len(self.queue) >= _MAX_PIPELINED and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._disarm()
        self.server.forget_http(self)
        if self.task is not None and not self.task.done():
            # The client went away: whatever the handler waits for (a long-poll) is moot.
            self.task.cancel()
        self.parser = None

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self._arm(self.server.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.server.max_header_size:
            self._too_large = 431
            return
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        prev = self._headers.get(key)
        self._headers[key] = val if prev is None else f"{prev}, {val}"

    def on_headers_complete(self) -> None:
        if self._header_bytes > self.server.max_header_size:
            self._too_large = 431
            return
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body_size:
            self._too_large = 413
            return
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.max_body_size:
            self._too_large = 413
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            return
        method = self.parser.get_method().decode("ascii", "replace")
        target = b"".join(self._url).decode("latin-1")
        request = Request(method, target, self._headers, b"".join(self._body), self.peer)
        request.keep_alive = bool(self.parser.should_keep_alive())
        self.queue.append(request)

    # -- request handling --------------------------------------------------------------------

    def _next(self) -> None:
        if self.task is not None or not self.queue or self.closing:
            return
        request = self.queue.popleft()
        self._disarm()
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
        if self.upgrade_tail is not None or self.server.closing:
            # After an upgrade request the byte stream is no longer HTTP; a closing server
            # ends each connection after its response.
            keep_alive = False
        self.transport.write(
            serialize_response(result, keep_alive=keep_alive, head=request.method == "HEAD")
        )
        if not keep_alive:
            self.closing = True
            self.transport.close()
            return
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.queue:
            self._next()
        else:
            self._arm(self.server.keepalive_timeout)

    def _upgrade(self, request: Request, upgrade: WebSocketUpgrade) -> None:
        assert self.transport is not None
        problem = _check_websocket_request(request)
        if problem is not None:
            status, message = problem
            headers = [("Sec-WebSocket-Version", "13")] if status == 426 else []
            resp = Response.json(
                {"error": {"code": "bad_websocket_request", "message": message}}, status, headers
            )
            self.transport.write(serialize_response(resp, keep_alive=False))
            self.closing = True
            self.transport.close()
            return
        key = request.headers["sec-websocket-key"].strip()
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws.accept_key(key).encode("ascii") + b"\r\n\r\n"
        )
        self.closing = True
        self.server.forget_http(self)
        tail = self.upgrade_tail or b""
        transport = self.transport
        self.transport = None
        self.parser = None
        sock = WebSocket(self.server, transport, request, upgrade)
        transport.set_protocol(sock)
        if self.reading_paused:
            transport.resume_reading()
        sock.start(upgrade.factory, tail)

    def _reject(self, status: int, code: str, message: str) -> None:
        if self.transport is None or self.closing:
            return
        self.closing = True
        resp = Response.error(status, code, message)
        self.transport.write(serialize_response(resp, keep_alive=False))
        self.transport.close()

    # -- timers and shutdown -----------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(delay, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.task is None and self.transport is not None and not self.closing:
            # Either an idle keep-alive connection or a request that never finished arriving.
            self.closing = True
            self.transport.close()

    def close_when_idle(self) -> None:
        if self.task is None and self.transport is not None:
            self.closing = True
            self.transport.close()

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


class WebSocket(asyncio.Protocol):
    """One accepted WebSocket. Slim on purpose: thousands of these stay open.

    ``write`` takes bytes that are already complete frames; that is how broadcasts reach
    the transport without any per-connection encoding.
    """

    __slots__ = ("_close_timer", "_closed", "_closing", "handler", "parser", "peer", "request",
                 "server", "transport")  # fmt: skip

    def __init__(
        self, server: HttpServer, transport: asyncio.Transport, request: Request,
        upgrade: WebSocketUpgrade,
    ) -> None:  # fmt: skip
        self.server = server
        self.transport = transport
        self.request = request
        self.peer = request.peer
        self.parser = ws.FrameParser(upgrade.max_message_size)
        self.handler: WebSocketHandler | None = None
        self._closing = False
        self._closed = False
        self._close_timer: asyncio.TimerHandle | None = None
        transport.set_write_buffer_limits(high=upgrade.write_limit)
        server.websockets.add(self)

    def start(self, factory: Callable[[WebSocket], WebSocketHandler], tail: bytes) -> None:
        self.handler = factory(self)
        if tail:
            self.data_received(tail)

    # -- sending -----------------------------------------------------------------------------

    def write(self, frames: bytes) -> None:
        """Write complete, pre-built frames."""
        if not self._closing:
            self.transport.write(frames)

    def send_text(self, text: str) -> None:
        self.write(ws.text_frame(text.encode("utf-8")))

    def send_binary(self, data: bytes) -> None:
        self.write(ws.binary_frame(data))

    def close(self, code: int = ws.CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the TCP connection closes when the client answers."""
        if self._closing:
            return
        self._closing = True
        self.transport.write(ws.close_frame(code, reason))
        self._close_timer = asyncio.get_running_loop().call_later(
            self.server.websocket_close_timeout, self.abort
        )
        self._notify_closed(code, reason)

    def abort(self) -> None:
        self._closing = True
        self.transport.abort()

    @property
    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    # -- asyncio callbacks -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closed and not self._closing:
            return
        try:
            events = self.parser.feed(data)
        except ws.WebSocketProtocolError as exc:
            self._fail(exc.code, exc.reason)
            return
        for event in events:
            if isinstance(event, ws.Message):
                if not self._closing and self.handler is not None:
                    self.handler.on_message(event.data)
            elif isinstance(event, ws.Ping):
                if not self._closing:
                    self.transport.write(ws.pong_frame(event.payload))
            elif isinstance(event, ws.Close):
                self._on_close_frame(event)
                return

    def _on_close_frame(self, event: ws.Close) -> None:
        if not self._closing:
            # The client started the closing handshake: echo its code, then hang up.
            self._closing = True
            echo = ws.CLOSE_NORMAL if event.code == ws.CLOSE_NO_STATUS else event.code
            self.transport.write(ws.close_frame(echo))
        self._notify_closed(event.code, event.reason)
        self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        log.debug("websocket protocol error from %s: %s %s", self.peer, code, reason)
        if not self._closing:
            self._closing = True
            self.transport.write(ws.close_frame(code, reason))
        self._notify_closed(code, reason)
        self.transport.close()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.server.forget_websocket(self)
        self._notify_closed(1006, "connection lost")

    def _notify_closed(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        handler = self.handler
        if handler is not None:
            try:
                handler.on_close(code, reason)
            except Exception:
                log.exception("websocket close handler failed")
