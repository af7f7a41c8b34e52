"""Kick's event vocabulary, channel templates and payload shaping."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kichat.kick import events as ev

# wire.md §3.0, spelled out independently of the module under test.
WIRE_EVENT_NAMES = [
    r"App\Events\ChatMessageEvent",
    r"App\Events\MessageDeletedEvent",
    r"App\Events\UserBannedEvent",
    r"App\Events\UserUnbannedEvent",
    r"App\Events\ChatroomClearEvent",
    r"App\Events\ChatroomUpdatedEvent",
    r"App\Events\PollUpdateEvent",
    r"App\Events\PollDeleteEvent",
    r"App\Events\PinnedMessageCreatedEvent",
    r"App\Events\PinnedMessageDeletedEvent",
    r"App\Events\SubscriptionEvent",
    "SubscriptionEvent",
    r"App\Events\GiftedSubscriptionsEvent",
    "GiftedSubscriptionsEvent",
    r"App\Events\ChatMessageSentEvent",
    r"App\Events\StreamHostEvent",
    r"App\Events\StreamHostedEvent",
    "RewardRedeemedEvent",
    r"App\Events\StreamerIsLive",
    r"App\Events\StopStreamBroadcast",
    r"App\Events\LivestreamUpdated",
    r"App\Events\FollowersUpdated",
    r"App\Events\ChannelSubscriptionEvent",
    r"App\Events\LuckyUsersWhoGotGiftSubscriptionsEvent",
    r"App\Events\GiftsLeaderboardUpdated",
    "GiftsLeaderboardUpdated",
    r"App\Events\ChatMoveToSupportedChannelEvent",
    "GoalProgressUpdateEvent",
    "GoalCreatedEvent",
    "GoalCanceledEvent",
    "KicksGifted",
    "KicksLeaderboardUpdated",
    "PointsUpdated",
    "PredictionCreated",
    "PredictionUpdated",
    r"App\Events\VideoPrivatedEvent",
    r"App\Events\ChannelBannedForceRefresh",
    r"App\Events\LiveStream\UpdatedLiveStreamEvent",
]

KICHAT_DOCS_ORDER = [
    "ChatMessageEvent",
    "MessageDeletedEvent",
    "UserBannedEvent",
    "UserUnbannedEvent",
    "ChatroomClearEvent",
    "ChatroomUpdatedEvent",
    "PollUpdateEvent",
    "PollDeleteEvent",
    "PinnedMessageCreatedEvent",
    "PinnedMessageDeletedEvent",
    "SubscriptionEvent",
    "LivestreamUpdated",
]

CHAT_MESSAGE_DATA = (
    '{"id":"5f0c2b1e-8a3d-4c55-9e7a-2b6d1f9c0a11","chatroom_id":4100123,"content":"gg",'
    '"type":"message","created_at":"2026-03-02T19:04:11+00:00","sender":{"id":55012345,'
    '"username":"PixelMoth","slug":"pixelmoth","identity":{"color":"#75FD46","badges":[]}},'
    '"metadata":{"message_ref":"1772478251093"}}'
)


def test_known_events_are_exactly_the_wire_list() -> None:
    assert set(WIRE_EVENT_NAMES) == ev.KNOWN_EVENTS
    assert len(WIRE_EVENT_NAMES) == len(set(WIRE_EVENT_NAMES))
    assert ev.CHATROOM_EVENTS.isdisjoint(ev.CHANNEL_EVENTS)


def test_event_names_have_literal_backslashes() -> None:
    assert ev.CHAT_MESSAGE_EVENT == "App" + "\\" + "Events" + "\\" + "ChatMessageEvent"
    assert json.dumps(ev.CHAT_MESSAGE_EVENT) == '"App\\\\Events\\\\ChatMessageEvent"'
    assert ev.SUBSCRIPTION_EVENT.endswith("\\" + ev.SUBSCRIPTION_EVENT_BARE)
    assert ev.GIFTED_SUBSCRIPTIONS_EVENT.endswith("\\" + ev.GIFTED_SUBSCRIPTIONS_EVENT_BARE)
    assert ev.GIFTS_LEADERBOARD_UPDATED.endswith("\\" + ev.GIFTS_LEADERBOARD_UPDATED_BARE)


def test_kichat_documented_events() -> None:
    assert [name.removeprefix("App\\Events\\") for name in ev.KICHAT_DOCUMENTED_EVENTS] == (
        KICHAT_DOCS_ORDER
    )
    assert all(name.startswith("App\\Events\\") for name in ev.KICHAT_DOCUMENTED_EVENTS)
    assert set(ev.KICHAT_DOCUMENTED_EVENTS) <= ev.KNOWN_EVENTS


def test_default_channels_render() -> None:
    assert ev.render_channels(ev.DEFAULT_CHATROOM_CHANNELS, chatroom_id=668) == (
        "chatrooms.668.v2",
        "chatrooms.668",
    )
    assert ev.render_channels(ev.DEFAULT_CHANNEL_CHANNELS, channel_id=676) == (
        "channel.676",
        "predictions-channel-676",
    )


def test_render_all_aliases_with_both_ids() -> None:
    templates = [
        ev.CHATROOM_V2_CHANNEL,
        ev.CHATROOM_LEGACY_CHANNEL,
        ev.CHATROOM_UNDERSCORE_CHANNEL,
        ev.CHANNEL_DOT_CHANNEL,
        ev.CHANNEL_UNDERSCORE_CHANNEL,
        ev.PREDICTIONS_CHANNEL,
    ]
    assert ev.render_channels(templates, chatroom_id=4100123, channel_id=4100456) == (
        "chatrooms.4100123.v2",
        "chatrooms.4100123",
        "chatroom_4100123",
        "channel.4100456",
        "channel_4100456",
        "predictions-channel-4100456",
    )
    assert ev.render_channels([]) == ()


def test_render_refuses_a_missing_id() -> None:
    with pytest.raises(ValueError, match="chatroom_id"):
        ev.render_channels(ev.DEFAULT_CHATROOM_CHANNELS, channel_id=1)
    with pytest.raises(ValueError, match="channel_id"):
        ev.render_channels(ev.DEFAULT_CHANNEL_CHANNELS, chatroom_id=1)


def test_render_does_not_evaluate_format_fields() -> None:
    # str.format would look up the attribute; plain substitution leaves it alone.
    assert ev.render_channels(["{chatroom_id.__class__}"], chatroom_id=1) == (
        "{chatroom_id.__class__}",
    )


@pytest.mark.parametrize("template", [*ev.DEFAULT_CHATROOM_CHANNELS, "chatroom_{chatroom_id}"])
def test_good_chatroom_templates(template: str) -> None:
    assert ev.template_problem(template, ev.CHATROOM_PLACEHOLDER) is None


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("chatrooms.v2", "exactly once"),
        ("chatrooms.{chatroom_id}.{chatroom_id}", "exactly once"),
        ("chatrooms.{channel_id}", "exactly once"),
        ("chatrooms.{chatroom_id}.{x}", "no placeholder other"),
        ("chatrooms {chatroom_id}", "Pusher channel name"),
        ("chatrooms/{chatroom_id}", "Pusher channel name"),
        ("c" * 160 + "{chatroom_id}", "Pusher channel name"),
        ("private-chatroom_{chatroom_id}", "private"),
        ("presence-{chatroom_id}", "private"),
        (42, "string"),
    ],
)
def test_bad_templates(template: object, fragment: str) -> None:
    problem = ev.template_problem(template, ev.CHATROOM_PLACEHOLDER)
    assert problem is not None
    assert fragment in problem


def test_decode_string_and_bytes() -> None:
    decoded = ev.decode_data(CHAT_MESSAGE_DATA)
    assert isinstance(decoded, dict)
    assert decoded["chatroom_id"] == 4100123
    assert decoded["sender"]["username"] == "PixelMoth"
    assert ev.decode_data(CHAT_MESSAGE_DATA.encode()) == decoded
    assert ev.decode_data("[]") == []
    assert ev.decode_data("{}") == {}


def test_decode_returns_already_decoded_values_as_is() -> None:
    value: dict[str, Any] = {"id": 1}
    assert ev.decode_data(value) is value
    empty: list[object] = []
    assert ev.decode_data(empty) is empty
    assert ev.decode_data(None) is None
    assert ev.decode_data(5) == 5


@pytest.mark.parametrize("raw", ["", "{", '{"a":}', "[1,]", "NaN", '{"a": Infinity}', "-Infinity"])
def test_decode_refuses_invalid_json(raw: str) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        ev.decode_data(raw)


def test_decode_falls_back_to_stdlib_for_what_orjson_refuses() -> None:
    raw = '{"content": "\\ud83d"}'  # an escaped lone surrogate: valid JSON, refused by orjson
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    assert ev.decode_data(raw) == {"content": "\ud83d"}


def test_decode_keeps_64_bit_integers_exact() -> None:
    raw = '{"a": 18446744073709551615, "b": -9223372036854775808, "c": 9007199254740993}'
    assert ev.decode_data(raw) == {
        "a": 18446744073709551615,
        "b": -9223372036854775808,
        "c": 9007199254740993,
    }


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(_json_values)
def test_decode_roundtrips_any_json(value: object) -> None:
    assert ev.decode_data(json.dumps(value)) == value
    assert ev.decode_data(json.dumps(value).encode()) == value


def test_with_channel_name_mutates_and_returns_the_same_dict() -> None:
    data = ev.decode_data(CHAT_MESSAGE_DATA)
    shaped = ev.with_channel_name(data, "moonlitfox")
    assert shaped is data
    assert shaped["channel_name"] == "moonlitfox"
    assert shaped["content"] == "gg"
    assert list(shaped)[-1] == "channel_name"


def test_with_channel_name_ours_wins() -> None:
    data = {"id": "x", "channel_name": "kicks-own"}
    assert ev.with_channel_name(data, "xqc") == {"id": "x", "channel_name": "xqc"}


@pytest.mark.parametrize("data", [[], [1, 2], None, "text", 5, True])
def test_with_channel_name_on_non_objects(data: object) -> None:
    assert ev.with_channel_name(data, "xqc") == {"channel_name": "xqc"}


def test_pinned_message_deleted_frame_becomes_channel_name_only() -> None:
    decoded = ev.decode_data("[]")
    assert ev.with_channel_name(decoded, "moonlitfox") == {"channel_name": "moonlitfox"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"id": "5f0c2b1e"}, "5f0c2b1e"),
        ({"id": 42}, "42"),
        ({"id": True}, None),
        ({"id": 1.5}, None),
        ({"id": None}, None),
        ({"id": {"nested": 1}}, None),
        ({"message": {"id": "abc"}}, None),
        ([], None),
        ("id", None),
        (None, None),
    ],
)
def test_event_id(data: object, expected: str | None) -> None:
    assert ev.event_id(data) == expected
    assert ev.event_id(data, ev.CHAT_MESSAGE_EVENT) == expected


def test_event_id_is_none_for_entity_ids() -> None:
    chatroom_updated = {"id": 4100123, "slow_mode": {"enabled": True, "message_interval": 3}}
    assert ev.event_id(chatroom_updated, ev.CHATROOM_UPDATED_EVENT) is None
    goal = {"id": "chgoal_01JNX5A1B2C3D4E5F6G7H8J9K0", "current_value": 128734}
    assert ev.event_id(goal, ev.GOAL_PROGRESS_UPDATE_EVENT) is None
    assert ev.event_id(goal, ev.GOAL_CREATED_EVENT) == "chgoal_01JNX5A1B2C3D4E5F6G7H8J9K0"
