"""Shared upstream subscriptions: many clients, one Pusher subscription per channel; released
after the linger when the last one leaves (by unsubscribe, disconnect or an expired recovery
window), and never while a dropped client can still recover its session."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import UNIT, NodeScript, eventually, node_script
from gateway_harness import (
    CHAT,
    XQC,
    XQC_CHANNELS,
    XQC_V2,
    PyClient,
    Spy,
    Stack,
    expected_payload,
    gateway_stack,
)

pytestmark = pytest.mark.node

SWARM = 30
XQC_ARGS = {"channelName": "xqc", "chatroomId": "668"}


async def swarm_command(swarm: NodeScript, cmd: str, reply: str, **args: Any) -> dict[str, Any]:
    swarm.send({"cmd": cmd, **args})
    return await swarm.until(lambda m: m["ev"] == reply, 15 * UNIT)


async def swallowed(stack: Stack) -> None:
    """Wait until Kick has swallowed the held subscribe. Dropping the connection earlier would
    leave the swallow rule for the replay, which then waits a whole subscribe_timeout."""
    await eventually(
        lambda: not any(r.pattern == XQC_V2 for r in stack.sim.faults.subscribe),
        15 * UNIT,
        "the swallowed subscribe",
    )


async def subscribe_swarm(
    stack: Stack, swarm: NodeScript, *, hold: bool = False
) -> tuple[Spy, Spy]:
    """Subscribe every client of ``swarm`` to xqc at once; return spies on the pool.

    With ``hold``, Kick leaves the first upstream subscribe unanswered until every client is
    waiting for it (then the connection drops and the replay is answered): all thirty are
    first subscribers at the same time, whatever the machine's speed."""
    await swarm.until(lambda m: m["ev"] == "ready", 15 * UNIT)
    subscribes = Spy(stack.app.pool, "subscribe")
    unsubscribes = Spy(stack.app.pool, "unsubscribe")
    if hold:
        stack.sim.fail_subscriptions(XQC_V2, mode="swallow", count=1)
    swarm.send({"cmd": "subscribe", **XQC_ARGS})
    if hold:
        await eventually(lambda: stack.app.registry.count(XQC) == SWARM, 15 * UNIT, "all wait")
        await swallowed(stack)
        assert stack.app.gateway.info(XQC) is None  # still activating
        await stack.sim.drop_connections()
    done = await swarm.until(lambda m: m["ev"] == "subscribed", 15 * UNIT)
    assert all(r == {"ok": True, **XQC_ARGS, "streamEvents": True} for r in done["replies"])
    return subscribes, unsubscribes


async def publish_and_count(stack: Stack, swarm: NodeScript, n: int) -> dict[str, Any]:
    for _ in range(n):
        await stack.sim.publish_event(CHAT, "xqc")
    # Every client has received everything once the busiest and the slowest agree.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * UNIT
    while True:
        report = await swarm_command(swarm, "report", "report")
        if min(report["counts"]) >= n or loop.time() > deadline:
            return report
        await asyncio.sleep(0.05)


async def test_thirty_clients_share_one_upstream_subscription_released_after_the_linger() -> None:
    linger = 0.3 * UNIT
    async with (
        gateway_stack({"relay.linger": linger, "pusher.subscribe_timeout": 30}) as stack,
        node_script("relay_swarm.mjs", stack.url, str(SWARM)) as swarm,
    ):
        app = stack.app
        subscribes, unsubscribes = await subscribe_swarm(stack, swarm, hold=True)
        # Thirty concurrent first subscribers: one activation, one upstream subscribe each.
        for channel in XQC_CHANNELS:
            assert subscribes.count(channel) == 1, channel
        assert app.gateway.stats.activations == 1
        assert stack.sim.rest_requests["/api/v2/channels/xqc"] == 1  # one channel lookup
        assert app.registry.count(XQC) == SWARM
        assert stack.upstream() == dict.fromkeys(XQC_CHANNELS, 1)

        report = await publish_and_count(stack, swarm, 100)  # a burst
        assert report["counts"] == [100] * SWARM
        assert report["names"] == {CHAT: 100 * SWARM}
        assert report["channelNames"] == ["xqc"]
        assert app.gateway.stats.events_out == 100  # one broadcast per event, not per client

        release = Spy(app.gateway, "release")
        done = await swarm_command(swarm, "unsubscribe", "unsubscribed", **XQC_ARGS)
        assert all(r == {"ok": True, **XQC_ARGS} for r in done["replies"])
        await eventually(lambda: stack.upstream() == {}, 5 * UNIT, "released upstream")
        # Released once, by the last leaver, and only after the linger.
        assert release.count(XQC) == 1
        (released_at,) = release.times(XQC)
        for channel in XQC_CHANNELS:
            (gone_at,) = unsubscribes.times(channel)
            assert gone_at - released_at >= linger * 0.99
        # Kick may have seen the last unsubscribe before the deactivation that sent it resumed
        # and counted itself: wait for the count (it failed once on a busy machine).
        await eventually(lambda: app.gateway.stats.deactivations == 1, 5 * UNIT, "deactivated")
        assert app.gateway.active_rooms == 0


async def test_thirty_concurrent_subscribers_refused_by_kick_leave_nothing_behind() -> None:
    async with (
        gateway_stack({"pusher.subscribe_timeout": 30}) as stack,
        node_script("relay_swarm.mjs", stack.url, str(SWARM)) as swarm,
    ):
        await swarm.until(lambda m: m["ev"] == "ready", 15 * UNIT)
        # Hold the first subscribe (unanswered) until all thirty wait on it, then let it
        # through (replayed on a new connection) and refuse the next channel: a rollback.
        stack.sim.fail_subscriptions(XQC_V2, mode="swallow", count=1)
        stack.sim.fail_subscriptions("chatrooms.668", mode="error", count=1)
        subscribes = Spy(stack.app.pool, "subscribe")
        release = Spy(stack.app.gateway, "release")
        swarm.send({"cmd": "subscribe", **XQC_ARGS})
        await eventually(lambda: stack.app.registry.count(XQC) == SWARM, 15 * UNIT, "all wait")
        await swallowed(stack)
        await stack.sim.drop_connections()
        done = await swarm.until(lambda m: m["ev"] == "subscribed", 15 * UNIT)
        assert {r["error"]["code"] for r in done["replies"]} == {"subscription_failed"}
        assert subscribes.count(XQC_V2) == 1
        assert subscribes.count("chatrooms.668") == 1
        assert release.count(XQC) == 1  # by the last of the thirty to hear the failure
        await eventually(lambda: stack.upstream() == {}, 5 * UNIT, "rolled back")
        assert stack.app.registry.count(XQC) == 0
        # Kick accepts again: the same thirty subscribe in one activation.
        done = await swarm_command(swarm, "subscribe", "subscribed", **XQC_ARGS)
        assert all(r["ok"] for r in done["replies"])
        assert stack.app.gateway.stats.activations == 1
        assert stack.upstream() == dict.fromkeys(XQC_CHANNELS, 1)


async def test_last_disconnect_releases_the_upstream_subscription() -> None:
    async with (
        gateway_stack() as stack,
        node_script("relay_swarm.mjs", stack.url, str(SWARM)) as swarm,
    ):
        await subscribe_swarm(stack, swarm)
        await swarm_command(swarm, "disconnect", "disconnected")
        await eventually(lambda: stack.upstream() == {}, 5 * UNIT, "released upstream")
        assert stack.app.registry.count(XQC) == 0
        # Counted once the last unsubscribe's coroutine resumes, which may be after Kick saw it.
        await eventually(
            lambda: stack.app.gateway.stats.deactivations == 1, 5 * UNIT, "deactivated"
        )


async def _connect_recoverable(stack: Stack, client: NodeScript, opts: dict[str, Any]) -> None:
    await client.until(lambda m: m["ev"] == "ready")
    client.send({"cmd": "connect", "url": stack.url, "opts": {"transports": ["websocket"], **opts}})
    connected = await client.until(lambda m: m["ev"] == "connect")
    assert connected["recovered"] is False
    client.send({"cmd": "emit", "event": "subscribe", "args": [XQC_ARGS], "ack": True, "id": 1})
    reply = await client.until(lambda m: m["ev"] == "ack")
    assert reply["args"] == [{"ok": True, **XQC_ARGS, "streamEvents": True}]


async def test_recovered_client_keeps_the_subscription_and_gets_the_gap_once_in_order() -> None:
    linger = 0.1 * UNIT
    gap = 0.6 * UNIT  # the client reconnects this long after the drop: longer than the linger
    async with (
        gateway_stack({"relay.linger": linger}) as stack,
        node_script("sio_client.mjs") as client,
    ):
        app = stack.app
        opts = {"reconnectionDelay": gap * 1000, "randomizationFactor": 0}
        await _connect_recoverable(stack, client, opts)
        release = Spy(app.gateway, "release")
        unsubscribes = Spy(app.pool, "unsubscribe")
        published = [await stack.sim.publish_event(CHAT, "xqc")]
        await client.until(lambda m: m["ev"] == "event" and m["name"] == CHAT)

        loop = asyncio.get_running_loop()
        dropped_at = loop.time()
        client.send({"cmd": "drop"})
        await eventually(lambda: len(app.sio.detached) == 1, 5 * UNIT, "detached")
        for _ in range(3):  # published while the client is away
            published.append(await stack.sim.publish_event(CHAT, "xqc"))
        again = await client.until(lambda m: m["ev"] == "connect", 10 * UNIT)
        assert loop.time() - dropped_at >= linger * 3
        assert again["recovered"] is True
        published.append(await stack.sim.publish_event(CHAT, "xqc"))
        await client.until(
            lambda m: m["ev"] == "event" and m["args"][0]["id"] == published[-1]["id"]
        )
        seen = [m["args"][0] for m in client.lines if m["ev"] == "event" and m["name"] == CHAT]
        assert seen == [expected_payload(p, "xqc") for p in published]
        # The upstream subscription was never released, nor even scheduled for release.
        assert release.calls == []
        assert unsubscribes.calls == []
        assert app.gateway.stats.deactivations == 0
        assert stack.upstream()[XQC_V2] == 1
        # What the gap was recovered from is what /stats and /metrics report.
        assert app.clients_snapshot()["recovery_log_bytes"] > 0


async def test_expired_recovery_window_releases_the_subscription() -> None:
    window = 1.0  # the smallest window the configuration allows
    async with (
        gateway_stack({"socketio.recovery_window": window}) as stack,
        node_script("sio_client.mjs") as client,
    ):
        app = stack.app
        await _connect_recoverable(stack, client, {"reconnection": False})
        release = Spy(app.gateway, "release")
        loop = asyncio.get_running_loop()
        dropped_at = loop.time()
        client.send({"cmd": "drop"})
        await eventually(lambda: stack.upstream() == {}, 10 * UNIT, "released after the window")
        (released_at,) = release.times(XQC)
        assert released_at - dropped_at >= window * 0.9
        assert app.registry.count(XQC) == 0
        assert app.sio.detached == {}


async def test_two_slugs_for_one_chatroom_share_the_upstream_but_not_channel_name() -> None:
    async with gateway_stack() as stack:
        subscribes = Spy(stack.app.pool, "subscribe")
        a = await PyClient.open(stack.url)
        b = await PyClient.open(stack.url)
        try:
            assert (await a.subscribe("xqc", "668"))["streamEvents"] is True
            # Kick does not know this slug: no stream events, but the chat of chatroom 668.
            other = await b.subscribe("xqc-fan", "668")
            assert other["ok"] is True and other["streamEvents"] is False
            assert other["warning"]["code"] == "stream_events_unavailable"
            assert subscribes.count(XQC_V2) == 1
            assert stack.upstream()[XQC_V2] == 1

            data = await stack.sim.publish_event(CHAT, "xqc")
            assert await a.next_named(CHAT) == expected_payload(data, "xqc")
            assert await b.next_named(CHAT) == expected_payload(data, "xqc-fan")
            assert stack.app.gateway.stats.events_out == 2

            await a.call("unsubscribe", {"channelName": "xqc", "chatroomId": "668"})
            # The stream channels were xqc's alone; the chatroom channels are still b's.
            await eventually(
                lambda: stack.upstream() == {XQC_V2: 1, "chatrooms.668": 1}, 5 * UNIT, "xqc gone"
            )
            seen = len(b.events)
            data = await stack.sim.publish_event(CHAT, "xqc")
            assert await b.next_named(CHAT, after=seen) == expected_payload(data, "xqc-fan")
            await b.call("unsubscribe", {"channelName": "xqc-fan", "chatroomId": "668"})
            await eventually(lambda: stack.upstream() == {}, 5 * UNIT, "all released")
            assert len(a.named(CHAT)) == 1
        finally:
            await a.close()
            await b.close()
