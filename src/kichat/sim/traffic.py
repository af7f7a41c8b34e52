"""Kick-shaped event payloads, the Pusher channel each one travels on, and traffic pacing.

Templates are the illustrative fixtures of wire.md §3 shipped as package data
(``kichat/sim/data/<Event>.json``). A generated event is its template with fresh values: the
fixtures' ids (channel 4100456, chatroom 4100123, the channel owner) become the target
channel's, uuids and ``<prefix>_<ULID>`` ids are new, timestamps are "now" *in the template's own
format* (Kick mixes ``+00:00`` seconds, ``…Z`` with 3/6/9 digits, ``YYYY-MM-DD HH:MM:SS`` and
epoch integers), and the invented users become random ones, consistently within one event.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re
import string
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import cache
from importlib import resources
from typing import Any, Final

from kichat.errors import ClientInputError
from kichat.sim.channels import SimChannel

CHAT_MESSAGE: Final = "App\\Events\\ChatMessageEvent"


class Route(Enum):
    """Which of a channel's Pusher channels an event travels on (wire.md §2.1, §2.2, §3.0)."""

    CHATROOM = "chatroom"  # chatrooms.{chatroomId}.v2
    LEGACY_CHATROOM = "legacy_chatroom"  # chatrooms.{chatroomId}
    CHANNEL = "channel"  # channel.{channelId}
    PREDICTIONS = "predictions"  # predictions-channel-{channelId}

    def channel_name(self, ch: SimChannel) -> str:
        if self is Route.CHATROOM:
            return ch.chatroom_channel
        if self is Route.LEGACY_CHATROOM:
            return ch.legacy_chatroom_channel
        if self is Route.CHANNEL:
            return ch.channel_channel
        return ch.predictions_channel


_C, _L, _CH, _P = Route.CHATROOM, Route.LEGACY_CHATROOM, Route.CHANNEL, Route.PREDICTIONS

# Wire name -> (route, weight in the "realistic" mix). Weights are the KB collector's counts
# (wire.md §3.29: ~97 % chat). Events that section does not count get a small invented weight
# (marked "est.") so that they still show up in long runs.
EVENTS: Final[dict[str, tuple[Route, int]]] = {
    CHAT_MESSAGE: (_C, 736_747 + 46_525 + 282),
    "App\\Events\\MessageDeletedEvent": (_C, 2_036),
    "App\\Events\\UserBannedEvent": (_C, 1_399),
    "App\\Events\\UserUnbannedEvent": (_C, 294),
    "App\\Events\\ChatroomClearEvent": (_C, 20),  # est.
    "App\\Events\\ChatroomUpdatedEvent": (_C, 50),  # est.
    "App\\Events\\PollUpdateEvent": (_C, 100),  # est.
    "App\\Events\\PollDeleteEvent": (_C, 20),  # est.
    "App\\Events\\PinnedMessageCreatedEvent": (_C, 2_635),
    "App\\Events\\PinnedMessageDeletedEvent": (_C, 59),
    "App\\Events\\SubscriptionEvent": (_C, 554),
    "GiftedSubscriptionsEvent": (_C, 284),
    "App\\Events\\ChatMessageSentEvent": (_C, 723),
    "App\\Events\\StreamHostEvent": (_C, 114),
    # KL's code comment shows StreamHostedEvent on the legacy alias (wire.md §2.1).
    "App\\Events\\StreamHostedEvent": (_L, 114),
    "RewardRedeemedEvent": (_C, 1_306),
    "App\\Events\\StreamerIsLive": (_CH, 168),
    "App\\Events\\StopStreamBroadcast": (_CH, 58),
    "App\\Events\\LivestreamUpdated": (_CH, 100),  # est.
    "App\\Events\\FollowersUpdated": (_CH, 200),  # est.
    "App\\Events\\ChannelSubscriptionEvent": (_CH, 177),
    "App\\Events\\LuckyUsersWhoGotGiftSubscriptionsEvent": (_CH, 59),
    "App\\Events\\GiftsLeaderboardUpdated": (_CH, 59),  # est.
    "App\\Events\\ChatMoveToSupportedChannelEvent": (_CH, 57),
    "GoalProgressUpdateEvent": (_CH, 12_314),
    "KicksGifted": (_CH, 50),  # est.
    "PredictionCreated": (_P, 10),  # est.
}

# Share of ChatMessageEvent kinds (wire.md §3.29: regular, reply, celebration).
_CHAT_KINDS: Final = (("message", 736_747), ("reply", 46_525), ("celebration", 282))

# "Every event type once, in a fixed order": a stream's life, roughly.
SCRIPT_ORDER: Final[tuple[str, ...]] = (
    "App\\Events\\StreamerIsLive",
    "App\\Events\\LivestreamUpdated",
    CHAT_MESSAGE,
    "App\\Events\\ChatMessageSentEvent",
    "App\\Events\\SubscriptionEvent",
    "App\\Events\\ChannelSubscriptionEvent",
    "GiftedSubscriptionsEvent",
    "App\\Events\\LuckyUsersWhoGotGiftSubscriptionsEvent",
    "App\\Events\\GiftsLeaderboardUpdated",
    "KicksGifted",
    "RewardRedeemedEvent",
    "App\\Events\\FollowersUpdated",
    "GoalProgressUpdateEvent",
    "App\\Events\\PollUpdateEvent",
    "App\\Events\\PollDeleteEvent",
    "PredictionCreated",
    "App\\Events\\PinnedMessageCreatedEvent",
    "App\\Events\\PinnedMessageDeletedEvent",
    "App\\Events\\MessageDeletedEvent",
    "App\\Events\\UserBannedEvent",
    "App\\Events\\UserUnbannedEvent",
    "App\\Events\\ChatroomUpdatedEvent",
    "App\\Events\\ChatroomClearEvent",
    "App\\Events\\StreamHostEvent",
    "App\\Events\\StreamHostedEvent",
    "App\\Events\\ChatMoveToSupportedChannelEvent",
    "App\\Events\\StopStreamBroadcast",
)

MIXES: Final = ("realistic", "chat", "uniform")

_SHORT_NAMES: Final = {name.rsplit("\\", 1)[-1]: name for name in EVENTS}


def resolve_event(name: str) -> str:
    """The wire name for ``name``; ``ChatMessageEvent`` is accepted for ``App\\Events\\…``."""
    if name in EVENTS:
        return name
    wire = _SHORT_NAMES.get(name.rsplit("\\", 1)[-1])
    if wire is None:
        raise ClientInputError("unknown_event", f"the simulator has no template for {name!r}")
    return wire


# ---------------------------------------------------------------------------------------------
# Templates


@cache
def templates() -> dict[str, Any]:
    """Wire name -> decoded data template (package data, read once)."""
    out: dict[str, Any] = {}
    for entry in resources.files("kichat.sim").joinpath("data").iterdir():
        if entry.name.endswith(".json") and not entry.name.startswith("rest-"):
            doc = json.loads(entry.read_text(encoding="utf-8"))
            out[doc["event"]] = doc["data"]
    return out


@cache
def rest_channel_template() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        resources.files("kichat.sim").joinpath("data/rest-channel.json").read_text(encoding="utf-8")
    )
    return doc


# The fixtures' ids and invented people (wire.md fixtures README), replaced in every event.
_FX_CHANNEL_ID: Final = 4100456
_FX_CHATROOM_ID: Final = 4100123
_FX_OWNER_IDS: Final = frozenset({4150999, 4100467, 9001})
_FX_OWNER_NAMES: Final = frozenset({"hostname", "moonlitfox"})
_FX_LIVESTREAM_ID: Final = 90123456
_FX_USER_IDS: Final = frozenset({55012345, 61230987, 70011222, 66554433, 8123456, 5151, 3344556})
_FX_USERS: Final = frozenset({
    "pixelmoth", "quietfern", "orbitlatte", "generousgus", "zebra_nine", "modaria", "spam_bot_x",
    "friendlyraider",
})  # fmt: skip

_UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ULID_RE: Final = re.compile(r"([a-z]+_)?01[0-9A-Z]{24}")
_ISO_RE: Final = re.compile(r"\d{4}-\d\d-\d\d([T ])\d\d:\d\d:\d\d(\.(\d+))?(Z|\+00:00)?")
_ULID_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_ADJECTIVES: Final = (
    "quiet", "pixel", "orbit", "lunar", "rapid", "mellow", "neon", "silent", "cosmic", "rusty",
    "velvet", "frosty", "lucky", "sly",
)  # fmt: skip
_NOUNS: Final = (
    "fern", "moth", "latte", "otter", "raven", "comet", "badger", "panda", "falcon", "maple",
    "walrus", "cactus", "ember", "gecko",
)  # fmt: skip
_PHRASES: Final = (
    "gg", "LUL", "no way", "W", "that was clean", "what is this game", "hi chat", "LETS GO",
    "first time here", "ratio", "poggers", "chat is wild today", "can you play the next one",
    "KEKW", "true", "L", "how long is stream today", "clip that", "o7", "lmao",
)  # fmt: skip
_EMOTES: Final = ("[emote:37226:KEKW]", "[emote:37227:LULW]", "[emote:39261:kkHuh]",
                  "[emote:37230:POLICE]")  # fmt: skip
_COLORS: Final = ("#75FD46", "#DEB2FF", "#00CCB3", "#FF9D00", "#E9113C", "#BC66FF", "#1475E1")
_BADGE_TEXT: Final = {
    "subscriber": "Subscriber",
    "moderator": "Moderator",
    "vip": "VIP",
    "og": "OG",
}


def _format_like(template: str, now: datetime) -> str:
    """``now`` in the same ISO-ish format as ``template`` (precision and zone suffix)."""
    m = _ISO_RE.fullmatch(template)
    assert m is not None
    sep, frac, suffix = m.group(1), m.group(3), m.group(4) or ""
    out = now.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if frac:
        digits = f"{now.microsecond:06d}{time.time_ns() % 1000:03d}"
        out += "." + digits[: len(frac)].ljust(len(frac), "0")
    return out + suffix


@dataclass(frozen=True, slots=True)
class Generated:
    event: str
    route: Route
    data: Any


class EventFactory:
    """Makes Kick-shaped payloads. Deterministic for a seeded ``rng`` except for timestamps."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._chat_kinds = [k for k, _ in _CHAT_KINDS]
        self._chat_weights = [w for _, w in _CHAT_KINDS]

    # -- small random values ---------------------------------------------------------------------

    def uuid4(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def ulid(self, at: datetime) -> str:
        ms = int(at.timestamp() * 1000)
        head = "".join(_ULID_ALPHABET[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
        return head + "".join(self.rng.choice(_ULID_ALPHABET) for _ in range(16))

    def username(self) -> str:
        name = self.rng.choice(_ADJECTIVES).capitalize() + self.rng.choice(_NOUNS).capitalize()
        return name + (str(self.rng.randint(1, 999)) if self.rng.random() < 0.5 else "")

    def user_id(self) -> int:
        return self.rng.randint(1_000_000, 99_999_999)

    def chat_content(self) -> str:
        text = self.rng.choice(_PHRASES)
        if self.rng.random() < 0.25:
            text += " " + self.rng.choice(_EMOTES)
        return text

    def hex8(self) -> str:
        return "".join(self.rng.choice(string.hexdigits[:16]) for _ in range(8))

    # -- events ----------------------------------------------------------------------------------

    def make(
        self, event: str, ch: SimChannel, *, recent_message: dict[str, Any] | None = None
    ) -> Generated:
        """A fresh payload of ``event`` (a wire name, see :func:`resolve_event`) for ``ch``."""
        route, _ = EVENTS[event]
        now = datetime.now(UTC)
        fill = _Filler(self, ch, now)
        data = fill.value(templates()[event])
        tweak = _TWEAKS.get(event)
        if tweak is not None:
            tweak(self, data, ch, now, recent_message)
        return Generated(event, route, data)

    def chat_kind(self) -> str:
        return self.rng.choices(self._chat_kinds, self._chat_weights)[0]

    def livestream(self, ch: SimChannel) -> dict[str, Any]:
        """A livestream object for ``ch``'s REST channel response (wire.md §3.19, §4.1)."""
        stream: dict[str, Any] = copy.deepcopy(
            templates()["App\\Events\\LivestreamUpdated"]["livestream"]
        )
        now = datetime.now(UTC)
        stream["id"] = self.rng.randint(10_000_000, 99_999_999)
        stream["channel_id"] = ch.channel_id
        stream["slug"] = f"{self.uuid4()[:8]}-{ch.slug}"
        stream["created_at"] = stream["start_time"] = now.strftime("%Y-%m-%d %H:%M:%S")
        stream["thumbnail"] = {"url": "https://example.invalid/thumbnail.webp"}
        return stream


class _Filler:
    """Copies a template, replacing the fixtures' values (see the module docstring)."""

    def __init__(self, factory: EventFactory, ch: SimChannel, now: datetime) -> None:
        self.f = factory
        self.ch = ch
        self.now = now
        self.names: dict[str, str] = {}
        self.ids: dict[int, int] = {}
        self.livestream_id = (ch.livestream or {}).get("id") or factory.rng.randint(
            10**7, 10**8 - 1
        )

    def value(self, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, bool):
            return v
        if isinstance(v, int):
            return self.integer(v)
        if isinstance(v, str):
            return self.text(v)
        return v

    def integer(self, v: int) -> int:
        if v == _FX_CHANNEL_ID:
            return self.ch.channel_id
        if v == _FX_CHATROOM_ID:
            return self.ch.chatroom_id
        if v in _FX_OWNER_IDS:
            return self.ch.user_id
        if v == _FX_LIVESTREAM_ID:
            return int(self.livestream_id)
        if v in _FX_USER_IDS:
            return self.ids.setdefault(v, self.f.user_id())
        if 1_500_000_000 <= v < 2_000_000_000:  # epoch seconds
            return int(self.now.timestamp())
        return v

    def text(self, v: str) -> str:
        if _UUID_RE.fullmatch(v):
            return self.f.uuid4()
        if m := _ULID_RE.fullmatch(v):
            return (m.group(1) or "") + self.f.ulid(self.now)
        if _ISO_RE.fullmatch(v):
            return _format_like(v, self.now)
        if v.isdigit() and len(v) == 13:  # message_ref: epoch milliseconds
            return str(int(self.now.timestamp() * 1000))
        key = v.lower().replace("-", "_")
        if key in _FX_OWNER_NAMES:
            return self.ch.slug if v.islower() else self.ch.username
        if key in _FX_USERS:
            name = self.names.setdefault(key, self.f.username())
            return name.lower().replace("_", "-") if v.islower() else name
        return v


# -- per-event adjustments on top of the generic fill -------------------------------------------

Tweak = Callable[[EventFactory, Any, SimChannel, datetime, dict[str, Any] | None], None]


def _chat(
    f: EventFactory, d: Any, ch: SimChannel, now: datetime, recent: dict[str, Any] | None
) -> None:
    d["content"] = f.chat_content()
    d["sender"]["identity"]["color"] = f.rng.choice(_COLORS)
    badge = f.rng.choice([None, "subscriber", "moderator", "vip", "og", None, None])
    badges: list[dict[str, Any]] = []
    if badge is not None:
        badges.append({"type": badge, "text": _BADGE_TEXT[badge]})
        if badge == "subscriber":
            badges[0]["count"] = f.rng.randint(1, 36)
    d["sender"]["identity"]["badges"] = badges


def _pinned(
    f: EventFactory, d: Any, ch: SimChannel, now: datetime, recent: dict[str, Any] | None
) -> None:
    d["message"]["content"] = f.chat_content()


def _deleted(
    f: EventFactory, d: Any, ch: SimChannel, now: datetime, recent: dict[str, Any] | None
) -> None:
    if recent is not None and isinstance(recent.get("id"), str):
        d["message"]["id"] = recent["id"]


def _banned(
    f: EventFactory, d: Any, ch: SimChannel, now: datetime, recent: dict[str, Any] | None
) -> None:
    # The unit of duration is unknown; minutes is the likelier reading (wire.md §3.3).
    expires = now + timedelta(minutes=d["duration"])
    d["expires_at"] = expires.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _kicks(
    f: EventFactory, d: Any, ch: SimChannel, now: datetime, recent: dict[str, Any] | None
) -> None:
    expires = now + timedelta(seconds=d["gift"]["pinned_time"])
    d["expires_at"] = expires.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expires.microsecond // 1000:03d}Z"


_TWEAKS: Final[dict[str, Tweak]] = {
    CHAT_MESSAGE: _chat,
    "App\\Events\\PinnedMessageCreatedEvent": _pinned,
    "App\\Events\\MessageDeletedEvent": _deleted,
    "App\\Events\\UserBannedEvent": _banned,
    "KicksGifted": _kicks,
}


def make_chat(
    f: EventFactory, ch: SimChannel, kind: str, recent: dict[str, Any] | None
) -> dict[str, Any]:
    """A ChatMessageEvent of ``kind`` ("message", "reply" or "celebration", wire.md §3.1)."""
    data: dict[str, Any] = f.make(CHAT_MESSAGE, ch).data
    now = datetime.now(UTC)
    if kind == "reply" and recent is not None:
        data["type"] = "reply"
        sender = recent.get("sender") or {}
        data["metadata"] = {
            "original_sender": {"id": sender.get("id"), "username": sender.get("username")},
            "original_message": {"id": recent.get("id"), "content": recent.get("content")},
            "message_ref": data["metadata"]["message_ref"],
        }
    elif kind == "celebration":
        data["type"] = "celebration"
        data["content"] = "🎉"
        data["metadata"] = {
            "celebration": {
                "id": "chceleb_" + f.ulid(now),
                "type": f.rng.choice(["subscription_renewed", "subscription_started"]),
                "total_months": f.rng.randint(1, 24),
                "created_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            }
        }
    return data


class Mix:
    """Picks event names for random traffic."""

    def __init__(self, name: str, rng: random.Random) -> None:
        if name not in MIXES:
            raise ClientInputError("bad_mix", f"mix must be one of {', '.join(MIXES)}")
        self.rng = rng
        self.names = list(EVENTS) if name != "chat" else [CHAT_MESSAGE]
        weights = (
            [EVENTS[n][1] for n in self.names] if name == "realistic" else [1] * len(self.names)
        )
        self.cum_weights = list(_accumulate(weights))

    def pick(self) -> str:
        return self.rng.choices(self.names, cum_weights=self.cum_weights)[0]


def _accumulate(values: Iterable[int]) -> Iterable[int]:
    total = 0
    for v in values:
        total += v
        yield total


# ---------------------------------------------------------------------------------------------
# Bench payloads and pacing


class BenchMessages:
    """ChatMessageEvent payloads for one chatroom, content ``"<seq> <publish_time_ns>"``.

    Kick-shaped (so the gateway's normal path is measured) but cheap: the sender is shared, the
    per-second timestamp string is cached, ids are uuid4 (unique, since gateways may dedupe by id).
    """

    def __init__(self, chatroom_id: int) -> None:
        self.chatroom_id = chatroom_id
        self.channel = f"chatrooms.{chatroom_id}.v2"
        self.legacy_channel = f"chatrooms.{chatroom_id}"
        self.seq = 0
        self._sender = {
            "id": 10_000_000 + chatroom_id % 1_000_000,
            "username": f"bench{chatroom_id}",
            "slug": f"bench{chatroom_id}",
            "identity": {"color": "#75FD46", "badges": []},
        }
        self._second = -1
        self._created_at = ""

    def next(self) -> dict[str, Any]:
        self.seq += 1
        now_ns = time.time_ns()
        second = now_ns // 1_000_000_000
        if second != self._second:
            self._second = second
            self._created_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(second))
        return {
            "id": str(uuid.uuid4()),
            "chatroom_id": self.chatroom_id,
            "content": f"{self.seq} {now_ns}",
            "type": "message",
            "created_at": self._created_at,
            "sender": self._sender,
            "metadata": {"message_ref": str(now_ns // 1_000_000)},
        }


async def paced(keys: int, rate: float, count: int | None, emit: Callable[[int], None]) -> int:
    """Call ``emit(key)`` for ``keys`` keys at ``rate``/s each, ``count`` times per key (None:
    forever).

    Ticks are spread evenly over each period (key i fires at i/(keys*rate) past the period start)
    and scheduled on absolute deadlines, so a late tick never delays the next ones (no drift).
    When the loop falls behind, due ticks are emitted back to back, yielding now and then.
    Returns the number of ticks emitted.
    """
    loop = asyncio.get_running_loop()
    interval = 1.0 / (keys * rate)
    total = None if count is None else count * keys
    start = loop.time()
    tick = 0
    while total is None or tick < total:
        delay = start + tick * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif tick % 64 == 63:
            await asyncio.sleep(0)
        emit(tick % keys)
        tick += 1
    return tick
