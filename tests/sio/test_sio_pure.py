"""Engine.IO and Socket.IO codecs and the recovery log, without an event loop."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kichat.http import websocket as ws
from kichat.sio import engineio, parser
from kichat.sio.errors import ParseError
from kichat.sio.recovery import RecoveryLog

# -- Socket.IO packets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ptype", "nsp", "ack", "data"),
    [
        ("0", parser.CONNECT, "/", None, parser.ABSENT),
        ('0{"token":"123"}', parser.CONNECT, "/", None, {"token": "123"}),
        ("0/custom,", parser.CONNECT, "/custom", None, parser.ABSENT),
        ("0/random", parser.CONNECT, "/random", None, parser.ABSENT),
        ("1", parser.DISCONNECT, "/", None, parser.ABSENT),
        ("1/custom,", parser.DISCONNECT, "/custom", None, parser.ABSENT),
        ('2["message",1,"2",{"3":[true]}]', parser.EVENT, "/", None, ["message", 1, "2", {"3": [True]}]),
        ('2456["message-with-ack",1]', parser.EVENT, "/", 456, ["message-with-ack", 1]),
        ('2/admin,7["x"]', parser.EVENT, "/admin", 7, ["x"]),
        ('2[1,"numeric event names are valid"]', parser.EVENT, "/", None, [1, "numeric event names are valid"]),
        ("3456[]", parser.ACK, "/", 456, []),
        (r'2["App\\Events\\ChatMessageEvent",{}]', parser.EVENT, "/", None, ["App\\Events\\ChatMessageEvent", {}]),
    ],
)  # fmt: skip
def test_decode_valid_packets(
    text: str, ptype: int, nsp: str, ack: int | None, data: object
) -> None:
    packet = parser.decode(text)
    assert (packet.type, packet.nsp, packet.id) == (ptype, nsp, ack)
    assert packet.data == data if data is not parser.ABSENT else not packet.has_data


@pytest.mark.parametrize(
    "text",
    [
        "", "abc", "7", "9[]",                  # unknown types
        "2{}", "2", '2[]', '2[true]', '2[null]',  # event payload must be a non-empty array with a name
        '2["connect"]', '2["disconnect",1]',     # reserved event names
        'abc["message-with-ack",1]',
        '2abc["message-with-ack",1]',            # not an ack id, not JSON
        "1{}",                                   # DISCONNECT carries nothing
        "0[]", '0"x"',                           # CONNECT payload must be an object
        "3{}",                                   # ACK payload must be an array
        '5["x",{"_placeholder":true,"num":0}]',  # binary without attachment count
        '51x["x"]', '511-["x"]',                 # bad count, too many attachments
        "2999999999999999999[]",                 # ack id out of range
    ],
)  # fmt: skip
def test_decode_rejects_invalid_packets(text: str) -> None:
    with pytest.raises(ParseError):
        parser.decode(text)


@given(st.text(max_size=60))
def test_decode_raises_only_parse_errors(text: str) -> None:
    with contextlib.suppress(ParseError):
        parser.decode(text)


def test_binary_attachments_round_trip() -> None:
    text, buffers = parser.encode(parser.EVENT, "/", ["file", b"\x01\x02", {"inner": [b"\x03"]}])
    assert text == (
        b'52-["file",{"_placeholder":true,"num":0},{"inner":[{"_placeholder":true,"num":1}]}]'
    )
    assert buffers == [b"\x01\x02", b"\x03"]
    packet = parser.decode(text.decode())
    assert packet.attachments == 2
    assert parser.reconstruct(packet.data, buffers) == ["file", b"\x01\x02", {"inner": [b"\x03"]}]


def test_reconstruct_refuses_placeholders_out_of_range() -> None:
    with pytest.raises(ParseError):
        parser.reconstruct([{"_placeholder": True, "num": 2}], [b"x"])


def test_encode_main_and_custom_namespace_with_ack() -> None:
    assert parser.encode(parser.ACK, "/", [1], 12) == (b"312[1]", [])
    assert parser.encode(parser.EVENT, "/admin", ["x"]) == (b'2/admin,["x"]', [])
    assert parser.encode(parser.DISCONNECT, "/") == (b"1", [])


def test_json_keeps_non_ascii_and_handles_big_integers() -> None:
    assert parser.dumps({"t": "é🎉"}) == '{"t":"é🎉"}'.encode()
    assert parser.dumps([2**70]) == b"[1180591620717411303424]"


# -- Engine.IO ---------------------------------------------------------------------------------


def test_polling_payload_decoding() -> None:
    assert engineio.decode_payload(b"4hello\x1e2\x1ebAQIDBA==") == [
        "4hello",
        "2",
        b"\x01\x02\x03\x04",
    ]


@pytest.mark.parametrize("body", [b"", b"abc", b"4a\x1e", b"b!!!", b"\xff"])
def test_polling_payload_rejects_garbage(body: bytes) -> None:
    with pytest.raises(ParseError):
        engineio.decode_payload(body)


def test_frames_convert_to_one_polling_payload() -> None:
    frames = [engineio.message_frame(b'2["a"]') + ws.binary_frame(b"\x01\x02"), engineio.PING_FRAME]
    assert engineio.frames_to_payload(frames) == b'42["a"]\x1ebAQI=\x1e2'


def test_open_packet_lists_what_clients_need() -> None:
    packet = engineio.open_packet("abc", ["websocket"], 25000, 20000, 1000000)
    assert packet.startswith(b"0{")
    assert parser.loads(packet[1:]) == {
        "sid": "abc", "upgrades": ["websocket"], "pingInterval": 25000,
        "pingTimeout": 20000, "maxPayload": 1000000,
    }  # fmt: skip


# -- recovery log ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _log(window: float = 100.0, max_bytes: int = 10_000) -> RecoveryLog:
    return RecoveryLog(window, max_bytes, clock=Clock())


def _publish(log: RecoveryLog, room: str, now: float, frame: bytes | None = None) -> int:
    assert isinstance(log.clock, Clock)
    log.clock.now = now
    offset = log.next_offset()
    log.append(room, offset, frame or f"{room}:{offset}".encode())
    return offset


def test_missed_packets_come_in_offset_order_across_rooms() -> None:
    log = _log()
    a1 = _publish(log, "a", 0)
    _publish(log, "b", 1)
    _publish(log, "a", 2)
    _publish(log, "c", 3)
    _publish(log, "b", 4)
    assert log.missed({"a": 0, "b": 0}, a1) == [b"b:2", b"a:3", b"b:5"]


def test_packets_sent_before_joining_are_not_replayed() -> None:
    log = _log()
    _publish(log, "a", 0)
    joined = log.last_offset
    _publish(log, "a", 1)
    assert log.missed({"a": joined}, 0) == [b"a:2"]


def test_offset_from_the_future_cannot_recover() -> None:
    log = _log()
    _publish(log, "a", 0)
    assert log.missed({"a": 0}, 99) is None


def test_eviction_by_age_or_size_makes_recovery_fail_instead_of_skipping() -> None:
    log = _log(window=10, max_bytes=10_000)
    first = _publish(log, "a", 0)
    _publish(log, "a", 1)
    _publish(log, "a", 20)  # the first two are now older than the window
    assert log.missed({"a": 0}, first) is None
    assert log.missed({"a": 0}, log.last_offset - 1) == [b"a:3"]

    small = _log(window=100, max_bytes=30)
    o1 = _publish(small, "a", 0, b"x" * 20)
    _publish(small, "a", 1, b"y" * 20)  # evicts the first for space
    assert small.bytes <= 30
    assert small.missed({"a": 0}, o1 - 1) is None
    assert small.missed({"a": 0}, o1) == [b"y" * 20]


def test_dropped_room_frees_its_bytes_and_a_new_room_of_that_name_starts_clean() -> None:
    log = _log()
    _publish(log, "a", 0)
    _publish(log, "b", 0)
    before = log.bytes
    log.drop_room("a")
    assert log.bytes < before
    o = _publish(log, "a", 1)
    assert isinstance(log.clock, Clock)
    log.clock.now = 500
    log.expire()  # ages everything out, including the dead entries
    assert log.bytes == 0
    assert len(log) == 0
    assert log.missed({"a": 0}, o) == []
