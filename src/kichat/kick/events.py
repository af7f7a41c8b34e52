"""Kick's event and channel vocabulary, and the shaping of event payloads.

Every upstream event goes through :func:`decode_data` and :func:`with_channel_name` exactly once
(never once per client), so both are kept to a handful of operations. No I/O here.

Event names are case-sensitive and their backslashes are literal: on the wire, in JSON, they read
``"App\\\\Events\\\\ChatMessageEvent"``. Several newer events carry no ``App\\Events\\`` prefix,
and a few arrive in both forms (``SubscriptionEvent``, ``GiftedSubscriptionsEvent``,
``GiftsLeaderboardUpdated``); both spellings are listed. Unknown names are not an error anywhere:
Kick adds events without notice and the gateway passes them through verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import orjson

_P = "App\\Events\\"

# Chatroom channels (chatrooms.{id}.v2 and aliases).
CHAT_MESSAGE_EVENT = _P + "ChatMessageEvent"
MESSAGE_DELETED_EVENT = _P + "MessageDeletedEvent"
USER_BANNED_EVENT = _P + "UserBannedEvent"
USER_UNBANNED_EVENT = _P + "UserUnbannedEvent"
CHATROOM_CLEAR_EVENT = _P + "ChatroomClearEvent"
CHATROOM_UPDATED_EVENT = _P + "ChatroomUpdatedEvent"
POLL_UPDATE_EVENT = _P + "PollUpdateEvent"
POLL_DELETE_EVENT = _P + "PollDeleteEvent"
PINNED_MESSAGE_CREATED_EVENT = _P + "PinnedMessageCreatedEvent"
PINNED_MESSAGE_DELETED_EVENT = _P + "PinnedMessageDeletedEvent"
SUBSCRIPTION_EVENT = _P + "SubscriptionEvent"
SUBSCRIPTION_EVENT_BARE = "SubscriptionEvent"
GIFTED_SUBSCRIPTIONS_EVENT = _P + "GiftedSubscriptionsEvent"
GIFTED_SUBSCRIPTIONS_EVENT_BARE = "GiftedSubscriptionsEvent"
CHAT_MESSAGE_SENT_EVENT = _P + "ChatMessageSentEvent"
STREAM_HOST_EVENT = _P + "StreamHostEvent"
STREAM_HOSTED_EVENT = _P + "StreamHostedEvent"
REWARD_REDEEMED_EVENT = "RewardRedeemedEvent"

# Channel channels (channel.{id} and aliases).
STREAMER_IS_LIVE = _P + "StreamerIsLive"
STOP_STREAM_BROADCAST = _P + "StopStreamBroadcast"
LIVESTREAM_UPDATED = _P + "LivestreamUpdated"
FOLLOWERS_UPDATED = _P + "FollowersUpdated"
CHANNEL_SUBSCRIPTION_EVENT = _P + "ChannelSubscriptionEvent"
LUCKY_USERS_WHO_GOT_GIFT_SUBSCRIPTIONS_EVENT = _P + "LuckyUsersWhoGotGiftSubscriptionsEvent"
GIFTS_LEADERBOARD_UPDATED = _P + "GiftsLeaderboardUpdated"
GIFTS_LEADERBOARD_UPDATED_BARE = "GiftsLeaderboardUpdated"
CHAT_MOVE_TO_SUPPORTED_CHANNEL_EVENT = _P + "ChatMoveToSupportedChannelEvent"
GOAL_PROGRESS_UPDATE_EVENT = "GoalProgressUpdateEvent"
GOAL_CREATED_EVENT = "GoalCreatedEvent"
GOAL_CANCELED_EVENT = "GoalCanceledEvent"
KICKS_GIFTED = "KicksGifted"
KICKS_LEADERBOARD_UPDATED = "KicksLeaderboardUpdated"
POINTS_UPDATED = "PointsUpdated"
CHANNEL_BANNED_FORCE_REFRESH = _P + "ChannelBannedForceRefresh"
VIDEO_PRIVATED_EVENT = _P + "VideoPrivatedEvent"

# predictions-channel-{channel_id}.
PREDICTION_CREATED = "PredictionCreated"
PREDICTION_UPDATED = "PredictionUpdated"

# 2023-era private channel (needs a logged-in user; listed for completeness).
UPDATED_LIVE_STREAM_EVENT = _P + "LiveStream\\UpdatedLiveStreamEvent"

CHATROOM_EVENTS: frozenset[str] = frozenset(
    {
        CHAT_MESSAGE_EVENT,
        MESSAGE_DELETED_EVENT,
        USER_BANNED_EVENT,
        USER_UNBANNED_EVENT,
        CHATROOM_CLEAR_EVENT,
        CHATROOM_UPDATED_EVENT,
        POLL_UPDATE_EVENT,
        POLL_DELETE_EVENT,
        PINNED_MESSAGE_CREATED_EVENT,
        PINNED_MESSAGE_DELETED_EVENT,
        SUBSCRIPTION_EVENT,
        SUBSCRIPTION_EVENT_BARE,
        GIFTED_SUBSCRIPTIONS_EVENT,
        GIFTED_SUBSCRIPTIONS_EVENT_BARE,
        CHAT_MESSAGE_SENT_EVENT,
        STREAM_HOST_EVENT,
        STREAM_HOSTED_EVENT,
        REWARD_REDEEMED_EVENT,
    }
)
CHANNEL_EVENTS: frozenset[str] = frozenset(
    {
        STREAMER_IS_LIVE,
        STOP_STREAM_BROADCAST,
        LIVESTREAM_UPDATED,
        FOLLOWERS_UPDATED,
        CHANNEL_SUBSCRIPTION_EVENT,
        LUCKY_USERS_WHO_GOT_GIFT_SUBSCRIPTIONS_EVENT,
        GIFTS_LEADERBOARD_UPDATED,
        GIFTS_LEADERBOARD_UPDATED_BARE,
        CHAT_MOVE_TO_SUPPORTED_CHANNEL_EVENT,
        GOAL_PROGRESS_UPDATE_EVENT,
        GOAL_CREATED_EVENT,
        GOAL_CANCELED_EVENT,
        KICKS_GIFTED,
        CHANNEL_BANNED_FORCE_REFRESH,
    }
)
# Every name wire.md §3.0 lists, wherever it arrives (unknown names still pass through).
KNOWN_EVENTS: frozenset[str] = (
    CHATROOM_EVENTS
    | CHANNEL_EVENTS
    | {
        KICKS_LEADERBOARD_UPDATED,
        POINTS_UPDATED,
        VIDEO_PRIVATED_EVENT,
        PREDICTION_CREATED,
        PREDICTION_UPDATED,
        UPDATED_LIVE_STREAM_EVENT,
    }
)

# The events the hosted Kichat API documents, in its documentation's order.
KICHAT_DOCUMENTED_EVENTS: tuple[str, ...] = (
    CHAT_MESSAGE_EVENT,
    MESSAGE_DELETED_EVENT,
    USER_BANNED_EVENT,
    USER_UNBANNED_EVENT,
    CHATROOM_CLEAR_EVENT,
    CHATROOM_UPDATED_EVENT,
    POLL_UPDATE_EVENT,
    POLL_DELETE_EVENT,
    PINNED_MESSAGE_CREATED_EVENT,
    PINNED_MESSAGE_DELETED_EVENT,
    SUBSCRIPTION_EVENT,
    LIVESTREAM_UPDATED,
)

# Events whose ``id`` names a long-lived thing (the chatroom, the goal), not one occurrence:
# successive updates share it, so it must not be used to drop "duplicates".
_ENTITY_ID_EVENTS = frozenset({CHATROOM_UPDATED_EVENT, GOAL_PROGRESS_UPDATE_EVENT})

# ---------------------------------------------------------------------------------------------
# Pusher channel names

CHATROOM_PLACEHOLDER = "{chatroom_id}"
CHANNEL_PLACEHOLDER = "{channel_id}"

CHATROOM_V2_CHANNEL = "chatrooms.{chatroom_id}.v2"
CHATROOM_LEGACY_CHANNEL = "chatrooms.{chatroom_id}"
CHATROOM_UNDERSCORE_CHANNEL = "chatroom_{chatroom_id}"
CHANNEL_DOT_CHANNEL = "channel.{channel_id}"
CHANNEL_UNDERSCORE_CHANNEL = "channel_{channel_id}"
PREDICTIONS_CHANNEL = "predictions-channel-{channel_id}"

# `.v2` is the primary; the legacy alias still carries a few events of its own (StreamHostedEvent).
DEFAULT_CHATROOM_CHANNELS: tuple[str, ...] = (CHATROOM_V2_CHANNEL, CHATROOM_LEGACY_CHANNEL)
# Stream lifecycle, followers, gifts and goals arrive on channel.{id}; predictions on their own
# channel. Both are public, so subscribing costs one upstream subscription each and nothing else.
DEFAULT_CHANNEL_CHANNELS: tuple[str, ...] = (CHANNEL_DOT_CHANNEL, PREDICTIONS_CHANNEL)

# Pusher's channel-name rule (characters and length).
_PUSHER_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,164}")
_AUTH_PREFIXES = ("private-", "presence-")


def render_channels(
    templates: Iterable[str], *, chatroom_id: int | None = None, channel_id: int | None = None
) -> tuple[str, ...]:
    """Fill ``{chatroom_id}`` / ``{channel_id}`` into channel-name templates.

    ``render_channels(DEFAULT_CHATROOM_CHANNELS, chatroom_id=668)`` returns
    ``("chatrooms.668.v2", "chatrooms.668")``. Plain substitution, not ``str.format``: templates
    come from configuration and must not reach attribute lookups. A template that needs an id
    that was not given raises ``ValueError``.
    """
    out: list[str] = []
    for template in templates:
        name = template
        if CHATROOM_PLACEHOLDER in name:
            if chatroom_id is None:
                raise ValueError(f"channel template {template!r} needs a chatroom_id")
            name = name.replace(CHATROOM_PLACEHOLDER, str(chatroom_id))
        if CHANNEL_PLACEHOLDER in name:
            if channel_id is None:
                raise ValueError(f"channel template {template!r} needs a channel_id")
            name = name.replace(CHANNEL_PLACEHOLDER, str(channel_id))
        out.append(name)
    return tuple(out)


def template_problem(template: object, placeholder: str) -> str | None:
    """Why ``template`` is not a usable public channel-name template with ``placeholder``.

    Returns ``None`` when it is usable. Used by configuration validation, so that a bad template
    is reported at start-up rather than as a silent subscription.
    """
    if not isinstance(template, str):
        return f"must be a string, got {type(template).__name__}"
    if template.count(placeholder) != 1:
        return f"must contain {placeholder} exactly once, got {template[:80]!r}"
    rest = template.replace(placeholder, "")
    if "{" in rest or "}" in rest:
        return f"may contain no placeholder other than {placeholder}, got {template[:80]!r}"
    sample = template.replace(placeholder, "9" * 12)
    if not _PUSHER_CHANNEL_RE.fullmatch(sample):
        return (
            "must render to a Pusher channel name (at most 164 of A-Z a-z 0-9 _ - = @ , . ;),"
            f" got {template[:80]!r}"
        )
    if sample.startswith(_AUTH_PREFIXES):
        return f"names a private/presence channel, which needs a logged-in user: {template[:80]!r}"
    return None


# ---------------------------------------------------------------------------------------------
# Payload shaping (hot path)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def decode_data(raw: object) -> object:
    """Decode the ``data`` field of a Pusher frame.

    Kick double-encodes it: the frame's ``data`` is a JSON *string* (``str`` or UTF-8 bytes),
    decoded here once with orjson. What orjson refuses but is valid JSON (escaped lone
    surrogates; integers beyond 64 bits in the orjson releases that refuse them) is decoded by
    the stdlib instead; ``NaN``/``Infinity`` stay refused. A value that is already decoded (a
    dict or list from a frame whose ``data`` was an object) is returned as is.

    Raises ``ValueError`` on invalid JSON.

    Limitations, both measured with orjson 3.13: it turns integers beyond the 64-bit range into
    floats instead of refusing them, so their precision is lost (detecting them beforehand costs
    twice the decode itself, and Kick's ids are far below 2**63); and what only the stdlib could
    decode (lone surrogates, big integers) may not be re-encodable by orjson, so encoders
    downstream need a fallback too.
    """
    if not isinstance(raw, str | bytes | bytearray):
        return raw
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"event data is not valid JSON: {exc}") from exc


def with_channel_name(data: object, slug: str) -> dict[str, Any]:
    """Kick's decoded event data plus ``channel_name`` (the channel slug), as Kichat emits it.

    The dict is modified in place and returned: it was decoded for this event alone, and a copy
    per event would be pure waste. If Kick's object already has a ``channel_name`` key, ours
    replaces it: clients rely on ``channel_name`` being the slug they subscribed with. Data that
    is not an object (Kick sends ``[]`` for ``PinnedMessageDeletedEvent`` and
    ``PollDeleteEvent``) becomes ``{"channel_name": slug}``.
    """
    if isinstance(data, dict):
        data["channel_name"] = slug
        return data
    return {"channel_name": slug}


def event_id(data: object, event: str | None = None) -> str | None:
    """The id that identifies one occurrence of an event, to drop the copy seen on an alias.

    ``data["id"]`` when it is a string or an integer (as a string), else ``None``; the caller
    dedupes on ``(event, id)``. Pass ``event`` when known: for ``ChatroomUpdatedEvent`` (whose
    ``id`` is the chatroom's) and ``GoalProgressUpdateEvent`` (the goal's), every update carries
    the same id, so ``None`` is returned rather than a key that would swallow real updates.
    """
    if not isinstance(data, dict) or event in _ENTITY_ID_EVENTS:
        return None
    value = data.get("id")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
