"""The simulator's Pusher server protocol core: no event loop, no sockets, time passed by hand."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kichat.errors import ClientInputError
from kichat.sim import pusher
from kichat.sim.pusher import (
    CloseFor,
    Ignored,
    PusherSession,
    Reply,
    SendPing,
    Subscribe,
    Unsubscribe,
)


def session(activity: float = 120.0, pong: float = 30.0, now: float = 0.0) -> PusherSession:
    return PusherSession("123.456", activity, pong, now)


def frame(event: str, data: object) -> str:
    return json.dumps({"event": event, "data": data})


def test_handshake_data_is_a_json_string_with_socket_id_and_timeout() -> None:
    outer = json.loads(session(activity=120.0).handshake())
    assert outer["event"] == "pusher:connection_established"
    assert isinstance(outer["data"], str)
    assert json.loads(outer["data"]) == {"socket_id": "123.456", "activity_timeout": 120}
    inner = json.loads(json.loads(session(activity=0.25).handshake())["data"])
    assert inner["activity_timeout"] == 0.25


def test_subscribe_with_or_without_auth_then_confirm_acks_with_string_data() -> None:
    s = session()
    for data in ({"auth": "", "channel": "chatrooms.668.v2"}, {"channel": "chatrooms.668.v2"}):
        sub = s.receive(frame("pusher:subscribe", data), 1.0)
        assert sub == Subscribe("chatrooms.668.v2", None, None)
    ack = json.loads(s.confirm(Subscribe("chatrooms.668.v2", None, None)))
    assert ack == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "chatrooms.668.v2",
        "data": "{}",
    }
    assert s.channels == {"chatrooms.668.v2"}


def test_unsubscribe_is_reported_once_and_unknown_unsubscribe_is_ignored() -> None:
    s = session()
    s.confirm(Subscribe("channel.676", None, None))
    assert s.receive(frame("pusher:unsubscribe", {"channel": "channel.676"}), 1) == Unsubscribe(
        "channel.676"
    )
    assert s.channels == set()
    assert isinstance(
        s.receive(frame("pusher:unsubscribe", {"channel": "channel.676"}), 2), Ignored
    )


def test_refused_subscription_has_pusher_subscription_error_shape() -> None:
    s = session()
    sub = Subscribe("private-userfeed.1", None, None)
    out = json.loads(s.refuse(sub, "Invalid signature", 401))
    assert out == {
        "event": "pusher:subscription_error",
        "channel": "private-userfeed.1",
        "data": {"type": "AuthError", "error": "Invalid signature", "status": 401},
    }
    assert "private-userfeed.1" not in s.channels


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "Invalid JSON"),
        ("[1, 2]", "'event'"),
        (frame("pusher:subscribe", "chatrooms.1.v2"), "data object"),
        (frame("pusher:subscribe", {"channel": "bad channel!"}), "Invalid channel"),
        (frame("pusher:subscribe", {"channel": "x" * 165}), "Invalid channel"),
        (frame("client-typing", {}), "Client events"),
    ],
)
def test_bad_frames_get_a_pusher_error_reply(text: str, message: str) -> None:
    reply = session().receive(text, 1.0)
    assert isinstance(reply, Reply)
    out = json.loads(reply.frame)
    assert out["event"] == "pusher:error"
    assert message in out["data"]["message"]


def test_client_ping_gets_pong_with_object_data() -> None:
    reply = session().receive(frame("pusher:ping", {}), 1.0)
    assert isinstance(reply, Reply)
    assert json.loads(reply.frame) == {"event": "pusher:pong", "data": {}}


def test_ping_after_idle_then_4201_without_pong() -> None:
    s = session(activity=10, pong=3, now=100)
    assert s.deadline() == 110
    assert s.on_timer(109.9) is None
    ping = s.on_timer(110)
    assert isinstance(ping, SendPing)
    assert json.loads(ping.frame) == {"event": "pusher:ping", "data": {}}
    assert s.deadline() == 113
    # A frame that is not a pong does not count as the answer.
    s.receive(frame("pusher:subscribe", {"channel": "a"}), 111)
    assert s.on_timer(112.9) is None
    assert s.on_timer(113) == CloseFor(4201, "Pong reply not received")


def test_pong_clears_the_ping_and_restarts_the_idle_clock() -> None:
    s = session(activity=10, pong=3, now=0)
    assert isinstance(s.on_timer(10), SendPing)
    assert isinstance(s.receive(frame("pusher:pong", {}), 11), Ignored)
    assert s.deadline() == 21
    assert s.on_timer(20) is None
    assert isinstance(s.on_timer(21), SendPing)


def test_client_frames_postpone_the_ping() -> None:
    s = session(activity=10, pong=3, now=0)
    s.receive(frame("pusher:ping", {}), 8)
    assert s.on_timer(10) is None
    assert s.deadline() == 18


def test_resume_restarts_the_clock_and_forgets_a_pending_ping() -> None:
    s = session(activity=10, pong=3, now=0)
    s.on_timer(10)
    s.resume(50)
    assert s.deadline() == 60
    assert s.on_timer(55) is None


@pytest.mark.parametrize(
    ("key", "query", "expected"),
    [
        ("wrongkey", {"protocol": "7"}, 4001),
        ("appkey", {}, 4008),
        ("appkey", {"client": "js", "version": "8.4.0"}, 4008),
        ("appkey", {"protocol": "6"}, 4007),
        ("appkey", {"protocol": "banana"}, 4007),
        ("appkey", {"protocol": "7", "client": "js", "version": "8.4.0", "flash": "false"}, None),
    ],
)
def test_connect_checks(key: str, query: dict[str, str], expected: int | None) -> None:
    refusal = pusher.check_connect(key, query, "appkey")
    assert (refusal[0] if refusal else None) == expected


def test_unknown_key_message_names_the_key() -> None:
    refusal = pusher.check_connect("nope", {"protocol": "7"}, "appkey")
    assert refusal == (4001, "App key nope does not exist in this cluster")


def test_channel_auth_is_pusher_hmac_and_presence_signs_channel_data() -> None:
    # Pusher's documented example (pusher.com auth signatures docs).
    auth = pusher.channel_auth(
        "278d425bdf160c739803", "7ad3773142a6692b25b8", "1234.1234", "private-foobar", None
    )
    assert (
        auth
        == "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    )
    plain = pusher.channel_auth("k", "s", "1.2", "presence-x", None)
    assert pusher.channel_auth("k", "s", "1.2", "presence-x", '{"user_id":"1"}') != plain


def test_presence_confirm_carries_the_member() -> None:
    s = session()
    ack = json.loads(
        s.confirm(Subscribe("presence-room", "k:sig", '{"user_id": 7, "user_info": {"n": 1}}'))
    )
    assert json.loads(ack["data"]) == {
        "presence": {"ids": ["7"], "hash": {"7": {"n": 1}}, "count": 1}
    }


def test_event_frame_double_encodes_data_and_empty_array_stays_a_string() -> None:
    out = json.loads(pusher.event_frame("E", "c", pusher.encode_data([])))
    assert out == {"event": "E", "channel": "c", "data": "[]"}
    out = json.loads(pusher.event_frame("E", "c", pusher.encode_data({"a": "é\\"})))
    assert json.loads(out["data"]) == {"a": "é\\"}


def test_data_over_10_kib_is_refused() -> None:
    pusher.encode_data("x" * (10 * 1024 - 2))  # 10240 bytes with the quotes: allowed
    with pytest.raises(ClientInputError) as err:
        pusher.encode_data("x" * (10 * 1024 - 1))
    assert err.value.code == "payload_too_large"


@given(st.one_of(st.text(), st.binary()))
def test_receive_never_raises_on_arbitrary_input(text: str | bytes) -> None:
    result = session().receive(text, 1.0)
    assert isinstance(result, Reply | Ignored | Subscribe | Unsubscribe)


_JSON_LEAF = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
_KEYS = st.sampled_from(["channel", "auth", "channel_data", "other"]) | st.text(max_size=5)


@settings(max_examples=150)
@given(st.dictionaries(_KEYS, _JSON_LEAF | st.lists(_JSON_LEAF, max_size=3), max_size=4))
def test_receive_never_raises_on_arbitrary_subscribe_data(data: dict[str, object]) -> None:
    result = session().receive(frame("pusher:subscribe", data), 1.0)
    assert isinstance(result, Reply | Subscribe)
