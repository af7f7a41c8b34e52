"""The pure Pusher client protocol: no event loop, no sockets, time passed in by hand."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kichat.errors import PusherProtocolError
from kichat.kick.pusher.protocol import (
    ChannelEvent,
    CloseAction,
    ConnectionEstablished,
    ConnectionStale,
    ProtocolState,
    PusherClientProtocol,
    PusherErrorReceived,
    SubscriptionFailed,
    SubscriptionSucceeded,
    classify_close,
)

CHANNEL = "chatrooms.668.v2"
CHAT_DATA = json.dumps({"id": "5f0c2b1e", "chatroom_id": 668, "content": "gg", "type": "message"})


def frame(event: str, data: Any = None, channel: str | None = None) -> str:
    obj: dict[str, Any] = {"event": event}
    if data is not None:
        obj["data"] = data
    if channel is not None:
        obj["channel"] = channel
    return json.dumps(obj)


def established(
    socket_id: str = "123.456", activity_timeout: Any = 120, as_string: bool = True
) -> str:
    data: Any = {"socket_id": socket_id, "activity_timeout": activity_timeout}
    return frame("pusher:connection_established", json.dumps(data) if as_string else data)


def sent(proto: PusherClientProtocol) -> list[dict[str, Any]]:
    return [json.loads(text) for text in proto.data_to_send()]


def connected(now: float = 0.0, **kwargs: float) -> PusherClientProtocol:
    proto = PusherClientProtocol(now=now, **kwargs)
    proto.receive(established(), now)
    return proto


# --------------------------------------------------------------------------------- handshake


@pytest.mark.parametrize("as_string", [True, False])
def test_connection_established_accepts_string_or_object_data(as_string: bool) -> None:
    proto = PusherClientProtocol(now=0.0)
    events = proto.receive(established("7.8", 120, as_string=as_string), 1.0)
    assert events == [ConnectionEstablished("7.8", 120.0)]
    assert proto.state is ProtocolState.CONNECTED
    assert proto.socket_id == "7.8"


@pytest.mark.parametrize(
    ("ours", "server", "effective"),
    [
        (120.0, 120, 120.0),
        (120.0, 30, 30.0),
        (20.0, 120, 20.0),
        (50.0, None, 50.0),
        (50.0, -1, 50.0),
    ],
)
def test_activity_timeout_is_the_smaller_of_ours_and_the_servers(
    ours: float, server: Any, effective: float
) -> None:
    proto = PusherClientProtocol(now=0.0, activity_timeout=ours)
    proto.receive(established(activity_timeout=server), 10.0)
    assert proto.activity_timeout == effective
    assert proto.next_deadline() == 10.0 + effective


def test_subscriptions_requested_before_established_are_sent_right_after_it() -> None:
    proto = PusherClientProtocol(now=0.0)
    proto.subscribe("a")
    proto.subscribe("b")
    proto.subscribe("a")  # asked twice before the handshake: sent once
    proto.subscribe("c")
    proto.unsubscribe("c")  # withdrawn before the handshake: never sent
    assert proto.data_to_send() == []
    proto.receive(established(), 1.0)
    assert sent(proto) == [
        {"event": "pusher:subscribe", "data": {"auth": "", "channel": "a"}},
        {"event": "pusher:subscribe", "data": {"auth": "", "channel": "b"}},
    ]
    assert proto.data_to_send() == []  # drained


def test_subscribe_and_unsubscribe_frames_when_connected() -> None:
    proto = connected()
    proto.subscribe(CHANNEL)
    proto.unsubscribe(CHANNEL)
    assert sent(proto) == [
        {"event": "pusher:subscribe", "data": {"auth": "", "channel": CHANNEL}},
        {"event": "pusher:unsubscribe", "data": {"channel": CHANNEL}},
    ]


def test_subscribe_rejects_an_empty_channel_name() -> None:
    with pytest.raises(ValueError, match="channel"):
        connected().subscribe("")


def test_handshake_timeout_reports_a_stale_connection() -> None:
    proto = PusherClientProtocol(now=100.0, handshake_timeout=5.0)
    assert proto.next_deadline() == 105.0
    assert proto.on_timer(104.9) == []
    [event] = proto.on_timer(105.0)
    assert isinstance(event, ConnectionStale)
    assert "connection_established" in event.reason
    assert proto.state is ProtocolState.STALE
    assert proto.next_deadline() is None


# --------------------------------------------------------------------------- app and control


def test_app_event_data_is_passed_through_as_the_raw_string() -> None:
    proto = connected()
    text = frame("App\\Events\\ChatMessageEvent", CHAT_DATA, CHANNEL)
    [event] = proto.receive(text, 1.0)
    assert event == ChannelEvent(CHANNEL, "App\\Events\\ChatMessageEvent", CHAT_DATA)
    assert isinstance(event, ChannelEvent)
    assert type(event.data) is str  # not decoded: the relay decodes it once


@pytest.mark.parametrize("data", [{"already": "decoded"}, [1, 2], None, "[]"])
def test_app_event_data_of_any_shape_is_kept_as_sent(data: Any) -> None:
    proto = connected()
    text = json.dumps({"event": "KicksGifted", "channel": "channel.1", "data": data})
    assert proto.receive(text, 1.0) == [ChannelEvent("channel.1", "KicksGifted", data)]


def test_app_event_bytes_frame_is_accepted() -> None:
    proto = connected()
    text = frame("E", "{}", CHANNEL).encode()
    assert proto.receive(text, 1.0) == [ChannelEvent(CHANNEL, "E", "{}")]


def test_server_ping_is_answered_with_a_pong_at_once() -> None:
    proto = connected()
    assert proto.receive(frame("pusher:ping", {}), 1.0) == []
    assert sent(proto) == [{"event": "pusher:pong", "data": {}}]
    assert proto.receive(frame("pusher:ping", "{}"), 2.0) == []
    assert sent(proto) == [{"event": "pusher:pong", "data": {}}]


@pytest.mark.parametrize("data", ["{}", {}, None])
def test_subscription_succeeded_with_any_empty_data(data: Any) -> None:
    proto = connected()
    text = frame("pusher_internal:subscription_succeeded", data, CHANNEL)
    assert proto.receive(text, 1.0) == [SubscriptionSucceeded(CHANNEL)]


def test_subscription_error_shape_from_the_protocol_docs() -> None:
    proto = connected()
    data = {"type": "AuthError", "error": "bad auth", "status": 401}
    [event] = proto.receive(frame("pusher:subscription_error", data, "private-x"), 1.0)
    assert event == SubscriptionFailed("private-x", "AuthError: bad auth", 401)
    [event] = proto.receive(frame("pusher:subscription_error", json.dumps(data), "private-x"), 1.0)
    assert event == SubscriptionFailed("private-x", "AuthError: bad auth", 401)
    [event] = proto.receive(frame("pusher:subscription_error", None, "private-x"), 1.0)
    assert event == SubscriptionFailed("private-x", "subscription refused", None)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"code": 4200, "message": "Please reconnect immediately"},
            (4200, "Please reconnect immediately"),
        ),
        (
            json.dumps({"code": 4001, "message": "App key x does not exist"}),
            (4001, "App key x does not exist"),
        ),
        ({"code": None, "message": "no code"}, (None, "no code")),
        ({"code": "4200", "message": 5}, (None, "")),
        ("plain text", (None, "plain text")),
        (None, (None, "")),
    ],
)
def test_pusher_error_data_as_object_or_string(data: Any, expected: tuple[int | None, str]) -> None:
    proto = connected()
    assert proto.receive(frame("pusher:error", data), 1.0) == [PusherErrorReceived(*expected)]


def test_pusher_error_naming_a_channel_is_a_subscription_failure() -> None:
    proto = connected()
    data = {"code": 4009, "message": "unauthorized"}
    events = proto.receive(frame("pusher:error", data, "private-x"), 1.0)
    assert events == [SubscriptionFailed("private-x", "unauthorized", None)]


@pytest.mark.parametrize(
    "event", ["pusher:pong", "pusher_internal:subscription_count", "pusher:signin_success"]
)
def test_other_control_events_produce_nothing(event: str) -> None:
    proto = connected()
    assert proto.receive(frame(event, {"subscription_count": 3}, CHANNEL), 1.0) == []
    assert proto.data_to_send() == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1,2]",
        "42",
        '"a string"',
        "null",
        "{}",
        '{"event": 5}',
        '{"data": "{}"}',
        '{"event": "App\\\\Events\\\\ChatMessageEvent", "data": "{}"}',  # no channel
        '{"event": "E", "channel": 7, "data": "{}"}',
        '{"event": "pusher_internal:subscription_succeeded", "data": "{}"}',
        '{"event": "pusher:subscription_error", "data": {}}',
        '{"event": "pusher:connection_established", "data": "{}"}',
        '{"event": "pusher:connection_established", "data": "not json"}',
        '{"event": "pusher:connection_established", "data": {"socket_id": 5}}',
        '{"event": "pusher:connection_established"}',
        '{"event":"E","channel":"c","data":"\\ud800"} trailing',
    ],
)
def test_malformed_frames_raise_protocol_error(text: str) -> None:
    proto = PusherClientProtocol(now=0.0)
    with pytest.raises(PusherProtocolError):
        proto.receive(text, 1.0)


def test_a_malformed_frame_still_counts_as_life_and_changes_nothing_else() -> None:
    proto = connected(now=0.0, activity_timeout=10.0)
    proto.subscribe(CHANNEL)
    proto.data_to_send()
    with pytest.raises(PusherProtocolError):
        proto.receive("garbage", 8.0)
    assert proto.next_deadline() == 18.0
    assert proto.state is ProtocolState.CONNECTED
    assert proto.data_to_send() == []


# ---------------------------------------------------------------------------------- keepalive


def test_client_ping_after_activity_timeout_then_stale_without_reply() -> None:
    proto = connected(now=0.0, activity_timeout=10.0, pong_timeout=3.0)
    assert proto.next_deadline() == 10.0
    assert proto.on_timer(9.99) == []  # early call: harmless
    assert proto.data_to_send() == []
    assert proto.on_timer(10.0) == []
    assert sent(proto) == [{"event": "pusher:ping", "data": {}}]
    assert proto.next_deadline() == 13.0
    assert proto.on_timer(12.0) == []
    assert proto.data_to_send() == []  # one ping per idle period, not one per timer call
    [event] = proto.on_timer(13.0)
    assert isinstance(event, ConnectionStale)
    assert "pusher:ping" in event.reason
    assert proto.next_deadline() is None
    assert proto.on_timer(100.0) == []  # reported once


@pytest.mark.parametrize(
    "reply",
    [
        frame("pusher:pong", {}),
        frame("App\\Events\\ChatMessageEvent", CHAT_DATA, CHANNEL),
        frame("pusher:ping", {}),
        "malformed",
    ],
)
def test_any_frame_answers_a_ping(reply: str) -> None:
    proto = connected(now=0.0, activity_timeout=10.0, pong_timeout=3.0)
    proto.on_timer(10.0)
    proto.data_to_send()
    with contextlib.suppress(PusherProtocolError):
        proto.receive(reply, 11.0)
    assert proto.next_deadline() == 21.0
    assert proto.on_timer(13.0) == []
    assert proto.state is ProtocolState.CONNECTED


def test_received_frames_push_the_ping_back() -> None:
    proto = connected(now=0.0, activity_timeout=10.0)
    for t in (5.0, 12.0, 19.0):
        proto.receive(frame("E", "{}", CHANNEL), t)
        assert proto.on_timer(t + 9.9) == []
        assert proto.data_to_send() == []
    assert proto.next_deadline() == 29.0


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PusherClientProtocol(now=0.0, pong_timeout=0.0)


# -------------------------------------------------------------------------------- close codes


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (4000, CloseAction.FATAL),
        (4001, CloseAction.FATAL),
        (4009, CloseAction.FATAL),
        (4099, CloseAction.FATAL),
        (4100, CloseAction.BACKOFF),
        (4199, CloseAction.BACKOFF),
        (4200, CloseAction.IMMEDIATE),
        (4201, CloseAction.IMMEDIATE),
        (4202, CloseAction.IMMEDIATE),
        (4299, CloseAction.IMMEDIATE),
        (4300, CloseAction.BACKOFF_JITTER),
        (4301, CloseAction.BACKOFF_JITTER),
        (1000, CloseAction.BACKOFF_JITTER),
        (1001, CloseAction.BACKOFF_JITTER),
        (1006, CloseAction.BACKOFF_JITTER),
        (1011, CloseAction.BACKOFF_JITTER),
        (3999, CloseAction.BACKOFF_JITTER),
        (None, CloseAction.BACKOFF_JITTER),
    ],
)
def test_close_code_table(code: int | None, action: CloseAction) -> None:
    assert classify_close(code) is action


# --------------------------------------------------------------------------------- properties


def _check_only_protocol_errors(proto: PusherClientProtocol, text: str | bytes) -> None:
    try:
        events = proto.receive(text, 1.0)
    except PusherProtocolError:
        return
    assert isinstance(events, list)
    proto.data_to_send()
    proto.on_timer(1000.0)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_nothing_but_protocol_error(text: str) -> None:
    _check_only_protocol_errors(PusherClientProtocol(now=0.0), text)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_raise_nothing_but_protocol_error(data: bytes) -> None:
    _check_only_protocol_errors(PusherClientProtocol(now=0.0), data)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=6,
)
_events = st.sampled_from(
    [
        "pusher:connection_established",
        "pusher:error",
        "pusher:ping",
        "pusher:pong",
        "pusher:subscription_error",
        "pusher_internal:subscription_succeeded",
        "pusher_internal:subscription_count",
        "App\\Events\\ChatMessageEvent",
    ]
)
_data = (
    _json
    | _json.map(lambda v: orjson.dumps(v).decode())
    | st.fixed_dictionaries(
        {},
        optional={
            "socket_id": _json,
            "activity_timeout": _json,
            "code": _json,
            "message": _json,
            "error": _json,
            "type": _json,
            "status": _json,
        },
    )
)


@settings(max_examples=250, deadline=None)
@given(
    st.fixed_dictionaries(
        {"event": _events | _json},
        optional={"data": _data | _data.map(lambda v: orjson.dumps(v).decode()), "channel": _json},
    ),
    st.booleans(),
)
def test_structured_frames_raise_nothing_but_protocol_error(
    obj: dict[str, Any], first: bool
) -> None:
    proto = PusherClientProtocol(now=0.0) if first else connected()
    _check_only_protocol_errors(proto, orjson.dumps(obj).decode())
