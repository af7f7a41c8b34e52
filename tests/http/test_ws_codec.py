"""RFC 6455 server-side codec, without an event loop."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kichat.http import websocket as ws


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None,
                 rsv: int = 0, masked: bool = True) -> bytes:  # fmt: skip
    """Build a frame the way a client must (masked)."""
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
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_accept_key_matches_rfc_example() -> None:
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("key", "valid"),
    [("dGhlIHNhbXBsZSBub25jZQ==", True), ("short", False), ("dGhlIHNhbXBsZSBub25jZQ", False),
     ("", False), ("ü" * 24, False)],
)  # fmt: skip
def test_key_validation(key: str, valid: bool) -> None:
    assert ws.is_valid_key(key) is valid


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 70000])
def test_server_frames_round_trip_through_iter_frames(n: int) -> None:
    payload = os.urandom(n)
    frames = ws.binary_frame(payload) + ws.text_frame(b"4hello")
    assert ws.iter_frames(frames) == [(ws.OP_BINARY, payload), (ws.OP_TEXT, b"4hello")]
    header_len = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(ws.binary_frame(payload)) == header_len + n


def test_text_message_is_unmasked_and_decoded() -> None:
    parser = ws.FrameParser(1000)
    assert parser.feed(client_frame(ws.OP_TEXT, "héllo".encode())) == [ws.Message("héllo")]


def test_binary_message_stays_bytes() -> None:
    parser = ws.FrameParser(1000)
    assert parser.feed(client_frame(ws.OP_BINARY, b"\x00\xff")) == [ws.Message(b"\x00\xff")]


def test_fragments_are_reassembled_around_a_control_frame() -> None:
    parser = ws.FrameParser(1000)
    data = (
        client_frame(ws.OP_TEXT, b"he", fin=False)
        + client_frame(ws.OP_PING, b"p")
        + client_frame(ws.OP_CONTINUATION, b"ll", fin=False)
        + client_frame(ws.OP_CONTINUATION, b"o")
    )
    assert parser.feed(data) == [ws.Ping(b"p"), ws.Message("hello")]


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=1, max_value=50), max_size=40))
def test_any_split_of_the_input_gives_the_same_events(payload: bytes, cuts: list[int]) -> None:
    data = client_frame(ws.OP_BINARY, payload) + client_frame(ws.OP_TEXT, b"4x")
    parser = ws.FrameParser(10_000)
    events: list[ws.Event] = []
    pos = 0
    for cut in cuts:
        events += parser.feed(data[pos : pos + cut])
        pos += cut
    events += parser.feed(data[pos:])
    assert events == [ws.Message(payload), ws.Message("4x")]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(ws.OP_TEXT, b"x", masked=False), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_TEXT, b"x", rsv=0x40), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(0x3, b"x"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_PING, b"x" * 126), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_PING, b"x", fin=False), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CONTINUATION, b"x"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_TEXT, b"\xff\xfe"), ws.CLOSE_INVALID_PAYLOAD),
        (client_frame(ws.OP_TEXT, b"x" * 101), ws.CLOSE_TOO_BIG),
        (client_frame(ws.OP_CLOSE, b"\x03"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CLOSE, struct.pack(">H", 1005)), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CLOSE, struct.pack(">H", 1000) + b"\xff"), ws.CLOSE_INVALID_PAYLOAD),
    ],
    ids=["unmasked", "rsv", "opcode", "long-ping", "fragmented-ping", "stray-continuation",
         "bad-utf8", "too-big", "1-byte-close", "reserved-close-code", "bad-close-reason"],
)  # fmt: skip
def test_protocol_violations_name_their_close_code(frame: bytes, code: int) -> None:
    parser = ws.FrameParser(100)
    with pytest.raises(ws.WebSocketProtocolError) as err:
        parser.feed(frame)
    assert err.value.code == code


def test_size_limit_applies_to_the_whole_fragmented_message() -> None:
    parser = ws.FrameParser(100)
    assert parser.feed(client_frame(ws.OP_BINARY, b"x" * 60, fin=False)) == []
    with pytest.raises(ws.WebSocketProtocolError) as err:
        parser.feed(client_frame(ws.OP_CONTINUATION, b"x" * 60))
    assert err.value.code == ws.CLOSE_TOO_BIG


def test_oversized_frame_is_refused_before_its_payload_arrives() -> None:
    parser = ws.FrameParser(100)
    header_only = client_frame(ws.OP_BINARY, b"x" * 70000)[:14]
    with pytest.raises(ws.WebSocketProtocolError):
        parser.feed(header_only)


def test_new_message_while_fragmented_is_an_error() -> None:
    parser = ws.FrameParser(100)
    parser.feed(client_frame(ws.OP_TEXT, b"a", fin=False))
    with pytest.raises(ws.WebSocketProtocolError):
        parser.feed(client_frame(ws.OP_TEXT, b"b"))


def test_close_frame_is_parsed_and_ends_parsing() -> None:
    parser = ws.FrameParser(100)
    close = client_frame(ws.OP_CLOSE, struct.pack(">H", 4001) + b"bye")
    assert parser.feed(close + client_frame(ws.OP_TEXT, b"ignored")) == [ws.Close(4001, "bye")]
    assert parser.feed(client_frame(ws.OP_CLOSE, b"")) == [ws.Close(ws.CLOSE_NO_STATUS, "")]


def test_close_frame_builder_truncates_long_reasons() -> None:
    frame = ws.close_frame(1000, "x" * 500)
    [(opcode, body)] = ws.iter_frames(frame)
    assert opcode == ws.OP_CLOSE
    assert len(body) == 125
    assert struct.unpack(">H", body[:2])[0] == 1000
