"""kichat.relay (feeds and gateway) on the memory broker, with a small in-memory upstream,
channel directory and rooms.

The fakes are not a Pusher: just objects with ``subscribe``/``unsubscribe`` and ``channel(slug)``
whose answers each test controls (resolve, refuse, hold). Frames the gateway delivers are decoded
back into ``(event, payload, room)``. Time-based behaviour uses ``linger=0`` (the timer fires on the
next loop iteration) or a long linger, and the dedupe window a fake clock.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from kichat.broker import Lease, MemoryBroker
from kichat.errors import ChannelNotFound, FeedUnavailable, KickBlocked, SubscriptionError
from kichat.http.websocket import iter_frames
from kichat.relay import Gateway, RoomInfo, RoomKey
from kichat.relay.feeds import Feeds
from kichat.relay.gateway import STREAM_PENDING

from conftest import eventually

XQC = RoomKey(668, "xqc")
FAN = RoomKey(668, "xqc-fan")
V2, LEGACY, STREAM, PREDICTIONS = (
    "chatrooms.668.v2", "chatrooms.668", "channel.676", "predictions-channel-676",
)  # fmt: skip
ALL = (V2, LEGACY, STREAM, PREDICTIONS)
CHAT = "App\\Events\\ChatMessageEvent"
UPDATED = "App\\Events\\ChatroomUpdatedEvent"
PINNED = "App\\Events\\PinnedMessageCreatedEvent"


class FakeUpstream:
    """Subscriptions succeed at once unless ``hold`` is set (then ``release_held`` answers them)
    or the channel is in ``refuse``. ``gate``, when set, holds every unsubscribe until set."""

    def __init__(self) -> None:
        self.subscribed: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.refuse: set[str] = set()
        self.hold = False
        self.held: dict[str, asyncio.Future[None]] = {}
        self.gate: asyncio.Event | None = None

    async def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))
        if self.hold:
            future = self.held[channel] = asyncio.get_running_loop().create_future()
            await future
        if channel in self.refuse:
            raise SubscriptionError(channel, "refused by the fake")
        self.subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))
        if self.gate is not None:
            await self.gate.wait()
        self.subscribed.discard(channel)

    def release_held(self) -> None:
        for future in self.held.values():
            if not future.done():
                future.set_result(None)

    def count(self, op: str, channel: str) -> int:
        return self.calls.count((op, channel))


@dataclass(frozen=True)
class Info:
    id: int
    chatroom_id: int


class FakeDirectory:
    def __init__(self) -> None:
        self.channels = {"xqc": Info(676, 668), "moonlitfox": Info(4100456, 4100123)}
        self.lookups: Counter[str] = Counter()
        self.blocked: set[str] = set()
        self.gate: asyncio.Event | None = None  # when set, lookups wait for it (a slow Kick)

    async def channel(self, slug: str) -> Info:
        self.lookups[slug] += 1
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        if slug in self.blocked:
            raise KickBlocked("Kick's edge blocked the request (fake)", upstream_status=403)
        if slug not in self.channels:
            raise ChannelNotFound(f"no channel {slug!r}")
        return self.channels[slug]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRooms:
    """Every room has members of both kinds; delivered frames are decoded and recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, str]] = []
        self.offsets: list[str] = []

    def room_kinds(self, room: str) -> tuple[bool, bool]:
        return True, True

    def deliver(self, room: str, frame: bytes | None, plain: bytes | None, position: int) -> int:
        assert frame is not None and plain is not None
        [(_, with_offset)] = iter_frames(frame)
        [(_, without)] = iter_frames(plain)
        event, payload, offset = json.loads(with_offset[2:])
        assert json.loads(without[2:]) == [event, payload]
        self.offsets.append(offset)
        self.sent.append((event, payload, room))
        return 1


class Handler:
    """The broker's callbacks: publications go to the gateway, the rest is not exercised here."""

    def __init__(self, gateway: Gateway) -> None:
        self.on_publication = gateway.on_publication

    def on_gap(self, topics: frozenset[str]) -> None: ...
    def on_reset(self, epoch: str) -> None: ...
    def on_lease_renewed(self, lease: Lease) -> None: ...
    def on_lease_lost(self, topic: str) -> None: ...
    def on_topic_released(self, topic: str) -> None: ...
    def on_session_taken(self, pid: str) -> None: ...


@dataclass
class Relay:
    gateway: Gateway
    feeds: Feeds
    broker: MemoryBroker
    upstream: FakeUpstream
    directory: FakeDirectory
    rooms: FakeRooms
    users: Counter[RoomKey]
    clock: Clock

    @property
    def sent(self) -> list[tuple[str, Any, str]]:
        return self.rooms.sent

    def event(self, channel: str, event: str, data: Any) -> list[tuple[str, Any, str]]:
        """Feed one upstream event (data JSON-encoded, as Kick sends it); return the broadcasts."""
        before = len(self.sent)
        self.feeds.on_upstream_event(channel, event, json.dumps(data))
        return self.sent[before:]


async def make(linger: float = 0.0, **options: Any) -> Relay:
    upstream, directory, clock, rooms = FakeUpstream(), FakeDirectory(), Clock(), FakeRooms()
    users: Counter[RoomKey] = Counter()
    broker = MemoryBroker()
    feeds = Feeds(
        upstream,
        broker,
        clock=clock,
        **{k: options.pop(k) for k in ("chatroom_templates", "channel_templates",
                                         "dedupe_window") if k in options},
    )  # fmt: skip
    options.setdefault("directory", directory)
    gateway = Gateway(
        broker,
        feeds,
        options.pop("directory"),
        rooms,
        lambda key: users[key] > 0,
        linger=linger,
        feed_wait=5.0,
        **options,
    )
    await broker.start(Handler(gateway))
    return Relay(gateway, feeds, broker, upstream, directory, rooms, users, clock)


async def feed(r: Relay, key: RoomKey) -> RoomInfo:
    """Acquire ``key`` (its chat flows) and wait for the outcome of its stream channels."""
    await r.gateway.acquire(key)
    return await r.gateway.stream_info(key)


async def settle() -> None:
    """Let every ready callback and task run (the fakes do no I/O)."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- activation -------------------------------------------------------------------------------


async def test_concurrent_acquires_share_one_activation() -> None:
    r = await make()
    r.upstream.hold = True
    r.users[XQC] = 30
    waiters = [asyncio.ensure_future(r.gateway.acquire(XQC)) for _ in range(30)]
    await settle()
    assert r.upstream.calls == [("subscribe", V2)]  # the others wait on the same activation
    assert not any(w.done() for w in waiters)
    while len(r.upstream.held) < len(ALL):
        r.upstream.release_held()
        await settle()
    r.upstream.release_held()
    await asyncio.gather(*waiters)
    info = await r.gateway.stream_info(XQC)
    assert info == RoomInfo(stream_events=True, channel_id=676)
    assert r.upstream.calls == [("subscribe", c) for c in ALL]
    assert r.directory.lookups == {"xqc": 1}
    assert r.gateway.stats.activations == 1
    assert r.feeds.upstream_channels == set(ALL)
    # Once active, acquire answers from memory.
    await r.gateway.acquire(XQC)
    assert r.gateway.info(XQC) == info
    assert len(r.upstream.calls) == len(ALL)


async def test_failed_subscribe_rolls_back_and_fails_every_waiter() -> None:
    r = await make()
    r.upstream.refuse = {LEGACY}
    results = await asyncio.gather(
        *(r.gateway.acquire(XQC) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(e, FeedUnavailable) for e in results)
    assert all(e.code == "subscription_failed" for e in results)  # type: ignore[union-attr]
    assert r.upstream.calls == [("subscribe", V2), ("subscribe", LEGACY), ("unsubscribe", V2)]
    assert r.upstream.subscribed == set()
    assert r.feeds.upstream_channels == frozenset()
    assert r.gateway.info(XQC) is None
    assert r.gateway.stats.activation_failures == 1
    assert r.directory.lookups == {}  # no lookup for a room that could not be fed
    # The next attempt starts afresh.
    r.upstream.refuse = set()
    assert (await feed(r, XQC)).stream_events is True
    assert r.upstream.subscribed == set(ALL)


async def test_rollback_keeps_channels_another_key_holds() -> None:
    r = await make()
    r.users[FAN] = 1
    await r.gateway.acquire(FAN)  # chatroom channels only: Kick does not know xqc-fan
    r.upstream.refuse = {STREAM}
    info = await feed(r, XQC)
    # Stream channels refused: chat still flows, with a warning; the shared channels stay.
    assert info.stream_events is False
    assert info.warning_code == "stream_events_unavailable"
    assert "refused" in (info.warning or "")
    assert r.upstream.subscribed == {V2, LEGACY}
    assert r.upstream.count("subscribe", V2) == 1


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("blocked", "could not look up channel 'xqc'"),
        ("unknown", "could not look up channel 'xqc'"),
        ("other-chatroom", "has chatroom 4100123, not 668"),
        ("no-directory", "lookup, which is disabled"),
    ],
)
async def test_stream_events_unavailable_leaves_chat_flowing(case: str, expected: str) -> None:
    r = await (make(directory=None) if case == "no-directory" else make())
    if case == "blocked":
        r.directory.blocked.add("xqc")
    elif case == "unknown":
        del r.directory.channels["xqc"]
    elif case == "other-chatroom":
        r.directory.channels["xqc"] = Info(4100456, 4100123)
    info = await feed(r, XQC)
    assert info.stream_events is False
    assert info.warning_code == "stream_events_unavailable"
    assert expected in (info.warning or "")
    assert r.upstream.subscribed == {V2, LEGACY}
    assert r.gateway.stats.lookup_failures == (1 if case in ("blocked", "unknown") else 0)
    r.users[XQC] = 1
    assert r.event(V2, CHAT, {"id": "m1"}) == [(CHAT, {"id": "m1", "channel_name": "xqc"},
                                                XQC.room)]  # fmt: skip


async def test_no_channel_templates_means_no_lookup_and_no_warning() -> None:
    r = await make(channel_templates=())
    assert await feed(r, XQC) == RoomInfo(stream_events=False)
    assert r.directory.lookups == {}
    assert r.upstream.subscribed == {V2, LEGACY}


async def test_chat_flows_while_the_channel_lookup_hangs() -> None:
    r = await make()
    r.directory.gate = asyncio.Event()  # Kick's REST API does not answer (yet)
    r.users[XQC] = 1
    await r.gateway.acquire(XQC)  # returns with the chatroom channels up
    assert r.upstream.subscribed == {V2, LEGACY}
    assert r.event(V2, CHAT, {"id": "m1"}) == [
        (CHAT, {"id": "m1", "channel_name": "xqc"}, XQC.room)
    ]
    assert await r.gateway.stream_info(XQC, within=0.01) == STREAM_PENDING
    assert r.gateway.info(XQC) == STREAM_PENDING
    r.directory.gate.set()
    assert await r.gateway.stream_info(XQC) == RoomInfo(stream_events=True, channel_id=676)
    assert r.upstream.subscribed == set(ALL)


async def test_room_released_during_the_lookup_leaves_nothing_subscribed() -> None:
    r = await make(linger=0.0)
    r.directory.gate = asyncio.Event()
    await r.gateway.acquire(XQC)
    r.gateway.release(XQC)
    await settle()
    assert r.upstream.subscribed == set()  # the chatroom channels are gone already
    r.directory.gate.set()  # the lookup ends after the room: its stream channels go at once
    await settle()
    assert r.upstream.subscribed == set()
    assert r.feeds.upstream_channels == frozenset()


async def test_reactivation_racing_an_old_stream_task_keeps_its_own_holds() -> None:
    r = await make(linger=0.0)
    r.directory.gate = asyncio.Event()
    await r.gateway.acquire(XQC)  # first activation: its stream task waits on the lookup
    r.gateway.release(XQC)
    await settle()
    r.users[XQC] = 1
    await r.gateway.acquire(XQC)  # second activation: another stream task, same key
    r.directory.gate.set()  # both lookups end; the first task's room is gone
    assert (await r.gateway.stream_info(XQC)).stream_events is True
    await settle()
    assert r.upstream.subscribed == set(ALL)  # the old task released only what it held
    r.users[XQC] = 0
    r.gateway.release(XQC)
    await settle()
    assert r.upstream.subscribed == set()


async def test_a_channel_being_unsubscribed_is_subscribed_again_only_after() -> None:
    r = await make(linger=0.0, channel_templates=())
    await r.gateway.acquire(XQC)
    r.upstream.gate = asyncio.Event()  # Pusher is slow to take the unsubscribe
    r.gateway.release(XQC)
    await settle()
    assert r.upstream.calls[-1] == ("unsubscribe", V2)
    fan = asyncio.ensure_future(r.gateway.acquire(FAN))  # another key, the same chatroom
    await settle()
    assert ("subscribe", V2) not in r.upstream.calls[2:]  # waits for the unsubscribe
    r.upstream.gate.set()
    await fan
    later = r.upstream.calls[2:]
    for name in (V2, LEGACY):  # per channel: the unsubscribe lands before the new subscribe
        assert later.index(("unsubscribe", name)) < later.index(("subscribe", name))
    assert r.upstream.subscribed == {V2, LEGACY}


# -- release -----------------------------------------------------------------------------------


async def test_release_waits_for_the_linger_then_unsubscribes_everything() -> None:
    r = await make(linger=0.0)
    await feed(r, XQC)
    r.gateway.release(XQC)
    assert ("unsubscribe", V2) not in r.upstream.calls  # not synchronously
    await settle()
    assert r.upstream.subscribed == set()
    assert sorted(c for op, c in r.upstream.calls if op == "unsubscribe") == sorted(ALL)
    assert r.gateway.info(XQC) is None
    assert r.gateway.stats.deactivations == 1
    assert r.feeds.upstream_channels == frozenset()


async def test_linger_over_rechecks_the_registry() -> None:
    r = await make(linger=0.0)
    await feed(r, XQC)
    r.users[XQC] = 1  # someone subscribed again meanwhile (without calling acquire yet)
    r.gateway.release(XQC)
    await settle()
    assert r.upstream.subscribed == set(ALL)
    assert r.gateway.stats.deactivations == 0
    r.users[XQC] = 0
    r.gateway.release(XQC)
    await settle()
    assert r.upstream.subscribed == set()


async def test_reacquire_during_the_linger_keeps_the_subscription() -> None:
    r = await make(linger=60.0)
    await feed(r, XQC)
    r.gateway.release(XQC)
    r.gateway.release(XQC)  # a second release does not add a second timer
    info = await feed(r, XQC)
    assert info.stream_events is True
    await settle()
    assert [op for op, _ in r.upstream.calls] == ["subscribe"] * len(ALL)
    assert r.gateway.stats.activations == 1
    await r.gateway.close()


async def test_acquire_between_linger_expiry_and_deactivation_wins() -> None:
    r = await make(linger=0.0)
    await feed(r, XQC)
    r.gateway.release(XQC)
    await asyncio.sleep(0)  # the timer fired: a deactivation task is scheduled, not yet run
    r.users[XQC] = 1  # the service registers before it acquires
    assert (await feed(r, XQC)).stream_events is True
    await settle()
    assert r.upstream.subscribed == set(ALL)
    assert r.gateway.stats.deactivations == 0


async def test_acquire_racing_a_deactivation_in_progress_resubscribes_after_it() -> None:
    r = await make(linger=0.0)
    await feed(r, XQC)
    r.upstream.gate = asyncio.Event()
    r.gateway.release(XQC)
    await settle()
    assert r.upstream.calls[-1] == ("unsubscribe", V2)  # held mid-deactivation
    r.users[XQC] = 1
    again = asyncio.ensure_future(feed(r, XQC))
    await settle()
    assert not again.done()  # waits for the deactivation to finish
    r.upstream.gate.set()
    assert (await again).stream_events is True
    ops = r.upstream.calls[len(ALL) :]
    assert ops == [("unsubscribe", c) for c in ALL] + [("subscribe", c) for c in ALL]
    assert r.upstream.subscribed == set(ALL)
    assert r.gateway.info(XQC) is not None


async def test_shared_channels_outlive_one_key() -> None:
    r = await make(linger=0.0)
    await feed(r, XQC)
    await feed(r, FAN)
    assert r.upstream.count("subscribe", V2) == 1
    r.users[FAN] = 1
    r.gateway.release(XQC)
    await settle()
    assert r.upstream.subscribed == {V2, LEGACY}  # the stream channels were xqc's alone
    r.users[FAN] = 0
    r.gateway.release(FAN)
    await settle()
    assert r.upstream.subscribed == set()


# -- the hot path --------------------------------------------------------------------------------


async def active(r: Relay, *keys: RoomKey) -> None:
    for key in keys:
        r.users[key] += 1
        await feed(r, key)


async def test_copy_on_another_alias_is_dropped() -> None:
    r = await make()
    await active(r, XQC)
    data = {"id": "m1", "content": "hi"}
    assert len(r.event(V2, CHAT, data)) == 1
    assert r.event(LEGACY, CHAT, data) == []
    assert r.feeds.stats.duplicates_dropped == 1
    # The same id on another event name is another event.
    assert len(r.event(LEGACY, "App\\Events\\MessageDeletedEvent", {"id": "m1"})) == 1


async def test_same_event_twice_on_one_channel_is_kept() -> None:
    r = await make()
    await active(r, XQC)
    data = {"id": "m1", "content": "hi"}
    assert len(r.event(V2, CHAT, data)) == 1
    assert len(r.event(V2, CHAT, data)) == 1
    assert len(r.event(LEGACY, CHAT, data)) == 0
    assert r.feeds.stats.duplicates_dropped == 1


async def test_chatroom_updates_are_never_deduped_by_their_id() -> None:
    r = await make()
    await active(r, XQC)
    slow = {"id": 668, "slow_mode": {"enabled": True, "message_interval": 5}}
    fast = {"id": 668, "slow_mode": {"enabled": False, "message_interval": 5}}
    # Successive updates share the chatroom's id: every one is delivered, on any alias.
    assert len(r.event(V2, UPDATED, slow)) == 1
    assert len(r.event(LEGACY, UPDATED, fast)) == 1
    assert len(r.event(V2, UPDATED, slow)) == 1
    assert len(r.event(V2, UPDATED, slow)) == 1
    assert r.feeds.stats.duplicates_dropped == 0


async def test_copy_without_an_id_is_recognised_by_its_text() -> None:
    # Pins, polls, subscriptions and chatroom updates carry no occurrence id; a copy on an
    # alias is the same JSON text (found by test_e2e_chatservice with duplicate_on_legacy_alias).
    r = await make()
    await active(r, XQC)
    pin = {"message": {"id": "m1"}, "duration": 20}
    assert len(r.event(V2, PINNED, pin)) == 1
    assert r.event(LEGACY, PINNED, pin) == []
    assert len(r.event(V2, "App\\Events\\PollDeleteEvent", [])) == 1
    assert r.event(LEGACY, "App\\Events\\PollDeleteEvent", []) == []
    update = {"id": 668, "slow_mode": {"enabled": True}}
    assert len(r.event(V2, UPDATED, update)) == 1
    assert r.event(LEGACY, UPDATED, update) == []
    assert r.feeds.stats.duplicates_dropped == 3
    # Different text is a different occurrence.
    assert len(r.event(LEGACY, PINNED, {**pin, "duration": 30})) == 1


async def test_dedupe_forgets_after_its_window() -> None:
    r = await make(dedupe_window=10.0)
    await active(r, XQC)
    data = {"id": "m1"}
    assert len(r.event(V2, CHAT, data)) == 1
    r.clock.now += 10.5
    assert len(r.event(LEGACY, CHAT, data)) == 1
    assert len(r.feeds.dedupe) == 1  # the old entry was swept


async def test_an_idle_gateway_forgets_old_ids_without_another_event() -> None:
    # After a burst, no event may come for a long while: the watchdog forgets the burst's ids
    # (they were kept until the next event: 8 MiB after 20,000 messages, bench/attack.py).
    r = await make(dedupe_window=10.0, owner_check_interval=0.01)
    r.gateway.start()
    try:
        await active(r, XQC)
        for i in range(100):
            r.event(V2, CHAT, {"id": f"m{i}"})
        assert len(r.feeds.dedupe) == 100
        r.clock.now += 10.5
        await eventually(lambda: len(r.feeds.dedupe) == 0, what="the old ids forgotten")
    finally:
        await r.gateway.close()


async def test_a_lease_left_without_a_feed_is_fed_again_by_the_watchdog() -> None:
    # A feed stopped while its lease stayed (a handover completing as the successor's feed was
    # being stopped, seen once in a cluster test): the lease is renewed but nothing feeds the
    # topic, and no other node may take it. The watchdog must notice and feed it again.
    r = await make(owner_check_interval=0.01)
    r.gateway.start()
    try:
        await active(r, XQC)
        await r.feeds.stop("chatroom:668")
        assert "chatroom:668" in r.broker.leases and V2 not in r.upstream.subscribed
        assert r.event(V2, CHAT, {"id": "lost"}) == []  # nothing routes it: not fed
        await eventually(lambda: V2 in r.upstream.subscribed and LEGACY in r.upstream.subscribed,
                         what="the chatroom subscribed again")  # fmt: skip
        assert len(r.event(V2, CHAT, {"id": "after"})) == 1
    finally:
        await r.gateway.close()


async def test_after_a_reset_unowned_topics_are_left_to_their_previous_owners_for_a_while() -> None:
    # Redis restarted: the lease keys are gone, and the topics' owners take them back as they
    # reconnect. A node that took one first would start a fresh feed and lose what Kick sends
    # until it is subscribed, while the owner's running feed would have lost nothing.
    r = await make()
    await active(r, XQC)
    r.broker.revoke("chatroom:668")  # as seen from a node that did not own it
    r.gateway.on_lease_lost("chatroom:668")
    r.broker.reclaim_grace = 60.0
    r.gateway.on_reset()
    await r.gateway.check_owners()
    assert "chatroom:668" not in r.broker.leases, "left to its owner during the grace"
    r.broker.reclaim_grace = 0.0
    r.gateway.on_reset()
    await r.gateway.check_owners()
    assert "chatroom:668" in r.broker.leases, "an orphan once the grace is over"
    await eventually(lambda: V2 in r.upstream.subscribed, what="fed here")


async def test_single_alias_rooms_do_no_dedupe_work() -> None:
    r = await make(chatroom_templates=("chatrooms.{chatroom_id}.v2",), channel_templates=())
    await active(r, XQC)
    for _ in range(2):
        assert len(r.event(V2, CHAT, {"id": "m1"})) == 1
    assert len(r.feeds.dedupe) == 0


async def test_each_slug_gets_its_own_channel_name() -> None:
    r = await make()
    await active(r, XQC, FAN)
    sent = r.event(V2, CHAT, {"id": "m1", "content": "hi", "channel_name": "kick's own"})
    assert sorted(sent, key=lambda s: s[2]) == [
        (CHAT, {"id": "m1", "content": "hi", "channel_name": "xqc"}, XQC.room),
        (CHAT, {"id": "m1", "content": "hi", "channel_name": "xqc-fan"}, FAN.room),
    ]
    assert sent[0][1] is not sent[1][1]
    empty = r.event(V2, "App\\Events\\PinnedMessageDeletedEvent", [])
    assert sorted(p["channel_name"] for _, p, _ in empty) == ["xqc", "xqc-fan"]
    # Stream events are xqc's only: Kick does not know xqc-fan.
    assert [room for _, _, room in r.event(STREAM, "App\\Events\\StreamerIsLive", {})] == [XQC.room]
    assert r.gateway.stats.events_out == 5


async def test_malformed_and_unrouted_events_are_counted_and_dropped() -> None:
    r = await make()
    await active(r, XQC)
    r.feeds.on_upstream_event(V2, CHAT, '{"id": "m1", "content": ')
    r.feeds.on_upstream_event(V2, CHAT, "NaN")
    r.feeds.on_upstream_event("chatrooms.999.v2", CHAT, '{"id": "x"}')
    assert r.sent == []
    assert r.feeds.stats.malformed == 2
    assert r.feeds.stats.unrouted == 1
    assert r.feeds.stats.events_in == 3
    # The relay carries on.
    assert len(r.event(V2, CHAT, {"id": "m2"})) == 1


async def test_dedupe_window_zero_disables_dedupe() -> None:
    # relay.dedupe_window: "0 disables". With a clock that has not moved (coarse clocks do
    # that within one event burst), a copy used to be dropped all the same.
    r = await make(dedupe_window=0.0)
    await active(r, XQC)
    data = {"id": "m1"}
    assert len(r.event(V2, CHAT, data)) == 1
    assert len(r.event(LEGACY, CHAT, data)) == 1
    assert r.feeds.stats.duplicates_dropped == 0
    assert len(r.feeds.dedupe) == 0
