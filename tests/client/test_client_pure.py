"""The client's pure parts, without an event loop: the session (Engine.IO / Socket.IO client side
and connection state recovery), the typed event views, URLs and replies."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from kichat.client import (
    ConnectRejected,
    Emote,
    Event,
    GatewayWarning,
    SubscribeRefused,
    parse_emotes,
    websocket_url,
)
from kichat.client.replies import refusal, rejected, subscribed
from kichat.client.session import (
    AckReceived,
    Connected,
    EventReceived,
    Opened,
    Pinged,
    Refused,
    Send,
    ServerClosed,
    Session,
)
from kichat.sio import engineio
from kichat.sio.errors import ParseError

OPEN = '0{"sid":"eio1","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'
CHAT = "App\\Events\\ChatMessageEvent"


def sample(name: str) -> dict[str, Any]:
    text = resources.files("kichat.sim").joinpath(f"data/{name}.json").read_text()
    data: dict[str, Any] = json.loads(text)["data"]
    return data


def event_packet(name: str, *args: Any) -> str:
    return "42" + json.dumps([name, *args])


def connected(session: Session, body: str = '{"sid":"s1","pid":"p1"}') -> list[Any]:
    session.begin()
    opened = session.receive(OPEN)
    assert isinstance(opened[0], Opened)
    return session.receive("40" + body)


# -- the session -----------------------------------------------------------------------------------


def test_handshake_sends_the_auth_and_reads_the_connect_reply() -> None:
    session = Session({"token": "k"})
    session.begin()
    opened, send = session.receive(OPEN)
    assert opened == Opened(engineio.OpenInfo("eio1", (), 25.0, 20.0, 1_000_000))
    assert send == Send('40{"token":"k"}')
    assert session.receive('40{"sid":"s1","pid":"p1"}') == [Connected("s1", recovered=False)]
    assert (session.sid, session.pid, session.connected) == ("s1", "p1", True)


def test_pings_are_answered() -> None:
    session = Session()
    connected(session)
    assert session.receive("2") == [Send("3"), Pinged()]
    assert session.receive("6") == []  # noop


def test_the_offset_is_tracked_and_stripped_then_sent_on_reconnect() -> None:
    session = Session({"token": "k"})
    connected(session)
    got = session.receive(event_packet(CHAT, {"content": "hi"}, "41"))
    assert got == [EventReceived(CHAT, ({"content": "hi"},))]
    assert session.offset == "41"
    # A direct event ends with an object: no offset, the last one stays.
    assert session.receive(event_packet("warning", {"ok": True})) == [
        EventReceived("warning", ({"ok": True},))
    ]
    assert session.offset == "41"
    # Next connection: pid and offset first, the caller's auth after (as socket.io-client).
    session.begin()
    _, send = session.receive(OPEN)
    assert send == Send('40{"pid":"p1","offset":"41","token":"k"}')
    assert session.receive('40{"sid":"s2","pid":"p1"}') == [Connected("s2", recovered=True)]
    assert session.offset == "41"


def test_a_new_session_forgets_the_old_offset() -> None:
    session = Session()
    connected(session)
    session.receive(event_packet(CHAT, {}, "900"))
    session.begin()
    session.receive(OPEN)
    assert session.receive('40{"sid":"s2","pid":"p2"}') == [Connected("s2", recovered=False)]
    assert (session.pid, session.offset) == ("p2", None)
    # Its next reconnect asks for the new session from its start, not from offset 900.
    session.begin()
    _, send = session.receive(OPEN)
    assert send == Send('40{"pid":"p2"}')


def test_without_recovery_a_trailing_string_is_data() -> None:
    session = Session({"recovery": False})
    connected(session, '{"sid":"s1"}')  # no pid: the server does not recover this client
    assert session.receive(event_packet("said", "hello")) == [EventReceived("said", ("hello",))]
    assert session.offset is None
    session.begin()
    _, send = session.receive(OPEN)
    assert send == Send('40{"recovery":false}')


def test_requests_and_acks() -> None:
    session = Session()
    connected(session)
    first, packet = session.request("subscribe", {"channelName": "xqc", "chatroomId": "668"})
    second, _ = session.request("unsubscribe", {})
    assert (first, second) == (0, 1)
    assert packet == Send('420["subscribe",{"channelName":"xqc","chatroomId":"668"}]')
    assert session.receive('430[{"ok":true}]') == [AckReceived(0, ({"ok": True},))]


def test_refusals_and_closes() -> None:
    session = Session()
    session.begin()
    session.receive(OPEN)
    got = session.receive('44{"message":"unauthorized","data":{"code":"unauthorized"}}')
    assert got == [Refused("unauthorized", {"code": "unauthorized"})]
    assert session.receive('44"plain"') == [Refused("plain", None)]
    assert session.receive("1") == [ServerClosed("the gateway closed the connection")]
    connected(session)
    assert session.receive("41") == [ServerClosed("the gateway disconnected this client", True)]
    assert session.connected is False


def test_binary_events_are_reassembled() -> None:
    session = Session()
    connected(session)
    assert session.receive('451-["blob",{"_placeholder":true,"num":0},"7"]') == []
    assert session.receive(b"\x01\x02") == [EventReceived("blob", (b"\x01\x02",))]
    assert session.offset == "7"


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        (['42["x",1]'], "before the Engine.IO handshake"),
        ([OPEN, OPEN], "a second OPEN"),
        ([OPEN, "9"], "invalid Engine.IO packet type"),
        ([OPEN, "4x"], "unknown packet type"),
        ([OPEN, b"\x00"], "unexpected binary"),
        ([OPEN, '451-["b",{"_placeholder":true,"num":0}]', "2"], "attachments were expected"),
        ([OPEN, "40"], "without a sid"),
        ([OPEN, "43[1]"], "ACK without an id"),
        (['0{"sid":"x","pingInterval":0,"pingTimeout":1}'], "pingInterval"),
        (["0[]"], "not a JSON object"),
        (["0{"], "not JSON"),
        (['0{"pingInterval":1,"pingTimeout":1}'], "no sid"),
    ],
)
def test_protocol_violations_raise(messages: list[str | bytes], problem: str) -> None:
    session = Session()
    session.begin()
    with pytest.raises(ParseError, match=problem):
        for message in messages:
            session.receive(message)


def test_other_namespaces_are_ignored() -> None:
    session = Session()
    connected(session)
    assert session.receive('42/admin,["x",1]') == []


# -- typed views --------------------------------------------------------------------------------------


def test_chat_message_view() -> None:
    data = {**sample("ChatMessageEvent"), "channel_name": "moonlitfox"}
    event = Event(CHAT, data)
    assert (event.channel_name, event.short_name) == ("moonlitfox", "ChatMessageEvent")
    chat = event.chat_message()
    assert chat is not None
    assert chat.content == "gg [emote:37226:KEKW]"
    assert chat.text == "gg KEKW"
    assert chat.emotes == (Emote("37226", "KEKW", 3, 21),)
    assert list(chat.parts()) == ["gg ", chat.emotes[0]]
    assert chat.emotes[0].url() == "https://files.kick.com/emotes/37226/fullsize"
    assert (chat.sender.username, chat.sender.id, chat.sender.color) == (
        "PixelMoth", 55012345, "#75FD46",
    )  # fmt: skip
    assert chat.sender.has_badge("subscriber")
    assert chat.sender.badges[0].count == 4
    assert (chat.chatroom_id, chat.type, chat.reply_to) == (4100123, "message", None)
    assert event.message_deleted() is None


def test_a_reply_and_a_lenient_reading_of_odd_shapes() -> None:
    reply = Event(
        CHAT,
        {
            "content": "same lol",
            "type": "reply",
            "sender": {"id": "61230987", "username": "quietfern", "identity": None},
            "metadata": {
                "original_sender": {"id": "1649044", "username": "PixelMoth"},  # 2023: strings
                "original_message": {"id": "m1", "content": "gg"},
            },
        },
    ).chat_message()
    assert reply is not None
    assert reply.reply_to is not None
    assert (reply.reply_to.message_id, reply.reply_to.sender.id) == ("m1", 1649044)
    assert (reply.sender.id, reply.sender.color, reply.sender.badges) == (61230987, None, ())
    odd = Event(CHAT, {"content": None, "sender": "x", "chatroom_id": True}).chat_message()
    assert odd is not None
    assert (odd.content, odd.sender.username, odd.chatroom_id, odd.emotes) == ("", "", None, ())
    assert Event(CHAT, []).chat_message() is None  # not an object: no view, no exception


def test_moderation_views() -> None:
    deleted = Event("App\\Events\\MessageDeletedEvent", sample("MessageDeletedEvent"))
    view = deleted.message_deleted()
    assert view is not None
    assert (view.message_id, view.ai_moderated) == ("5f0c2b1e-8a3d-4c55-9e7a-2b6d1f9c0a11", False)
    ban = Event("App\\Events\\UserBannedEvent", sample("UserBannedEvent")).user_banned()
    assert ban is not None
    assert (ban.user.username, ban.banned_by.username, ban.permanent, ban.duration) == (
        "spam_bot_x", "ModAria", False, 10,
    )  # fmt: skip
    # The 2023 shape: no "permanent"; no expiry means a ban, an expiry a timeout.
    old_ban = Event("App\\Events\\UserBannedEvent", {"user": {"username": "a"}}).user_banned()
    old_timeout = Event(
        "App\\Events\\UserBannedEvent", {"user": {"username": "a"}, "expires_at": "2023-01-01"}
    ).user_banned()
    assert old_ban is not None and old_ban.permanent is True
    assert old_timeout is not None and old_timeout.permanent is False
    unban = Event("App\\Events\\UserUnbannedEvent", sample("UserUnbannedEvent")).user_unbanned()
    assert unban is not None and unban.unbanned_by.username == "ModAria"
    cleared = Event("App\\Events\\ChatroomClearEvent", {**sample("ChatroomClearEvent"),
                                                        "channel_name": "xqc"})  # fmt: skip
    assert cleared.chatroom_cleared() is not None


def test_pinned_message_and_subscription_views() -> None:
    pinned = Event(
        "App\\Events\\PinnedMessageCreatedEvent",
        {**sample("PinnedMessageCreatedEvent"), "channel_name": "xqc"},
    ).pinned_message()
    assert pinned is not None
    assert (pinned.message.content, pinned.duration, pinned.pinned_by.username) == (
        "giveaway at 9pm", 1200, "ModAria",
    )  # fmt: skip
    assert pinned.message.channel_name == "xqc"
    for name in ("App\\Events\\SubscriptionEvent", "SubscriptionEvent"):
        sub = Event(name, {"username": "OrbitLatte", "months": 3}).subscription()
        assert sub is not None and (sub.username, sub.months) == ("OrbitLatte", 3)


def test_emotes() -> None:
    assert parse_emotes("[emote:1:a] x [emote:22:b_c][emote:3:]") == (
        Emote("1", "a", 0, 11), Emote("22", "b_c", 14, 28), Emote("3", "", 28, 38),
    )  # fmt: skip
    assert parse_emotes("[emote:x:a] [emote:1:a b] [emote:1]") == ()


# -- URLs and replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:3000", "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"),
        (
            "https://chat.example.com/",
            "wss://chat.example.com/socket.io/?EIO=4&transport=websocket",
        ),
        ("127.0.0.1:3000", "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"),
        ("localhost:3000", "ws://localhost:3000/socket.io/?EIO=4&transport=websocket"),
        ("ws://[::1]:3000", "ws://[::1]:3000/socket.io/?EIO=4&transport=websocket"),
    ],
)
def test_websocket_url(url: str, expected: str) -> None:
    assert websocket_url(url) == expected


def test_websocket_url_with_a_path_and_bad_urls() -> None:
    assert websocket_url("https://example.com", "/kichat/socket.io") == (
        "wss://example.com/kichat/socket.io/?EIO=4&transport=websocket"
    )
    for bad, problem in [
        ("ftp://example.com", "use http://host:port"),
        ("http://example.com:99999", "port"),
        ("http://", "names no host"),
        ("http://example.com/socket.io/", "base URL only"),
    ]:
        with pytest.raises(ValueError, match=problem):
            websocket_url(bad)


def test_subscribe_replies() -> None:
    payload = {"channelName": "XQC", "chatroomId": 668}
    ok = subscribed(
        {"ok": True, "channelName": "xqc", "chatroomId": "668", "streamEvents": False,
         "warning": {"code": "stream_events_pending", "message": "soon"}},
        payload,
    )  # fmt: skip
    assert (ok.channel_name, ok.chatroom_id, ok.stream_events) == ("xqc", "668", False)
    assert ok.warning == GatewayWarning("stream_events_pending", "soon")
    with pytest.raises(SubscribeRefused) as refused:
        subscribed({"ok": False, "error": {"code": "rate_limited", "message": "later"}}, payload)
    assert (refused.value.code, str(refused.value)) == ("rate_limited", "rate_limited: later")
    assert refusal(None, payload).code == "bad_reply"


def test_connect_refusals() -> None:
    error = rejected(Refused("too many", {"code": "too_many_connections", "limit": 10}))
    assert isinstance(error, ConnectRejected)
    assert (error.code, error.message, error.data) == (
        "too_many_connections", "too many", {"code": "too_many_connections", "limit": 10},
    )  # fmt: skip
    assert rejected(Refused("nope", None)).code == "refused"
