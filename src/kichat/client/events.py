"""Events as the client yields them, and typed views of the common ones.

Every event keeps Kick's payload untouched in :attr:`Event.data` (plus ``channel_name``, which the
gateway adds). The typed views read it leniently, because Kick changes shapes without notice
(wire.md lists payloads from 2023 to 2026 that differ): a missing or mistyped field becomes an
empty value rather than an exception, and anything not covered stays reachable in ``data``.

::

    async for event in client:
        if (chat := event.chat_message()) is not None:
            print(chat.sender.username, chat.text, [emote.name for emote in chat.emotes])
        elif (deleted := event.message_deleted()) is not None:
            forget(deleted.message_id)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kichat.kick import events as kick

__all__ = [
    "EMOTE_URL",
    "Badge",
    "ChatMessage",
    "ChatroomCleared",
    "Emote",
    "Event",
    "MessageDeleted",
    "PinnedMessage",
    "ReplyTo",
    "Sender",
    "Subscription",
    "User",
    "UserBanned",
    "UserUnbanned",
    "parse_emotes",
]

# Where Kick serves an emote's image (wire.md 3.1); {id} is the emote id.
EMOTE_URL: Final = "https://files.kick.com/emotes/{id}/fullsize"
_EMOTE_RE: Final = re.compile(r"\[emote:(\d+):([^\]\s]*)\]")


def _str(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _int(value: object) -> int | None:
    """An id as an int: Kick sends some ids as numbers and, in older payloads, as strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class Event:
    """One event from the gateway: Kick's event ``name`` (e.g. ``App\\Events\\ChatMessageEvent``)
    and its ``data`` (Kick's payload plus ``channel_name``).

    The client also yields a few events of its own, named like Socket.IO's reserved events so
    they can never be confused with Kick's: ``error`` and ``warning`` (replies of the
    re-subscriptions it makes after a gateway restart, shaped like the gateway's own), and with
    ``lifecycle_events=True``, ``connect`` (``{"sid", "recovered"}``) and ``disconnect``
    (``{"reason"}``).
    """

    name: str
    data: Any

    @property
    def channel_name(self) -> str | None:
        """The slug the event was subscribed under (``None`` for the client's own events)."""
        value = self.data.get("channel_name") if isinstance(self.data, Mapping) else None
        return value if isinstance(value, str) else None

    @property
    def short_name(self) -> str:
        """The name without the ``App\\Events\\`` prefix: ``ChatMessageEvent``."""
        return self.name.rsplit("\\", 1)[-1]

    def chat_message(self) -> ChatMessage | None:
        if self.name != kick.CHAT_MESSAGE_EVENT or not isinstance(self.data, Mapping):
            return None
        return ChatMessage.from_data(self.data)

    def message_deleted(self) -> MessageDeleted | None:
        if self.name != kick.MESSAGE_DELETED_EVENT or not isinstance(self.data, Mapping):
            return None
        return MessageDeleted.from_data(self.data)

    def user_banned(self) -> UserBanned | None:
        if self.name != kick.USER_BANNED_EVENT or not isinstance(self.data, Mapping):
            return None
        return UserBanned.from_data(self.data)

    def user_unbanned(self) -> UserUnbanned | None:
        if self.name != kick.USER_UNBANNED_EVENT or not isinstance(self.data, Mapping):
            return None
        return UserUnbanned.from_data(self.data)

    def chatroom_cleared(self) -> ChatroomCleared | None:
        if self.name != kick.CHATROOM_CLEAR_EVENT or not isinstance(self.data, Mapping):
            return None
        return ChatroomCleared(_str(self.data.get("id")), _str(self.data.get("channel_name")))

    def pinned_message(self) -> PinnedMessage | None:
        """``PinnedMessageCreatedEvent``; ``PinnedMessageDeletedEvent`` carries no data."""
        if self.name != kick.PINNED_MESSAGE_CREATED_EVENT or not isinstance(self.data, Mapping):
            return None
        return PinnedMessage.from_data(self.data)

    def subscription(self) -> Subscription | None:
        """A new or renewed subscription (``SubscriptionEvent``, with or without prefix)."""
        names = (kick.SUBSCRIPTION_EVENT, kick.SUBSCRIPTION_EVENT_BARE)
        if self.name not in names or not isinstance(self.data, Mapping):
            return None
        months = _int(self.data.get("months"))
        return Subscription(
            username=_str(self.data.get("username")),
            months=months or 0,
            channel_name=_str(self.data.get("channel_name")),
        )


@dataclass(frozen=True, slots=True)
class Badge:
    type: str  # broadcaster, moderator, subscriber, sub_gifter, founder, og, vip, verified, ...
    text: str
    count: int | None = None  # months for ``subscriber``, gifts for ``sub_gifter``

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Badge:
        return cls(_str(data.get("type")), _str(data.get("text")), _int(data.get("count")))


@dataclass(frozen=True, slots=True)
class User:
    id: int | None  # Kick often sends 0 for ``banned_by``; use the username
    username: str
    slug: str

    @classmethod
    def from_data(cls, data: object) -> User:
        d = _map(data)
        return cls(_int(d.get("id")), _str(d.get("username")), _str(d.get("slug")))


@dataclass(frozen=True, slots=True)
class Sender:
    id: int | None
    username: str
    slug: str
    color: str | None  # "#RRGGBB"
    badges: tuple[Badge, ...]

    @classmethod
    def from_data(cls, data: object) -> Sender:
        d = _map(data)
        identity = _map(d.get("identity"))
        raw_badges = identity.get("badges")
        badges = tuple(
            Badge.from_data(b)
            for b in (raw_badges if isinstance(raw_badges, list) else ())
            if isinstance(b, Mapping)
        )
        color = identity.get("color")
        return cls(
            _int(d.get("id")),
            _str(d.get("username")),
            _str(d.get("slug")),
            color if isinstance(color, str) and color else None,
            badges,
        )

    def has_badge(self, badge_type: str) -> bool:
        return any(b.type == badge_type for b in self.badges)


@dataclass(frozen=True, slots=True)
class Emote:
    """One ``[emote:ID:NAME]`` in a message: its place in ``content`` is ``[start, end)``."""

    id: str
    name: str
    start: int
    end: int

    def url(self, template: str = EMOTE_URL) -> str:
        return template.format(id=self.id)


def parse_emotes(content: str) -> tuple[Emote, ...]:
    """Every ``[emote:ID:NAME]`` of a message's content, in order."""
    return tuple(
        Emote(m.group(1), m.group(2), m.start(), m.end()) for m in _EMOTE_RE.finditer(content)
    )


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """The message a reply answers (``metadata.original_*``)."""

    message_id: str
    content: str
    sender: User


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: str
    chatroom_id: int | None
    channel_name: str
    content: str  # as Kick sends it, emotes as [emote:ID:NAME]
    type: str  # "message", "reply", "celebration"
    created_at: str  # ISO 8601, as Kick sends it
    sender: Sender
    emotes: tuple[Emote, ...]
    reply_to: ReplyTo | None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ChatMessage:
        content = _str(data.get("content"))
        metadata = _map(data.get("metadata"))
        reply_to = None
        if "original_message" in metadata:
            original = _map(metadata.get("original_message"))
            reply_to = ReplyTo(
                _str(original.get("id")),
                _str(original.get("content")),
                User.from_data(metadata.get("original_sender")),
            )
        return cls(
            id=_str(data.get("id")),
            chatroom_id=_int(data.get("chatroom_id")),
            channel_name=_str(data.get("channel_name")),
            content=content,
            type=_str(data.get("type")) or "message",
            created_at=_str(data.get("created_at")),
            sender=Sender.from_data(data.get("sender")),
            emotes=parse_emotes(content),
            reply_to=reply_to,
        )

    def parts(self) -> Iterator[str | Emote]:
        """The content as text runs and emotes, in order (for rendering emotes as images)."""
        at = 0
        for emote in self.emotes:
            if emote.start > at:
                yield self.content[at : emote.start]
            yield emote
            at = emote.end
        if at < len(self.content):
            yield self.content[at:]

    @property
    def text(self) -> str:
        """The content with each emote written as its name: ``gg KEKW``."""
        return "".join(p if isinstance(p, str) else p.name for p in self.parts())


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    message_id: str  # the deleted message's id (ChatMessage.id)
    ai_moderated: bool
    channel_name: str

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> MessageDeleted:
        return cls(
            _str(_map(data.get("message")).get("id")),
            data.get("aiModerated") is True,
            _str(data.get("channel_name")),
        )


@dataclass(frozen=True, slots=True)
class UserBanned:
    user: User
    banned_by: User
    permanent: bool  # False for a timeout
    duration: int | None  # of a timeout (Kick does not document the unit; likely minutes)
    expires_at: str | None
    channel_name: str

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> UserBanned:
        expires = data.get("expires_at")
        permanent = data.get("permanent")
        return cls(
            User.from_data(data.get("user")),
            User.from_data(data.get("banned_by")),
            # The 2023 shape had no "permanent", only expires_at for timeouts.
            permanent is True or (permanent is None and not expires),
            _int(data.get("duration")),
            expires if isinstance(expires, str) else None,
            _str(data.get("channel_name")),
        )


@dataclass(frozen=True, slots=True)
class UserUnbanned:
    user: User
    unbanned_by: User
    channel_name: str

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> UserUnbanned:
        return cls(
            User.from_data(data.get("user")),
            User.from_data(data.get("unbanned_by")),
            _str(data.get("channel_name")),
        )


@dataclass(frozen=True, slots=True)
class ChatroomCleared:
    id: str
    channel_name: str


@dataclass(frozen=True, slots=True)
class PinnedMessage:
    message: ChatMessage
    pinned_by: Sender
    duration: int | None  # seconds (Kick sends a string such as "1200")
    channel_name: str

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> PinnedMessage:
        channel = _str(data.get("channel_name"))
        message = dict(_map(data.get("message")))
        message.setdefault("channel_name", channel)
        return cls(
            ChatMessage.from_data(message),
            Sender.from_data(data.get("pinnedBy")),
            _int(data.get("duration")),
            channel,
        )


@dataclass(frozen=True, slots=True)
class Subscription:
    username: str
    months: int
    channel_name: str
