"""From subscribed rooms to broker topics, and from publications to this node's clients.

A :class:`RoomKey` (a chatroom id and the slug a client named) is fed by up to two topics
(:mod:`kichat.relay.feeds`): ``chatroom:{id}`` for chat, and ``channel:{id}`` for stream events
once the slug has been looked up on Kick's REST API. Keys naming the same chatroom share its
topics; the broker carries each topic's publications to every node that subscribes to it.

Activation of a key (its first subscriber on this node), under a per-key lock:

1. subscribe its chat topic on the broker (shared, reference-counted by key), make sure some
   node feeds it (take the lease if nobody holds it, or its holder died) and wait for that
   node's word that Kick accepted the subscription. Failure rolls back and reaches every
   waiter. Then :meth:`Gateway.acquire` returns: chat flows.
2. In the background, look the slug up for its channel id and attach the stream topic the same
   way. Chat never waits for this (Kick's REST API can be slow or blocked); a failed lookup, or
   a slug whose chatroom is not the one asked for, leaves chat flowing and reports
   ``stream_events_unavailable``; :meth:`Gateway.stream_info` waits a bounded time for it.

Concurrent first subscribers share one activation. Release (the last subscriber here left)
waits ``linger`` seconds, re-checks, then unsubscribes the topics; the node that feeds a topic
gives it up once no node subscribes to it any more.

The hot path, :meth:`Gateway.on_publication`, runs once per publication on each node: for each
room the topic feeds, render the frame once (:class:`~kichat.relay.render.Renderer`) and queue
the same bytes to every member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from kichat.broker import Broker, Lease
from kichat.errors import BrokerUnavailable, FeedUnavailable, KickApiError, UpstreamError
from kichat.relay.feeds import Feeds, channel_topic, chatroom_topic
from kichat.relay.registry import RoomKey
from kichat.relay.render import Renderer, format_offset

log = logging.getLogger("kichat.relay")


class ChannelInfo(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def chatroom_id(self) -> int: ...


class ChannelDirectory(Protocol):
    async def channel(self, slug: str) -> ChannelInfo: ...


class Rooms(Protocol):
    """Where frames go: the Socket.IO namespace (:class:`kichat.sio.Namespace`)."""

    def room_kinds(self, room: str) -> tuple[bool, bool]:
        """Whether ``room`` has members that want offsets, and members that do not."""
        ...

    def deliver(
        self, room: str, frame: bytes | None, plain: bytes | None, position: int
    ) -> int: ...


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
    publications: int = 0
    events_out: int = 0
    lookup_failures: int = 0
    activations: int = 0  # rooms (keys) activated on this node
    activation_failures: int = 0
    deactivations: int = 0


@dataclass
class _Topic:
    """A topic this node reads: the keys holding it, the rooms it feeds, how far it got."""

    holds: Counter[RoomKey] = field(default_factory=Counter)
    keys: dict[RoomKey, Renderer] = field(default_factory=dict)  # rooms it feeds now
    last: int = 0  # position of the last publication delivered (or the subscription point)
    ready: asyncio.Future[None] | None = None


@dataclass
class _Active:
    chat: str
    renderer: Renderer
    outcome: asyncio.Future[RoomInfo]  # the stream topic's outcome, set by the stream task
    stream: str | None = None


class Gateway:
    def __init__(
        self,
        broker: Broker,
        feeds: Feeds,
        directory: ChannelDirectory | None,
        rooms: Rooms,
        in_use: Callable[[RoomKey], bool],
        *,
        linger: float = 5.0,
        feed_wait: float = 25.0,
        owner_check_interval: float = 1.0,
        on_stream_attached: Callable[[RoomKey, str, int], None] = lambda key, topic, at: None,
    ) -> None:
        self.broker = broker
        self.feeds = feeds
        self.directory = directory
        self.rooms = rooms
        self.in_use = in_use
        self.linger = linger
        # How long a first subscriber waits for the feeding node's word on Kick's answer.
        self.feed_wait = feed_wait
        self.owner_check_interval = owner_check_interval
        self.on_stream_attached = on_stream_attached
        self.stats = GatewayStats()
        self._topics: dict[str, _Topic] = {}
        self._closing: dict[str, asyncio.Future[None]] = {}
        self._active: dict[RoomKey, _Active] = {}
        self._pending: dict[RoomKey, asyncio.Task[None]] = {}
        self._locks: weakref.WeakValueDictionary[RoomKey, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._lingering: dict[RoomKey, asyncio.TimerHandle] = {}
        self._channel_ids: dict[int, int] = {}  # chatroom id -> channel id, from lookups
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        # Topics fed here that no node read at the last watchdog rounds (released after two in a
        # row, so that a reader's brief reconnect does not look like the end of all interest).
        self._unread: dict[str, int] = {}
        self._unfed: dict[str, int] = {}  # topics leased here with no feed: rounds seen
        self._orphans_after = 0.0  # time.monotonic() from which unowned topics may be taken
        self._leases_changed = asyncio.Event()  # a lease was lost (a handover completing)

    # -- public --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="kichat-relay-watchdog")

    async def acquire(self, key: RoomKey) -> None:
        """Make sure ``key``'s chat reaches this node; raise :class:`UpstreamError` if it
        cannot. Stream events follow in the background (see :meth:`stream_info`)."""
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
        """The outcome of ``key``'s stream topic, waiting for it at most ``within`` seconds
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
        """``key`` lost its last subscriber here: let it go after ``linger`` unless it is back."""
        if key in self._lingering:
            return
        loop = asyncio.get_running_loop()
        self._lingering[key] = loop.call_later(self.linger, self._linger_over, key)

    def topics_of(self, key: RoomKey) -> tuple[str, ...]:
        """The topics feeding ``key``'s room now."""
        active = self._active.get(key)
        if active is None:
            return ()
        return (active.chat,) if active.stream is None else (active.chat, active.stream)

    def last_position(self, topic: str) -> int:
        """Where a reader of ``topic`` joining now starts: everything after it reaches it."""
        local = self._topics.get(topic)
        return local.last if local is not None else self.broker.position

    def rooms_fed_by(self, topic: str) -> dict[RoomKey, Renderer]:
        local = self._topics.get(topic)
        return local.keys if local is not None else {}

    def channel_id_of(self, chatroom_id: int) -> int | None:
        return self._channel_ids.get(chatroom_id)

    @property
    def active_rooms(self) -> int:
        return len(self._active)

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for timer in self._lingering.values():
            timer.cancel()
        self._lingering.clear()
        for task in [*self._pending.values(), *self._tasks]:
            task.cancel()

    # -- the hot path --------------------------------------------------------------------------

    def on_publication(self, topic: str, position: int, payload: bytes) -> None:
        """Called by the broker for every publication of a topic this node subscribes to."""
        local = self._topics.get(topic)
        if local is None:
            return
        local.last = position
        self.stats.publications += 1
        keys = local.keys
        if not keys:
            return
        rooms = self.rooms
        offset = b""
        for key, renderer in keys.items():
            with_offsets, plain = rooms.room_kinds(key.room)
            frame = plain_frame = None
            if with_offsets:
                if not offset:
                    offset = format_offset(self.broker.epoch, position)
                frame = renderer.frame(payload, offset)
            if plain:
                plain_frame = renderer.plain_frame(payload)
            if frame is not None or plain_frame is not None:
                rooms.deliver(key.room, frame, plain_frame, position)
        self.stats.events_out += len(keys)

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
            topic = chatroom_topic(key.chatroom_id)
            try:
                await self._want(topic, key)
            except UpstreamError:
                self.stats.activation_failures += 1
                raise
            active = _Active(topic, Renderer(key.slug), asyncio.get_running_loop().create_future())
            self._active[key] = active
            self._topics[topic].keys[key] = active.renderer
            self.stats.activations += 1
            log.info("room %s active (%s)", key.room, topic)
            self._spawn(self._attach_stream(key, active))

    async def _want(self, topic: str, key: RoomKey) -> None:
        """Hold ``topic`` for ``key``: subscribed here, and fed by some node."""
        local = self._topics.get(topic)
        if local is None:
            local = self._topics[topic] = _Topic()
            local.ready = asyncio.ensure_future(self._open(topic, local))
        local.holds[key] += 1
        assert local.ready is not None
        try:
            await asyncio.shield(local.ready)
        except (UpstreamError, BrokerUnavailable) as exc:
            await self._unwant(topic, key)
            if isinstance(exc, BrokerUnavailable):
                raise FeedUnavailable(
                    "upstream_unavailable", f"the cluster's Redis is unreachable: {exc}"
                ) from exc
            raise

    async def _open(self, topic: str, local: _Topic) -> None:
        # A topic released a moment ago may still be closing: let that finish first, so the
        # two cannot cross.
        closing = self._closing.get(topic)
        if closing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(closing)
        joined = await self.broker.subscribe(topic)
        local.last = max(local.last, joined)
        await self._ensure_fed(topic)

    async def _ensure_fed(self, topic: str) -> None:
        if topic not in self.broker.leases:
            for lease in await self.broker.acquire([topic]):
                self.feeds.start(lease)
        state = await self.broker.topic_state(topic, self.feed_wait)
        if state is None:
            raise FeedUnavailable(
                "upstream_unavailable",
                f"no gateway node could subscribe {topic} on Kick within {self.feed_wait:g} s",
            )
        if not state.live:
            raise FeedUnavailable(state.code or "subscription_failed", state.message)

    async def _unwant(self, topic: str, key: RoomKey) -> None:
        local = self._topics.get(topic)
        if local is None:
            return
        local.holds[key] -= 1
        if local.holds[key] <= 0:
            del local.holds[key]
            local.keys.pop(key, None)
        if local.holds:
            return
        del self._topics[topic]
        done = asyncio.ensure_future(self._close(topic))
        self._closing[topic] = done
        try:
            await asyncio.shield(done)
        finally:
            if self._closing.get(topic) is done:
                del self._closing[topic]

    async def _close(self, topic: str) -> None:
        try:
            await self.broker.unsubscribe(topic)
            if topic in self.feeds.owned and not (await self.broker.readers([topic]))[topic]:
                await self.feeds.release(topic)
        except BrokerUnavailable as exc:
            log.warning("letting %s go: %s", topic, exc)

    async def _attach_stream(self, key: RoomKey, active: _Active) -> None:
        """Attach the stream topic of an active room. Never cancelled: if the room is released
        meanwhile, what this took is let go when it ends."""
        try:
            info, topic = await self._stream_topic(key)
        except Exception:  # a bug, not an upstream failure: chat keeps flowing regardless
            log.exception("stream events of %s", key.room)
            info, topic = _no_stream("the gateway failed to set up stream events"), None
        if topic is not None and self._active.get(key) is not active:
            await self._unwant(topic, key)
            topic = None
        if topic is not None:
            local = self._topics[topic]
            local.keys[key] = active.renderer
            active.stream = topic
            self.on_stream_attached(key, topic, local.last)
            log.info("room %s: stream events on (%s)", key.room, topic)
        if not active.outcome.done():
            active.outcome.set_result(info)

    async def _stream_topic(self, key: RoomKey) -> tuple[RoomInfo, str | None]:
        if not self.feeds.channel_templates:
            return RoomInfo(stream_events=False), None
        if self.directory is None:
            return _no_stream("stream events need Kick's channel lookup, which is disabled"), None
        try:
            channel = await self.directory.channel(key.slug)
        except KickApiError as exc:
            self.stats.lookup_failures += 1
            log.info("channel lookup for %r failed: %s", key.slug, exc)
            return _no_stream(f"could not look up channel {key.slug!r} on Kick: {exc}"), None
        if channel.chatroom_id != key.chatroom_id:
            return _no_stream(
                f"Kick says channel {key.slug!r} has chatroom {channel.chatroom_id}, not "
                f"{key.chatroom_id}; chat flows, but stream events would belong to another room"
            ), None
        self._channel_ids[key.chatroom_id] = channel.id
        topic = channel_topic(channel.id)
        try:
            await self._want(topic, key)
        except UpstreamError as exc:
            return _no_stream(f"Kick refused the stream channels: {exc}"), None
        return RoomInfo(stream_events=True, channel_id=channel.id), topic

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
            # The stream task, if still running, sees the room gone and lets its topic go.
            for topic in self.topics_of_active(active):
                await self._unwant(topic, key)
            self.stats.deactivations += 1
            log.info("room %s released", key.room)

    @staticmethod
    def topics_of_active(active: _Active) -> list[str]:
        return [active.chat] if active.stream is None else [active.chat, active.stream]

    # -- the cluster around us -----------------------------------------------------------------

    async def _watch(self) -> None:
        """Every ``owner_check_interval``: take over topics we read whose feeder is gone, give
        up topics we feed that no node reads any more, and forget old alias ids."""
        while True:
            await asyncio.sleep(self.owner_check_interval)
            self.feeds.dedupe.expire()
            with contextlib.suppress(BrokerUnavailable):
                await self.check_owners()

    async def check_owners(self) -> None:
        # A topic this node is already taking (a leaving owner hands it over) is not an orphan:
        # acquiring it here as well raced the handover, which then gave the feed up.
        owned = self.feeds.owned
        orphans = [t for t, local in self._topics.items() if local.ready and local.ready.done()
                   and t not in self.broker.leases and t not in owned]  # fmt: skip
        if orphans and time.monotonic() >= self._orphans_after:
            for lease in await self.broker.acquire(orphans):
                log.info("taking over %s%s", lease.topic,
                         " (its feeder is gone)" if lease.takeover else "")  # fmt: skip
                self.feeds.start(lease)
        unread = [t for t in self.feeds.owned if t not in self._topics]
        readers = await self.broker.readers(unread) if unread else {}
        rounds = {t: self._unread.get(t, 0) + 1 for t in unread if not readers.get(t)}
        self._unread = rounds
        for topic, count in rounds.items():
            if count >= 2:
                await self.feeds.release(topic)
        # A lease with no feed, two rounds in a row (a feed being given up is stopped before
        # its lease is released): renewed but never fed, it would keep every node from taking
        # the topic for good. Feed it if we read it, else give it back.
        unfed = {t: self._unfed.get(t, 0) + 1 for t in self.broker.leases
                 if not self.feeds.busy(t)}  # fmt: skip
        self._unfed = unfed
        for topic, count in unfed.items():
            # Asked again: releasing a lease (an await) lets feeds start meanwhile.
            held = self.broker.leases.get(topic)
            if count < 2 or held is None or self.feeds.busy(topic):
                continue
            log.warning("%s was leased here but not fed; %s", topic,
                        "feeding it" if topic in self._topics else "releasing it")  # fmt: skip
            if topic in self._topics:
                self.feeds.start(held)
            else:
                await self.broker.release(held)

    def on_lease_renewed(self, lease: Lease) -> None:
        self.feeds.start(lease)  # the feed runs on: it only swaps its lease

    def on_lease_lost(self, topic: str) -> None:
        self.feeds.lost(topic)
        self._leases_changed.set()

    def on_topic_released(self, topic: str) -> None:
        if topic in self._topics and topic not in self.broker.leases:
            self._spawn(self._take(topic))

    async def _take(self, topic: str) -> None:
        with contextlib.suppress(BrokerUnavailable):
            for lease in await self.broker.acquire([topic]):
                self.feeds.start(lease)

    def on_hand_over(self, topic: str) -> None:
        if topic in self._topics and topic not in self.broker.leases:
            self.feeds.succeed(topic)

    async def hand_over(self, within: float) -> None:
        """This node is leaving: offer the feeds it owns to the nodes that read them, and wait
        (up to ``within`` seconds) until they have taken them; release what nobody took."""
        offered = []
        owned = list(self.feeds.owned)
        with contextlib.suppress(BrokerUnavailable):
            readers = await self.broker.readers(owned) if owned else {}
            for topic in owned:
                lease = self.broker.leases.get(topic)
                others = readers.get(topic, 0) - (topic in self._topics)
                if lease is not None and others > 0 and await self.broker.hand_over(lease):
                    offered.append(topic)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while any(t in self.broker.leases for t in offered) and loop.time() < deadline:
            self._leases_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leases_changed.wait(), deadline - loop.time())
        taken = [t for t in offered if t not in self.broker.leases]
        if offered:
            log.info("handed %d of %d feeds over to other nodes", len(taken), len(offered))
        for topic in self.feeds.owned:
            await self.feeds.release(topic)

    def on_reset(self) -> None:
        for local in self._topics.values():
            local.last = 0
        # The topics' owners, alive, take them back in the new epoch as they reconnect; taking
        # one first would start a fresh feed and lose what Kick sends until it is subscribed.
        self._orphans_after = time.monotonic() + self.broker.reclaim_grace


def _no_stream(message: str) -> RoomInfo:
    return RoomInfo(stream_events=False, warning_code="stream_events_unavailable", warning=message)
