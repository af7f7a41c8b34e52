"""``kichat.client`` against the whole gateway on the simulator, with faults injected between
them by a TCP relay: transport drops mid-stream, a silent network, a slow consumer, a gateway
restart, and every kind of refusal.

The stream tests publish numbered chat messages and check what the client yields against what
was sent: nothing lost, nothing twice, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import pytest

from kichat.app import App
from kichat.client import (
    Client,
    ClientClosed,
    ConnectRejected,
    Event,
    GatewayUnreachable,
    SubscribeRefused,
)
from kichat.watch import watch

from conftest import UNIT, eventually
from gateway_harness import CHAT, XQC, XQC_V2, Stack, gateway_settings, gateway_stack
from tcp_proxy import TcpProxy

FAST = {"backoff_initial": 0.02, "backoff_max": 0.1}  # reconnect at once in tests
_TEMPLATE = json.loads(
    resources.files("kichat.sim").joinpath("data/ChatMessageEvent.json").read_text()
)["data"]


def numbered(seq: int) -> dict[str, Any]:
    """A chat message whose content is its sequence number (and a unique id: the gateway
    drops an id it has just seen on an alias channel)."""
    return {**_TEMPLATE, "id": str(uuid.uuid4()), "chatroom_id": 668, "content": str(seq)}


class Publisher:
    """Publishes numbered chat messages on xqc's chatroom, ``pace`` seconds apart."""

    def __init__(self, stack: Stack, count: int, pace: float = 0.002) -> None:
        self.stack = stack
        self.count = count
        self.pace = pace
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        for seq in range(self.count):
            await self.stack.sim.publish(XQC_V2, CHAT, numbered(seq))
            self.sent += 1
            await asyncio.sleep(self.pace)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def tally(received: list[int], sent: int) -> dict[str, int]:
    counts = Counter(received)
    return {
        "sent": sent,
        "received": len(received),
        "lost": sum(1 for seq in range(sent) if seq not in counts),
        "duplicated": sum(n - 1 for n in counts.values() if n > 1),
    }


async def receive_numbered(
    client: Client,
    count: int,
    on_each: Callable[[int], Any] | None = None,
    within: float = 30 * UNIT,
) -> list[int]:
    """The sequence numbers of chat messages the client yields, until ``count`` of them."""
    received: list[int] = []
    async with asyncio.timeout(within):
        async for event in client:
            chat = event.chat_message()
            if chat is None:
                continue
            received.append(int(chat.content))
            if on_each is not None:
                result = on_each(len(received))
                if asyncio.iscoroutine(result):
                    await result
            if len(received) >= count:
                break
    return received


@asynccontextmanager
async def relayed(
    overrides: dict[str, object] | None = None,
) -> AsyncIterator[tuple[Stack, TcpProxy]]:
    async with gateway_stack(overrides) as stack, TcpProxy(stack.app.port) as proxy:
        yield stack, proxy


# -- the stream across faults ----------------------------------------------------------------------


async def test_transport_drops_mid_stream_lose_and_repeat_nothing() -> None:
    count, cuts_every = 1000, 150
    async with relayed() as (stack, proxy), Client(proxy.url, **FAST) as client:
        await client.subscribe("xqc", 668)
        publisher = Publisher(stack, count)
        publisher.start()
        cuts = 0

        def cut_now_and_then(received: int) -> None:
            nonlocal cuts
            if received % cuts_every == 0:
                cuts += proxy.cut()

        try:
            received = await receive_numbered(client, count, cut_now_and_then)
        finally:
            await publisher.stop()
        result = tally(received, publisher.sent)
        print(f"transport drops: {cuts} cuts, {result}")
        assert cuts == count // cuts_every - (count % cuts_every == 0)
        assert result == {"sent": count, "received": count, "lost": 0, "duplicated": 0}
        assert received == list(range(count))  # in order
        assert client.stats.recovered == cuts
        assert client.stats.not_recovered == 0
        assert stack.app.sio.stats.recovered == cuts


async def test_a_silent_network_is_detected_by_the_heartbeat() -> None:
    # The gateway pings every second and waits a second for the pong: a client that hears
    # nothing for 2 s declares the connection dead, reconnects and recovers.
    settings = {"socketio.ping_interval": 1.0, "socketio.ping_timeout": 1.0}
    async with relayed(settings) as (stack, proxy):
        async with Client(proxy.url, lifecycle_events=True, **FAST) as client:
            await client.subscribe("xqc", 668)
            assert (await anext(client)).name == "connect"
            assert proxy.freeze() == 1
            for seq in range(5):  # sent into the silence
                await stack.sim.publish(XQC_V2, CHAT, numbered(seq))
            async with asyncio.timeout(10 * UNIT):
                disconnect = await anext(client)
                assert disconnect.name == "disconnect"
                assert "no ping" in disconnect.data["reason"]
                again = await anext(client)
            assert again == Event("connect", {"sid": client.sid, "recovered": True})
            received = await receive_numbered(client, 5, within=10 * UNIT)
            assert received == [0, 1, 2, 3, 4]


async def test_a_slow_consumer_is_paused_then_recovers_without_loss() -> None:
    # The client's queue holds 20 events; the gateway cuts off a client with more than 64 KiB
    # unsent and the kernel holds little for it. A consumer that stops reading makes the client
    # stop reading its socket: the gateway cuts it off, keeps its session, and replays what it
    # missed once the consumer reads again.
    settings = {
        "socketio.outbound_buffer_limit": 64 * 1024,
        "server.socket_send_buffer": 4096,
    }
    async with gateway_stack(settings) as stack, Client(stack.url, max_queue=20, **FAST) as client:
        await client.subscribe("xqc", 668)
        sent = 0
        async with asyncio.timeout(30 * UNIT):
            # Nobody reads meanwhile; however much the kernel buffers, the gateway's limit is
            # reached in the end.
            while stack.app.sio.stats.slow_clients == 0:
                for _ in range(100):
                    await stack.sim.publish(XQC_V2, CHAT, numbered(sent))
                    sent += 1
                await asyncio.sleep(0.01)  # publishing does not yield: let the gateway work
        for _ in range(100):  # and more while the client is away
            await stack.sim.publish(XQC_V2, CHAT, numbered(sent))
            sent += 1
        assert client.stats.queue_full >= 1
        assert len(client._inbox.items) <= 20
        received = await receive_numbered(client, sent)
        print(f"slow consumer: {tally(received, sent)}")
        assert tally(received, sent) == {"sent": sent, "received": sent, "lost": 0, "duplicated": 0}
        assert received == list(range(sent))
        assert client.stats.recovered >= 1


async def test_watch_says_when_it_reconnects() -> None:
    out = io.StringIO()
    async with relayed() as (stack, proxy):
        stop = asyncio.Event()
        task = asyncio.ensure_future(watch(proxy.url, "xqc", "668", out=out, stop=stop))
        try:
            await eventually(lambda: "subscribed to xqc (chatroom 668): ok" in out.getvalue())
            assert proxy.cut() == 1
            await stack.sim.publish(XQC_V2, CHAT, numbered(42))
            await eventually(lambda: "[xqc] PixelMoth: 42" in out.getvalue(), 10 * UNIT)
        finally:
            stop.set()
            await task
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("connection lost (")
    assert lines[1].endswith("); reconnecting")
    assert lines[2:] == ["reconnected: session recovered, no event missed", "[xqc] PixelMoth: 42"]


async def test_a_gateway_restart_ends_in_a_new_session_and_a_new_subscription() -> None:
    async with relayed() as (stack, proxy):
        async with Client(proxy.url, lifecycle_events=True, **FAST) as client:
            await client.subscribe("xqc", 668)
            await client.subscribe("moonlitfox", 4100123)
            assert (await anext(client)).name == "connect"
            await stack.app.close()  # the first gateway stops; a second one takes its place
            second = App(gateway_settings(stack.sim))
            await second.start()
            try:
                proxy.target = second.port
                async with asyncio.timeout(10 * UNIT):
                    assert (await anext(client)).name == "disconnect"
                    reconnect = await anext(client)
                assert reconnect.data["recovered"] is False
                # The client subscribes again by itself: chat flows from the new gateway.
                await eventually(lambda: second.registry.count(XQC) == 1, what="re-subscribed")
                await stack.sim.publish(XQC_V2, CHAT, numbered(7))
                received = await receive_numbered(client, 1, within=10 * UNIT)
                assert received == [7]
                assert client.stats.not_recovered == 1
                assert client.subscriptions == {("xqc", "668"), ("moonlitfox", "4100123")}
            finally:
                await client.close()
                await second.close()


async def test_a_refused_resubscription_arrives_as_an_error_event() -> None:
    async with relayed() as (stack, proxy), Client(proxy.url, **FAST) as client:
        await client.subscribe("xqc", 668)
        await client.subscribe("moonlitfox", 4100123)
        await stack.app.close()
        second = App(gateway_settings(stack.sim, {"limits.subscriptions_per_client": 1}))
        await second.start()
        try:
            proxy.target = second.port
            async with asyncio.timeout(10 * UNIT):
                error = await anext(client)
            assert error.name == "error"
            assert error.data["ok"] is False
            assert error.data["error"]["code"] == "too_many_subscriptions"
            assert len(client.subscriptions) == 1
        finally:
            await second.close()


# -- requests and refusals --------------------------------------------------------------------------


async def test_subscribe_replies_warnings_and_refusals() -> None:
    async with gateway_stack() as stack, Client(stack.url) as client:
        ok = await client.subscribe("XQC", 668)
        assert (ok.channel_name, ok.chatroom_id, ok.stream_events, ok.warning) == (
            "xqc", "668", True, None,
        )  # fmt: skip
        # A chatroom id that is not the channel's: chat flows, and the gateway says what is wrong.
        wrong = await client.subscribe("xqc", 4100123)
        assert wrong.warning is not None
        assert wrong.warning.code == "stream_events_unavailable"
        assert "668" in wrong.warning.message
        with pytest.raises(SubscribeRefused) as refused:
            await client.subscribe("xqc", "x1")
        assert refused.value.code == "invalid_chatroom_id"
        assert refused.value.chatroom_id == "x1"
        with pytest.raises(SubscribeRefused) as refused:
            await client.subscribe("no/slashes", 668)
        assert refused.value.code == "invalid_channel_name"
        assert client.subscriptions == {("xqc", "668"), ("xqc", "4100123")}
        await client.unsubscribe("xqc", 4100123)
        assert client.subscriptions == {("xqc", "668")}


async def test_events_and_typed_views_from_the_gateway() -> None:
    async with gateway_stack() as stack, Client(stack.url) as client:
        await client.subscribe("xqc", 668)
        sent = await stack.sim.publish_event(CHAT, "xqc")
        banned = await stack.sim.publish_event("App\\Events\\UserBannedEvent", "xqc")
        async with asyncio.timeout(5 * UNIT):
            first, second = await anext(client), await anext(client)
        assert first.data == {**sent, "channel_name": "xqc"}  # no recovery offset in the data
        chat = first.chat_message()
        assert chat is not None
        assert (chat.channel_name, chat.content, chat.sender.username) == (
            "xqc", sent["content"], sent["sender"]["username"],
        )  # fmt: skip
        ban = second.user_banned()
        assert ban is not None
        assert ban.user.username == banned["user"]["username"]
        assert second.chat_message() is None


async def test_refused_connections_and_unreachable_gateways_raise() -> None:
    async with gateway_stack({"limits.api_keys": ["right-key"]}) as stack:
        with pytest.raises(ConnectRejected) as rejected:
            async with Client(stack.url, token="wrong"):
                pass
        assert rejected.value.code == "unauthorized"
        async with Client(stack.url, token="right-key") as client:
            assert (await client.subscribe("xqc", 668)).channel_name == "xqc"
        port = stack.app.port
    with pytest.raises(GatewayUnreachable) as unreachable:
        async with Client(f"127.0.0.1:{port}", open_timeout=5 * UNIT):
            pass
    assert f"127.0.0.1:{port}" in str(unreachable.value)
    assert "connection refused" in str(unreachable.value)


async def test_close_releases_the_subscription_at_once() -> None:
    async with gateway_stack() as stack:
        client = Client(stack.url)
        await client.connect()
        await client.subscribe("xqc", 668)
        assert stack.app.registry.count(XQC) == 1
        await client.close()
        # A DISCONNECT, not a dropped transport: no session is kept for recovery.
        await eventually(lambda: stack.app.registry.count(XQC) == 0, what="released")
        assert stack.app.sio.stats.disconnects["client namespace disconnect"] == 1
        with pytest.raises(StopAsyncIteration):
            await anext(client)
        with pytest.raises(ClientClosed):
            await client.subscribe("xqc", 668)


async def test_a_deliberate_server_disconnect_ends_the_iteration() -> None:
    async with gateway_stack() as stack, Client(stack.url) as client:
        await client.subscribe("xqc", 668)
        sock = stack.app.nsp.sockets[client.sid or ""]
        sock.disconnect()
        with pytest.raises(ClientClosed):
            async with asyncio.timeout(5 * UNIT):
                await anext(client)
