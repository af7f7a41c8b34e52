"""The feeds this node owns: Kick's Pusher channels in, publications to the broker out.

A **topic** is one group of Pusher channels that carry the same events: ``chatroom:668`` is
``chatrooms.668.v2`` and its legacy alias ``chatrooms.668`` (by default), ``channel:676`` is
``channel.676`` and ``predictions-channel-676``. Exactly one node in the cluster owns a topic
(holds its lease, :mod:`kichat.broker`), subscribes its channels on Kick, and publishes what
arrives. With the memory broker that node is always this one.

The hot path, :meth:`Feeds.on_upstream_event`, runs once per upstream event in the whole
cluster: decode Kick's data, drop the copy of an event already seen on another alias, encode
it once (:func:`~kichat.relay.render.encode_event`) and publish it.

A takeover (the previous owner died or was cut off) leaves a gap: the events Kick sent while
nobody was subscribed. For chat, Kick's REST API has the recent history: the new owner holds
its live events back, publishes the history messages of the last ``backfill_window`` seconds
that the topic's log does not have yet (compared by message id), then the held events, so
clients get the gap filled in order and nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from kichat.broker import Broker, Lease, TopicState
from kichat.errors import (
    BrokerUnavailable,
    KickApiError,
    PusherFatalError,
    SubscriptionError,
    UpstreamError,
)
from kichat.kick import events as kick_events
from kichat.relay.render import encode_event

log = logging.getLogger("kichat.relay")

CHATROOM = "chatroom"
CHANNEL = "channel"


class Upstream(Protocol):
    async def subscribe(self, channel: str) -> None: ...
    async def unsubscribe(self, channel: str) -> None: ...


class ChatHistory(Protocol):
    async def messages(self, channel_id: int) -> list[dict[str, Any]]: ...


def chatroom_topic(chatroom_id: int) -> str:
    return f"{CHATROOM}:{chatroom_id}"


def channel_topic(channel_id: int) -> str:
    return f"{CHANNEL}:{channel_id}"


def parse_topic(topic: str) -> tuple[str, int]:
    kind, _, ident = topic.partition(":")
    if kind not in (CHATROOM, CHANNEL) or not ident.isdigit():
        raise ValueError(f"not a relay topic: {topic!r}")
    return kind, int(ident)


@dataclass
class FeedStats:
    events_in: int = 0
    published: int = 0
    duplicates_dropped: int = 0
    malformed: int = 0
    unrouted: int = 0
    feeds_started: int = 0
    feed_failures: int = 0
    feeds_stopped: int = 0
    backfilled: int = 0


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


@dataclass
class _Feed:
    lease: Lease
    channels: tuple[str, ...]
    subscribed: list[str] = field(default_factory=list)
    # While a takeover backfills: live events wait here (None once flowing normally).
    held: list[tuple[bytes, str | None]] | None = None  # (payload, key)
    dedupe_until: float = 0.0  # after a takeover, publish with dedupe checks until then
    task: asyncio.Task[None] | None = None
    stopped: bool = False


class Feeds:
    def __init__(
        self,
        upstream: Upstream,
        broker: Broker,
        *,
        chatroom_templates: Sequence[str] = kick_events.DEFAULT_CHATROOM_CHANNELS,
        channel_templates: Sequence[str] = kick_events.DEFAULT_CHANNEL_CHANNELS,
        dedupe_window: float = 10.0,
        history: ChatHistory | None = None,
        channel_id_of: Callable[[int], int | None] = lambda chatroom_id: None,
        backfill_window: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.broker = broker
        self.chatroom_templates = tuple(chatroom_templates)
        self.channel_templates = tuple(channel_templates)
        self.history = history
        self.channel_id_of = channel_id_of
        self.backfill_window = backfill_window
        self.clock = clock
        self.stats = FeedStats()
        self.dedupe = Deduper(dedupe_window, clock)
        self._feeds: dict[str, _Feed] = {}
        self._routes: dict[str, _Feed] = {}  # Pusher channel -> its feed
        self._tasks: set[asyncio.Task[Any]] = set()

    def channels_of(self, topic: str) -> tuple[str, ...]:
        kind, ident = parse_topic(topic)
        if kind == CHATROOM:
            return kick_events.render_channels(self.chatroom_templates, chatroom_id=ident)
        return kick_events.render_channels(self.channel_templates, channel_id=ident)

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._feeds)

    @property
    def upstream_channels(self) -> frozenset[str]:
        return frozenset(ch for feed in self._feeds.values() for ch in feed.subscribed)

    # -- owning a topic --------------------------------------------------------------------------

    def start(self, lease: Lease) -> None:
        """Feed ``lease``'s topic: subscribe its channels on Kick, then tell the cluster."""
        if lease.topic in self._feeds:
            self._feeds[lease.topic].lease = lease
            return
        feed = _Feed(lease, self.channels_of(lease.topic))
        self._feeds[lease.topic] = feed
        for channel in feed.channels:
            self._routes[channel] = feed
        if lease.takeover:
            feed.dedupe_until = self.clock() + self.backfill_window
            if self.history is not None and lease.topic.startswith(CHATROOM):
                feed.held = []
        feed.task = self._spawn(self._activate(feed))

    async def _activate(self, feed: _Feed) -> None:
        topic = feed.lease.topic
        try:
            for channel in feed.channels:
                await self.upstream.subscribe(channel)
                feed.subscribed.append(channel)
        except UpstreamError as exc:
            self.stats.feed_failures += 1
            log.info("cannot feed %s: %s", topic, exc)
            await self._announce(feed, _failure(exc))
            await self.stop(topic)
            with contextlib.suppress(BrokerUnavailable):
                await self.broker.release(feed.lease)
            return
        self.stats.feeds_started += 1
        log.info("feeding %s from Kick (%d channels)%s", topic, len(feed.subscribed),
                 " after a takeover" if feed.lease.takeover else "")  # fmt: skip
        if feed.held is not None:
            await self._backfill(feed)
        await self._announce(feed, TopicState(live=True))

    async def _announce(self, feed: _Feed, state: TopicState) -> None:
        try:
            await self.broker.announce(feed.lease, state)
        except BrokerUnavailable as exc:
            log.warning("cannot announce the state of %s: %s", feed.lease.topic, exc)

    async def stop(self, topic: str) -> None:
        """Stop feeding ``topic`` (the lease is gone or given up): unsubscribe its channels."""
        feed = self._feeds.pop(topic, None)
        if feed is None:
            return
        feed.stopped = True
        if feed.task is not None and feed.task is not asyncio.current_task():
            feed.task.cancel()
        for channel in feed.channels:
            if self._routes.get(channel) is feed:
                del self._routes[channel]
        for channel in feed.subscribed:
            try:
                await self.upstream.unsubscribe(channel)
            except UpstreamError as exc:
                log.warning("unsubscribe from %s failed: %s", channel, exc)
        self.stats.feeds_stopped += 1
        log.info("stopped feeding %s", topic)

    async def release(self, topic: str) -> None:
        """Give a topic up for good (nobody in the cluster wants it any more)."""
        feed = self._feeds.get(topic)
        if feed is None:
            return
        lease = feed.lease
        await self.stop(topic)
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.release(lease)

    async def close(self) -> None:
        for topic in list(self._feeds):
            await self.stop(topic)
        for task in list(self._tasks):
            task.cancel()

    # -- the hot path ----------------------------------------------------------------------------

    def on_upstream_event(self, channel: str, event: str, raw: object) -> None:
        """Called by the Pusher pool for every application event it receives."""
        stats = self.stats
        stats.events_in += 1
        feed = self._routes.get(channel)
        if feed is None:
            stats.unrouted += 1
            return
        try:
            data = kick_events.decode_data(raw)
        except ValueError:
            stats.malformed += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("undecodable %s on %s: %.200r", event, channel, raw)
            return
        ident = kick_events.event_id(data, event)
        if len(feed.channels) > 1 and self.dedupe.window > 0:
            copy_key = ident
            if copy_key is None and isinstance(raw, str):
                # No occurrence id (pins, polls, subscriptions, chatroom updates, ...): a copy on
                # an alias carries the very same JSON text, which then identifies the occurrence.
                copy_key = raw
            if copy_key is not None and self.dedupe.is_copy(
                feed.lease.topic, event, copy_key, channel
            ):
                stats.duplicates_dropped += 1
                return
        payload = encode_event(event, data)
        key = None if ident is None else f"{event}:{ident}"
        if feed.held is not None:
            feed.held.append((payload, key))
            return
        dedupe = feed.dedupe_until > 0 and self.clock() < feed.dedupe_until
        self.broker.publish(feed.lease, payload, key=key, dedupe=dedupe)
        stats.published += 1

    # -- takeover backfill -----------------------------------------------------------------------

    async def _backfill(self, feed: _Feed) -> None:
        """Publish the recent chat Kick has and the topic's log does not, then the held events."""
        _, chatroom_id = parse_topic(feed.lease.topic)
        channel_id = self.channel_id_of(chatroom_id)
        found: list[dict[str, Any]] = []
        if channel_id is not None and self.history is not None:
            try:
                found = await self.history.messages(channel_id)
            except KickApiError as exc:
                log.info("no chat backfill for %s: %s", feed.lease.topic, exc)
        else:
            log.info("no chat backfill for %s: its channel id is not known here", feed.lease.topic)
        if feed.stopped:
            return
        horizon = time.time() - self.backfill_window
        event = kick_events.CHAT_MESSAGE_EVENT
        for item in reversed(found):  # Kick answers newest first
            ident = item.get("id")
            if not isinstance(ident, str) or _created(item) < horizon:
                continue
            item["chatroom_id"] = chatroom_id
            payload = encode_event(event, item)
            self.broker.publish(feed.lease, payload, key=f"{event}:{ident}", dedupe=True)
            self.stats.backfilled += 1
        held, feed.held = feed.held or [], None
        for payload, key in held:
            self.broker.publish(feed.lease, payload, key=key, dedupe=True)
            self.stats.published += 1

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _failure(exc: UpstreamError) -> TopicState:
    if isinstance(exc, SubscriptionError):
        return TopicState(False, f"Kick did not accept the subscription: {exc.message}",
                          "subscription_failed")  # fmt: skip
    if isinstance(exc, PusherFatalError):
        return TopicState(
            False,
            f"Kick's chat service refused the gateway (Pusher error {exc.code}: {exc.message})",
            "upstream_unavailable",
        )
    return TopicState(False, f"Kick's chat service is unavailable: {exc}", "upstream_unavailable")


def _created(item: dict[str, Any]) -> float:
    """A history message's ``created_at`` as a Unix time (0 if absent or unreadable)."""
    value = item.get("created_at")
    if not isinstance(value, str):
        return 0.0
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()
