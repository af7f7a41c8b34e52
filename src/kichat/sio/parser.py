"""Socket.IO protocol 5 packets, without I/O.

Decoding applies the same validity rules as the official JavaScript parser
(socket.io-parser ``Decoder.isPayloadValid``), so a packet our server accepts is one the
reference server would accept, and a malformed packet closes only the connection that sent it.
Binary attachments follow the reference "placeholder" scheme: ``{"_placeholder":true,"num":N}``
in the JSON, the N-th binary message carrying the bytes.

Everything here walks data a client controls, so it is bounded: a packet's JSON may nest at most
:data:`MAX_DEPTH` arrays and objects (the reference parser has no limit, and Python's recursion
limit would otherwise be reachable), and the decoder raises nothing but :class:`ParseError`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Final

import orjson

from kichat.sio.errors import EncodeError, ParseError

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
MAX_DEPTH: Final = 32
"""Deepest nesting of arrays and objects accepted in a packet from a client (the event's
argument list is the first level)."""
MAX_ENCODE_DEPTH: Final = 254
"""Deepest nesting :func:`encode` writes: orjson's own limit, well below Python's recursion
limit."""
_MAX_ACK_ID: Final = 2**53 - 1
_DIGIT_RUN: Final = re.compile("[0-9]+")


@dataclass(slots=True)
class Packet:
    type: int
    nsp: str = "/"
    data: Any = None
    id: int | None = None
    attachments: int = 0
    buffers: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes received for it (text and attachments), set by the connection

    @property
    def has_data(self) -> bool:
        return self.data is not _ABSENT


_ABSENT: Final[Any] = object()


def loads(text: str | bytes) -> Any:
    """Decode a JSON value from a client; raises :class:`ParseError` and nothing else.

    orjson first; what it refuses but JavaScript's ``JSON.parse`` accepts (escaped lone
    surrogates, numbers beyond a double's range) goes to the stdlib, with ``NaN`` and
    ``Infinity`` refused as ``JSON.parse`` does. Nesting beyond :data:`MAX_DEPTH` is refused.
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = _ABSENT
    if nesting_exceeds(text, MAX_DEPTH):
        raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if data is _ABSENT:
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise ParseError("invalid JSON") from None
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# Opening brackets become 1, closing ones -1 (as signed bytes); every other byte is deleted.
_BRACKETS: Final = bytes(1 if chr(b) in "[{" else 255 if chr(b) in "]}" else 0 for b in range(256))
_NOT_BRACKETS: Final = bytes(b for b in range(256) if chr(b) not in "[]{}")


def nesting_exceeds(text: str | bytes, limit: int) -> bool:
    """Whether valid JSON ``text`` nests arrays and objects more than ``limit`` deep.

    Costs two ``count`` calls when the text holds at most ``limit`` brackets (every packet a
    chat client sends); otherwise strings are cut out and the brackets summed in C, which costs
    less than the decode itself, so a crafted packet cannot make it expensive.
    """
    if isinstance(text, str):
        if text.count("[") + text.count("{") <= limit:
            return False
        raw = text.encode("utf-8", "surrogatepass")
    else:
        if text.count(b"[") + text.count(b"{") <= limit:
            return False
        raw = text
    brackets = _JSON_STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(memoryview(brackets).cast("b")), default=0) > limit


def dumps(obj: Any) -> bytes:
    """Compact JSON, non-ASCII kept as UTF-8. orjson; the stdlib for what orjson refuses (lone
    surrogates, integers beyond 64 bits, non-string keys), non-ASCII then escaped and
    non-finite numbers written as ``null`` like orjson and ``JSON.stringify`` do. Raises
    ``TypeError`` for what JSON cannot hold (bytes included) and :class:`EncodeError` for
    nesting beyond :data:`MAX_ENCODE_DEPTH`."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        _check_depth(obj)
        return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).encode("ascii")


def _check_depth(obj: Any) -> None:
    """Raise :class:`EncodeError` if ``obj`` nests deeper than :data:`MAX_ENCODE_DEPTH` (or
    contains itself), without recursing."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_ENCODE_DEPTH:
            raise EncodeError(f"data nested deeper than {MAX_ENCODE_DEPTH} levels")
        if isinstance(node, list | tuple | dict):
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, list | tuple | dict):
                    stack.append((child, depth + 1))


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by ``None`` (depth already checked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj


def decode(text: str) -> Packet:
    """Decode the text part of a Socket.IO packet (what follows Engine.IO's ``4``)."""
    if not text or text[0] not in "0123456":
        raise ParseError(f"unknown packet type {text[:1]!r}")
    ptype = ord(text[0]) - 48
    i = 1
    n = len(text)
    attachments = 0
    if ptype in (BINARY_EVENT, BINARY_ACK):
        end = _digits_end(text, i)
        if end == i or end >= n or text[end] != "-":
            raise ParseError("illegal attachments")
        if end - i > 2 or int(text[i:end]) > MAX_ATTACHMENTS:
            raise ParseError("too many attachments")
        attachments = int(text[i:end])
        i = end + 1
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
    end = _digits_end(text, i)
    if end > i:
        # Checked before int(): a long run of digits would cost quadratic time to convert.
        if end - i > 16 or int(text[i:end]) > _MAX_ACK_ID:
            raise ParseError("ack id out of range")
        ack_id = int(text[i:end])
        i = end
    data: Any = _ABSENT
    if i < n:
        data = loads(text[i:])
    if not _payload_valid(ptype, data):
        raise ParseError(f"invalid payload for packet type {ptype}")
    return Packet(ptype, nsp, data, ack_id, attachments)


def _digits_end(text: str, i: int) -> int:
    """Where the run of ASCII digits starting at ``i`` ends."""
    match = _DIGIT_RUN.match(text, i)
    return match.end() if match else i


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
    """Replace ``{"_placeholder": true, "num": N}`` with ``buffers[N]``. ``data`` comes from
    :func:`decode`, so its nesting is bounded by :data:`MAX_DEPTH`."""
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


def deconstruct(data: Any, buffers: list[bytes], depth: int = 1) -> Any:
    """Replace binary values with placeholders, appending them to ``buffers``. Raises
    :class:`EncodeError` for nesting beyond :data:`MAX_ENCODE_DEPTH` (a cycle included)."""
    if depth > MAX_ENCODE_DEPTH:
        raise EncodeError(f"data nested deeper than {MAX_ENCODE_DEPTH} levels")
    if isinstance(data, bytes | bytearray | memoryview):
        buffers.append(bytes(data))
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(data, list | tuple):
        return [deconstruct(v, buffers, depth + 1) for v in data]
    if isinstance(data, dict):
        return {k: deconstruct(v, buffers, depth + 1) for k, v in data.items()}
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
            # The rare path: binary somewhere in the data (placeholders), or what orjson
            # refuses (lone surrogates, nesting beyond its limit, which deconstruct refuses).
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
