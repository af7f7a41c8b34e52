"""RFC 6455 server-side codec, without an event loop."""

from __future__ import annotations

import os
import struct

import pytest

from kichat.http import websocket as ws

from wsframes import client_frame, close_payload, feed_in_pieces


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


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(ws.OP_TEXT, b"x", masked=False), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_TEXT, b"x", rsv=0x40), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(0x3, b"x"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(0xB, b"x"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_PING, b"x" * 126), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_PING, b"x", fin=False), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CONTINUATION, b"x"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_TEXT, b"\xff\xfe"), ws.CLOSE_INVALID_PAYLOAD),
        (client_frame(ws.OP_TEXT, b"x" * 101), ws.CLOSE_TOO_BIG),
        (client_frame(ws.OP_CLOSE, b"\x03"), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CLOSE, close_payload(1005)), ws.CLOSE_PROTOCOL_ERROR),
        (client_frame(ws.OP_CLOSE, close_payload(1000, b"\xff")), ws.CLOSE_INVALID_PAYLOAD),
    ],
    ids=["unmasked", "rsv", "opcode", "control-opcode", "long-ping", "fragmented-ping",
         "stray-continuation", "bad-utf8", "too-big", "1-byte-close", "reserved-close-code",
         "bad-close-reason"],
)  # fmt: skip
def test_protocol_violations_name_their_close_code(frame: bytes, code: int) -> None:
    parser = ws.FrameParser(100)
    [fail] = parser.feed(frame)
    assert isinstance(fail, ws.Fail)
    assert fail.code == code
    assert parser.feed(client_frame(ws.OP_TEXT, b"after")) == []  # the parser is finished


def test_messages_before_a_bad_frame_in_the_same_read_are_delivered_first() -> None:
    # Autobahn 3.2 / 5.15: a valid message, then a broken frame, in one TCP segment.
    parser = ws.FrameParser(100)
    data = (
        client_frame(ws.OP_TEXT, b"first")
        + client_frame(ws.OP_PING, b"p")
        + client_frame(ws.OP_TEXT, b"second", rsv=0x20)
        + client_frame(ws.OP_TEXT, b"never")
    )
    events = parser.feed(data)
    assert events[:2] == [ws.Message("first"), ws.Ping(b"p")]
    assert isinstance(events[2], ws.Fail) and events[2].code == ws.CLOSE_PROTOCOL_ERROR
    assert len(events) == 3


def test_invalid_utf8_fails_at_the_fragment_that_breaks_it() -> None:
    # Autobahn 6.4.1: valid first part, then the fragment that makes the text invalid; the
    # connection fails then, before the message (or even the frame) ends.
    parser = ws.FrameParser(1000)
    assert parser.feed(client_frame(ws.OP_TEXT, "κόσμε".encode(), fin=False)) == []
    [fail] = parser.feed(client_frame(ws.OP_CONTINUATION, b"\xf4\x90\x80\x80", fin=False))
    assert fail == ws.Fail(ws.CLOSE_INVALID_PAYLOAD, "invalid UTF-8")


def test_invalid_utf8_fails_inside_a_frame_that_has_not_fully_arrived() -> None:
    # Autobahn 6.4.3: one frame sent in three chops; fail on the second chop.
    payload = "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited"
    frame = client_frame(ws.OP_TEXT, payload)
    parser = ws.FrameParser(1000)
    assert parser.feed(frame[:10]) == []
    [fail] = parser.feed(frame[10:22])
    assert fail.code == ws.CLOSE_INVALID_PAYLOAD  # type: ignore[union-attr]


def test_utf8_split_between_fragments_is_fine() -> None:
    text = "ü€😀"
    raw = text.encode()
    parser = ws.FrameParser(1000)
    frames = b"".join(
        client_frame(
            ws.OP_TEXT if i == 0 else ws.OP_CONTINUATION, raw[i : i + 1], fin=i == len(raw) - 1
        )
        for i in range(len(raw))
    )
    assert parser.feed(frames) == [ws.Message(text)]


def test_truncated_utf8_at_the_end_of_a_message_fails() -> None:
    parser = ws.FrameParser(1000)
    data = client_frame(ws.OP_TEXT, b"ok\xe2\x82", fin=False) + client_frame(
        ws.OP_CONTINUATION, b""
    )
    assert parser.feed(data) == [ws.Fail(ws.CLOSE_INVALID_PAYLOAD, "invalid UTF-8")]


def test_size_limit_applies_to_the_whole_fragmented_message() -> None:
    parser = ws.FrameParser(200)
    assert parser.feed(client_frame(ws.OP_BINARY, b"x" * 60, fin=False)) == []
    [fail] = parser.feed(client_frame(ws.OP_CONTINUATION, b"x" * 80))  # 60 + 64 + 80 > 200
    assert fail == ws.Fail(ws.CLOSE_TOO_BIG, "message too big")


def test_empty_fragments_count_against_the_limit() -> None:
    # Issue 8, item 5: 20 M empty continuation frames used to add 153 MiB.
    limit = 64 * 1024
    parser = ws.FrameParser(limit)
    empty = client_frame(ws.OP_CONTINUATION, b"", fin=False)
    assert parser.feed(client_frame(ws.OP_TEXT, b"4", fin=False)) == []
    allowed = (limit - 1) // ws.FRAGMENT_COST
    assert parser.feed(empty * allowed) == []
    assert parser.buffered <= 1
    [fail] = parser.feed(empty)
    assert fail == ws.Fail(ws.CLOSE_TOO_BIG, "message too big")


def test_a_message_may_use_exactly_its_limit() -> None:
    parser = ws.FrameParser(100)
    assert parser.feed(client_frame(ws.OP_BINARY, b"x" * 100)) == [ws.Message(b"x" * 100)]
    data = client_frame(ws.OP_BINARY, b"x" * 20, fin=False) + client_frame(
        ws.OP_CONTINUATION, b"y" * (100 - 20 - ws.FRAGMENT_COST)
    )
    [message] = parser.feed(data)
    assert message == ws.Message(b"x" * 20 + b"y" * 16)


@pytest.mark.parametrize("length", [101, 70000, 2**40, 2**63 - 1])
def test_oversized_frame_is_refused_from_its_header(length: int) -> None:
    parser = ws.FrameParser(100)
    header = bytes((0x82, 0xFF)) + struct.pack(">Q", length) + b"mask"
    [fail] = parser.feed(header)
    assert fail == ws.Fail(ws.CLOSE_TOO_BIG, "message too big")
    assert parser.buffered == 0


def test_frame_length_with_the_top_bit_set_is_a_protocol_error() -> None:
    parser = ws.FrameParser(100)
    [fail] = parser.feed(bytes((0x82, 0xFF)) + struct.pack(">Q", 2**63) + b"mask")
    assert fail.code == ws.CLOSE_PROTOCOL_ERROR  # type: ignore[union-attr]


def test_a_large_message_in_small_reads_holds_only_itself() -> None:
    payload = os.urandom(300_000)
    frame = client_frame(ws.OP_BINARY, payload)
    parser = ws.FrameParser(1_000_000)
    events: list[ws.Event] = []
    for pos in range(0, len(frame), 1000):
        events += parser.feed(frame[pos : pos + 1000])
        assert parser.buffered <= min(pos + 1000, len(payload))
    assert events == [ws.Message(payload)]
    assert parser.buffered == 0


def test_partial_header_and_control_frame_are_the_only_other_buffers() -> None:
    parser = ws.FrameParser(100)
    ping = client_frame(ws.OP_PING, b"p" * 125)
    assert parser.feed(ping[:-1]) == []
    assert parser.buffered == len(ping) - 1 <= 14 + 125
    assert parser.feed(ping[-1:]) == [ws.Ping(b"p" * 125)]
    assert parser.buffered == 0


def test_new_message_while_fragmented_is_an_error() -> None:
    parser = ws.FrameParser(100)
    parser.feed(client_frame(ws.OP_TEXT, b"a", fin=False))
    [fail] = parser.feed(client_frame(ws.OP_TEXT, b"b"))
    assert fail == ws.Fail(ws.CLOSE_PROTOCOL_ERROR, "expected a continuation frame")


def test_close_frame_is_parsed_and_ends_parsing() -> None:
    parser = ws.FrameParser(100)
    close = client_frame(ws.OP_CLOSE, close_payload(4001, b"bye"))
    assert parser.feed(close + client_frame(ws.OP_TEXT, b"ignored")) == [ws.Close(4001, "bye")]
    assert parser.feed(client_frame(ws.OP_TEXT, b"ignored")) == []
    parser = ws.FrameParser(100)
    assert parser.feed(client_frame(ws.OP_CLOSE, b"")) == [ws.Close(ws.CLOSE_NO_STATUS, "")]


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999])
def test_valid_close_codes(code: int) -> None:
    parser = ws.FrameParser(100)
    assert parser.feed(client_frame(ws.OP_CLOSE, close_payload(code))) == [ws.Close(code, "")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000])
def test_invalid_close_codes(code: int) -> None:
    parser = ws.FrameParser(100)
    [fail] = parser.feed(client_frame(ws.OP_CLOSE, close_payload(code)))
    assert fail.code == ws.CLOSE_PROTOCOL_ERROR  # type: ignore[union-attr]


def test_close_frame_builder_truncates_long_reasons_on_a_character() -> None:
    frame = ws.close_frame(1000, "x" * 500)
    [(opcode, body)] = ws.iter_frames(frame)
    assert opcode == ws.OP_CLOSE
    assert len(body) == 125
    assert struct.unpack(">H", body[:2])[0] == 1000
    [(_, body)] = ws.iter_frames(ws.close_frame(1000, "é" * 100))  # 2 bytes each
    assert body[2:].decode("utf-8") == "é" * 61  # not 61.5: the reason stays valid UTF-8
    assert ws.close_frame(ws.CLOSE_NO_STATUS) == b"\x88\x00"


def test_the_fallback_unmask_matches_the_fast_one() -> None:
    for n in (0, 1, 3, 4, 5, 125, 4096, 100_001):
        data, mask = os.urandom(n), os.urandom(4)
        assert ws._unmask_slow(data, mask) == ws.unmask(data, mask)
        assert ws.unmask(ws.unmask(data, mask), mask) == data


def test_pieces_helper_feeds_everything() -> None:
    parser = ws.FrameParser(100)
    frame = client_frame(ws.OP_TEXT, b"abc")
    assert feed_in_pieces(parser, frame, [1, 1, 1, 2]) == [ws.Message("abc")]
