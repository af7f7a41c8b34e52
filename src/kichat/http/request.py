"""HTTP/1.1 requests from bytes, without I/O: :class:`RequestReader`.

llhttp (through ``httptools``) validates the syntax; this module decides how many bytes it
may see and when, so that every limit holds on partial input, as bytes arrive:

* A request head (request line and headers) is fed to llhttp as it arrives, but never past
  its end: the reader finds the blank line itself. A head that has not ended within
  ``max_header_size`` bytes is refused (414 while still on the request line, 431 after), so
  what one connection makes llhttp hold is bounded by that size, and so is the cost of
  httptools' reassembly of header fragments.
* A body with a ``Content-Length`` is fed exactly, so the next request's head starts where
  the reader knows it does. A chunked body is fed in slices of at most ``max_header_size``;
  chunk framing and trailers count against ``max_body_size + max_header_size`` and may not run
  for ``max_header_size`` bytes without progress. A client that pipelines another request
  right behind a chunked body gets an answer to the chunked request and the connection closes
  (llhttp has then read into the next head, whose start the reader cannot know).
* Requests come out one at a time (:meth:`RequestReader.next_request`): the caller decides
  how many it queues, and bytes not parsed yet stay in the reader until it asks again. That is
  what lets the server stop reading from a client that pipelines faster than it is answered.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final
from urllib.parse import parse_qsl

import httptools

_END: Final = b"\r\n\r\n"
_HEAD, _BODY, _CHUNKED, _UPGRADED, _DEAD = range(5)


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


class HttpRequestError(Exception):
    """The bytes are not an acceptable request: answer ``status`` and close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


class RequestReader:
    """Bytes in (:meth:`feed`), requests out (:meth:`next_request`), one at a time.

    After a request that upgrades the connection (``Upgrade``, or ``CONNECT``) the reader
    parses nothing more: :meth:`take_tail` returns the bytes that followed it.
    """

    def __init__(self, *, max_header_size: int, max_body_size: int, peer: str = "") -> None:
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self.peer = peer
        self._parser: Any = httptools.HttpRequestParser(self)
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first chunk already consumed
        self.buffered = 0  # bytes received and not parsed yet
        self._state = _HEAD
        self._head_size = 0  # bytes of the current head fed so far
        self._head_tail = b""  # its last bytes, to find a blank line cut between reads
        self._line_ended = False  # the request line is complete (for 414 against 431)
        self._remaining = 0  # Content-Length bytes still to feed
        self._wire = 0  # chunked: bytes fed for the body, framing included
        self._stalled = 0  # chunked: bytes fed since the last sign of progress
        self._progress = False
        self._continue = False
        # The message being parsed (set by llhttp's callbacks).
        self._begun = False
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._repeated: dict[str, list[str]] | None = None
        self._body: bytes | bytearray = b""
        self._body_size = 0
        self._error: HttpRequestError | None = None
        self._complete: Request | None = None
        self._overrun = False

    # -- the caller's side ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Keep ``data`` for :meth:`next_request` (nothing is parsed here)."""
        if data and self._state != _DEAD:
            self._chunks.append(data)
            self.buffered += len(data)

    @property
    def in_request(self) -> bool:
        """Bytes of a request that is not complete yet have been parsed."""
        return self._state in (_BODY, _CHUNKED) or self._head_size > 0

    @property
    def held(self) -> int:
        """Bytes this connection makes the reader hold: input not parsed yet, the head being
        parsed (llhttp holds up to that much of it) and the body so far."""
        return self.buffered + self._head_size + self._body_size

    @property
    def upgraded(self) -> bool:
        return self._state == _UPGRADED

    def take_continue(self) -> bool:
        """True once per request whose head asked ``Expect: 100-continue`` and whose body is
        now awaited."""
        wanted, self._continue = self._continue, False
        return wanted

    def take_tail(self) -> bytes:
        """Everything received after an upgrade request; the reader is finished afterwards."""
        tail = b"".join(self._chunks)[self._offset :]
        self._finish()
        return tail

    def next_request(self) -> Request | None:
        """Parse until one request is complete and return it; None when more bytes are needed.

        Raises :class:`HttpRequestError` for a request to refuse; the reader is then finished.
        """
        try:
            while self._complete is None and self._chunks and self._state < _UPGRADED:
                self._step()
        except HttpRequestError:
            self._finish()
            raise
        request, self._complete = self._complete, None
        if request is not None and self._overrun:
            request.keep_alive = False
            self._finish()
        return request

    # -- feeding llhttp ------------------------------------------------------------------------

    def _step(self) -> None:
        chunk = self._chunks[0]
        offset = self._offset
        available = len(chunk) - offset
        state = self._state
        if state == _HEAD:
            used = self._feed_head(chunk, offset, available)
        elif state == _BODY:
            used = min(self._remaining, available)
            self._feed(_piece(chunk, offset, used))
            self._remaining -= used
        else:
            used = min(available, self.max_header_size)
            self._feed_chunked(_piece(chunk, offset, used))
        if self._state == _DEAD:
            return
        self.buffered -= used
        if used == available:
            self._chunks.popleft()
            self._offset = 0
        else:
            self._offset = offset + used

    def _feed_head(self, chunk: bytes, offset: int, available: int) -> int:
        room = self.max_header_size - self._head_size
        take = min(available, room)
        end = -1
        if self._head_tail:
            # A blank line may straddle two reads: look at the seam first.
            seam = self._head_tail + chunk[offset : offset + 3]
            at = seam.find(_END)
            if at >= 0:
                end = at + 4 - len(self._head_tail)
        if end < 0:
            at = chunk.find(_END, offset, offset + take)
            if at >= 0:
                end = at + 4 - offset
        used = take if end < 0 else end
        if not self._line_ended and chunk.find(b"\n", offset, offset + used) >= 0:
            self._line_ended = True
        self._head_size += used
        self._feed(_piece(chunk, offset, used))
        if self._state != _HEAD or self._complete is not None:
            return used  # the head ended (and perhaps the whole request)
        if end >= 0:
            if self._begun:
                # llhttp saw the blank line but did not finish the head: cannot happen with a
                # parser that requires CRLF, refused in case it ever does.
                raise HttpRequestError(400, "bad_request", "malformed HTTP request")
            # Empty lines before a request line are allowed; they count against the limit.
            self._head_tail = b""
            return used
        if used >= 3:
            self._head_tail = chunk[offset + used - 3 : offset + used]
        else:
            self._head_tail = (self._head_tail + chunk[offset : offset + used])[-3:]
        if self._head_size >= self.max_header_size:
            if self._line_ended:
                raise HttpRequestError(
                    431, "headers_too_large", "request headers exceed the size limit"
                )
            raise HttpRequestError(414, "uri_too_long", "request line exceeds the size limit")
        return used

    def _feed_chunked(self, data: bytes | memoryview) -> None:
        self._progress = False
        self._wire += len(data)
        if self._wire > self.max_body_size + self.max_header_size:
            raise HttpRequestError(413, "body_too_large", "request exceeds the size limit")
        self._feed(data)
        self._stalled = 0 if self._progress else self._stalled + len(data)
        if self._stalled > self.max_header_size:
            raise HttpRequestError(
                431, "headers_too_large", "chunk framing or trailers exceed the size limit"
            )

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request asking for the upgrade is complete (llhttp reports it only after
            # on_message_complete); whatever follows it belongs to the next protocol.
            self._state = _UPGRADED
        except httptools.HttpParserError:
            if self._error is not None:
                raise self._error from None
            raise HttpRequestError(400, "bad_request", "malformed HTTP request") from None
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Parse nothing more and let go of everything held (the connection is gone)."""
        self._finish()
        self._url = []
        self._headers = {}
        self._body = b""
        self._body_size = 0

    def _finish(self) -> None:
        self._state = _DEAD
        self._chunks.clear()
        self._offset = 0
        self.buffered = 0
        # The parser holds our bound methods: dropping it breaks the cycle, so a half-received
        # body goes back at once instead of waiting for a full garbage collection.
        self._parser = None

    # -- llhttp callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete is not None:
            # llhttp went on past the end of a chunked body into the next request.
            self._overrun = True
        self._begun = True
        self._url = []
        self._headers = {}
        self._repeated = None
        self._body = b""
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        prev = self._headers.get(key)
        if prev is None:
            self._headers[key] = val
            return
        # Joined once at the end of the head: repeated headers cost linear time.
        if self._repeated is None:
            self._repeated = {}
        self._repeated.setdefault(key, [prev]).append(val)

    def on_headers_complete(self) -> None:
        if self._overrun:
            return
        headers = self._headers
        if self._repeated is not None:
            for key, values in self._repeated.items():
                headers[key] = ", ".join(values)
        self._head_size = 0
        self._head_tail = b""
        self._line_ended = False
        self._progress = True
        if "transfer-encoding" in headers:
            self._state = _CHUNKED  # llhttp refuses any other request transfer coding
            self._wire = 0
            self._stalled = 0
        else:
            length = headers.get("content-length", "0").strip()
            size = int(length) if length.isdigit() else 0
            if size > self.max_body_size:
                self._error = HttpRequestError(
                    413, "body_too_large", "request exceeds the size limit"
                )
                return
            self._remaining = size
            self._state = _BODY if size else _HEAD
        if headers.get("expect", "").lower() == "100-continue" and self._state != _HEAD:
            self._continue = True

    def on_body(self, body: bytes) -> None:
        if self._overrun:
            return
        self._progress = True
        size = self._body_size + len(body)
        if size > self.max_body_size:
            self._error = HttpRequestError(413, "body_too_large", "request exceeds the size limit")
            return
        self._body_size = size
        if not self._body:
            self._body = body
        else:
            if isinstance(self._body, bytes):
                # From the second piece on, one growing buffer: a body trickled in tiny
                # pieces costs its size, not a Python object per piece.
                self._body = bytearray(self._body)
            self._body += body

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def on_message_complete(self) -> None:
        if self._overrun:
            return
        self._progress = True
        parser = self._parser
        body = self._body
        request = Request(
            parser.get_method().decode("ascii", "replace"),
            b"".join(self._url).decode("latin-1"),
            self._headers,
            body if isinstance(body, bytes) else bytes(body),
            self.peer,
        )
        request.keep_alive = bool(parser.should_keep_alive())
        self._complete = request
        self._begun = False
        self._state = _HEAD
        self._remaining = 0
        self._head_size = 0
        self._head_tail = b""
        self._line_ended = False
        self._continue = False


def _piece(chunk: bytes, offset: int, size: int) -> bytes | memoryview:
    """``chunk[offset:offset + size]`` without a copy."""
    if offset == 0 and size == len(chunk):
        return chunk
    return memoryview(chunk)[offset : offset + size]
