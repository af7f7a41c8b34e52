"""Property-based fuzzing of what reads bytes from Kick and from clients on the Kick side:
Pusher frames (beyond tests/kick/pusher/test_pusher_protocol.py: nesting and odd encodings),
event data, Kick's REST answers (channel, chat history, Retry-After), and the subscribe payload
a client sends. Arbitrary input raises nothing but each parser's own error."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kichat.errors import ClientInputError, KickBadResponse, PusherProtocolError
from kichat.kick import api
from kichat.kick import events as ev
from kichat.kick.names import MAX_ID_DIGITS, parse_chatroom_id, parse_slug
from kichat.kick.pusher.protocol import PusherClientProtocol
from kichat.relay import service

# No deadline, no speed health check: a busy machine must not fail a property.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Bodies that are JSON, nearly JSON, nested past every parser's limit, or noise.
bodies = (
    json_values.map(orjson.dumps)
    | st.binary(max_size=200)
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
    | st.sampled_from([b"NaN", b"[Infinity]", b'"\\ud800"', b"1e400", b"\xef\xbb\xbf{}", b""])
    # Long names where a parser quotes them in its error message.
    | st.sampled_from(
        [{"event": "e" * 20_000}, {"event": "pusher:error", "data": "m" * 20_000}]
    ).map(orjson.dumps)
)


def reply(body: bytes, status: int = 200, **headers: str) -> Any:
    return api._Reply(status, httpx.Headers(headers), body)


# -- Pusher frames and event data --------------------------------------------------------------


@settings(RELAXED, max_examples=300)
@given(bodies, st.booleans())
def test_pusher_frames_of_any_shape_raise_only_protocol_errors(body: bytes, as_text: bool) -> None:
    proto = PusherClientProtocol(now=0.0)
    frame: str | bytes = body.decode("utf-8", "replace") if as_text else body
    try:
        proto.receive(frame, 1.0)
    except PusherProtocolError as exc:
        assert len(str(exc)) < 300  # it ends up in a log line
    proto.on_timer(2.0)


@settings(RELAXED, max_examples=300)
@given(bodies | bodies.map(lambda b: b.decode("utf-8", "replace")))
def test_event_data_decodes_or_raises_value_error(raw: bytes | str) -> None:
    try:
        data = ev.decode_data(raw)
    except ValueError:
        return
    ev.event_id(data, ev.CHAT_MESSAGE_EVENT)
    assert ev.with_channel_name(data, "xqc")["channel_name"] == "xqc"


@RELAXED
@given(st.integers(1, 5000))
def test_event_data_nested_past_every_limit_is_refused_cleanly(levels: int) -> None:
    # orjson refuses more than 1024 levels; the stdlib fallback must not escape RecursionError.
    try:
        ev.decode_data("[" * levels + "]" * levels)
    except ValueError:
        assert levels > 1024


# -- Kick's REST answers -----------------------------------------------------------------------


@settings(RELAXED, max_examples=300)
@given(bodies, st.sampled_from([200, 203]))
def test_channel_answers_parse_or_raise_bad_response(body: bytes, status: int) -> None:
    try:
        channel = api._parse_channel("xqc", reply(body, status))
    except KickBadResponse as exc:
        assert exc.upstream_status == status
        return
    assert channel.id >= 1 and channel.chatroom_id >= 1
    assert channel.body == body


@settings(RELAXED, max_examples=300)
@given(
    bodies
    | st.lists(
        st.dictionaries(st.sampled_from(["chat_id", "metadata", "content"]), json_values)
    ).map(lambda items: orjson.dumps({"data": {"messages": items}}))
    | st.lists(st.text(max_size=30).map(lambda m: {"metadata": m, "chat_id": 1})).map(
        lambda items: orjson.dumps({"data": {"messages": items}})
    )
)
def test_history_answers_parse_or_raise_bad_response(body: bytes) -> None:
    try:
        items = api._parse_history(reply(body))
    except KickBadResponse:
        return
    for item in items:
        assert "chat_id" not in item
        assert isinstance(item.get("metadata", {}), dict)


@RELAXED
@given(
    st.text(max_size=40)
    | st.floats().map(str)
    | st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    | st.sampled_from(["nan", "inf", "-inf", "1e999", "Mon, 01 Jan 0001 00:00:00 -0000"])
)
def test_retry_after_is_none_or_a_usable_delay(value: str) -> None:
    try:
        headers = httpx.Headers({"retry-after": value})
    except (UnicodeEncodeError, ValueError):
        return  # not something an HTTP peer can send
    wait = api._retry_after(headers)
    assert wait is None or (wait >= 0 and not math.isnan(wait))


# -- the subscribe payload a client sends ------------------------------------------------------

payload_fields = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70)
payloads = st.lists(
    json_values
    | st.fixed_dictionaries(
        {}, optional={"channelName": payload_fields, "chatroomId": payload_fields}
    ),
    max_size=3,
)


@settings(RELAXED, max_examples=300)
@given(payloads)
def test_subscribe_payloads_parse_or_raise_client_input_errors(args: list[Any]) -> None:
    try:
        key = service._parse(args, "subscribe")
    except ClientInputError as exc:
        assert exc.code in {"invalid_payload", "invalid_channel_name", "invalid_chatroom_id"}
        assert len(exc.message) < 300  # it is sent back to the client, and may be logged
    else:
        assert parse_slug(args[0]["channelName"]) == key.slug
        assert parse_chatroom_id(args[0]["chatroomId"]) == key.chatroom_id
    echoed = service._echo(args)
    assert set(echoed) <= {"channelName", "chatroomId"}
    json.dumps(echoed)


@RELAXED
@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True),
    st.integers(1, 10**MAX_ID_DIGITS - 1),
    st.booleans(),
)
def test_valid_subscribe_payloads_round_trip(slug: str, chatroom: int, as_text: bool) -> None:
    args = [{"channelName": slug, "chatroomId": str(chatroom) if as_text else chatroom}]
    key = service._parse(args, "subscribe")
    assert (key.slug, key.chatroom_id) == (slug.lower(), chatroom)
    assert service._echo(args) == service._describe(key)


@pytest.mark.parametrize("levels", [10, 1000, 5000])
def test_deep_subscribe_payloads_are_just_invalid(levels: int) -> None:
    deep: Any = 1
    for _ in range(levels):
        deep = {"channelName": deep, "chatroomId": [deep]}
    with pytest.raises(ClientInputError):
        service._parse([deep], "subscribe")
