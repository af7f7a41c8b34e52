"""Upstream faults, injected in the simulator, seen through the whole gateway and a real client:
close codes, dropped TCP, a hung server, a rejected app key, refused and swallowed subscribes,
and a failed channel lookup."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import pytest

from kichat.app import App
from kichat.relay import RoomKey
from kichat.sim import DEFAULT_APP_KEY, KickSimulator

from conftest import UNIT, eventually
from gateway_harness import (
    CHAT,
    XQC,
    XQC_CHANNELS,
    XQC_STREAM,
    XQC_V2,
    PyClient,
    Stack,
    expected_payload,
    gateway_settings,
    gateway_stack,
    holds,
)


async def chat_flows(stack: Stack, client: PyClient) -> None:
    """A new chat message published now reaches ``client``."""
    seen = len(client.events)
    data = await stack.sim.publish_event(CHAT, "xqc")
    assert await client.next_named(CHAT, after=seen) == expected_payload(data, "xqc")


def resubscribed(stack: Stack, connections: int) -> Callable[[], bool]:
    """The simulator saw ``connections`` gateway connections and the last has every channel."""
    return lambda: (
        stack.sim.connections_opened == connections
        and stack.upstream() == dict.fromkeys(XQC_CHANNELS, 1)
    )


async def _faulted(stack: Stack, fault: Callable[[], Awaitable[object]], code: str) -> float:
    """Subscribe a client, apply ``fault``, and return how long until the stream resumed."""
    client = await PyClient.open(stack.url)
    try:
        assert (await client.subscribe("xqc", "668"))["ok"] is True
        await chat_flows(stack, client)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await fault()
        await eventually(resubscribed(stack, 2), 10 * UNIT, "resubscribed on a new connection")
        elapsed = loop.time() - started
        await chat_flows(stack, client)
        assert stack.app.pool.status().reconnects_by_code == {code: 1}
        assert stack.app.gateway.stats.activations == 1  # the relay never noticed
        return elapsed
    finally:
        await client.close()


async def test_close_4200_resumes_at_once() -> None:
    async with gateway_stack() as stack:
        elapsed = await _faulted(stack, lambda: stack.sim.close_connections(4200), "4200")
        assert elapsed < 1.0 * UNIT


async def test_close_4100_resumes_after_a_backoff() -> None:
    async with gateway_stack() as stack:
        elapsed = await _faulted(stack, lambda: stack.sim.close_connections(4100), "4100")
        assert elapsed >= 0.9  # Pusher's "over capacity": at least a second, whatever the config


async def test_dropped_tcp_connection_resumes() -> None:
    async with gateway_stack() as stack:
        elapsed = await _faulted(stack, stack.sim.drop_connections, "1006")
        assert elapsed < 2.0 * UNIT


async def test_unanswered_pings_are_detected_and_the_stream_resumes() -> None:
    # The simulator announces a short activity_timeout: the gateway pings after that much
    # silence and gives up pong_timeout later.
    overrides = {"pusher.pong_timeout": 1.0}
    async with gateway_stack(overrides, activity_timeout=0.3) as stack:

        async def hang() -> None:
            stack.sim.ignore_pings(True)

        elapsed = await _faulted(stack, hang, "stale")
        assert 0.9 <= elapsed < 5.0 * UNIT


async def test_wrong_app_key_is_fatal_reported_and_not_retried_in_a_loop() -> None:
    # Kick rotated its key: the simulator knows another one than the gateway's URL names.
    async with KickSimulator(port=0, app_key="rotated-key") as sim:
        wrong = sim.pusher_url.replace("/app/rotated-key", f"/app/{DEFAULT_APP_KEY}")
        overrides = {"pusher.fatal_retry_interval": 60}
        async with gateway_stack(
            overrides, sim=sim, pusher_url=wrong, wait_connected=False
        ) as stack:
            await eventually(lambda: stack.app.pool.status().fatal, 5 * UNIT, "fatal upstream")
            await _assert_fatal_reported(stack)
            # No hot loop: one refused connection, none opened, for as long as we watch.
            await holds(
                lambda: sim.connections_refused == 1 and sim.connections_opened == 0,
                0.5 * UNIT,
                "a single refused connection",
            )
            assert stack.upstream() == {}


async def _assert_fatal_reported(stack: Stack) -> None:
    ready = await stack.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready"
    assert any("upstream refuses the gateway" in r and "4001" in r for r in body["reasons"])
    assert await stack.metric("kichat_upstream_fatal") == 1
    assert (await stack.get("/healthz")).status_code == 200
    client = await PyClient.open(stack.url)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await client.subscribe("moonlitfox", "4100123")
        assert loop.time() - started < 1.0 * UNIT  # promptly, not after a subscribe timeout
        assert reply["ok"] is False
        assert reply["error"]["code"] == "upstream_unavailable"
        assert "4001" in reply["error"]["message"]
        await client.sio.emit("subscribe", {"channelName": "moonlitfox", "chatroomId": "4100123"})
        assert (await client.next_named("error"))["error"]["code"] == "upstream_unavailable"
    finally:
        await client.close()
    assert stack.app.registry.count(RoomKey(4100123, "moonlitfox")) == 0
    assert "chatrooms.4100123.v2" not in stack.upstream()


async def test_fatal_close_is_reported_then_retried_after_the_interval() -> None:
    async with gateway_stack({"pusher.fatal_retry_interval": 1}) as stack:
        client = await PyClient.open(stack.url)
        newcomer: PyClient | None = None
        try:
            assert (await client.subscribe("xqc", "668"))["ok"] is True
            loop = asyncio.get_running_loop()
            started = loop.time()
            await stack.sim.close_connections(4001)
            await eventually(lambda: stack.app.pool.status().fatal, 5 * UNIT, "fatal upstream")
            await _assert_fatal_reported(stack)
            # The room is active (client's), yet a newcomer hears that nothing can reach it.
            # Found by this test: it used to get {ok: true} and then silence.
            newcomer = await PyClient.open(stack.url)
            refused = await newcomer.subscribe("xqc", "668")
            assert refused["ok"] is False
            assert refused["error"]["code"] == "upstream_unavailable"
            assert stack.app.registry.count(XQC) == 1
            # One retry after fatal_retry_interval; Kick accepts again; every channel is back,
            # and the subscriber from before the outage still has its subscription.
            await eventually(resubscribed(stack, 2), 10 * UNIT, "retried after the interval")
            assert loop.time() - started >= 0.9
            assert (await stack.get("/readyz")).status_code == 200
            assert await stack.metric("kichat_upstream_fatal") == 0
            await chat_flows(stack, client)
            assert (await newcomer.subscribe("xqc", "668"))["ok"] is True
            await chat_flows(stack, newcomer)
            assert stack.sim.connections_opened == 2
        finally:
            await client.close()
            if newcomer is not None:
                await newcomer.close()


async def test_refused_subscribe_fails_and_rolls_back() -> None:
    async with gateway_stack() as stack:
        # The legacy alias is refused after the primary was accepted: the primary is rolled back.
        stack.sim.fail_subscriptions("chatrooms.668", mode="error")
        client = await PyClient.open(stack.url)
        try:
            reply = await client.subscribe("xqc", "668")
            assert reply["ok"] is False
            assert reply["error"]["code"] == "subscription_failed"
            assert (reply["channelName"], reply["chatroomId"]) == ("xqc", "668")
            await eventually(lambda: stack.upstream() == {}, what="rollback upstream")
            app = stack.app
            assert app.feeds.upstream_channels == frozenset()
            assert app.pool.channels == frozenset()
            assert app.registry.count(XQC) == 0
            assert app.gateway.stats.activation_failures == 1
            await client.sio.emit("subscribe", {"channelName": "xqc", "chatroomId": "668"})
            assert (await client.next_named("error"))["error"]["code"] == "subscription_failed"
            # Once Kick accepts again, the same subscribe works.
            stack.sim.clear_faults()
            assert (await client.subscribe("xqc", "668"))["ok"] is True
            assert stack.upstream() == dict.fromkeys(XQC_CHANNELS, 1)
            await chat_flows(stack, client)
        finally:
            await client.close()


async def test_swallowed_subscribe_is_sent_again() -> None:
    timeout = 0.3 * UNIT
    async with gateway_stack({"pusher.subscribe_timeout": timeout}) as stack:
        stack.sim.fail_subscriptions(XQC_V2, mode="swallow", count=1)
        client = await PyClient.open(stack.url)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await client.subscribe("xqc", "668")
            assert reply["ok"] is True
            assert loop.time() - started >= timeout * 0.9
            assert stack.upstream() == dict.fromkeys(XQC_CHANNELS, 1)
            await chat_flows(stack, client)
        finally:
            await client.close()


async def test_subscribe_never_acknowledged_fails_and_rolls_back() -> None:
    overrides = {"pusher.subscribe_timeout": 0.2 * UNIT, "pusher.subscribe_retries": 1}
    async with gateway_stack(overrides) as stack:
        stack.sim.fail_subscriptions("chatrooms.668", mode="swallow")
        client = await PyClient.open(stack.url)
        try:
            reply = await client.subscribe("xqc", "668")
            assert reply["ok"] is False
            assert reply["error"]["code"] == "subscription_failed"
            await eventually(lambda: stack.upstream() == {}, what="rollback upstream")
            assert stack.app.pool.channels == frozenset()
        finally:
            await client.close()


@pytest.mark.parametrize("status", [403, "hang"])
async def test_failed_channel_lookup_leaves_chat_flowing_with_a_warning(
    status: int | str,
) -> None:
    overrides = {"kick_api.retries": 0, "kick_api.timeout": 0.5 * UNIT}
    async with gateway_stack(overrides) as stack:
        stack.sim.fail_rest("xqc", status=status)
        client = await PyClient.open(stack.url)
        other = await PyClient.open(stack.url)
        try:
            reply = await client.subscribe("xqc", "668")
            warning = reply.pop("warning")
            assert reply == {"ok": True, "channelName": "xqc", "chatroomId": "668",
                             "streamEvents": False}  # fmt: skip
            assert warning["code"] == "stream_events_unavailable"
            assert "xqc" in warning["message"]
            assert XQC_V2 in stack.upstream()
            assert XQC_STREAM not in stack.upstream()
            await chat_flows(stack, client)
            # Without an acknowledgement the warning comes as a "warning" event.
            await other.sio.emit("subscribe", {"channelName": "xqc", "chatroomId": "668"})
            event = await other.next_named("warning")
            assert event["warning"]["code"] == "stream_events_unavailable"
            assert event["ok"] is True and event["streamEvents"] is False
            await chat_flows(stack, other)
            assert stack.app.gateway.stats.lookup_failures == 1
        finally:
            await client.close()
            await other.close()


async def test_subscribe_in_flight_when_the_connection_drops_is_sent_again() -> None:
    # Long subscribe timeout: only the replay after the reconnect can make this quick.
    async with gateway_stack({"pusher.subscribe_timeout": 30}) as stack:
        stack.sim.fail_subscriptions(XQC_V2, mode="swallow", count=1)
        client = await PyClient.open(stack.url)
        try:
            pending = asyncio.ensure_future(client.subscribe("xqc", "668"))
            await eventually(lambda: not stack.sim.faults.subscribe, what="the swallowed subscribe")
            assert not pending.done()
            await stack.sim.drop_connections()
            reply = await asyncio.wait_for(pending, 5 * UNIT)
            assert reply["ok"] is True and reply["streamEvents"] is True
            await eventually(resubscribed(stack, 2), what="every channel on the new connection")
            await chat_flows(stack, client)
        finally:
            await client.close()


async def test_replayed_subscribe_swallowed_after_a_reconnect_is_sent_again() -> None:
    timeout = 0.3 * UNIT
    async with gateway_stack({"pusher.subscribe_timeout": timeout}) as stack:
        client = await PyClient.open(stack.url)
        try:
            assert (await client.subscribe("xqc", "668"))["ok"] is True
            stack.sim.fail_subscriptions(XQC_V2, mode="swallow", count=1)
            await stack.sim.close_connections(4200)
            await eventually(resubscribed(stack, 2), 10 * UNIT, "replay re-sent after a timeout")
            await chat_flows(stack, client)
        finally:
            await client.close()


async def test_client_gone_while_its_subscribe_waits_leaves_nothing_behind() -> None:
    async with gateway_stack() as stack:
        stack.sim.fail_rest("xqc", status="delay", delay=0.3 * UNIT)
        client = await PyClient.open(stack.url)
        await client.sio.emit("subscribe", {"channelName": "xqc", "chatroomId": "668"})
        await eventually(lambda: stack.app.registry.count(XQC) == 1, what="subscribe arrived")
        await client.close()
        await eventually(lambda: stack.app.sio.snapshot()["sockets"] == 0, what="gone")
        # The activation completes, then the linger and the re-check release everything.
        await eventually(lambda: stack.app.gateway.stats.activations == 1, what="activated")
        await eventually(lambda: stack.upstream() == {}, 5 * UNIT, "released")
        assert stack.app.registry.count(XQC) == 0
        assert stack.app.gateway.active_rooms == 0
        assert stack.app.nsp.room_size(XQC.room) == 0


async def test_replayed_subscribe_refused_once_is_tried_again() -> None:
    timeout = 0.3 * UNIT
    async with gateway_stack({"pusher.subscribe_timeout": timeout}) as stack:
        client = await PyClient.open(stack.url)
        try:
            assert (await client.subscribe("xqc", "668"))["ok"] is True
            stack.sim.fail_subscriptions(XQC_V2, mode="error", count=1)  # a passing hiccup
            await stack.sim.close_connections(4200)
            await eventually(resubscribed(stack, 2), 2 * UNIT, "the refused channel back")
            await chat_flows(stack, client)
        finally:
            await client.close()


async def test_a_gateway_that_cannot_listen_leaves_no_upstream_behind() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        async with KickSimulator(port=0) as sim:
            app = App(gateway_settings(sim, {"server.port": busy.getsockname()[1]}))
            with pytest.raises(OSError, match="address already in use"):
                async with app:
                    pass
            # start() binds the port before anything else: the upstream was never opened.
            assert [c.socket_id for c in app.pool.status().connections] == [None]
            assert sim.stats()["connections_opened"] == 0
            assert app.kick._client.is_closed


@pytest.mark.parametrize("outage", ["stopped", "refusing", "hanging"])
async def test_kick_down_a_subscribe_fails_within_connect_wait_naming_the_cause(
    outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 10 of issue 8: no upstream connection can be had. Before: 30 s of silence, then
    "no upstream Pusher connection", and only INFO lines (one per retry) for the operator."""
    caplog.set_level(logging.INFO, logger="kichat.kick.pusher")
    wait = 1.0 * UNIT
    causes = {
        "stopped": "connection refused by 127.0.0.1",
        "refusing": "closed with code 4100 before Pusher's handshake completed",
        "hanging": "still connecting to 127.0.0.1",
    }
    async with gateway_stack({"pusher.connect_wait": wait}) as stack:
        client = await PyClient.open(stack.url)
        try:
            if outage == "stopped":
                await stack.sim.stop()
            else:
                if outage == "refusing":
                    stack.sim.refuse_connections(1000, 4100)
                else:
                    stack.sim.ignore_pings(True, new_connections=True)
                await stack.sim.drop_connections()
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await client.subscribe("xqc", "668")
            # Well within the subscribe budget (3 x pusher.subscribe_timeout = 6 s).
            assert loop.time() - started < wait + 1.0 * UNIT
            assert reply["ok"] is False
            assert reply["error"]["code"] == "upstream_unavailable"
            assert "no connection to Kick's Pusher for" in reply["error"]["message"]
            assert causes[outage] in reply["error"]["message"]
            assert stack.app.registry.count(XQC) == 0
            assert stack.app.gateway.active_rooms == 0
            if outage != "hanging":  # a hung handshake ends only after open_timeout (10 s)
                warnings = [
                    r.getMessage() for r in caplog.records
                    if r.levelno == logging.WARNING and r.name == "kichat.kick.pusher"
                ]  # fmt: skip
                assert len(warnings) == 1, warnings
                assert causes[outage] in warnings[0]
            # Kick is back: the same subscribe works, and chat flows.
            if outage == "stopped":
                await stack.sim.start()
            stack.sim.clear_faults()
            stack.sim.ignore_pings(False)
            await eventually(lambda: stack.app.pool.status().connected == 1, 10 * UNIT, "back")
            assert (await client.subscribe("xqc", "668"))["ok"] is True
            await chat_flows(stack, client)
        finally:
            await client.close()
