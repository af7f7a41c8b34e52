"""RFC 6455 WebSocket, server side, without I/O.

Two halves:

* Building server frames. Server-to-client frames are never masked, so one frame can be built
  once and the same bytes written to any number of connections; that property is what the
  Socket.IO broadcast path is built on (:func:`text_frame`, :func:`binary_frame`).
* :class:`FrameParser`, which turns bytes from a client into messages and control frames and
  enforces the client-side rules of the RFC (masking, no RSV bits since we negotiate no
  extension, control frame limits, fragmentation, UTF-8 text, a message size cap). Violations
  raise :class:`WebSocketProtocolError` carrying the close code to answer with.

No extension (such as permessage-deflate) is ever negotiated: compression is per-connection
state, which would defeat building a broadcast frame once.
"""

from __future__ import annotations

import base64
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
    body = code.to_bytes(2, "big") + reason.encode("utf-8")[: _MAX_CONTROL_PAYLOAD - 2]
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


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (big-integer XOR: fast in CPython)."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


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


Event = Message | Ping | Pong | Close

_VALID_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011})


def _valid_close_code(code: int) -> bool:
    return code in _VALID_CLOSE_CODES or 3000 <= code <= 4999


class FrameParser:
    """Incremental parser for frames sent by a WebSocket client."""

    __slots__ = ("_buf", "_fragment_opcode", "_fragments", "_fragments_size", "max_message_size")

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data``; return every complete event it finished, in order."""
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                if length >> 63:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "invalid frame length")
                header = 10
            if opcode >= OP_CLOSE:
                if length > _MAX_CONTROL_PAYLOAD:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "control frame too long")
                if not fin:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            elif length > self.max_message_size or (
                opcode == OP_CONTINUATION and self._fragments_size + length > self.max_message_size
            ):
                # Refuse before buffering: a client cannot make us hold more than the cap.
                raise WebSocketProtocolError(CLOSE_TOO_BIG, "message too big")
            frame_end = pos + header + 4 + length
            if frame_end > end:
                break
            mask = bytes(buf[pos + header : pos + header + 4])
            payload = unmask(bytes(buf[pos + header + 4 : frame_end]), mask)
            pos = frame_end
            event = self._frame(fin != 0, opcode, payload)
            if event is not None:
                events.append(event)
                if isinstance(event, Close):
                    pos = end  # nothing after a close frame is meaningful
        del buf[:pos]
        return events

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _parse_close(payload)
        if opcode == OP_CONTINUATION:
            if not self._fragment_opcode:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if not fin:
                return None
            opcode = self._fragment_opcode
            payload = b"".join(self._fragments)
            self._fragments = []
            self._fragments_size = 0
            self._fragment_opcode = 0
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragment_opcode:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
            if not fin:
                self._fragment_opcode = opcode
                self._fragments = [payload]
                self._fragments_size = len(payload)
                return None
        else:
            raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
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
