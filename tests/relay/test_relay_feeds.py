"""kichat.relay.feeds after a takeover: chat from Kick's history fills the gap the previous owner
left, and only that gap (memory broker, a fake upstream and a fake chat history)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from kichat.broker import Lease, MemoryBroker
from kichat.relay.feeds import Feeds, chatroom_topic
from kichat.relay.render import encode_event, split_event

from broker_support import Recorder
from conftest import eventually

CHAT = "App\\Events\\ChatMessageEvent"
TOPIC = chatroom_topic(668)


class Upstream:
    def __init__(self) -> None:
        self.subscribed: set[str] = set()

    async def subscribe(self, channel: str) -> None:
        self.subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.subscribed.discard(channel)


class History:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.calls = 0

    async def messages(self, channel_id: int) -> list[dict[str, Any]]:
        self.calls += 1
        return [dict(item) for item in self.items]


def message(ident: str, seconds_ago: float = 1.0) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return {"id": ident, "content": ident, "created_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


async def setup(history: list[dict[str, Any]], logged: list[str]) -> tuple[Feeds, Recorder]:
    broker = MemoryBroker()
    recorder = Recorder()
    await broker.start(recorder)
    await broker.subscribe(TOPIC)
    (old,) = await broker.acquire([TOPIC])
    for ident in logged:  # what the previous owner published
        broker.publish(old, encode_event(CHAT, {"id": ident}), key=f"{CHAT}:{ident}")
    broker.revoke(TOPIC)  # it died
    feeds = Feeds(Upstream(), broker, history=History(history), channel_id_of=lambda c: 676)
    (lease,) = await broker.acquire([TOPIC])
    feeds.start(Lease(lease.topic, lease.token, takeover=True))
    return feeds, recorder


def published_after(recorder: Recorder, count: int) -> list[str]:
    return [str(split_event(p)[1]["id"]) for _, _, p in recorder.publications[count:]]  # type: ignore[index]


async def test_the_gap_after_the_last_logged_message_is_filled_in_order() -> None:
    history = [message("m5"), message("m4"), message("m3"), message("m2")]  # newest first
    feeds, recorder = await setup(history, ["m1", "m2", "m3"])
    await eventually(lambda: feeds.stats.backfilled == 2, what="backfill")
    assert published_after(recorder, 3) == ["m4", "m5"]


async def test_without_an_overlap_nothing_is_published() -> None:
    feeds, recorder = await setup([message("m9"), message("m8")], ["m1", "m2"])
    await eventually(lambda: TOPIC in feeds.owned and feeds.stats.feeds_started == 1,
                     what="the feed is live")  # fmt: skip
    await asyncio.sleep(0)
    assert feeds.stats.backfilled == 0
    assert published_after(recorder, 2) == []


async def test_messages_older_than_the_backfill_window_are_left_out() -> None:
    history = [message("m4"), message("m3", seconds_ago=120), message("m2", seconds_ago=130)]
    feeds, recorder = await setup(history, ["m1", "m2"])
    await eventually(lambda: feeds.stats.feeds_started == 1, what="the feed is live")
    # m2 is the newest known message but too old to count; nothing newer overlaps: no backfill.
    assert feeds.stats.backfilled == 0
    assert published_after(recorder, 2) == []


async def test_live_events_wait_for_the_backfill_and_copies_are_dropped() -> None:
    history = [message("m4"), message("m3"), message("m2")]
    feeds, recorder = await setup(history, ["m1", "m2"])
    # m4 also arrives live while the backfill runs (Kick sent it to the new owner too).
    feeds.on_upstream_event("chatrooms.668.v2", CHAT, '{"id": "m4", "content": "m4"}')
    feeds.on_upstream_event("chatrooms.668.v2", CHAT, '{"id": "m5", "content": "m5"}')
    await eventually(lambda: len(recorder.publications) == 5, what="m3, m4, m5 published")
    assert published_after(recorder, 2) == ["m3", "m4", "m5"]
