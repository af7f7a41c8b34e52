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
import hashlib
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
# Events held while a takeover backfills or a successor waits for its lease (a second or so).
_MAX_HELD = 10_000
# After a handover, new owner's events are checked against the old owner's this long (their
# overlap lasts one round trip to Redis or so).
_HANDOVER_DEDUPE = 5.0


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
        self._forget_before(now - self.window)
        seen, order = self._seen, self._order
        key = (group, event, ident)
        previous = seen.get(key)
        if previous is not None and previous[0] != channel:
            return True
        seen[key] = (channel, now)
        order.append((now, key))
        return False

    def expire(self) -> None:
        """Forget what is older than the window. Also called on a timer: otherwise, after a
        burst, an idle gateway would keep the burst's ids (8 MiB for 20,000 messages) until
        the next event."""
        self._forget_before(self._clock() - self.window)

    def _forget_before(self, horizon: float) -> None:
        seen, order = self._seen, self._order
        while order and order[0][0] < horizon:
            at, old = order.popleft()
            entry = seen.get(old)
            if entry is not None and entry[1] == at:
                del seen[old]

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class _Feed:
    lease: Lease | None  # None while preparing to succeed a leaving owner
    channels: tuple[str, ...]
    subscribed: list[str] = field(default_factory=list)
    # While a takeover backfills: live events wait here (None once flowing normally).
    held: list[tuple[bytes, str | None]] | None = None  # (payload, key)
    dedupe_until: float = 0.0  # after a handover, publish with dedupe checks until then
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
        self._stopping: dict[str, asyncio.Task[Any]] = {}  # topic -> its old feed unsubscribing
        self._tasks: set[asyncio.Task[Any]] = set()

    def channels_of(self, topic: str) -> tuple[str, ...]:
        kind, ident = parse_topic(topic)
        if kind == CHATROOM:
            return kick_events.render_channels(self.chatroom_templates, chatroom_id=ident)
        return kick_events.render_channels(self.channel_templates, channel_id=ident)

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._feeds)

    def busy(self, topic: str) -> bool:
        """Whether a feed of this topic runs here or is still unsubscribing from Kick."""
        return topic in self._feeds or topic in self._stopping

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
        if lease.takeover and self.history is not None and lease.topic.startswith(CHATROOM):
            feed.held = []
        feed.task = self._spawn(self._activate(feed))

    def succeed(self, topic: str) -> None:
        """The owner of ``topic`` is leaving: subscribe its channels here first, then take the
        lease; events seen before that wait, and are published checked against what the old
        owner already published (make-before-break: nothing falls between the two)."""
        if topic in self._feeds:
            return
        feed = _Feed(None, self.channels_of(topic), held=[])
        self._feeds[topic] = feed
        for channel in feed.channels:
            self._routes[channel] = feed
        feed.task = self._spawn(self._succeed(topic, feed))

    async def _succeed(self, topic: str, feed: _Feed) -> None:
        await self._settled(topic)
        try:
            for channel in feed.channels:
                await self.upstream.subscribe(channel)
                feed.subscribed.append(channel)
            lease = await self.broker.take_over(topic)
        except (UpstreamError, BrokerUnavailable) as exc:
            log.info("cannot take %s over: %s", topic, exc)
            lease = None
        if lease is None and feed.lease is not None:
            lease = feed.lease  # acquired meanwhile (start() found this feed): keep feeding
        if lease is None or feed.stopped:
            await self.stop(topic)
            if lease is not None and self._feeds.get(topic) is None:
                # The lease came as this feed was being stopped: held but not fed, it would
                # keep every other node from feeding the topic.
                with contextlib.suppress(BrokerUnavailable):
                    await self.broker.release(lease)
            return
        feed.lease = lease
        feed.dedupe_until = self.clock() + _HANDOVER_DEDUPE
        held, feed.held = feed.held or [], None
        for payload, key in held:
            self.broker.publish(lease, payload, key=key, dedupe=True)
            self.stats.published += 1
        self.stats.feeds_started += 1
        log.info("took %s over from a leaving node (%d events held meanwhile)", topic, len(held))
        await self._announce(feed, TopicState(live=True))

    async def _activate(self, feed: _Feed) -> None:
        assert feed.lease is not None
        topic = feed.lease.topic
        await self._settled(topic)
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
        if feed.lease is None:
            return
        try:
            await self.broker.announce(feed.lease, state)
        except BrokerUnavailable as exc:
            log.warning("cannot announce the state of %s: %s", feed.lease.topic, exc)

    def lost(self, topic: str) -> None:
        """The lease of ``topic`` is gone: stop publishing at once, unsubscribe in the
        background (a new feed of the topic waits for that, so the two cannot cross)."""
        feed = self._detach(topic)
        if feed is not None:
            self._stopping[topic] = self._spawn(self._unsubscribe(topic, feed))

    async def stop(self, topic: str) -> None:
        """Stop feeding ``topic`` (the lease is gone or given up): unsubscribe its channels."""
        feed = self._detach(topic)
        if feed is not None:
            done = self._stopping[topic] = self._spawn(self._unsubscribe(topic, feed))
            await asyncio.shield(done)

    def _detach(self, topic: str) -> _Feed | None:
        feed = self._feeds.pop(topic, None)
        if feed is None:
            return None
        feed.stopped = True
        if feed.task is not None and feed.task is not asyncio.current_task():
            feed.task.cancel()
        for channel in feed.channels:
            if self._routes.get(channel) is feed:
                del self._routes[channel]
        return feed

    async def _unsubscribe(self, topic: str, feed: _Feed) -> None:
        try:
            for channel in feed.subscribed:
                try:
                    await self.upstream.unsubscribe(channel)
                except UpstreamError as exc:
                    log.warning("unsubscribe from %s failed: %s", channel, exc)
            self.stats.feeds_stopped += 1
            log.info("stopped feeding %s", topic)
        finally:
            if self._stopping.get(topic) is asyncio.current_task():
                del self._stopping[topic]

    async def _settled(self, topic: str) -> None:
        """Wait for a previous feed of ``topic`` to finish unsubscribing."""
        pending = self._stopping.get(topic)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)

    async def release(self, topic: str) -> None:
        """Give a topic up for good (nobody in the cluster wants it any more)."""
        feed = self._feeds.get(topic)
        if feed is None:
            return
        lease = feed.lease
        await self.stop(topic)
        if lease is not None:
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
                feed.channels[0], event, copy_key, channel
            ):
                stats.duplicates_dropped += 1
                return
        payload = encode_event(event, data)
        if ident is not None:
            key = f"{event}:{ident}"
        elif isinstance(raw, str | bytes):
            # No occurrence id: two nodes that saw this event during a handover saw the very
            # same text, which then names it.
            text = raw.encode() if isinstance(raw, str) else raw
            key = "~" + hashlib.blake2b(text, digest_size=8).hexdigest()
        else:
            key = None
        if feed.held is not None or feed.lease is None:
            if feed.held is not None and len(feed.held) < _MAX_HELD:
                feed.held.append((payload, key))
            return
        dedupe = feed.dedupe_until > 0 and self.clock() < feed.dedupe_until
        self.broker.publish(feed.lease, payload, key=key, dedupe=dedupe)
        stats.published += 1

    # -- takeover backfill -----------------------------------------------------------------------

    async def _backfill(self, feed: _Feed) -> None:
        """Publish the recent chat Kick has and the topic's log does not, then the held events."""
        assert feed.lease is not None
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
        for item, key in await self._missing(feed.lease.topic, found):
            item["chatroom_id"] = chatroom_id
            payload = encode_event(kick_events.CHAT_MESSAGE_EVENT, item)
            self.broker.publish(feed.lease, payload, key=key, dedupe=True)
            self.stats.backfilled += 1
        held, feed.held = feed.held or [], None
        for payload, held_key in held:
            self.broker.publish(feed.lease, payload, key=held_key, dedupe=True)
            self.stats.published += 1

    async def _missing(
        self, topic: str, found: list[dict[str, Any]]
    ) -> list[tuple[dict[str, Any], str]]:
        """Of Kick's recent chat (newest first), what came after the last message the feed's log
        has, oldest first. Without such a message (the gap is longer than Kick's page, or the
        log itself is new, as after Redis lost its data) where the previous owner stopped is
        unknown, and nothing is published rather than risk repeating old chat."""
        horizon = time.time() - self.backfill_window
        event = kick_events.CHAT_MESSAGE_EVENT
        recent = [
            (item, f"{event}:{item['id']}")
            for item in found
            if isinstance(item.get("id"), str) and _created(item) >= horizon
        ]
        if not recent:
            return []
        try:
            known = await self.broker.known(topic, [key for _, key in recent])
        except BrokerUnavailable:
            known = set()
        newer: list[tuple[dict[str, Any], str]] = []
        for item, key in recent:
            if key in known:
                return list(reversed(newer))
            newer.append((item, key))
        log.info("no chat backfill for %s: none of Kick's %d recent messages is in its log, so "
                 "where the previous owner stopped is unknown", topic, len(recent))  # fmt: skip
        return []

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
