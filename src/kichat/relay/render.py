"""The relay's two encodings, both done once per upstream event (never once per client).

1. :func:`encode_event`, on the node that owns the feed: Kick's event name and decoded data,
   encoded as the middle of a Socket.IO EVENT packet, ``"<event>",{<data>}``. That is what the
   broker carries between nodes.
2. :class:`Renderer`, on every node, once per event and room: the complete WebSocket frame of
   ``42["<event>",{<data>,"channel_name":"<slug>"},"<offset>"]``, by splicing bytes, so no
   node decodes or re-encodes JSON on the way to its clients.
"""

from __future__ import annotations

from typing import Final

import orjson

from kichat.sio import engineio
from kichat.sio import parser as sio_parser

_EMPTY_OBJECT: Final = b"{}"


def encode_event(event: str, data: object) -> bytes:
    """``"<event>",<data as a JSON object>``; data that is not an object becomes ``{}`` (Kick
    sends ``[]`` for some events), and a ``channel_name`` of Kick's own is dropped, because the
    relay's (the slug the client subscribed with) replaces it."""
    if isinstance(data, dict):
        data.pop("channel_name", None)
    else:
        data = {}
    return orjson.dumps(event) + b"," + sio_parser.dumps(data)


def split_event(payload: bytes) -> tuple[str, object]:
    """Undo :func:`encode_event` (tests and tools; the hot path never decodes)."""
    event, data = orjson.loads(b"[" + payload + b"]")
    return str(event), data


class Renderer:
    """Frames for one room (one slug). ``offsets`` frames end with the recovery offset."""

    __slots__ = ("_tail", "_tail_first")

    def __init__(self, slug: str) -> None:
        name = orjson.dumps(slug)
        self._tail = b',"channel_name":' + name + b"}"
        self._tail_first = b'"channel_name":' + name + b"}"

    def _body(self, payload: bytes) -> tuple[memoryview, bytes]:
        view = memoryview(payload)
        if payload.endswith(_EMPTY_OBJECT):
            return view[:-1], self._tail_first
        return view[:-1], self._tail

    def frame(self, payload: bytes, offset: bytes) -> bytes:
        """``42[<payload with channel_name>,"<offset>"]`` as a WebSocket text frame."""
        body, tail = self._body(payload)
        return engineio.message_frame_of(b"2[", body, tail, b',"', offset, b'"]')

    def plain_frame(self, payload: bytes) -> bytes:
        """The same without an offset, for clients that opted out of recovery."""
        body, tail = self._body(payload)
        return engineio.message_frame_of(b"2[", body, tail, b"]")


def format_offset(epoch: str, position: int) -> bytes:
    return b"%s.%d" % (epoch.encode(), position)


def parse_offset(offset: object) -> tuple[str, int] | None:
    """``(epoch, position)`` of a client's offset; ``None`` if it is not one of ours."""
    if not isinstance(offset, str) or len(offset) > 64:
        return None
    epoch, sep, position = offset.rpartition(".")
    if not sep or not epoch or not position.isdigit():
        return None
    return epoch, int(position)
