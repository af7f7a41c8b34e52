"""Who wants which chatroom: the relay's source of truth, as pure data.

A :class:`RoomKey` is what a client subscribes to: a chatroom id and the slug it named. Events
carry that slug as ``channel_name``, so two clients naming the same chatroom with different
slugs get separate rooms (each payload encoded once for its room) over one shared upstream
subscription.

The registry only counts. ``add`` reports the first subscriber of a key and ``remove`` the
last one; the gateway turns those transitions into upstream subscribe/unsubscribe.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RoomKey:
    chatroom_id: int
    slug: str
    room: str = field(init=False, repr=False, compare=False)  # the Socket.IO room name

    def __post_init__(self) -> None:
        # Computed once: the hot path names the room of every upstream event.
        object.__setattr__(self, "room", f"{self.chatroom_id}:{self.slug}")


class Registry:
    def __init__(self) -> None:
        self._members: dict[RoomKey, set[str]] = {}
        self._keys: dict[str, set[RoomKey]] = {}

    def add(self, key: RoomKey, sid: str) -> bool:
        """Record ``sid`` as a subscriber of ``key``; True if it is the key's first one."""
        members = self._members.get(key)
        first = members is None
        if members is None:
            members = self._members[key] = set()
        members.add(sid)
        self._keys.setdefault(sid, set()).add(key)
        return first

    def remove(self, key: RoomKey, sid: str) -> bool:
        """Forget one subscription; True if ``key`` has no subscriber left."""
        keys = self._keys.get(sid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys[sid]
        members = self._members.get(key)
        if members is None:
            return False
        members.discard(sid)
        if members:
            return False
        del self._members[key]
        return True

    def remove_all(self, sid: str) -> list[RoomKey]:
        """Forget every subscription of ``sid``; return the keys left without subscribers."""
        emptied = []
        for key in list(self._keys.get(sid, ())):
            if self.remove(key, sid):
                emptied.append(key)
        return emptied

    def count(self, key: RoomKey) -> int:
        return len(self._members.get(key, ()))

    def keys_of(self, sid: str) -> frozenset[RoomKey]:
        return frozenset(self._keys.get(sid, ()))

    def __len__(self) -> int:
        """Number of keys with at least one subscriber."""
        return len(self._members)

    def top(self, n: int) -> list[tuple[RoomKey, int]]:
        """The ``n`` keys with the most subscribers."""
        ranked = sorted(self._members.items(), key=lambda kv: len(kv[1]), reverse=True)
        return [(key, len(members)) for key, members in ranked[:n]]
