"""Socket.IO protocol 5 packets, without I/O.

Decoding applies the same validity rules as the official JavaScript parser
(socket.io-parser ``Decoder.isPayloadValid``), so a packet our server accepts is one the
reference server would accept, and a malformed packet closes only the connection that sent it.
Binary attachments follow the reference "placeholder" scheme: ``{"_placeholder":true,"num":N}``
in the JSON, the N-th binary message carrying the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from kichat.sio.errors import ParseError

CONNECT: Final = 0
DISCONNECT: Final = 1
EVENT: Final = 2
ACK: Final = 3
CONNECT_ERROR: Final = 4
BINARY_EVENT: Final = 5
BINARY_ACK: Final = 6

RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
MAX_ATTACHMENTS: Final = 10
_MAX_ACK_ID: Final = 2**53 - 1
_DIGITS: Final = frozenset("0123456789")


@dataclass(slots=True)
class Packet:
    type: int
    nsp: str = "/"
    data: Any = None
    id: int | None = None
    attachments: int = 0
    buffers: list[bytes] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return self.data is not _ABSENT


_ABSENT: Final[Any] = object()


def loads(text: str | bytes) -> Any:
    """JSON decode with orjson, falling back to the stdlib for what orjson refuses (big ints)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps(obj: Any) -> bytes:
    """Compact JSON, non-ASCII kept as UTF-8 (orjson, with a stdlib fallback for big ints)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        if _contains_bytes(obj):
            raise
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _contains_bytes(obj: Any) -> bool:
    if isinstance(obj, bytes | bytearray | memoryview):
        return True
    if isinstance(obj, list | tuple):
        return any(_contains_bytes(v) for v in obj)
    if isinstance(obj, dict):
        return any(_contains_bytes(v) for v in obj.values())
    return False


def decode(text: str) -> Packet:
    """Decode the text part of a Socket.IO packet (what follows Engine.IO's ``4``)."""
    if not text or text[0] not in "0123456":
        raise ParseError(f"unknown packet type {text[:1]!r}")
    ptype = ord(text[0]) - 48
    i = 1
    n = len(text)
    attachments = 0
    if ptype in (BINARY_EVENT, BINARY_ACK):
        start = i
        while i < n and text[i] in _DIGITS:
            i += 1
        if i == start or i >= n or text[i] != "-":
            raise ParseError("illegal attachments")
        attachments = int(text[start:i])
        if attachments > MAX_ATTACHMENTS:
            raise ParseError("too many attachments")
        i += 1
    nsp = "/"
    if i < n and text[i] == "/":
        end = text.find(",", i)
        if end < 0:
            nsp = text[i:]
            i = n
        else:
            nsp = text[i:end]
            i = end + 1
    ack_id: int | None = None
    if i < n and text[i] in _DIGITS:
        start = i
        while i < n and text[i] in _DIGITS:
            i += 1
        ack_id = int(text[start:i])
        if ack_id > _MAX_ACK_ID:
            raise ParseError("ack id out of range")
    data: Any = _ABSENT
    if i < n:
        try:
            data = loads(text[i:])
        except ValueError:
            raise ParseError("invalid payload") from None
    if not _payload_valid(ptype, data):
        raise ParseError(f"invalid payload for packet type {ptype}")
    return Packet(ptype, nsp, data, ack_id, attachments)


def _payload_valid(ptype: int, data: Any) -> bool:
    if ptype == CONNECT:
        return data is _ABSENT or isinstance(data, dict)
    if ptype == DISCONNECT:
        return data is _ABSENT
    if ptype == CONNECT_ERROR:
        return isinstance(data, str | dict)
    if ptype in (EVENT, BINARY_EVENT):
        if not isinstance(data, list) or not data:
            return False
        head = data[0]
        if isinstance(head, str):
            return head not in RESERVED_EVENTS
        return isinstance(head, int | float) and not isinstance(head, bool)
    # ACK / BINARY_ACK
    return isinstance(data, list)


def reconstruct(data: Any, buffers: list[bytes]) -> Any:
    """Replace ``{"_placeholder": true, "num": N}`` with ``buffers[N]``."""
    if isinstance(data, list):
        return [reconstruct(v, buffers) for v in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True:
            num = data.get("num")
            if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num < len(buffers):
                raise ParseError("illegal attachment placeholder")
            return buffers[num]
        return {k: reconstruct(v, buffers) for k, v in data.items()}
    return data


def deconstruct(data: Any, buffers: list[bytes]) -> Any:
    """Replace binary values with placeholders, appending them to ``buffers``."""
    if isinstance(data, bytes | bytearray | memoryview):
        buffers.append(bytes(data))
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(data, list | tuple):
        return [deconstruct(v, buffers) for v in data]
    if isinstance(data, dict):
        return {k: deconstruct(v, buffers) for k, v in data.items()}
    return data


def nsp_prefix(nsp: str) -> bytes:
    """``b"/admin,"`` for a custom namespace, ``b""`` for the main one."""
    return b"" if nsp == "/" else nsp.encode("utf-8") + b","


def encode(
    ptype: int, nsp: str, data: Any = _ABSENT, ack_id: int | None = None
) -> tuple[bytes, list[bytes]]:
    """Encode a packet to its text part and binary attachments (empty unless binary)."""
    buffers: list[bytes] = []
    body = b""
    if data is not _ABSENT:
        try:
            body = orjson.dumps(data)
        except TypeError:
            # Binary somewhere in the data: the rare path, with placeholders.
            body = dumps(deconstruct(data, buffers))
    if buffers:
        ptype = BINARY_EVENT if ptype == EVENT else BINARY_ACK if ptype == ACK else ptype
    head = b"%d" % ptype
    if buffers:
        head += b"%d-" % len(buffers)
    head += nsp_prefix(nsp)
    if ack_id is not None:
        head += b"%d" % ack_id
    return head + body, buffers


ABSENT: Final = _ABSENT
