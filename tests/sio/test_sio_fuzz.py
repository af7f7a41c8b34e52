"""Property-based fuzzing of what reads client bytes: Engine.IO packets and long-polling
payloads, Socket.IO packets with binary attachments, and the JSON under them.

Arbitrary input raises nothing but :class:`ParseError`; encode/decode round-trip; and, at the
wire, random packets from a connected client get an answer or a close, never a server error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kichat.http import websocket as ws
from kichat.sio import engineio, parser
from kichat.sio.errors import ParseError

from conftest import LOOP, UNIT
from sio_harness import serve_sio

# No deadline, no speed health check: a busy machine must not fail a property.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies --------------------------------------------------------------------------------

# Strings as JavaScript has them: lone surrogates included (JSON.stringify escapes them).
js_text = st.text(st.characters(exclude_categories=()), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | js_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(js_text, inner, max_size=4),
    max_leaves=20,
)
with_binary = st.recursive(
    scalars | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(js_text, inner, max_size=4),
    max_leaves=20,
)
namespaces = st.just("/") | st.from_regex(r"/[a-z0-9_-]{1,10}", fullmatch=True)
ack_ids = st.none() | st.integers(0, 2**53 - 1)
event_names = js_text.filter(lambda name: name not in parser.RESERVED_EVENTS)

# Text that looks like a Socket.IO packet: a type digit, maybe an attachment count, maybe a
# namespace, maybe an ack id, then JSON or noise.
packet_texts = st.builds(
    lambda kind, attachments, nsp, ack, body: kind + attachments + nsp + ack + body,
    st.sampled_from("0123456789x"),
    st.sampled_from(["", "1-", "0-", "10-", "11-", "999999999999999999999-", "-"]),
    st.sampled_from(["", "/", "/admin,", "/a", ","]),
    st.sampled_from(["", "1", "0", "9007199254740991", "9007199254740992", "9" * 5000]),
    json_values.map(json.dumps) | st.text(max_size=20),
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def plain(value: Any) -> Any:
    """What a value looks like after a trip through JSON (tuples become lists)."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# -- Socket.IO packets -------------------------------------------------------------------------


@settings(RELAXED, max_examples=500)
@given(st.text(max_size=200) | packet_texts)
def test_decode_raises_nothing_but_parse_errors(text: str) -> None:
    try:
        packet = parser.decode(text)
    except ParseError:
        return
    assert packet.type in range(7)
    assert depth(packet.data) <= parser.MAX_DEPTH
    assert packet.attachments <= parser.MAX_ATTACHMENTS


@RELAXED
@given(st.integers(parser.MAX_DEPTH, 3000), st.sampled_from(["[]", "{}", "1", '"x"']))
def test_any_nesting_past_the_limit_is_a_parse_error(levels: int, inner: str) -> None:
    text = '2["e",' + "[" * levels + inner + "]" * levels + "]"
    with pytest.raises(ParseError, match="nested deeper"):
        parser.decode(text)


@RELAXED
@given(st.binary(max_size=300) | packet_texts.map(str.encode), st.lists(st.binary(max_size=4)))
def test_reconstruct_raises_nothing_but_parse_errors(raw: bytes, buffers: list[bytes]) -> None:
    try:
        packet = parser.decode(raw.decode("utf-8", "replace"))
        parser.reconstruct(packet.data, buffers)
    except ParseError:
        pass


@RELAXED
@given(event_names, st.lists(with_binary, max_size=4), namespaces, ack_ids)
def test_events_round_trip_with_binary_attachments(
    event: str, args: list[Any], nsp: str, ack: int | None
) -> None:
    data = [event, *args]
    text, buffers = parser.encode(parser.EVENT, nsp, data, ack)
    if len(buffers) > parser.MAX_ATTACHMENTS:
        # Clients have no such limit; what a client sends us does.
        with pytest.raises(ParseError, match="too many attachments"):
            parser.decode(text.decode("utf-8"))
        return
    packet = parser.decode(text.decode("utf-8"))
    assert (packet.nsp, packet.id, packet.attachments) == (nsp, ack, len(buffers))
    assert packet.type == (parser.BINARY_EVENT if buffers else parser.EVENT)
    assert parser.reconstruct(packet.data, buffers) == plain(data)


@RELAXED
@given(st.lists(json_values, max_size=4), namespaces, st.integers(0, 2**53 - 1))
def test_acks_round_trip(args: list[Any], nsp: str, ack: int) -> None:
    text, buffers = parser.encode(parser.ACK, nsp, args, ack)
    assert buffers == []
    packet = parser.decode(text.decode("utf-8"))
    assert (packet.type, packet.nsp, packet.id, packet.data) == (parser.ACK, nsp, ack, args)


@RELAXED
@given(json_values)
def test_json_round_trips_through_dumps_and_loads(value: Any) -> None:
    assert parser.loads(parser.dumps(value)) == value


@RELAXED
@given(json_values, st.integers(0, 40), st.booleans())
def test_nesting_is_measured_exactly_on_valid_json(value: Any, limit: int, as_bytes: bool) -> None:
    text = parser.dumps(value)
    assert parser.nesting_exceeds(text if as_bytes else text.decode(), limit) == (
        depth(value) > limit
    )


def test_encode_refuses_data_nested_past_its_limit_or_containing_itself() -> None:
    deep: list[Any] = []
    for _ in range(parser.MAX_ENCODE_DEPTH + 5):
        deep = [deep, b"\x00"]
    looped: list[Any] = [b"\x00"]
    looped.append(looped)
    for data in (deep, looped, ["x\ud800", deep]):
        with pytest.raises(parser.EncodeError):
            parser.encode(parser.EVENT, "/", ["e", data])


# -- Engine.IO ---------------------------------------------------------------------------------

engineio_texts = st.builds(
    lambda kind, body: kind + body, st.sampled_from("0123456"), st.text(max_size=30)
).filter(lambda packet: "\x1e" not in packet)
engineio_packets = engineio_texts | st.binary(max_size=30)


@settings(RELAXED, max_examples=300)
@given(
    st.binary(max_size=200)
    | st.lists(
        engineio_texts | st.text(max_size=10) | st.binary(max_size=10).map(lambda b: "b" + str(b)),
        max_size=5,
    ).map(lambda parts: "\x1e".join(parts).encode("utf-8", "surrogatepass"))
)
def test_polling_payloads_raise_nothing_but_parse_errors(body: bytes) -> None:
    try:
        packets = engineio.decode_payload(body)
    except ParseError:
        return
    for packet in packets:
        if isinstance(packet, str):
            engineio.check_text_packet(packet)


@RELAXED
@given(st.lists(engineio_packets, min_size=1, max_size=6))
def test_queued_frames_round_trip_through_a_polling_payload(packets: list[str | bytes]) -> None:
    frames = [
        ws.binary_frame(p) if isinstance(p, bytes) else ws.text_frame(p.encode("utf-8"))
        for p in packets
    ]
    assert engineio.decode_payload(engineio.frames_to_payload(frames)) == packets


@RELAXED
@given(st.lists(engineio_packets, min_size=1, max_size=6))
def test_polling_payloads_decode_what_clients_encode(packets: list[str | bytes]) -> None:
    body = "\x1e".join(
        "b" + base64.b64encode(p).decode() if isinstance(p, bytes) else p for p in packets
    ).encode()
    assert engineio.decode_payload(body) == packets


# -- at the wire -------------------------------------------------------------------------------

wire_packets = (
    packet_texts.map(lambda text: "4" + text)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.builds(
        lambda head, tail: ["4" + head, *tail],
        st.sampled_from(['51-["echo",{"_placeholder":true,"num":0}]', '52-["echo",1]', "61-0[]"]),
        st.lists(st.binary(max_size=8) | st.text(max_size=8), max_size=3),
    )
)


def flat(packets: list[Any]) -> list[str | bytes]:
    out: list[str | bytes] = []
    for p in packets:
        out.extend(p if isinstance(p, list) else [p])
    return out


class Recorder(logging.Handler):
    """Collects what the server logs at WARNING and above while it is installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def __enter__(self) -> Recorder:
        logging.getLogger("kichat").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("kichat").removeHandler(self)


def run(coro: Any) -> Any:
    """One example, on a fresh event loop of the kind the suite uses (hypothesis drives
    synchronous tests only)."""
    if LOOP == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def websocket_fuzz(packets: list[str | bytes]) -> None:
    async with serve_sio() as h:
        url = f"ws://127.0.0.1:{h.port}/socket.io/?EIO=4&transport=websocket"
        async with connect(url) as bystander, connect(url) as fuzzer:
            for sock in (bystander, fuzzer):
                await asyncio.wait_for(sock.recv(), 5 * UNIT)
                await sock.send("40")
                assert str(await asyncio.wait_for(sock.recv(), 5 * UNIT)).startswith("40")
            with contextlib.suppress(ConnectionClosed):
                for packet in packets:
                    await fuzzer.send(packet)
                await fuzzer.send('421000["echo","done"]')
                while await asyncio.wait_for(fuzzer.recv(), 5 * UNIT) != '431000["done"]':
                    pass
            if fuzzer.close_code is not None:
                assert fuzzer.close_code in (1000, 1002), fuzzer.close_code
            await bystander.send('427["echo","still here"]')
            assert await asyncio.wait_for(bystander.recv(), 5 * UNIT) == '437["still here"]'
    assert h.sio.stats.handler_errors == 0


@settings(RELAXED, max_examples=40)
@given(st.lists(wire_packets, min_size=1, max_size=8))
def test_random_packets_over_websocket_never_break_the_server(packets: list[Any]) -> None:
    with Recorder() as recorder:
        run(websocket_fuzz(flat(packets)))
    assert recorder.lines == []


async def polling_fuzz(body: bytes) -> None:
    async with serve_sio() as h, httpx.AsyncClient(timeout=10 * UNIT) as http:
        base = f"{h.url}/socket.io/?EIO=4&transport=polling"
        sid = json.loads((await http.get(base)).text[1:])["sid"]
        assert (await http.post(f"{base}&sid={sid}", content="40")).status_code == 200
        reply = await http.post(f"{base}&sid={sid}", content=body)
        assert reply.status_code in (200, 400), reply.text
    assert h.sio.stats.handler_errors == 0


@settings(RELAXED, max_examples=30)
@given(st.lists(wire_packets, min_size=1, max_size=6))
def test_random_polling_bodies_get_200_or_400(packets: list[Any]) -> None:
    body = "\x1e".join(
        "b" + base64.b64encode(p).decode() if isinstance(p, bytes) else p for p in flat(packets)
    ).encode("utf-8", "surrogatepass")
    with Recorder() as recorder:
        run(polling_fuzz(body))
    assert recorder.lines == []
