"""Client-side WebSocket frames for tests: built the way a client must (masked), including the
ways a hostile client must not."""

from __future__ import annotations

import os
import struct

from kichat.http import websocket as ws


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None,
                 rsv: int = 0, masked: bool = True) -> bytes:  # fmt: skip
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mbit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mbit | n))
    elif n < 65536:
        head = bytes((first, mbit | 126)) + struct.pack(">H", n)
    else:
        head = bytes((first, mbit | 127)) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    key = mask if mask is not None else os.urandom(4)
    return head + key + ws._unmask_slow(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack(">H", code) + reason


def feed_in_pieces(parser: ws.FrameParser, data: bytes, cuts: list[int]) -> list[ws.Event]:
    """Feed ``data`` cut after each length in ``cuts`` (then the rest); all events, in order."""
    events: list[ws.Event] = []
    pos = 0
    for cut in cuts:
        events += parser.feed(data[pos : pos + cut])
        pos += cut
    events += parser.feed(data[pos:])
    return events
