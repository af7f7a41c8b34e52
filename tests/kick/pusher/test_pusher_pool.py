"""PusherPool and PusherConnection against the Kick simulator, over real loopback sockets.

Every fault is injected through the simulator (close codes, TCP drops, a hung server, refused
or swallowed subscriptions); nothing of the Pusher protocol is mocked.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kichat.errors import ConfigError, PusherFatalError, PusherUnavailable, SubscriptionError
from kichat.kick.pusher import Backoff, PusherPool
from kichat.kick.pusher.protocol import PusherClientProtocol

from conftest import UNIT, eventually
from pusher_helpers import CHAT, Recorder, fast_backoff, open_sim, pusher_tasks

A, B, C = "chatrooms.668.v2", "chatrooms.668", "channel.676"
# Lower bounds on elapsed time: loop timers have millisecond granularity (uvloop rounds), so a
# delay of exactly d can measure a hair under d.
SLACK = 0.98
MESSAGE = {
    "id": "5f0c2b1e",
    "chatroom_id": 668,
    "content": "gg [emote:37226:KEKW]",
    "type": "message",
}


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    async with open_sim() as server:
        yield server


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_pool(sim: Any, recorder: Recorder, **kwargs: Any) -> PusherPool:
    kwargs.setdefault("backoff", fast_backoff())
    # Long, so that a replay that works only thanks to the ack-timeout retry shows up as a failure.
    kwargs.setdefault("subscribe_timeout", 10 * UNIT)
    kwargs.setdefault("open_timeout", 2 * UNIT)
    return PusherPool(kwargs.pop("url", sim.pusher_url), on_event=recorder, **kwargs)


async def publish_and_receive(sim: Any, recorder: Recorder, channel: str, content: str) -> None:
    data = {**MESSAGE, "content": content}
    assert await sim.publish(channel, CHAT, data) == 1
    got_channel, event, raw = await recorder.next()
    assert (got_channel, event) == (channel, CHAT)
    assert isinstance(raw, str)
    assert json.loads(raw) == data


def attempts(pool: PusherPool) -> int:
    return sum(c.connect_attempts for c in pool.status().connections)


def reconnects(pool: PusherPool, key: str) -> int:
    return sum(c.reconnects_by_code.get(key, 0) for c in pool.status().connections)


# ------------------------------------------------------------------------------------ basics


async def test_subscribe_then_receive_the_raw_json_string(sim: Any, recorder: Recorder) -> None:
    async with make_pool(sim, recorder) as pool:
        await pool.subscribe(A)
        assert sim.subscribers(A) == 1
        assert pool.channels == frozenset({A})
        await publish_and_receive(sim, recorder, A, "hello")
        # Kick's double encoding: the relay gets the string exactly as it was on the wire.
        assert await sim.publish(A, "App\\Events\\PinnedMessageDeletedEvent", []) == 1
        assert await recorder.next() == (A, "App\\Events\\PinnedMessageDeletedEvent", "[]")

        status = pool.status()
        [conn] = status.connections
        assert conn.state == "connected"
        assert conn.socket_id is not None
        assert re.fullmatch(r"\d+\.\d+", conn.socket_id)
        assert conn.channels == 1
        assert conn.connected_since is not None
        assert conn.events_received == 2
        assert (status.fatal, status.connected, status.events_received) == (False, 1, 2)


async def test_subscribe_and_unsubscribe_are_idempotent(sim: Any, recorder: Recorder) -> None:
    async with make_pool(sim, recorder) as pool:
        await pool.subscribe(A)
        await pool.subscribe(A)
        assert sim.subscribers(A) == 1
        await pool.unsubscribe(A)
        await pool.unsubscribe(A)
        await pool.unsubscribe("never-subscribed")
        assert pool.channels == frozenset()
        await eventually(lambda: sim.subscribers(A) == 0, what="upstream unsubscribe")
        assert await sim.publish(A, CHAT, MESSAGE) == 0


async def test_a_failing_callback_is_counted_and_the_reader_goes_on(sim: Any) -> None:
    seen: list[str] = []

    def on_event(channel: str, event: str, data: object) -> None:
        seen.append(str(data))
        if len(seen) == 1:
            raise RuntimeError("relay bug")

    async with PusherPool(sim.pusher_url, on_event=on_event) as pool:
        await pool.subscribe(A)
        await sim.publish(A, CHAT, {"n": 1})
        await sim.publish(A, CHAT, {"n": 2})
        await eventually(lambda: len(seen) == 2, what="second event")
        assert json.loads(seen[1]) == {"n": 2}
        assert pool.status().callback_errors == 1
        assert pool.status().connections[0].state == "connected"


# ------------------------------------------------------------------------------- reconnects


async def test_4200_reconnects_at_once_and_a_repeat_backs_off(sim: Any, recorder: Recorder) -> None:
    loop = asyncio.get_running_loop()
    backoff = Backoff(initial=0.6 * UNIT, jitter=0.0)
    async with make_pool(sim, recorder, backoff=backoff) as pool:
        await pool.subscribe(A)
        opened = sim.connections_opened

        start = loop.time()
        await sim.close_connections(4200, "Please reconnect immediately")
        await eventually(lambda: sim.subscribers(A) == 1 and sim.connections_opened == opened + 1)
        assert loop.time() - start < 0.5 * UNIT  # no backoff the first time
        await publish_and_receive(sim, recorder, A, "after first 4200")

        # The server does it again before the connection became healthy: this time, backoff.
        start = loop.time()
        await sim.close_connections(4200, "Please reconnect immediately")
        await eventually(lambda: sim.subscribers(A) == 1 and sim.connections_opened == opened + 2)
        assert loop.time() - start >= 0.6 * UNIT * SLACK
        await publish_and_receive(sim, recorder, A, "after second 4200")
        assert reconnects(pool, "4200") == 2
        assert pool.status().connections[0].last_close_code == 4200


async def test_4100_waits_at_least_a_second(sim: Any, recorder: Recorder) -> None:
    loop = asyncio.get_running_loop()
    sim.refuse_connections(1, code=4100)
    async with make_pool(sim, recorder) as pool:  # backoff initial 0.05 s: the floor decides
        start = loop.time()
        await pool.subscribe(A)
        assert loop.time() - start >= 1.0 * SLACK
        assert pool.status().connections[0].connect_attempts == 2
        assert reconnects(pool, "4100") == 1
        await publish_and_receive(sim, recorder, A, "after 4100")


async def test_tcp_drop_reconnects_after_a_jittered_backoff(sim: Any, recorder: Recorder) -> None:
    loop = asyncio.get_running_loop()
    backoff = fast_backoff(initial=0.4, maximum=1.0, jitter=0.25)
    async with make_pool(sim, recorder, backoff=backoff) as pool:
        await pool.subscribe(A)
        opened = sim.connections_opened
        start = loop.time()
        await sim.drop_connections()
        await eventually(lambda: sim.subscribers(A) == 1 and sim.connections_opened == opened + 1)
        assert loop.time() - start >= 0.4 * 0.75 * UNIT * SLACK
        assert reconnects(pool, "1006") == 1
        await publish_and_receive(sim, recorder, A, "after drop")


async def test_unanswered_pings_mark_the_connection_stale(sim: Any, recorder: Recorder) -> None:
    pool = make_pool(
        sim, recorder, activity_timeout=0.3 * UNIT, pong_timeout=0.3 * UNIT, open_timeout=1 * UNIT
    )
    async with pool:
        await pool.subscribe(A)
        opened = sim.connections_opened
        sim.ignore_pings(True)
        await eventually(lambda: reconnects(pool, "stale") >= 1, what="stale connection")
        sim.ignore_pings(False)
        await eventually(
            lambda: sim.subscribers(A) == 1 and sim.connections_opened > opened, what="resubscribe"
        )
        await publish_and_receive(sim, recorder, A, "after stale")
        # While the server answers, pings keep an idle connection up.
        before = sim.connections_opened
        await asyncio.sleep(1.0 * UNIT)  # asserting an absence: several ping periods pass
        assert sim.connections_opened == before
        assert pool.status().connections[0].state == "connected"


async def test_subscriptions_are_replayed_after_every_reconnect(
    sim: Any, recorder: Recorder
) -> None:
    async with make_pool(sim, recorder) as pool:
        for channel in (A, B, C):
            await pool.subscribe(channel)
        for round_, fault in enumerate(("4200", "drop", "4201", "1011")):
            opened = sim.connections_opened
            if fault == "drop":
                await sim.drop_connections()
            else:
                await sim.close_connections(int(fault), "test")
            await eventually(
                lambda o=opened: (
                    sim.connections_opened == o + 1
                    and all(sim.subscribers(ch) == 1 for ch in (A, B, C))
                ),
                what=f"replay after {fault}",
            )
            for channel in (A, B, C):
                await publish_and_receive(sim, recorder, channel, f"round {round_} {channel}")
        assert sim.connection_count == 1


# ------------------------------------------------------------------------------------ fatal


async def test_wrong_app_key_is_fatal_and_stops_reconnecting(sim: Any, recorder: Recorder) -> None:
    url = sim.pusher_url.replace("/app/32cbd69e4b950bf97679", "/app/wrongkey")
    async with make_pool(sim, recorder, url=url) as pool:
        with pytest.raises(PusherFatalError) as info:
            await pool.subscribe(A)
        assert info.value.code == 4001
        await asyncio.sleep(1.0 * UNIT)  # asserting an absence: no further attempt
        assert attempts(pool) == 1
        assert sim.connections_opened == 0  # the simulator counts only accepted ones
        status = pool.status()
        assert status.fatal
        assert status.fatal_error is not None
        assert "4001" in status.fatal_error
        assert status.connections[0].state == "fatal"
        assert status.connections[0].last_close_code == 4001
        with pytest.raises(PusherFatalError):
            await pool.subscribe(B)  # fails fast
        assert pool.channels == frozenset()
        assert attempts(pool) == 1


async def test_fatal_close_of_a_live_connection(sim: Any, recorder: Recorder) -> None:
    async with make_pool(sim, recorder, fatal_retry_interval=0.5 * UNIT) as pool:
        await pool.subscribe(A)
        await sim.close_connections(4003, "App is disabled")
        await eventually(lambda: pool.status().fatal, what="fatal status")
        with pytest.raises(PusherFatalError):
            await pool.subscribe(B)
        # The retry interval passes, the server is fine again: fatal clears, A is replayed.
        await eventually(lambda: not pool.status().fatal and sim.subscribers(A) == 1)
        await publish_and_receive(sim, recorder, A, "after fatal")
        assert sim.connections_opened == 2


# --------------------------------------------------------------------------- subscriptions


async def test_unacknowledged_subscribe_is_retried_then_succeeds(
    sim: Any, recorder: Recorder
) -> None:
    loop = asyncio.get_running_loop()
    sim.fail_subscriptions(A, mode="swallow", count=1)
    async with make_pool(sim, recorder, subscribe_timeout=0.4 * UNIT) as pool:
        start = loop.time()
        await pool.subscribe(A)
        assert loop.time() - start >= 0.4 * UNIT * SLACK
        assert sim.subscribers(A) == 1
        await publish_and_receive(sim, recorder, A, "after retry")


async def test_never_acknowledged_subscribe_fails_after_the_retries(
    sim: Any, recorder: Recorder
) -> None:
    loop = asyncio.get_running_loop()
    sim.fail_subscriptions(A, mode="swallow")
    async with make_pool(sim, recorder, subscribe_timeout=0.3 * UNIT, subscribe_retries=1) as pool:
        await pool.subscribe(B)  # the connection is up
        start = loop.time()
        with pytest.raises(SubscriptionError, match="not acknowledged after 2 tries"):
            await pool.subscribe(A)
        assert 0.6 * UNIT * SLACK <= loop.time() - start < 1.5 * UNIT
        assert pool.channels == frozenset({B})


async def test_a_replay_nobody_acknowledges_is_tried_again_later(
    sim: Any, recorder: Recorder
) -> None:
    """A channel that worked stays desired when its replay is ignored: after the retries on the
    new socket it is tried again with a growing delay, until Pusher answers."""
    timeout = 0.2 * UNIT
    async with make_pool(sim, recorder, subscribe_timeout=timeout, subscribe_retries=1) as pool:
        await pool.subscribe(A)
        sim.fail_subscriptions(A, mode="swallow", count=3)  # two sends on the socket, and one more
        await sim.drop_connections()
        await eventually(lambda: sim.subscribers(A) == 1, 10 * UNIT, "the replay to succeed")
        await publish_and_receive(sim, recorder, A, "back after an ignored replay")
        assert pool.channels == frozenset({A})


async def test_subscription_error_is_a_subscription_error(sim: Any, recorder: Recorder) -> None:
    sim.fail_subscriptions("chatrooms.*", mode="error")
    async with make_pool(sim, recorder) as pool:
        with pytest.raises(SubscriptionError) as info:
            await pool.subscribe(A)
        assert info.value.channel == A
        assert pool.channels == frozenset()
        await pool.subscribe(C)  # other channels are unaffected
        assert pool.channels == frozenset({C})


async def test_private_channel_without_auth_is_refused(sim: Any, recorder: Recorder) -> None:
    async with make_pool(sim, recorder) as pool:
        with pytest.raises(SubscriptionError):
            await pool.subscribe("private-userfeed.1")


async def test_concurrent_subscribes_share_one_upstream_subscribe(
    sim: Any, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    original = PusherClientProtocol.subscribe

    def spy(self: PusherClientProtocol, channel: str) -> None:
        sent.append(channel)
        original(self, channel)

    monkeypatch.setattr(PusherClientProtocol, "subscribe", spy)
    async with make_pool(sim, recorder) as pool:
        await pool.subscribe(C)
        sent.clear()
        await asyncio.wait_for(asyncio.gather(*(pool.subscribe(A) for _ in range(10))), 5 * UNIT)
        assert sent == [A]
        assert sim.subscribers(A) == 1


async def test_unsubscribe_while_pending_cancels_cleanly(sim: Any, recorder: Recorder) -> None:
    sim.fail_subscriptions(A, mode="swallow")
    async with make_pool(sim, recorder, subscribe_timeout=5 * UNIT) as pool:
        await pool.subscribe(C)
        waiters = [asyncio.create_task(pool.subscribe(A)) for _ in range(2)]
        await eventually(lambda: A in pool.channels)
        await pool.unsubscribe(A)
        for waiter in waiters:
            with pytest.raises(SubscriptionError, match="unsubscribed"):
                await waiter
        assert pool.channels == frozenset({C})
        assert sim.subscribers(A) == 0


async def test_subscribe_in_flight_during_a_drop_is_resent(sim: Any, recorder: Recorder) -> None:
    loop = asyncio.get_running_loop()
    sim.fail_subscriptions(A, mode="swallow", count=1)
    async with make_pool(sim, recorder, subscribe_timeout=5 * UNIT) as pool:
        await pool.subscribe(C)
        start = loop.time()
        pending = asyncio.create_task(pool.subscribe(A))
        # Frames are ordered: once C's second subscribe is acked, the server has seen (and
        # swallowed) A's.
        await pool.unsubscribe(C)
        await pool.subscribe(C)
        assert not pending.done()
        await sim.drop_connections()
        await pending  # replayed after the reconnect, acked at once
        assert loop.time() - start < 5 * UNIT  # well before the retry timer
        assert sim.subscribers(A) == 1


async def test_subscribe_gives_up_when_no_connection_comes_up(recorder: Recorder) -> None:
    # Nothing listens on this port (bound, then closed): every attempt is refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/app/32cbd69e4b950bf97679?protocol=7"
    pool = PusherPool(
        url,
        on_event=recorder,
        backoff=fast_backoff(),
        subscribe_timeout=0.2 * UNIT,
        subscribe_retries=1,
    )
    async with pool:
        with pytest.raises(PusherUnavailable):
            await pool.subscribe(A)
        status = pool.status()
        assert status.connections[0].state in ("backoff", "connecting")
        assert reconnects(pool, "connect_error") >= 1
        assert pool.channels == frozenset()


# --------------------------------------------------------------------------------- sharding


async def test_channels_are_sharded_and_idle_connections_closed(
    sim: Any, recorder: Recorder
) -> None:
    channels = [f"chatrooms.{n}.v2" for n in range(5)]
    async with make_pool(
        sim, recorder, max_channels_per_connection=2, idle_close_after=0.2 * UNIT
    ) as pool:
        await asyncio.gather(*(pool.subscribe(ch) for ch in channels))
        status = pool.status()
        assert [c.channels for c in status.connections] == [2, 2, 1]
        assert sim.connection_count == 3
        assert all(sim.subscribers(ch) == 1 for ch in channels)
        for ch in channels:
            await publish_and_receive(sim, recorder, ch, f"to {ch}")

        # Emptying the third connection closes it after the idle delay. Its counters live on
        # in the totals, also while it is still closing (regression: they went missing then).
        await pool.unsubscribe(channels[4])
        await eventually(lambda: len(pool.status().connections) == 2, what="idle connection reaped")
        assert pool.status().events_received == 5
        await eventually(lambda: sim.connection_count == 2, what="idle connection closed")
        assert pool.status().events_received == 5
        # A freed slot is reused before a new connection is opened.
        await pool.unsubscribe(channels[0])
        await pool.subscribe("chatrooms.99.v2")
        assert sim.connection_count == 2
        # The last connection stays open even with no channel at all.
        for ch in [*channels[1:4], "chatrooms.99.v2"]:
            await pool.unsubscribe(ch)
        await eventually(lambda: sim.connection_count == 1, what="one warm connection")
        await asyncio.sleep(0.4 * UNIT)  # asserting an absence: the last one is not reaped
        assert sim.connection_count == 1


# -------------------------------------------------------------------------------- lifecycle


async def test_close_leaves_no_tasks_and_fails_pending(sim: Any, recorder: Recorder) -> None:
    sim.fail_subscriptions(B, mode="swallow")
    pool = make_pool(sim, recorder, max_channels_per_connection=1)
    await pool.start()
    await pool.subscribe(A)
    pending = asyncio.create_task(pool.subscribe(B))
    await eventually(lambda: sim.connection_count == 2)
    await pool.close()
    with pytest.raises(PusherUnavailable):
        await pending
    assert pusher_tasks() == set()
    await eventually(lambda: sim.connection_count == 0, what="server saw the close")
    with pytest.raises(PusherUnavailable):
        await pool.subscribe(A)
    await pool.close()  # idempotent


async def test_subscribe_before_start_is_unavailable(sim: Any, recorder: Recorder) -> None:
    pool = make_pool(sim, recorder)
    with pytest.raises(PusherUnavailable):
        await pool.subscribe(A)
    await pool.close()


def test_invalid_settings_are_config_errors(recorder: Recorder) -> None:
    url = "ws://127.0.0.1:9/app/key?protocol=7"
    with pytest.raises(ConfigError):
        PusherPool(url, on_event=recorder, max_channels_per_connection=0)
    with pytest.raises(ConfigError):
        PusherPool("not a url", on_event=recorder)
