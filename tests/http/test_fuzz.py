"""Property-based tests of the two parsers that read bytes from HTTP clients: the request
reader (:mod:`kichat.http.request`) and the WebSocket frame parser. Arbitrary input in
arbitrary pieces never raises anything but the parser's own error, never makes it hold more
than its limits, and valid input round-trips whatever the pieces."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kichat.http import websocket as ws
from kichat.http.request import HttpRequestError, Request, RequestReader

from wsframes import client_frame, feed_in_pieces

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cuts = st.lists(st.integers(min_value=1, max_value=64), max_size=60)


# ------------------------------------------------------------------ WebSocket frames

# Frame-shaped noise: mostly plausible headers (so parsing goes deep), with arbitrary bits.
noise_frame = st.builds(
    lambda b0, masked, payload, mask: (
        bytes((b0, (0x80 if masked else 0) | min(len(payload), 125))) + mask + payload
    ),
    st.integers(0, 255),
    st.booleans(),
    st.binary(max_size=140),
    st.binary(min_size=4, max_size=4),
)


@FUZZ
@given(st.lists(st.one_of(noise_frame, st.binary(max_size=30)), max_size=12), cuts)
def test_frame_parser_takes_any_bytes_in_any_pieces(parts: list[bytes], pieces: list[int]) -> None:
    data = b"".join(parts)
    whole = ws.FrameParser(200).feed(data)
    parser = ws.FrameParser(200)
    events = feed_in_pieces(parser, data, pieces)
    assert events == whole  # the same events whatever the pieces
    for event in events[:-1]:
        assert isinstance(event, ws.Message | ws.Ping | ws.Pong)
    if events and isinstance(events[-1], ws.Fail):
        assert events[-1].code in (ws.CLOSE_PROTOCOL_ERROR, ws.CLOSE_INVALID_PAYLOAD,
                                   ws.CLOSE_TOO_BIG)  # fmt: skip
    assert parser.buffered <= 200 + 14 + 125


message = st.one_of(
    st.text(max_size=300).map(lambda t: (ws.OP_TEXT, t.encode("utf-8"), t)),
    st.binary(max_size=300).map(lambda b: (ws.OP_BINARY, b, b)),
)


@st.composite
def fragmented(draw: st.DrawFn, item: tuple[int, bytes, str | bytes]) -> bytes:
    """One message as masked frames, split at random points, pings in between."""
    opcode, raw, _ = item
    points = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=4)))
    bounds = [0, *points, len(raw)]
    frames = []
    for i in range(len(bounds) - 1):
        last = i == len(bounds) - 2
        op = opcode if i == 0 else ws.OP_CONTINUATION
        mask = draw(st.binary(min_size=4, max_size=4))
        frames.append(client_frame(op, raw[bounds[i] : bounds[i + 1]], fin=last, mask=mask))
        if not last and draw(st.booleans()):
            frames.append(client_frame(ws.OP_PING, draw(st.binary(max_size=125))))
    return b"".join(frames)


@FUZZ
@given(st.data(), st.lists(message, max_size=6), cuts)
def test_masked_client_messages_round_trip_in_any_pieces(
    data: st.DataObject, messages: list[tuple[int, bytes, str | bytes]], pieces: list[int]
) -> None:
    stream = b"".join(data.draw(fragmented(m)) for m in messages)
    parser = ws.FrameParser(10_000)
    events = feed_in_pieces(parser, stream, pieces)
    assert [e.data for e in events if isinstance(e, ws.Message)] == [m[2] for m in messages]
    assert all(isinstance(e, ws.Message | ws.Ping) for e in events)
    assert parser.buffered == 0


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([ws.OP_TEXT, ws.OP_BINARY]),
                          st.binary(max_size=70_000)), max_size=4))  # fmt: skip
def test_server_frames_round_trip_through_iter_frames(frames: list[tuple[int, bytes]]) -> None:
    data = b"".join(ws.frame_header(op, len(p)) + p for op, p in frames)
    assert ws.iter_frames(data) == frames


# ------------------------------------------------------------------ HTTP request heads

LIMITS = {"max_header_size": 512, "max_body_size": 256}
ERRORS = {400, 408, 413, 414, 431}


def read_all(data: bytes, pieces: list[int]) -> tuple[list[Request], int | None, RequestReader]:
    """Feed ``data`` in pieces, taking every request; (requests, error status, reader)."""
    reader = RequestReader(**LIMITS)
    requests: list[Request] = []
    pos = 0
    try:
        for cut in [*pieces, len(data)]:
            reader.feed(data[pos : pos + cut])
            pos += cut
            while (request := reader.next_request()) is not None:
                requests.append(request)
                if not request.keep_alive or reader.upgraded:
                    return requests, None, reader
            assert reader.buffered == 0
    except HttpRequestError as exc:
        return requests, exc.status, reader
    return requests, None, reader


http_noise = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"GET / HTTP/1.1\r\n",
                b"POST /x HTTP/1.1\r\n",
                b"Host: a\r\n",
                b"Content-Length: 5\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"\r\n",
                b"5\r\nhello\r\n",
                b"0\r\n\r\n",
                b"X: " + b"y" * 300 + b"\r\n",
                b"Connection: close\r\n",
                b"Upgrade: websocket\r\n",
                b"Connection: Upgrade\r\n",
            ]
        ),
    ),
    max_size=20,
)


@FUZZ
@given(http_noise, cuts)
def test_request_reader_takes_any_bytes_in_any_pieces(
    parts: list[bytes], pieces: list[int]
) -> None:
    data = b"".join(parts)
    requests, error, reader = read_all(data, pieces)
    assert error is None or error in ERRORS
    for request in requests:
        assert len(request.body) <= LIMITS["max_body_size"]
        head = len(request.target) + sum(len(k) + len(v) for k, v in request.headers.items())
        assert head <= LIMITS["max_header_size"]
    assert reader.buffered <= len(data)


header_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
request_spec = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
        "path": st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
            lambda p: "/" + p.replace("#", "").replace("?", "")
        ),
        "query": st.text("abc=&", max_size=10),
        "headers": st.dictionaries(
            st.sampled_from(["x-a", "x-b", "accept", "origin"]), header_value, max_size=3
        ),
        "body": st.binary(max_size=200),
        "chunked": st.booleans(),
    }
)


def encode_request(spec: dict[str, object]) -> bytes:
    body = spec["body"]
    assert isinstance(body, bytes)
    lines = [f"{spec['method']} {spec['path']}?{spec['query']} HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in spec["headers"].items()]  # type: ignore[attr-defined]
    if spec["chunked"]:
        lines.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        parts = [p for p in (body[:half], body[half:]) if p]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


@FUZZ
@given(st.lists(request_spec, min_size=1, max_size=5), cuts)
def test_pipelined_requests_round_trip_in_any_pieces(specs: list[dict[str, object]],
                                                     pieces: list[int]) -> None:  # fmt: skip
    data = b"".join(encode_request(s) for s in specs)
    requests, error, _ = read_all(data, pieces)
    assert error is None
    # After a chunked body the reader may stop (keep-alive off) when llhttp read past it.
    assert 1 <= len(requests) <= len(specs)
    if len(requests) < len(specs):
        assert specs[len(requests) - 1]["chunked"] and not requests[-1].keep_alive
    for request, spec in zip(requests, specs, strict=False):
        assert request.method == spec["method"]
        assert request.target == f"{spec['path']}?{spec['query']}"
        assert request.body == spec["body"]
        for key, value in spec["headers"].items():  # type: ignore[attr-defined]
            assert request.headers[key] == value
