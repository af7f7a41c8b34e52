"""RFC 6455 WebSocket, server side, without I/O.

Two halves:

* Building server frames. Server-to-client frames are never masked, so one frame can be built
  once and the same bytes written to any number of connections; that property is what the
  Socket.IO broadcast path is built on (:func:`text_frame`, :func:`binary_frame`).
* :class:`FrameParser`, which turns bytes from a client into messages and control frames and
  enforces the client-side rules of the RFC (masking, no RSV bits since we negotiate no
  extension, control frame limits, fragmentation, UTF-8 text, a message size cap). A violation
  ends the events it returns with :class:`Fail`, carrying the close code to answer with, after
  the messages decoded before it.

No extension (such as permessage-deflate) is ever negotiated: compression is per-connection
state, which would defeat building a broadcast frame once.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
from dataclasses import dataclass
from typing import Final

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_NO_STATUS: Final = 1005
CLOSE_INVALID_PAYLOAD: Final = 1007
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011

_MAX_CONTROL_PAYLOAD: Final = 125


class WebSocketProtocolError(Exception):
    """The peer broke the protocol; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}")


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def is_valid_key(key: str) -> bool:
    """A client key must be the base64 encoding of 16 bytes."""
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def frame_header(opcode: int, length: int) -> bytes:
    """The header of an unmasked, final frame carrying ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """A complete text frame; ``payload`` must be UTF-8."""
    return frame_header(OP_TEXT, len(payload)) + payload


def binary_frame(payload: bytes) -> bytes:
    return frame_header(OP_BINARY, len(payload)) + payload


def close_frame(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    if code == CLOSE_NO_STATUS:
        return frame_header(OP_CLOSE, 0)
    text = reason.encode("utf-8")
    if len(text) > _MAX_CONTROL_PAYLOAD - 2:
        # Cut on a character boundary: the peer fails a close reason that is not UTF-8.
        text = text[: _MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    body = code.to_bytes(2, "big") + text
    return frame_header(OP_CLOSE, len(body)) + body


def pong_frame(payload: bytes) -> bytes:
    return frame_header(OP_PONG, len(payload)) + payload


def iter_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split bytes made of complete *server* frames (unmasked, final) into (opcode, payload).

    Used to turn frames queued for a WebSocket into the same packets for a transport that
    is not a WebSocket (Engine.IO long-polling), so a broadcast is still built only once.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    end = len(data)
    while pos < end:
        opcode = data[pos] & 0x0F
        length = data[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif length == 127:
            length = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        out.append((opcode, data[pos : pos + length]))
        pos += length
    return out


def _unmask_slow(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated, as one big-integer XOR."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


try:
    # websockets (a dependency for the upstream client) ships this XOR in C: 1 MB in about
    # 50 µs against 8 ms for the big-integer XOR, and 0.15 µs against 2 µs for a short frame.
    from websockets.speedups import apply_mask as unmask
except ImportError:  # pragma: no cover - a platform without the compiled helper
    unmask = _unmask_slow


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message: ``str`` for text frames, ``bytes`` for binary."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    """The client broke the protocol: fail the connection with ``code`` (always the last event;
    the parser reads nothing after it)."""

    code: int
    reason: str


Event = Message | Ping | Pong | Close | Fail

# Close codes a peer may send: RFC 6455 section 7.4.1 and IANA's registry (1012-1014), and the
# ranges for libraries (3000-3999) and applications (4000-4999).
_VALID_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

# What each continuation frame costs a message on top of its payload, counted against
# ``max_message_size``: a message cannot be stretched over an endless run of empty or tiny
# fragments (each costs parsing time even when it adds no bytes).
FRAGMENT_COST: Final = 64

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def _valid_close_code(code: int) -> bool:
    return code in _VALID_CLOSE_CODES or 3000 <= code <= 4999


class FrameParser:
    """Incremental parser for frames sent by a WebSocket client.

    ``feed`` returns the events completed by the bytes given, in order. A protocol violation
    ends the list with a :class:`Fail` event, after the events decoded before it, and the
    parser ignores anything fed afterwards (as it does after a :class:`Close`).

    Memory: what it holds is the message being assembled (at most ``max_message_size`` bytes,
    refused from the frame header before any payload is read) and at most one frame header or
    control frame (under 140 bytes). Data frame payloads are unmasked as they arrive and
    appended to the message, so a large message in small reads costs linear time, and a text
    message's UTF-8 is checked as it arrives, so invalid text fails at the first bad byte.
    """

    __slots__ = ("_cost", "_decoder", "_done", "_fin", "_mask", "_message", "_opcode",
                 "_partial", "_remaining", "max_message_size")  # fmt: skip

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._partial = b""  # the start of a frame whose header (or control payload) is cut
        # The data frame being read: payload bytes still to come, its mask rotated to the next
        # byte, and whether it ends its message.
        self._remaining = 0
        self._mask = b""
        self._fin = False
        # The message being assembled: its opcode (0: none open), the bytes so far, their cost
        # against the limit, and for text, the incremental UTF-8 check.
        self._opcode = 0
        self._message = bytearray()
        self._cost = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self._done = False

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame or message."""
        return len(self._partial) + len(self._message)

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data``; return every complete event it finished, in order."""
        events: list[Event] = []
        if self._done or not data:
            return events
        if self._partial:
            data = self._partial + data
            self._partial = b""
        try:
            self._parse(data, events)
        except WebSocketProtocolError as exc:
            self._finish()
            events.append(Fail(exc.code, exc.reason))
        return events

    def _parse(self, data: bytes, events: list[Event]) -> None:
        view = memoryview(data)
        pos = 0
        end = len(data)
        while pos < end:
            if self._remaining:
                n = min(self._remaining, end - pos)
                self._payload(view[pos : pos + n])
                pos += n
                self._remaining -= n
                if not self._remaining and self._fin:
                    events.append(self._deliver())
                continue
            if end - pos < 2:
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            if b0 & 0x70:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            fin = bool(b0 & 0x80)
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            header = 6
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                header = 8
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length >> 63:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "invalid frame length")
                header = 14
            if opcode >= OP_CLOSE:
                if opcode > OP_PONG:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
                if length > _MAX_CONTROL_PAYLOAD:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "control frame too long")
                if not fin:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
                frame_end = pos + header + length
                if frame_end > end:
                    break
                payload = unmask(
                    view[pos + header : frame_end], data[pos + header - 4 : pos + header]
                )
                pos = frame_end
                if opcode == OP_PING:
                    events.append(Ping(payload))
                elif opcode == OP_PONG:
                    events.append(Pong(payload))
                else:
                    events.append(_parse_close(payload))
                    self._finish()  # nothing after a close frame is meaningful
                    return
                continue
            if opcode == OP_CONTINUATION:
                if not self._opcode:
                    raise WebSocketProtocolError(
                        CLOSE_PROTOCOL_ERROR, "unexpected continuation frame"
                    )
                cost = self._cost + FRAGMENT_COST + length
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._opcode:
                    raise WebSocketProtocolError(
                        CLOSE_PROTOCOL_ERROR, "expected a continuation frame"
                    )
                cost = length
            else:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if cost > self.max_message_size:
                # Refused from the header: a client cannot make us hold more than the cap.
                raise WebSocketProtocolError(CLOSE_TOO_BIG, "message too big")
            if end - pos < header:
                break
            mask = data[pos + header - 4 : pos + header]
            pos += header
            if fin and opcode != OP_CONTINUATION and end - pos >= length:
                # The common case: a whole unfragmented message in this read.
                payload = unmask(view[pos : pos + length], mask)
                pos += length
                events.append(_message(opcode, payload))
                continue
            if opcode != OP_CONTINUATION:
                self._opcode = opcode
                self._decoder = _utf8_decoder() if opcode == OP_TEXT else None
            self._cost = cost
            self._fin = fin
            self._mask = mask
            self._remaining = length
            if not length and fin:
                events.append(self._deliver())
        if pos < end:
            self._partial = data[pos:]

    def _payload(self, chunk: memoryview) -> None:
        plain = unmask(chunk, self._mask)
        shift = len(chunk) & 3
        if shift:
            self._mask = self._mask[shift:] + self._mask[:shift]
        if self._decoder is not None:
            try:
                self._decoder.decode(plain)
            except UnicodeDecodeError:
                raise WebSocketProtocolError(CLOSE_INVALID_PAYLOAD, "invalid UTF-8") from None
        self._message += plain

    def _deliver(self) -> Message:
        message, decoder = self._message, self._decoder
        # A fresh buffer, not a cleared one: a big message's allocation goes back at once.
        self._message = bytearray()
        self._opcode = 0
        self._cost = 0
        self._decoder = None
        if decoder is None:
            return Message(bytes(message))
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise WebSocketProtocolError(CLOSE_INVALID_PAYLOAD, "invalid UTF-8") from None
        return Message(message.decode("utf-8"))

    def close(self) -> None:
        """Parse nothing more and drop any unfinished message (the connection is gone: a
        session kept for recovery must not keep its half-received message alive)."""
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._partial = b""
        self._message = bytearray()
        self._decoder = None
        self._remaining = 0


def _message(opcode: int, payload: bytes) -> Message:
    if opcode == OP_TEXT:
        try:
            return Message(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise WebSocketProtocolError(CLOSE_INVALID_PAYLOAD, "invalid UTF-8") from None
    return Message(payload)


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte body")
    code = int.from_bytes(payload[:2], "big")
    if not _valid_close_code(code):
        raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketProtocolError(CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return Close(code, reason)
