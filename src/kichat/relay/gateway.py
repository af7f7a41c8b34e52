"""From registry transitions to upstream subscriptions, and from upstream events to rooms.

Activation of a :class:`RoomKey` (its first subscriber), under a per-key lock:

1. subscribe the chatroom's Pusher channels (``chatrooms.{id}.v2`` and the legacy alias by
   default), each shared and reference-counted across keys; if any fails, what this
   activation subscribed is released again (rollback) and the error goes to every waiter;
2. look the slug up on Kick's REST API for its channel id and subscribe the stream channels
   (``channel.{id}``). A failed lookup, or a slug whose chatroom is not the one asked for,
   leaves chat flowing and reports ``stream_events_unavailable``.

Concurrent first subscribers share one activation. Release (the last subscriber left) waits
``linger`` seconds, then re-checks the registry before unsubscribing, so a page reload or a
quick re-subscribe never churns upstream.

The hot path, :meth:`Gateway.on_upstream_event`, runs once per upstream event: decode Kick's
data once, drop the copy of an event already delivered from another alias of the same
chatroom or channel (same event name and ``id``, or the same JSON text for events without an
occurrence id), add ``channel_name`` and hand the payload to the broadcaster, which encodes it
once per room.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kichat.errors import KickApiError, UpstreamError
from kichat.kick import events as kick_events
from kichat.relay.registry import RoomKey

log = logging.getLogger("kichat.relay")


class Upstream(Protocol):
    async def subscribe(self, channel: str) -> None: ...
    async def unsubscribe(self, channel: str) -> None: ...


class ChannelInfo(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def chatroom_id(self) -> int: ...


class ChannelDirectory(Protocol):
    async def channel(self, slug: str) -> ChannelInfo: ...


Broadcast = Callable[[str, object, str], int]  # (event, payload, room) -> recipients


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """What a subscriber is told about its room."""

    stream_events: bool
    channel_id: int | None = None
    warning_code: str | None = None
    warning: str | None = None


@dataclass
class GatewayStats:
    events_in: int = 0
    events_out: int = 0
    duplicates_dropped: int = 0
    malformed: int = 0
    unrouted: int = 0
    activations: int = 0
    activation_failures: int = 0
    deactivations: int = 0
    lookup_failures: int = 0


@dataclass
class _Channel:
    """One upstream Pusher channel and the rooms it feeds."""

    group: str  # aliases of one chatroom (or channel) share a group, for dedupe
    keys: set[RoomKey] = field(default_factory=set)
    ready: asyncio.Future[None] | None = None


@dataclass
class _Active:
    info: RoomInfo
    channels: list[str]


class Deduper:
    """Remembers ``(group, event, id)`` for ``window`` seconds to drop alias copies.

    An event counts as a copy only if it was first seen on a *different* channel of the same
    group: two genuinely distinct events that look alike on one channel are both delivered.
    """

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()

    def is_copy(self, group: str, event: str, ident: str, channel: str) -> bool:
        now = self._clock()
        seen = self._seen
        horizon = now - self.window
        while seen:
            first_key, (_, at) = next(iter(seen.items()))
            if at >= horizon:
                break
            del seen[first_key]
        key = (group, event, ident)
        previous = seen.get(key)
        if previous is not None and previous[0] != channel:
            return True
        seen[key] = (channel, now)
        seen.move_to_end(key)
        return False

    def __len__(self) -> int:
        return len(self._seen)


class Gateway:
    def __init__(
        self,
        upstream: Upstream,
        directory: ChannelDirectory | None,
        broadcast: Broadcast,
        in_use: Callable[[RoomKey], bool],
        *,
        chatroom_templates: Sequence[str] = kick_events.DEFAULT_CHATROOM_CHANNELS,
        channel_templates: Sequence[str] = kick_events.DEFAULT_CHANNEL_CHANNELS,
        linger: float = 5.0,
        dedupe_window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.directory = directory
        self.broadcast = broadcast
        self.in_use = in_use
        self.chatroom_templates = tuple(chatroom_templates)
        self.channel_templates = tuple(channel_templates)
        self.linger = linger
        self.stats = GatewayStats()
        self.dedupe = Deduper(dedupe_window, clock)
        self._channels: dict[str, _Channel] = {}
        self._group_sizes: dict[str, int] = {}
        self._active: dict[RoomKey, _Active] = {}
        self._pending: dict[RoomKey, asyncio.Task[RoomInfo]] = {}
        # Weak values: a lock lives exactly as long as someone holds or awaits it.
        self._locks: weakref.WeakValueDictionary[RoomKey, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._lingering: dict[RoomKey, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- public --------------------------------------------------------------------------------

    async def acquire(self, key: RoomKey) -> RoomInfo:
        """Make sure ``key`` is fed from upstream; raise :class:`UpstreamError` if it cannot be."""
        timer = self._lingering.pop(key, None)
        if timer is not None:
            timer.cancel()
        active = self._active.get(key)
        if active is not None:
            return active.info
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._activate(key))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        # A caller that gives up (disconnect) must not cancel the activation the others share.
        return await asyncio.shield(task)

    def release(self, key: RoomKey) -> None:
        """``key`` lost its last subscriber: unsubscribe after ``linger`` unless it is back."""
        if key in self._lingering:
            return
        loop = asyncio.get_running_loop()
        self._lingering[key] = loop.call_later(self.linger, self._linger_over, key)

    def info(self, key: RoomKey) -> RoomInfo | None:
        active = self._active.get(key)
        return active.info if active is not None else None

    @property
    def upstream_channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    @property
    def active_rooms(self) -> int:
        return len(self._active)

    async def close(self) -> None:
        for timer in self._lingering.values():
            timer.cancel()
        self._lingering.clear()
        for task in [*self._pending.values(), *self._tasks]:
            task.cancel()

    # -- the hot path --------------------------------------------------------------------------

    def on_upstream_event(self, channel: str, event: str, raw: object) -> None:
        """Called by the upstream pool for every application event it receives."""
        stats = self.stats
        stats.events_in += 1
        route = self._channels.get(channel)
        if route is None or not route.keys:
            stats.unrouted += 1
            return
        try:
            data = kick_events.decode_data(raw)
        except ValueError:
            stats.malformed += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("undecodable %s on %s: %.200r", event, channel, raw)
            return
        if self._group_sizes.get(route.group, 0) > 1 and self.dedupe.window > 0:
            ident = kick_events.event_id(data, event)
            if ident is None and isinstance(raw, str):
                # No occurrence id (pins, polls, subscriptions, chatroom updates, ...): a copy on
                # an alias carries the very same JSON text, which then identifies the occurrence.
                ident = raw
            if ident is not None and self.dedupe.is_copy(route.group, event, ident, channel):
                stats.duplicates_dropped += 1
                return
        keys = route.keys
        if len(keys) == 1:
            for key in keys:
                self.broadcast(event, kick_events.with_channel_name(data, key.slug), key.room)
        else:
            # Several slugs name this chatroom: each room gets its own channel_name.
            for key in keys:
                copy = dict(data) if isinstance(data, dict) else data
                self.broadcast(event, kick_events.with_channel_name(copy, key.slug), key.room)
        stats.events_out += len(keys)

    # -- activation ----------------------------------------------------------------------------

    def _lock(self, key: RoomKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _activate(self, key: RoomKey) -> RoomInfo:
        async with self._lock(key):
            active = self._active.get(key)
            if active is not None:
                return active.info
            group = f"chatroom:{key.chatroom_id}"
            names = kick_events.render_channels(
                self.chatroom_templates, chatroom_id=key.chatroom_id
            )
            held: list[str] = []
            try:
                for name in names:
                    await self._retain(name, group, key)
                    held.append(name)
            except UpstreamError:
                self.stats.activation_failures += 1
                await self._release_channels(key, held)
                raise
            info, stream = await self._stream_channels(key)
            self._active[key] = _Active(info, held + stream)
            self.stats.activations += 1
            log.info(
                "room %s active: %d upstream channels, stream events %s",
                key.room, len(held) + len(stream), "on" if info.stream_events else "off",
            )  # fmt: skip
            return info

    async def _stream_channels(self, key: RoomKey) -> tuple[RoomInfo, list[str]]:
        if not self.channel_templates:
            return RoomInfo(stream_events=False), []
        if self.directory is None:
            return _no_stream("stream events need Kick's channel lookup, which is disabled"), []
        try:
            channel = await self.directory.channel(key.slug)
        except KickApiError as exc:
            self.stats.lookup_failures += 1
            log.info("channel lookup for %r failed: %s", key.slug, exc)
            return _no_stream(f"could not look up channel {key.slug!r} on Kick: {exc}"), []
        if channel.chatroom_id != key.chatroom_id:
            return _no_stream(
                f"Kick says channel {key.slug!r} has chatroom {channel.chatroom_id}, not "
                f"{key.chatroom_id}; chat flows, but stream events would belong to another room"
            ), []
        group = f"channel:{channel.id}"
        held: list[str] = []
        try:
            for name in kick_events.render_channels(self.channel_templates, channel_id=channel.id):
                await self._retain(name, group, key)
                held.append(name)
        except UpstreamError as exc:
            await self._release_channels(key, held)
            return _no_stream(f"Kick refused the stream channels: {exc}"), []
        return RoomInfo(stream_events=True, channel_id=channel.id), held

    async def _retain(self, name: str, group: str, key: RoomKey) -> None:
        """Count ``key`` as a user of upstream channel ``name``; subscribe if it is new."""
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(group)
            self._group_sizes[group] = self._group_sizes.get(group, 0) + 1
            channel.ready = asyncio.ensure_future(self.upstream.subscribe(name))
        channel.keys.add(key)
        assert channel.ready is not None
        try:
            await asyncio.shield(channel.ready)
        except UpstreamError:
            channel.keys.discard(key)
            if self._channels.get(name) is channel:
                self._forget_channel(name, channel)
            raise

    async def _release_channels(self, key: RoomKey, names: list[str]) -> None:
        for name in names:
            channel = self._channels.get(name)
            if channel is None:
                continue
            channel.keys.discard(key)
            if not channel.keys:
                self._forget_channel(name, channel)
                try:
                    await self.upstream.unsubscribe(name)
                except UpstreamError as exc:
                    log.warning("unsubscribe from %s failed: %s", name, exc)

    def _forget_channel(self, name: str, channel: _Channel) -> None:
        del self._channels[name]
        left = self._group_sizes.get(channel.group, 1) - 1
        if left > 0:
            self._group_sizes[channel.group] = left
        else:
            self._group_sizes.pop(channel.group, None)

    # -- release -------------------------------------------------------------------------------

    def _linger_over(self, key: RoomKey) -> None:
        self._lingering.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._deactivate(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deactivate(self, key: RoomKey) -> None:
        async with self._lock(key):
            if self.in_use(key) or key in self._lingering:
                return
            active = self._active.pop(key, None)
            if active is not None:
                await self._release_channels(key, active.channels)
                self.stats.deactivations += 1
                log.info("room %s released", key.room)


def _no_stream(message: str) -> RoomInfo:
    return RoomInfo(stream_events=False, warning_code="stream_events_unavailable", warning=message)
