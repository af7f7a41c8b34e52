"""Generated payloads against the reference fixtures, REST shapes, history and fault rules.
Pure: no event loop, no sockets."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from kichat.errors import ClientInputError
from kichat.sim import SimChannel
from kichat.sim import rest as simrest
from kichat.sim.channels import ChannelDirectory
from kichat.sim.faults import Faults
from kichat.sim.traffic import (
    CHAT_MESSAGE,
    EVENTS,
    SCRIPT_ORDER,
    BenchMessages,
    EventFactory,
    Mix,
    Route,
    make_chat,
    resolve_event,
    templates,
)

from sim_helpers import event_fixtures, fixture, shape

XQC = SimChannel("xqc", 676, 668, 688, "xQc")
FIXTURE_IDS = {4100456, 4100123, 4150999, 4100467}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIME_FORMATS = [
    re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"),
    re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"),
    re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"),
    re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"),
    re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"),
    re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"),
]


# Keys Kick sends only sometimes (wire.md §3.1: a badge's count is for subscriber/sub_gifter).
OPTIONAL_KEYS = {"count"}


def assert_same_shape(got: Any, want: Any, path: str = "data") -> None:
    """Same keys and JSON types at every level; an empty list matches any list."""
    if isinstance(want, dict):
        assert isinstance(got, dict), path
        missing, extra = set(want) - set(got) - OPTIONAL_KEYS, set(got) - set(want)
        assert not missing and not extra, f"{path}: missing {missing}, unexpected {extra}"
        for key in set(want) & set(got):
            assert_same_shape(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list), path
        if got and want:
            assert_same_shape(got[0], want[0], f"{path}[0]")
    else:
        assert shape(got) == shape(want), f"{path}: {got!r} vs {want!r}"


def leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in leaves(v)]
    return [value]


def flat(value: Any, path: str = "") -> dict[str, Any]:
    """Leaf path -> leaf value."""
    if isinstance(value, dict):
        return {
            p: v for k, x in value.items() for p, v in flat(x, f"{path}.{k}".lstrip(".")).items()
        }
    if isinstance(value, list):
        return {p: v for i, x in enumerate(value) for p, v in flat(x, f"{path}[{i}]").items()}
    return {path: value}


def time_format(value: str) -> int | None:
    return next((i for i, f in enumerate(TIME_FORMATS) if f.fullmatch(value)), None)


# -- templates and routes -----------------------------------------------------------------------


def test_every_fixture_event_has_a_template_a_route_and_a_place_in_the_script() -> None:
    names = set(event_fixtures())
    assert set(templates()) == names
    assert set(EVENTS) == names
    assert sorted(SCRIPT_ORDER) == sorted(names)
    assert len(SCRIPT_ORDER) == len(set(SCRIPT_ORDER))


@pytest.mark.parametrize(
    ("event", "channel"),
    [
        (CHAT_MESSAGE, "chatrooms.668.v2"),
        ("App\\Events\\UserBannedEvent", "chatrooms.668.v2"),
        ("App\\Events\\PinnedMessageDeletedEvent", "chatrooms.668.v2"),
        ("GiftedSubscriptionsEvent", "chatrooms.668.v2"),
        ("App\\Events\\StreamHostedEvent", "chatrooms.668"),
        ("App\\Events\\StreamerIsLive", "channel.676"),
        ("App\\Events\\FollowersUpdated", "channel.676"),
        ("KicksGifted", "channel.676"),
        ("GoalProgressUpdateEvent", "channel.676"),
        ("PredictionCreated", "predictions-channel-676"),
    ],
)
def test_events_travel_on_kicks_channels(event: str, channel: str) -> None:
    assert EVENTS[event][0].channel_name(XQC) == channel


def test_resolve_event_accepts_short_names_and_refuses_unknown_ones() -> None:
    assert resolve_event("ChatMessageEvent") == CHAT_MESSAGE
    assert resolve_event("App\\Events\\ChatMessageEvent") == CHAT_MESSAGE
    assert resolve_event("KicksGifted") == "KicksGifted"
    with pytest.raises(ClientInputError) as err:
        resolve_event("NoSuchEvent")
    assert err.value.code == "unknown_event"


# -- generated payloads -------------------------------------------------------------------------


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_generated_payload_has_the_fixture_shape_and_fresh_values(event: str) -> None:
    want = event_fixtures()[event]["data"]
    got = EventFactory(random.Random(1)).make(event, XQC).data
    assert_same_shape(got, want)
    json.dumps(got)  # plain JSON values only
    values = leaves(got)
    assert not FIXTURE_IDS & {v for v in values if isinstance(v, int) and not isinstance(v, bool)}
    fixture_uuids = {v for v in leaves(want) if isinstance(v, str) and UUID.fullmatch(v)}
    assert not fixture_uuids & set(values)
    # Timestamps are "now" and keep the template's own format.
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    generated = flat(got)
    for path, old in flat(want).items():
        if isinstance(old, str) and time_format(old) is not None and old.startswith("2026"):
            new = generated[path]
            assert time_format(new) == time_format(old), (path, old, new)
            assert new[:10] == today or path == "expires_at", (path, new)


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_generated_ids_point_at_the_target_channel(event: str) -> None:
    data = EventFactory(random.Random(2)).make(event, XQC).data

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("chatroom_id"), int):
                assert value["chatroom_id"] == 668
            if isinstance(value.get("channel_id"), int):
                assert value["channel_id"] == 676
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(data)


def test_chatroom_and_channel_objects_carry_the_right_ids() -> None:
    f = EventFactory(random.Random(3))
    assert f.make("App\\Events\\ChatroomUpdatedEvent", XQC).data["id"] == 668
    lucky = f.make("App\\Events\\LuckyUsersWhoGotGiftSubscriptionsEvent", XQC).data
    assert (lucky["channel"]["id"], lucky["channel"]["chatroom"]["id"]) == (676, 668)
    assert lucky["channel"]["slug"] == "xqc"
    pinned = f.make("App\\Events\\PinnedMessageCreatedEvent", XQC).data
    assert pinned["message"]["sender"]["username"] == "xQc"  # the fixture's channel owner
    assert f.make("App\\Events\\PinnedMessageDeletedEvent", XQC).data == []
    assert f.make("App\\Events\\PollDeleteEvent", XQC).data == []


def test_users_are_random_but_consistent_within_one_event() -> None:
    f = EventFactory(random.Random(4))
    sub = f.make("App\\Events\\ChannelSubscriptionEvent", XQC).data
    sent = f.make("App\\Events\\ChatMessageSentEvent", XQC).data
    assert sub["username"] != "OrbitLatte"
    banned = f.make("App\\Events\\UserBannedEvent", XQC).data
    assert banned["user"]["slug"] == banned["user"]["username"].lower().replace("_", "-")
    assert sent["user"]["username"] != "OrbitLatte"


def test_chat_messages_vary_and_deleted_message_points_at_a_recent_one() -> None:
    f = EventFactory(random.Random(5))
    chats = [make_chat(f, XQC, "message", None) for _ in range(30)]
    assert len({c["id"] for c in chats}) == 30
    assert len({c["content"] for c in chats}) > 5
    assert len({c["sender"]["username"] for c in chats}) > 10
    deleted = f.make("App\\Events\\MessageDeletedEvent", XQC, recent_message=chats[-1]).data
    assert deleted["message"]["id"] == chats[-1]["id"]


def test_reply_and_celebration_variants() -> None:
    f = EventFactory(random.Random(6))
    original = make_chat(f, XQC, "message", None)
    reply = make_chat(f, XQC, "reply", original)
    assert reply["type"] == "reply"
    assert reply["metadata"]["original_message"] == {
        "id": original["id"],
        "content": original["content"],
    }
    assert reply["metadata"]["original_sender"]["id"] == original["sender"]["id"]
    cele = make_chat(f, XQC, "celebration", None)
    assert cele["type"] == "celebration"
    assert cele["metadata"]["celebration"]["id"].startswith("chceleb_")
    assert time_format(cele["metadata"]["celebration"]["created_at"]) == 2


def test_same_seed_same_payloads() -> None:
    a = EventFactory(random.Random(9)).make(CHAT_MESSAGE, XQC).data
    b = EventFactory(random.Random(9)).make(CHAT_MESSAGE, XQC).data
    assert (a["id"], a["sender"], a["content"]) == (b["id"], b["sender"], b["content"])


def test_realistic_mix_is_about_97_percent_chat_and_covers_the_rest() -> None:
    mix = Mix("realistic", random.Random(10))
    picks = Counter(mix.pick() for _ in range(20_000))
    share = picks[CHAT_MESSAGE] / 20_000
    assert 0.95 < share < 0.99
    assert picks["GoalProgressUpdateEvent"] > picks["App\\Events\\StopStreamBroadcast"]
    uniform_mix = Mix("uniform", random.Random(11))
    assert set(Counter(uniform_mix.pick() for _ in range(5_000))) == set(EVENTS)
    chat_mix = Mix("chat", random.Random(12))
    assert {chat_mix.pick() for _ in range(100)} == {CHAT_MESSAGE}
    with pytest.raises(ClientInputError):
        Mix("mostly-cats", random.Random(1))


def test_bench_messages_number_from_one_and_carry_their_send_time() -> None:
    room = BenchMessages(700001)
    msgs = [room.next() for _ in range(5)]
    assert [int(m["content"].split()[0]) for m in msgs] == [1, 2, 3, 4, 5]
    stamps = [int(m["content"].split()[1]) for m in msgs]
    assert stamps == sorted(stamps)
    assert abs(stamps[0] - datetime.now(UTC).timestamp() * 1e9) < 5e9
    assert len({m["id"] for m in msgs}) == 5
    assert {m["chatroom_id"] for m in msgs} == {700001}
    assert room.channel == "chatrooms.700001.v2"
    assert_same_shape(msgs[0], fixture("ChatMessageEvent")["data"] | {"sender": msgs[0]["sender"]})


# -- channels -----------------------------------------------------------------------------------


def test_directory_defaults_auto_channels_and_id_rules() -> None:
    d = ChannelDirectory()
    assert (d.get("xqc").channel_id, d.get("XQC").chatroom_id) == (676, 668)
    assert (d.get("moonlitfox").channel_id, d.get("moonlitfox").chatroom_id) == (4100456, 4100123)
    chan = d.get("chan7")
    assert (chan.chatroom_id, chan.channel_id) == (700007, 800007)
    assert d.by_channel_id(800009) is not None
    assert d.by_channel_id(800009).slug == "chan9"  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        d.get("nobody")
    new = d.add(d.create("newcomer", None, None))
    assert new.channel_id != new.chatroom_id
    with pytest.raises(ClientInputError):
        d.add(SimChannel("clash", 676, 999, 1, "x"))  # xqc's channel id
    with pytest.raises(ClientInputError):
        d.add(SimChannel("same", 12345, 12345, 1, "x"))  # channel id == chatroom id


# -- REST shapes and history --------------------------------------------------------------------


def test_channel_body_has_kicks_shape_with_the_channels_ids() -> None:
    body = simrest.channel_body(XQC)
    assert_same_shape(body, fixture("rest/channel"))
    assert (body["id"], body["user_id"], body["slug"]) == (676, 688, "xqc")
    assert (body["chatroom"]["id"], body["chatroom"]["channel_id"]) == (668, 676)
    assert body["livestream"] is None


def test_live_channel_body_has_a_livestream_object() -> None:
    ch = SimChannel("live1", 10, 11, 12, "Live1")
    ch.livestream = EventFactory(random.Random(1)).livestream(ch)
    stream = simrest.channel_body(ch)["livestream"]
    assert stream["channel_id"] == 10
    assert stream["is_live"] is True
    assert time_format(stream["created_at"]) == 5


def _publish_chat(history: simrest.ChatHistory, f: EventFactory, ch: SimChannel) -> dict[str, Any]:
    data = make_chat(f, ch, "message", None)
    history.on_publish(ch.chatroom_channel, CHAT_MESSAGE, json.dumps(data).encode())
    return data


def test_history_is_bounded_newest_first_in_kicks_history_shape() -> None:
    history = simrest.ChatHistory(size=5)
    f = EventFactory(random.Random(1))
    sent = [_publish_chat(history, f, XQC) for _ in range(8)]
    body = history.messages_body(668)
    assert body["status"] == {"error": False, "code": 200, "message": "SUCCESS"}
    items = body["data"]["messages"]
    assert [m["id"] for m in items] == [m["id"] for m in reversed(sent[-5:])]
    want = fixture("rest/messages")
    assert_same_shape(body, want)
    first = items[0]
    assert first["chat_id"] == 668
    assert first["user_id"] == sent[-1]["sender"]["id"]
    assert json.loads(first["metadata"]) == sent[-1]["metadata"]
    assert time_format(first["created_at"]) == 2
    assert body["data"]["cursor"].isdigit()


def test_history_ignores_other_channels_events_and_non_kick_shapes() -> None:
    history = simrest.ChatHistory()
    f = EventFactory(random.Random(1))
    data = json.dumps(make_chat(f, XQC, "message", None)).encode()
    history.on_publish("chatrooms.668", CHAT_MESSAGE, data)  # legacy alias: a duplicate
    history.on_publish("channel.668", CHAT_MESSAGE, data)
    history.on_publish("chatrooms.668.v2", "App\\Events\\UserBannedEvent", data)
    history.on_publish("chatrooms.668.v2", CHAT_MESSAGE, b'{"a": 1}')
    assert history.messages_body(668)["data"]["messages"] == []
    assert history.messages_body(999)["data"]["messages"] == []


def test_pinned_message_appears_in_history_until_deleted() -> None:
    history = simrest.ChatHistory()
    pin = EventFactory(random.Random(1)).make("App\\Events\\PinnedMessageCreatedEvent", XQC).data
    history.on_publish("chatrooms.668.v2", simrest.PIN_CREATED, json.dumps(pin).encode())
    pinned = history.messages_body(668)["data"]["pinned_message"]
    assert pinned["duration"] == 1200
    assert pinned["message"]["id"] == pin["message"]["id"]
    assert pinned["message"]["chat_id"] == 668
    history.on_publish("chatrooms.668.v2", simrest.PIN_DELETED, b"[]")
    assert history.messages_body(668)["data"]["pinned_message"] is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v2/channels/xqc", ("channel", "xqc")),
        ("/api/v2/channels/XQC", ("channel", "xqc")),
        ("/api/v2/channels/676/messages", ("messages", "676")),
        ("/api/v2/channels/xqc/messages", None),
        ("/api/v2/channels/", None),
        ("/api/v1/channels/xqc", None),
    ],
)
def test_rest_routes(path: str, expected: tuple[str, str] | None) -> None:
    assert simrest.route(path) == expected


# -- fault rules --------------------------------------------------------------------------------


def test_subscribe_faults_match_globs_count_down_and_clear() -> None:
    faults = Faults()
    faults.add_subscribe("chatrooms.*.v2", "swallow", 2)
    faults.add_subscribe("channel.1", "error", None)
    assert faults.take_subscribe("chatrooms.668") is None
    assert faults.take_subscribe("chatrooms.668.v2") == "swallow"
    assert faults.take_subscribe("chatrooms.1.v2") == "swallow"
    assert faults.take_subscribe("chatrooms.1.v2") is None
    assert [faults.take_subscribe("channel.1") for _ in range(3)] == ["error"] * 3
    faults.clear()
    assert faults.take_subscribe("channel.1") is None


def test_rest_faults_match_slug_id_or_star_in_order() -> None:
    faults = Faults()
    faults.add_rest("xqc", 403, 1, 0.0)
    faults.add_rest("*", "hang", None, 0.0)
    rule = faults.take_rest({"xqc"})
    assert rule is not None
    assert rule.status == 403
    rule = faults.take_rest({"xqc"})
    assert rule is not None
    assert rule.status == "hang"


def test_refusals_count_down() -> None:
    faults = Faults()
    faults.set_refusals(2, 4100)
    assert [faults.take_refusal() for _ in range(3)] == [4100, 4100, None]


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f.add_subscribe("x", "explode", None),
        lambda f: f.add_subscribe("", "error", None),
        lambda f: f.add_subscribe("x", "error", 0),
        lambda f: f.add_rest("x", 200, None, 0.0),
        lambda f: f.add_rest("x", True, None, 0.0),
        lambda f: f.add_rest("x", "sleep", None, 0.0),
        lambda f: f.add_rest("x", "delay", None, 0.0),
        lambda f: f.add_rest("x", 500, None, -1.0),
        lambda f: f.set_refusals(-1, 4100),
        lambda f: f.set_refusals(1, 1006),
        lambda f: f.set_refusals(1, 999),
    ],
)
def test_bad_fault_arguments_are_refused(call: Any) -> None:
    with pytest.raises(ClientInputError):
        call(Faults())


def test_route_enum_names_every_kind() -> None:
    assert {r.channel_name(XQC) for r in Route} == {
        "chatrooms.668.v2",
        "chatrooms.668",
        "channel.676",
        "predictions-channel-676",
    }
