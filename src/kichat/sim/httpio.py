"""Plain HTTP next to WebSocket on one ``websockets`` server, plus a "frozen connection" switch.

``websockets`` parses only the head of an HTTP request and refuses any request with a body
(``Request.parse`` rejects ``Content-Length`` other than 0), because a WebSocket handshake has
none. The control API needs JSON bodies, so :class:`SimConnection` reads the head and a
``Content-Length`` body *before* handing the bytes to websockets: the body is kept on the
connection and the head is passed on without its ``Content-Length``. Chunked bodies get 411 and
oversized ones 413, a bad ``Content-Length`` 400, answered right here.

Freezing (the simulator's hung-server fault) stops feeding received bytes to websockets while
still reading the socket: WebSocket pings and Pusher frames go unanswered, yet a peer that gives
up and closes is still noticed. Thawing replays the buffered bytes in order.
"""

from __future__ import annotations

import email.utils
import http
import logging
from typing import Any, ClassVar, Final

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

log = logging.getLogger("kichat.sim")

MAX_HEAD: Final = 16 * 1024
MAX_BODY: Final = 1024 * 1024
# A frozen connection keeps reading; past this it is cut, as a real server's buffers would be.
MAX_FROZEN: Final = 4 * 1024 * 1024


def json_response(status: int, body: object) -> Response:
    payload = orjson.dumps(body)
    headers = Headers()
    headers["Date"] = email.utils.formatdate(usegmt=True)
    headers["Connection"] = "close"
    headers["Content-Type"] = "application/json"
    headers["Content-Length"] = str(len(payload))
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return Response(status, phrase, headers, payload)


def _raw_response(status: int, message: str) -> bytes:
    body = orjson.dumps({"error": message, "code": "bad_http_request"})
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _framing(head: bytes) -> tuple[int, bool, bytes]:
    """(content length, chunked?, head without Content-Length) of a raw request head."""
    length = 0
    chunked = False
    kept: list[bytes] = []
    for line in head.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        lname = name.strip().lower()
        if sep and lname == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                length = -1
            continue
        if sep and lname == b"transfer-encoding":
            chunked = True
        kept.append(line)
    return length, chunked, b"\r\n".join(kept)


class SimConnection(ServerConnection):
    """A websockets server connection that also reads HTTP request bodies and can be frozen."""

    # Set on the per-simulator subclass made by :func:`connection_class`.
    registry: ClassVar[set[SimConnection]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body = b""
        self._head: bytearray | None = bytearray()  # None once websockets has the request
        self._frozen: bytearray | None = None  # not None while frozen

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.registry.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            self._take_request()
        elif self._frozen is not None:
            self._frozen += data
            if len(self._frozen) > MAX_FROZEN:
                self.transport.abort()
        else:
            super().data_received(data)

    def eof_received(self) -> None:
        if self._frozen is not None:
            return  # the transport closes itself; connection_lost() tells websockets
        if self._head:
            head, self._head = bytes(self._head), None
            super().data_received(head)
        super().eof_received()

    # -- request body ----------------------------------------------------------------------------

    def _take_request(self) -> None:
        buf = self._head
        assert buf is not None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:  # let websockets refuse it with its own error
                self._head = None
                super().data_received(bytes(buf))
            return
        length, chunked, head = _framing(bytes(buf[: end + 4]))
        if chunked:
            self._refuse(411, "send the body with a Content-Length (no chunked encoding)")
            return
        if length < 0:
            self._refuse(400, "invalid Content-Length")
            return
        if length > MAX_BODY:
            self._refuse(413, f"request body over {MAX_BODY} bytes")
            return
        start = end + 4
        if len(buf) - start < length:
            return  # the rest of the body has not arrived yet
        self.body = bytes(buf[start : start + length])
        rest = bytes(buf[start + length :])
        self._head = None
        super().data_received(head + rest)

    def _refuse(self, status: int, message: str) -> None:
        self._head = None
        self.transport.write(_raw_response(status, message))
        self.transport.close()

    # -- freezing --------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def freeze(self) -> None:
        if self._frozen is None:
            self._frozen = bytearray()

    def thaw(self) -> None:
        buffered, self._frozen = self._frozen, None
        if buffered:
            super().data_received(bytes(buffered))


def connection_class(registry: set[SimConnection]) -> type[SimConnection]:
    """A :class:`SimConnection` subclass whose instances register in ``registry`` while alive,
    so that the simulator can end even connections that never finished a handshake."""
    return type("TrackedSimConnection", (SimConnection,), {"registry": registry})
