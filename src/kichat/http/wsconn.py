"""An accepted WebSocket on its transport (:class:`WebSocket`), what a request handler returns
to accept one (:class:`WebSocketUpgrade`), and what the application behind it implements
(:class:`WebSocketHandler`). The RFC 6455 codec itself is :mod:`kichat.http.websocket`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from kichat.http import websocket as ws

if TYPE_CHECKING:
    from kichat.http.request import Request
    from kichat.http.server import HttpServer

log = logging.getLogger("kichat.http")


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


class WebSocket(asyncio.Protocol):
    """One accepted WebSocket. Slim on purpose: thousands of these stay open.

    ``write`` takes bytes that are already complete frames; that is how broadcasts reach
    the transport without any per-connection encoding.

    Closing: a client's close frame is echoed and the TCP connection closed at once (the
    server closes first, RFC 6455 section 7.1.1). :meth:`close` sends ours and waits for the
    client's answer, ``websocket_close_timeout`` at most. A protocol violation sends the close
    code the parser named, then half-closes (FIN after the close frame) and drops whatever
    still comes until the client hangs up, so the close frame is not lost to a reset.

    While the transport's write buffer is over ``write_limit`` (the client does not read),
    pings are not answered one by one: the latest is answered once writing resumes (RFC 6455
    section 5.5.3 allows answering only the most recent ping), so a ping flood cannot grow the
    buffer.
    """

    __slots__ = ("_close_timer", "_closed", "_closing", "_pending_pong", "_write_paused",
                 "handler", "parser", "peer", "request", "server", "transport")  # fmt: skip

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
        self._write_paused = False
        self._pending_pong: bytes | None = None
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
        self._arm_close_timer()
        self._notify_closed(code, reason)

    def abort(self) -> None:
        self._closing = True
        self.transport.abort()

    @property
    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    # -- asyncio callbacks -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if isinstance(event, ws.Message):
                if not self._closing and self.handler is not None:
                    self.handler.on_message(event.data)
            elif isinstance(event, ws.Ping):
                if self._closing:
                    pass
                elif self._write_paused:
                    self._pending_pong = event.payload
                else:
                    self.transport.write(ws.pong_frame(event.payload))
            elif isinstance(event, ws.Close):
                self._on_close_frame(event)
            elif isinstance(event, ws.Fail):
                self._fail(event.code, event.reason)

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
        if self._closing:
            self.transport.close()  # our close frame is out already
        else:
            self._closing = True
            self.transport.write(ws.close_frame(code, reason))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self._arm_close_timer()
            else:
                self.transport.close()
        self._notify_closed(code, reason)

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(
                self.server.websocket_close_timeout, self.abort
            )

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.handler is not None:
            self.handler.on_pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._pending_pong is not None:
            pong, self._pending_pong = self._pending_pong, None
            self.write(ws.pong_frame(pong))
        if self.handler is not None:
            self.handler.on_resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.parser.close()
        self.server.forget_websocket(self)
        self._notify_closed(1006, "connection lost")

    def _notify_closed(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        # The handler and this object refer to each other: let go here, so that reference
        # counting frees both at once instead of the cyclic collector, which under churn lets
        # megabytes of dead connections pile up between its full passes.
        handler, self.handler = self.handler, None
        if handler is not None:
            try:
                handler.on_close(code, reason)
            except Exception:
                log.exception("websocket close handler failed")
