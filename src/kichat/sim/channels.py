"""The channels the simulator knows, and the Pusher channel names Kick uses for them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from kichat.errors import ClientInputError

# The benchmark's convention: slug chan<N> has chatroom 700000+N and channel 800000+N.
_AUTO_SLUG: Final = re.compile(r"chan(\d+)")
AUTO_CHATROOM_BASE: Final = 700_000
AUTO_CHANNEL_BASE: Final = 800_000
AUTO_USER_BASE: Final = 900_000
# Ids for add_channel() without explicit ids: far from every other range, channel != chatroom.
_NEXT_CHANNEL_ID: Final = 5_000_001
_NEXT_CHATROOM_ID: Final = 6_000_001
_NEXT_USER_ID: Final = 7_000_001


@dataclass
class SimChannel:
    """A Kick channel. ``livestream`` is None while offline (Kick's REST shape, wire.md §4.1)."""

    slug: str
    channel_id: int
    chatroom_id: int
    user_id: int
    username: str
    livestream: dict[str, Any] | None = None

    @property
    def chatroom_channel(self) -> str:
        """The primary Pusher channel: chat, moderation, pins, polls, subs (wire.md §2.1)."""
        return f"chatrooms.{self.chatroom_id}.v2"

    @property
    def legacy_chatroom_channel(self) -> str:
        return f"chatrooms.{self.chatroom_id}"

    @property
    def channel_channel(self) -> str:
        """Stream lifecycle, followers, gifts, goals (wire.md §2.2)."""
        return f"channel.{self.channel_id}"

    @property
    def predictions_channel(self) -> str:
        return f"predictions-channel-{self.channel_id}"


class ChannelDirectory:
    """slug -> SimChannel, with the defaults and the automatic ``chan<N>`` channels."""

    def __init__(self) -> None:
        self._by_slug: dict[str, SimChannel] = {}
        self._by_channel_id: dict[int, SimChannel] = {}
        self._next = [_NEXT_CHANNEL_ID, _NEXT_CHATROOM_ID, _NEXT_USER_ID]
        # The contract's example (chatroom 668) and the fixtures' ids (wire.md fixtures README).
        self.add(SimChannel("xqc", 676, 668, 688, "xQc"))
        self.add(SimChannel("moonlitfox", 4100456, 4100123, 4100467, "MoonlitFox"))

    def __iter__(self) -> Iterator[SimChannel]:
        return iter(list(self._by_slug.values()))

    def get(self, slug: str) -> SimChannel:
        """The channel for ``slug`` (case-insensitive); ``chan<N>`` is created on first use."""
        key = slug.lower()
        found = self._by_slug.get(key)
        if found is not None:
            return found
        match = _AUTO_SLUG.fullmatch(key)
        if match is None:
            raise KeyError(slug)
        n = int(match.group(1))
        return self.add(
            SimChannel(
                key, AUTO_CHANNEL_BASE + n, AUTO_CHATROOM_BASE + n, AUTO_USER_BASE + n, f"Chan{n}"
            )
        )

    def find(self, slug: str) -> SimChannel | None:
        try:
            return self.get(slug)
        except KeyError:
            return None

    def by_channel_id(self, channel_id: int) -> SimChannel | None:
        found = self._by_channel_id.get(channel_id)
        if found is None and channel_id > AUTO_CHANNEL_BASE:
            auto = self.find(f"chan{channel_id - AUTO_CHANNEL_BASE}")
            if auto is not None and auto.channel_id == channel_id:
                return auto
        return found

    def create(
        self,
        slug: str,
        channel_id: int | None,
        chatroom_id: int | None,
        username: str | None = None,
    ) -> SimChannel:
        """A new channel with free ids where none are given (not yet added)."""
        if not slug or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", slug.lower()):
            raise ClientInputError("bad_slug", f"invalid channel slug {slug!r}")
        channel_id = channel_id if channel_id is not None else self._take(0)
        chatroom_id = chatroom_id if chatroom_id is not None else self._take(1)
        return SimChannel(slug.lower(), channel_id, chatroom_id, self._take(2), username or slug)

    def add(self, channel: SimChannel) -> SimChannel:
        """Add or replace ``channel``. Ids must be positive and a channel id never equals a
        chatroom id (clients that mix them up must get silence, like on Kick)."""
        if channel.channel_id <= 0 or channel.chatroom_id <= 0:
            raise ClientInputError("bad_id", "channel and chatroom ids must be positive")
        old = self._by_slug.get(channel.slug)
        for other in self._by_slug.values():
            if other is old:
                continue
            if channel.channel_id == other.channel_id or channel.chatroom_id == other.chatroom_id:
                raise ClientInputError(
                    "id_in_use", f"ids of {channel.slug!r} clash with {other.slug!r}"
                )
        ids = {c.channel_id for c in self._by_slug.values() if c is not old} | {channel.channel_id}
        rooms = {c.chatroom_id for c in self._by_slug.values() if c is not old} | {
            channel.chatroom_id
        }
        if ids & rooms:
            raise ClientInputError("id_in_use", "a channel id may not equal any chatroom id")
        if old is not None:
            del self._by_channel_id[old.channel_id]
        self._by_slug[channel.slug] = channel
        self._by_channel_id[channel.channel_id] = channel
        return channel

    def _take(self, kind: int) -> int:
        taken = {c.channel_id for c in self._by_slug.values()} | {
            c.chatroom_id for c in self._by_slug.values()
        }
        value = self._next[kind]
        while value in taken:
            value += 1
        self._next[kind] = value + 1
        return value
