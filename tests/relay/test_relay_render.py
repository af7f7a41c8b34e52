"""kichat.relay.render: the event encoded once by the feeding node, framed per room by splicing
bytes on every node; no event loop, property-based where it helps."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kichat.http.websocket import iter_frames
from kichat.relay.render import (
    Renderer,
    encode_event,
    format_offset,
    parse_offset,
    split_event,
)

CHAT = "App\\Events\\ChatMessageEvent"

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
slugs = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)


def decoded(frame: bytes) -> list[Any]:
    [(opcode, payload)] = iter_frames(frame)
    assert opcode == 1 and payload.startswith(b"42")
    result: list[Any] = json.loads(payload[2:])
    return result


@given(
    st.text(min_size=1, max_size=40),
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    slugs,
    st.integers(0, 2**40),
)
def test_a_frame_is_kicks_data_plus_channel_name_plus_offset(
    event: str, data: dict[str, Any], slug: str, position: int
) -> None:
    payload = encode_event(event, dict(data))
    offset = format_offset("e1f2", position)
    got = decoded(Renderer(slug).frame(payload, offset))
    expected = {k: v for k, v in data.items() if k != "channel_name"} | {"channel_name": slug}
    assert got == [event, expected, f"e1f2.{position}"]
    assert decoded(Renderer(slug).plain_frame(payload)) == [event, expected]


@given(json_values.filter(lambda v: not isinstance(v, dict)), slugs)
def test_data_that_is_not_an_object_becomes_just_the_channel_name(data: Any, slug: str) -> None:
    got = decoded(Renderer(slug).plain_frame(encode_event("PollDeleteEvent", data)))
    assert got == ["PollDeleteEvent", {"channel_name": slug}]


def test_kicks_own_channel_name_is_replaced_not_repeated() -> None:
    payload = encode_event(CHAT, {"id": "m1", "channel_name": "kick's own"})
    assert payload.count(b"channel_name") == 0
    frame = Renderer("xqc").frame(payload, b"e.1")
    assert decoded(frame)[1] == {"id": "m1", "channel_name": "xqc"}
    assert frame.count(b"channel_name") == 1


def test_split_event_undoes_encode_event() -> None:
    assert split_event(encode_event(CHAT, {"a": [1, {"b": None}]})) == (
        CHAT,
        {"a": [1, {"b": None}]},
    )


@given(st.from_regex(r"[0-9a-f]{8}", fullmatch=True), st.integers(0, 2**62))
def test_offsets_round_trip(epoch: str, position: int) -> None:
    assert parse_offset(format_offset(epoch, position).decode()) == (epoch, position)


@given(st.one_of(st.none(), st.integers(), st.text(max_size=80), st.lists(st.text(max_size=3))))
def test_anything_else_is_not_an_offset_and_never_raises(value: object) -> None:
    parsed = parse_offset(value)
    assert parsed is None or (isinstance(parsed[1], int) and parsed[1] >= 0)


def test_a_huge_offset_from_a_client_is_refused() -> None:
    assert parse_offset("e." + "9" * 100) is None
    assert parse_offset("nodot") is None
    assert parse_offset(".5") is None
