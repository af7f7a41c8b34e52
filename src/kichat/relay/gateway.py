"""From registry transitions to upstream subscriptions, and from upstream events to rooms.

Activation of a :class:`RoomKey` (its first subscriber), under a per-key lock:

1. subscribe the chatroom's Pusher channels (``chatrooms.{id}.v2`` and the legacy alias by
   default), each shared and reference-counted across keys; if any fails, what this
   activation subscribed is released again (rollback) and the error goes to every waiter.
   Then :meth:`Gateway.acquire` returns: chat flows.
2. In the background, look the slug up on Kick's REST API for its channel id and subscribe the
   stream channels (``channel.{id}``, ``predictions-channel-{id}``). Chat never waits for this:
   Kick's REST API can be slow or blocked. A failed lookup, or a slug whose chatroom is not the
   one asked for, leaves chat flowing and reports ``stream_events_unavailable``;
   :meth:`Gateway.stream_info` tells subscribers, waiting a bounded time for the outcome.

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
import contextlib
import logging
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    """What a subscriber is told about its room's stream events."""

    stream_events: bool
    channel_id: int | None = None
    warning_code: str | None = None
    warning: str | None = None


STREAM_PENDING = RoomInfo(
    stream_events=False,
    warning_code="stream_events_pending",
    warning="still looking the channel up on Kick: stream events start when that completes",
)


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
    # How many holds each key has on the channel. A key can hold a channel twice for a moment:
    # a room released and activated again while its old stream task still finishes.
    users: Counter[RoomKey] = field(default_factory=Counter)
    ready: asyncio.Future[None] | None = None


@dataclass
class _Active:
    chat: list[str]
    outcome: asyncio.Future[RoomInfo]  # the stream channels' outcome, set by the stream task
    stream: list[str] = field(default_factory=list)


class Deduper:
    """Remembers ``(group, event, id)`` for ``window`` seconds to drop alias copies.

    An event counts as a copy only if it was first seen on a *different* channel of the same
    group: two genuinely distinct events that look alike on one channel are both delivered.
    """

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self._clock = clock
        self._seen: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._order: deque[tuple[float, tuple[str, str, str]]] = deque()

    def is_copy(self, group: str, event: str, ident: str, channel: str) -> bool:
        now = self._clock()
        seen, order = self._seen, self._order
        horizon = now - self.window
        while order and order[0][0] < horizon:
            at, old = order.popleft()
            entry = seen.get(old)
            if entry is not None and entry[1] == at:
                del seen[old]
        key = (group, event, ident)
        previous = seen.get(key)
        if previous is not None and previous[0] != channel:
            return True
        seen[key] = (channel, now)
        order.append((now, key))
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
        self._pending: dict[RoomKey, asyncio.Task[None]] = {}
        self._unsubscribing: dict[str, asyncio.Future[None]] = {}
        # Weak values: a lock lives exactly as long as someone holds or awaits it.
        self._locks: weakref.WeakValueDictionary[RoomKey, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._lingering: dict[RoomKey, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- public --------------------------------------------------------------------------------

    async def acquire(self, key: RoomKey) -> None:
        """Make sure ``key``'s chat is fed from upstream; raise :class:`UpstreamError` if it
        cannot be. Stream channels follow in the background (see :meth:`stream_info`)."""
        timer = self._lingering.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            return
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._activate(key))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        # A caller that gives up (disconnect) must not cancel the activation the others share.
        await asyncio.shield(task)

    async def stream_info(self, key: RoomKey, within: float | None = None) -> RoomInfo:
        """The outcome of ``key``'s stream channels, waiting for it at most ``within`` seconds
        (``None``: until it is known); :data:`STREAM_PENDING` if it is not known by then."""
        active = self._active.get(key)
        if active is None:
            return STREAM_PENDING
        if not active.outcome.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(active.outcome), within)
        return active.outcome.result() if active.outcome.done() else STREAM_PENDING

    def info(self, key: RoomKey) -> RoomInfo | None:
        """What is known now of an active room's stream events (``None``: not active)."""
        active = self._active.get(key)
        if active is None:
            return None
        return active.outcome.result() if active.outcome.done() else STREAM_PENDING

    def release(self, key: RoomKey) -> None:
        """``key`` lost its last subscriber: unsubscribe after ``linger`` unless it is back."""
        if key in self._lingering:
            return
        loop = asyncio.get_running_loop()
        self._lingering[key] = loop.call_later(self.linger, self._linger_over, key)

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
        if route is None or not route.users:
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
        keys = route.users
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

    async def _activate(self, key: RoomKey) -> None:
        async with self._lock(key):
            if key in self._active:
                return
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
            active = _Active(held, asyncio.get_running_loop().create_future())
            self._active[key] = active
            self.stats.activations += 1
            log.info("room %s active: %d chatroom channels", key.room, len(held))
            self._spawn(self._attach_stream(key, active))

    async def _attach_stream(self, key: RoomKey, active: _Active) -> None:
        """Subscribe the stream channels of an active room. Never cancelled: if the room is
        released meanwhile, what this subscribed is released when it ends."""
        try:
            info, held = await self._stream_channels(key)
        except Exception:  # a bug, not an upstream failure: chat keeps flowing regardless
            log.exception("stream channels of %s", key.room)
            info, held = _no_stream("the gateway failed to set up stream events"), []
        if not active.outcome.done():
            active.outcome.set_result(info)
        if self._active.get(key) is not active:
            await self._release_channels(key, held)
            return
        active.stream = held
        if held:
            log.info("room %s: stream events on (%d channels)", key.room, len(held))

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
        """Hold upstream channel ``name`` for ``key``; subscribe it if it is new."""
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(group)
            self._group_sizes[group] = self._group_sizes.get(group, 0) + 1
            channel.ready = asyncio.ensure_future(self._subscribe(name))
        channel.users[key] += 1
        assert channel.ready is not None
        try:
            await asyncio.shield(channel.ready)
        except UpstreamError:
            self._drop_hold(name, channel, key)
            raise

    async def _subscribe(self, name: str) -> None:
        # A channel released a moment ago may still be unsubscribing upstream: let that finish
        # first, so the two cannot cross.
        previous = self._unsubscribing.get(name)
        if previous is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        await self.upstream.subscribe(name)

    def _drop_hold(self, name: str, channel: _Channel, key: RoomKey) -> bool:
        """Drop one hold of ``key``; True if the channel is now unused (and forgotten)."""
        users = channel.users
        users[key] -= 1
        if users[key] <= 0:
            del users[key]
        if users or self._channels.get(name) is not channel:
            return False
        del self._channels[name]
        left = self._group_sizes.get(channel.group, 1) - 1
        if left > 0:
            self._group_sizes[channel.group] = left
        else:
            self._group_sizes.pop(channel.group, None)
        return True

    async def _release_channels(self, key: RoomKey, names: list[str]) -> None:
        for name in names:
            channel = self._channels.get(name)
            if channel is None or not self._drop_hold(name, channel, key):
                continue
            done = asyncio.ensure_future(self.upstream.unsubscribe(name))
            self._unsubscribing[name] = done
            try:
                await asyncio.shield(done)
            except UpstreamError as exc:
                log.warning("unsubscribe from %s failed: %s", name, exc)
            finally:
                if self._unsubscribing.get(name) is done:
                    del self._unsubscribing[name]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- release -------------------------------------------------------------------------------

    def _linger_over(self, key: RoomKey) -> None:
        self._lingering.pop(key, None)
        self._spawn(self._deactivate(key))

    async def _deactivate(self, key: RoomKey) -> None:
        async with self._lock(key):
            if self.in_use(key) or key in self._lingering:
                return
            active = self._active.pop(key, None)
            if active is None:
                return
            # The stream task, if still running, sees the room gone and releases its own holds.
            await self._release_channels(key, active.chat + active.stream)
            self.stats.deactivations += 1
            log.info("room %s released", key.room)


def _no_stream(message: str) -> RoomInfo:
    return RoomInfo(stream_events=False, warning_code="stream_events_unavailable", warning=message)
