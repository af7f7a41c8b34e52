"""One contract, two brokers: what the relay and the Socket.IO core rely on, checked against the
memory broker and the Redis broker (a real redis-server) alike. Multi-node behaviour (leases held
elsewhere, sessions taken by another node) is Redis-only and lives in test_broker_redis.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from kichat.broker import Broker, MemoryBroker, TopicState
from kichat.broker.redis import RedisBroker

from broker_support import Recorder
from conftest import UNIT, eventually
from redis_support import redis_server, unique_prefix

Factory = Callable[..., Awaitable[tuple[Broker, Recorder]]]


@pytest.fixture(params=["memory", "redis"])
async def node(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """``await node(**settings)`` starts one broker node (the same backend for the whole test)."""
    async with AsyncExitStack() as stack:
        url = None
        if request.param == "redis":
            url = stack.enter_context(redis_server()).url
        prefix = unique_prefix()
        count = 0

        async def start(**settings: object) -> tuple[Broker, Recorder]:
            nonlocal count
            count += 1
            broker: Broker
            if url is None:
                broker = MemoryBroker(**settings)  # type: ignore[arg-type]
            else:
                broker = RedisBroker(url, node_id=f"n{count}", prefix=prefix, **settings)  # type: ignore[arg-type]
            recorder = Recorder()
            await broker.start(recorder)
            stack.push_async_callback(broker.close)
            return broker, recorder

        yield start


async def test_publications_arrive_once_in_position_order_across_topics(node: Factory) -> None:
    broker, rec = await node()
    await broker.subscribe("a")
    await broker.subscribe("b")
    (la, lb) = sorted(await broker.acquire(["a", "b"]), key=lambda lease: lease.topic)
    for i in range(50):
        broker.publish(la if i % 3 else lb, b"m%d" % i)
    await eventually(lambda: len(rec.publications) == 50, what="50 publications")
    positions = [p for _, p, _ in rec.publications]
    assert positions == sorted(positions) and len(set(positions)) == 50
    assert [payload for _, _, payload in rec.publications] == [b"m%d" % i for i in range(50)]
    assert [topic for topic, _, _ in rec.publications] == ["a" if i % 3 else "b" for i in range(50)]


async def test_subscribe_returns_the_point_after_which_everything_arrives(node: Factory) -> None:
    broker, rec = await node()
    (lease,) = await broker.acquire(["t"])
    broker.publish(lease, b"before")
    await broker.subscribe("other")  # a round trip, so "before" is surely published
    joined = await broker.subscribe("t")
    broker.publish(lease, b"after")
    await eventually(lambda: any(t == "t" for t, _, _ in rec.publications), what="after")
    assert [(t, pay) for t, _, pay in rec.publications] == [("t", b"after")]
    assert rec.publications[0][1] > joined


async def test_unsubscribed_topics_are_not_delivered(node: Factory) -> None:
    broker, rec = await node()
    (lease, marker) = sorted(await broker.acquire(["t", "z"]), key=lambda x: x.topic)
    await broker.subscribe("t")
    await broker.subscribe("z")
    await broker.unsubscribe("t")
    broker.publish(lease, b"dropped")
    broker.publish(marker, b"marker")
    await eventually(lambda: rec.publications, what="the marker")
    assert [pay for _, _, pay in rec.publications] == [b"marker"]


async def test_history_merges_topics_after_their_positions(node: Factory) -> None:
    broker, rec = await node()
    leases = {lease.topic: lease for lease in await broker.acquire(["a", "b"])}
    await broker.subscribe("a")
    for i in range(6):
        broker.publish(leases["ab"[i % 2]], b"%d" % i)
    await eventually(lambda: len(rec.publications) == 3, what="a's three")
    first_a = rec.publications[0][1]
    history = await broker.history({"a": first_a, "b": 0})
    assert history is not None
    assert [(p.topic, p.payload) for p in history.publications] == [
        ("b", b"1"), ("a", b"2"), ("b", b"3"), ("a", b"4"), ("b", b"5")
    ]  # fmt: skip
    assert history.upto >= history.publications[-1].position
    empty = await broker.history({"a": history.upto, "never": 0})
    assert empty is not None and empty.publications == []


async def test_history_refuses_positions_it_no_longer_covers(node: Factory) -> None:
    broker, rec = await node()
    (lease,) = await broker.acquire(["t"])
    if isinstance(broker, MemoryBroker):
        broker.max_bytes = 50
    else:
        assert isinstance(broker, RedisBroker)
        broker.history_max = 3
    await broker.subscribe("t")
    for i in range(400):
        broker.publish(lease, b"payload-%03d" % i)
    await eventually(lambda: len(rec.publications) == 400, what="400 publications")
    assert await broker.history({"t": 0}) is None, "the oldest publications were evicted"
    recent = await broker.history({"t": rec.publications[-1][1] - 1})
    assert recent is not None and [p.payload for p in recent.publications] == [b"payload-399"]
    assert await broker.history({"t": broker.position + 1000}) is None, "a future position"


async def test_a_stale_lease_is_fenced(node: Factory) -> None:
    broker, rec = await node()
    await broker.subscribe("t")
    (old,) = await broker.acquire(["t"])
    await broker.release(old)
    (new,) = await broker.acquire(["t"])
    assert new.token > old.token
    broker.publish(old, b"stale")
    broker.publish(new, b"fresh")
    await eventually(lambda: rec.publications, what="fresh")
    assert [pay for _, _, pay in rec.publications] == [b"fresh"]
    assert broker.status().publish_rejected >= 1
    assert await broker.acquire(["t"]) == [], "already ours"


async def test_dedupe_keys_drop_copies(node: Factory) -> None:
    broker, rec = await node()
    await broker.subscribe("t")
    (lease,) = await broker.acquire(["t"])
    broker.publish(lease, b"m1", key="m1")  # a key is kept even when not checked
    for key in ("m2", "m1", "m3", "m2"):
        broker.publish(lease, key.encode(), key=key, dedupe=True)
    broker.publish(lease, b"unchecked m1", key="m1")
    broker.publish(lease, b"no-key", dedupe=True)
    broker.publish(lease, b"no-key", dedupe=True)
    await eventually(lambda: len(rec.publications) == 6, what="six publications")
    assert [pay for _, _, pay in rec.publications] == [
        b"m1", b"m2", b"m3", b"unchecked m1", b"no-key", b"no-key"
    ]  # fmt: skip


async def test_announced_state_reaches_waiters(node: Factory) -> None:
    broker, _ = await node()
    (lease,) = await broker.acquire(["t"])
    assert await broker.topic_state("t", 0) is None
    waiting = asyncio.ensure_future(broker.topic_state("t", 5 * UNIT))
    await asyncio.sleep(0)
    await broker.announce(lease, TopicState(live=False, code="subscription_failed", message="no"))
    assert await waiting == TopicState(live=False, code="subscription_failed", message="no")
    await broker.announce(lease, TopicState(live=True))
    assert await broker.topic_state("t", 0) == TopicState(live=True)


async def test_readers_follow_subscriptions(node: Factory) -> None:
    broker, _ = await node()
    assert await broker.readers(["a", "b"]) == {"a": 0, "b": 0}
    await broker.subscribe("a")
    assert await broker.readers(["a", "b"]) == {"a": 1, "b": 0}
    await broker.unsubscribe("a")
    await eventually_async(lambda: broker.readers(["a"]), {"a": 0})


async def test_sessions_are_taken_exactly_once(node: Factory) -> None:
    broker, _ = await node()
    await broker.save_session("pid1", b"record-1", live=True)
    await broker.save_session("pid1", b"record-2", live=False)
    results = await asyncio.gather(*(broker.take_session("pid1") for _ in range(5)))
    assert sorted(results, key=lambda r: r is None) == [b"record-2", None, None, None, None]
    await broker.save_session("pid2", b"x", live=True)
    await broker.drop_session("pid2")
    assert await broker.take_session("pid2") is None


async def test_status_counts(node: Factory) -> None:
    broker, rec = await node()
    await broker.subscribe("t")
    (lease,) = await broker.acquire(["t"])
    broker.publish(lease, b"x")
    await eventually(lambda: rec.publications, what="x")
    status = broker.status()
    assert status.published == 1 and status.delivered == 1
    assert status.owned_topics == 1 and status.subscribed_topics == 1
    assert status.epoch == broker.epoch and status.problem is None


async def eventually_async(fn: Callable[[], Awaitable[object]], expected: object) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5 * UNIT
    while (got := await fn()) != expected:
        assert loop.time() < deadline, f"still {got!r}, expected {expected!r}"
        await asyncio.sleep(0.01)
