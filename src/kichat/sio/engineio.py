"""Engine.IO protocol 4 packets and long-polling payloads, without I/O.

Outgoing packets are kept in WebSocket form (complete server frames, see
:mod:`kichat.http.websocket`) because almost every client is on a WebSocket; a long-polling
client gets the same bytes converted by :func:`frames_to_payload`. That keeps a broadcast
encoded once whatever mix of transports its recipients use.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

import orjson

from kichat.http import websocket as ws
from kichat.sio.errors import ParseError

OPEN: Final = "0"
CLOSE: Final = "1"
PING: Final = "2"
PONG: Final = "3"
MESSAGE: Final = "4"
UPGRADE: Final = "5"
NOOP: Final = "6"
_TYPES: Final = frozenset("0123456")

SEPARATOR: Final = b"\x1e"

# Frames that never change, built once.
PING_FRAME: Final = ws.text_frame(b"2")
NOOP_FRAME: Final = ws.text_frame(b"6")
CLOSE_FRAME: Final = ws.text_frame(b"1")
PROBE_REPLY_FRAME: Final = ws.text_frame(b"3probe")

# Engine.IO's HTTP error codes, as the reference server sends them.
UNKNOWN_TRANSPORT: Final = (0, "Transport unknown")
UNKNOWN_SID: Final = (1, "Session ID unknown")
BAD_HANDSHAKE_METHOD: Final = (2, "Bad handshake method")
BAD_REQUEST: Final = (3, "Bad request")
FORBIDDEN: Final = (4, "Forbidden")
UNSUPPORTED_PROTOCOL_VERSION: Final = (5, "Unsupported protocol version")


def open_packet(
    sid: str, upgrades: list[str], ping_interval_ms: int, ping_timeout_ms: int, max_payload: int
) -> bytes:
    return b"0" + orjson.dumps(
        {
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": ping_interval_ms,
            "pingTimeout": ping_timeout_ms,
            "maxPayload": max_payload,
        }
    )


def message_frame(data: bytes) -> bytes:
    """A text MESSAGE packet (``4`` + ``data``) as a WebSocket frame."""
    return ws.frame_header(ws.OP_TEXT, len(data) + 1) + b"4" + data


def message_frame_of(*parts: bytes | memoryview) -> bytes:
    """Like :func:`message_frame` for ``data`` given in pieces: one copy, however many."""
    length = 1
    for part in parts:
        length += len(part)
    return b"".join((ws.frame_header(ws.OP_TEXT, length), b"4", *parts))


def check_text_packet(packet: str) -> None:
    """Raise :class:`ParseError` unless ``packet`` starts with a known packet type."""
    if not packet or packet[0] not in _TYPES:
        raise ParseError(f"invalid Engine.IO packet type {packet[:1]!r}")


def decode_payload(body: bytes) -> list[str | bytes]:
    """Split a long-polling request body into packets.

    Text packets come back as ``str`` (type character included); binary messages
    (``b`` + base64) come back as ``bytes``, like a binary WebSocket frame would.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("payload is not UTF-8") from None
    packets: list[str | bytes] = []
    for part in text.split("\x1e"):
        if part[:1] == "b":
            try:
                packets.append(base64.b64decode(part[1:], validate=True))
            except (binascii.Error, ValueError):
                raise ParseError("invalid base64 binary packet") from None
        else:
            check_text_packet(part)
            packets.append(part)
    return packets


def frames_to_payload(frames: list[bytes]) -> bytes:
    """Turn queued WebSocket frames into one long-polling response body."""
    parts: list[bytes] = []
    for chunk in frames:
        for opcode, payload in ws.iter_frames(chunk):
            if opcode == ws.OP_BINARY:
                parts.append(b"b" + base64.b64encode(payload))
            else:
                parts.append(payload)
    return SEPARATOR.join(parts)


# -- the client side ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenInfo:
    """What a server's OPEN packet tells a client (times in seconds)."""

    sid: str
    upgrades: tuple[str, ...]
    ping_interval: float
    ping_timeout: float
    max_payload: int


def parse_open(packet: str) -> OpenInfo:
    """Decode a server's OPEN packet (``0{"sid":...,"pingInterval":...}``); :class:`ParseError`
    if it is not one or misses what a client needs to keep the session alive."""
    if packet[:1] != OPEN:
        raise ParseError(f"expected an Engine.IO OPEN packet, got type {packet[:1]!r}")
    try:
        body = orjson.loads(packet[1:])
    except orjson.JSONDecodeError:
        raise ParseError("OPEN packet is not JSON") from None
    if not isinstance(body, dict):
        raise ParseError("OPEN packet is not a JSON object")
    sid = body.get("sid")
    interval = body.get("pingInterval")
    timeout = body.get("pingTimeout")
    upgrades = body.get("upgrades", [])
    max_payload = body.get("maxPayload", 1_000_000)
    if not isinstance(sid, str) or not sid:
        raise ParseError("OPEN packet has no sid")
    for name, value in (("pingInterval", interval), ("pingTimeout", timeout)):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ParseError(f"OPEN packet has no valid {name}")
    if not isinstance(upgrades, list) or not all(isinstance(u, str) for u in upgrades):
        raise ParseError("OPEN packet has invalid upgrades")
    if not isinstance(max_payload, int) or isinstance(max_payload, bool) or max_payload <= 0:
        raise ParseError("OPEN packet has an invalid maxPayload")
    assert isinstance(interval, int | float) and isinstance(timeout, int | float)
    return OpenInfo(sid, tuple(upgrades), interval / 1000, timeout / 1000, max_payload)
