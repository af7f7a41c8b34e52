"""The subscribe contract through python-socketio's AsyncClient: acks, events, unsubscribe, and
every error reply. Bad input must never reach the simulator (our stand-in for Kick)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from conftest import UNIT, eventually
from gateway_harness import (
    CHAT,
    XQC,
    XQC_CHANNELS,
    PyClient,
    Stack,
    expected_payload,
    gateway_stack,
)

FOX_V2 = "chatrooms.4100123.v2"


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_subscribe_receive_unsubscribe(transport: str) -> None:
    async with gateway_stack() as stack:
        client = await PyClient.open(stack.url, transport)
        try:
            # Slugs are case-insensitive; ids may be JSON numbers.
            reply = await client.subscribe("XQC", 668)
            assert reply == {"ok": True, "channelName": "xqc", "chatroomId": "668",
                             "streamEvents": True}  # fmt: skip
            assert stack.upstream() == dict.fromkeys(XQC_CHANNELS, 1)
            # Subscribing again is answered the same way and changes nothing.
            assert await client.subscribe("xqc", "668") == reply
            assert stack.app.registry.count(XQC) == 1

            data = await stack.sim.publish_event(CHAT, "xqc")
            assert await client.next_named(CHAT) == expected_payload(data, "xqc")

            fox = await client.subscribe("moonlitfox", "4100123")
            assert fox["ok"] is True
            gone = await client.call("unsubscribe", {"channelName": "xqc", "chatroomId": "668"})
            assert gone == {"ok": True, "channelName": "xqc", "chatroomId": "668"}
            seen = len(client.events)
            await stack.sim.publish_event(CHAT, "xqc")  # after unsubscribe: must not arrive
            last = await stack.sim.publish_event(CHAT, "moonlitfox")
            assert await client.next_named(CHAT, after=seen) == expected_payload(last, "moonlitfox")
            assert [a[0]["channel_name"] for e, a in client.events[seen:]] == ["moonlitfox"]
            # The last subscriber left: the upstream subscription goes after the linger. The
            # release counts once every channel is unsubscribed, and Kick (the simulator) drops
            # each one when its frame arrives: wait for both.
            await eventually(
                lambda: (
                    stack.app.gateway.stats.deactivations == 1
                    and not set(XQC_CHANNELS) & stack.upstream().keys()
                ),
                what="xqc released",
            )
            assert stack.upstream()[FOX_V2] == 1
        finally:
            await client.close()


def _sim_state(stack: Stack) -> tuple[dict[str, int], Counter[str]]:
    return dict(stack.upstream()), Counter(stack.sim.rest_requests)


BAD_PAYLOADS: list[tuple[str, tuple[Any, ...], str, dict[str, str]]] = [
    # (case id, arguments of the subscribe event, error code, fields echoed back)
    ("string", ("xqc",), "invalid_payload", {}),
    ("no-argument", (), "invalid_payload", {}),
    ("list", ([{"channelName": "xqc", "chatroomId": "668"}],), "invalid_payload", {}),
    ("null", (None,), "invalid_payload", {}),
    ("id-letters", ({"channelName": "xqc", "chatroomId": "abc"},), "invalid_chatroom_id",
     {"channelName": "xqc"}),
    ("id-negative", ({"channelName": "xqc", "chatroomId": -668},), "invalid_chatroom_id",
     {"channelName": "xqc"}),
    ("id-zero", ({"channelName": "xqc", "chatroomId": "0"},), "invalid_chatroom_id",
     {"channelName": "xqc"}),
    ("id-float", ({"channelName": "xqc", "chatroomId": 668.0},), "invalid_chatroom_id",
     {"channelName": "xqc"}),
    ("id-bool", ({"channelName": "xqc", "chatroomId": True},), "invalid_chatroom_id",
     {"channelName": "xqc"}),
    ("id-arabic-digits", ({"channelName": "xqc", "chatroomId": "٦٦٨"},), "invalid_chatroom_id",
     {"channelName": "xqc"}),
    ("id-13-digits", ({"channelName": "xqc", "chatroomId": "1" * 13},), "invalid_chatroom_id",
     {"channelName": "xqc"}),
    ("id-missing", ({"channelName": "xqc"},), "invalid_chatroom_id", {"channelName": "xqc"}),
    ("name-slash", ({"channelName": "xqc/../668", "chatroomId": "668"},),
     "invalid_channel_name", {"chatroomId": "668"}),
    ("name-dotdot", ({"channelName": "..", "chatroomId": "668"},), "invalid_channel_name",
     {"chatroomId": "668"}),
    ("name-query", ({"channelName": "xqc?x=1", "chatroomId": "668"},), "invalid_channel_name",
     {"chatroomId": "668"}),
    ("name-unicode", ({"channelName": "xqç", "chatroomId": "668"},), "invalid_channel_name",
     {"chatroomId": "668"}),
    ("name-kelvin-sign", ({"channelName": "\u212aai", "chatroomId": "668"},),
     "invalid_channel_name", {"chatroomId": "668"}),
    ("name-too-long", ({"channelName": "x" * 65, "chatroomId": "668"},), "invalid_channel_name",
     {"chatroomId": "668"}),
    ("name-empty", ({"channelName": "", "chatroomId": "668"},), "invalid_channel_name",
     {"chatroomId": "668"}),
    ("name-newline", ({"channelName": "xqc\n", "chatroomId": "668"},), "invalid_channel_name",
     {"chatroomId": "668"}),
    ("name-number", ({"channelName": 668, "chatroomId": "668"},), "invalid_channel_name",
     {"chatroomId": "668"}),
]  # fmt: skip


async def test_bad_input_is_refused_and_never_reaches_kick() -> None:
    async with gateway_stack() as stack:
        client = await PyClient.open(stack.url)
        try:
            before = _sim_state(stack)
            for case, args, code, echoed in BAD_PAYLOADS:
                reply = await client.call("subscribe", *args)
                assert isinstance(reply, dict), case
                error = reply.pop("error")
                assert reply == {"ok": False, **echoed}, case
                assert error["code"] == code, case
                assert isinstance(error["message"], str) and len(error["message"]) < 400, case
            # The same, without an acknowledgement: the reply comes as an "error" event.
            for n, (case, args, code, echoed) in enumerate(BAD_PAYLOADS):
                await client.sio.emit("subscribe", args[0] if len(args) == 1 else None)
                await client.wait_for(lambda evs, n=n: len(evs) > n, 5 * UNIT)
                event, (reply, *rest) = client.events[n]
                assert (event, rest) == ("error", []), case
                assert reply["ok"] is False and reply["error"]["code"] == code, case
                assert {k: reply[k] for k in echoed} == echoed, case
            # Unsubscribe validates the same way.
            bad = await client.call("unsubscribe", {"channelName": "a/b", "chatroomId": "668"})
            assert bad["ok"] is False and bad["error"]["code"] == "invalid_channel_name"
            assert _sim_state(stack) == before
            assert stack.upstream() == {}
            assert stack.app.registry.count(XQC) == 0
        finally:
            await client.close()


async def test_too_many_subscriptions() -> None:
    async with gateway_stack({"limits.subscriptions_per_client": 2}) as stack:
        client = await PyClient.open(stack.url)
        try:
            assert (await client.subscribe("chan1", "700001"))["ok"] is True
            assert (await client.subscribe("chan2", "700002"))["ok"] is True
            before = _sim_state(stack)
            reply = await client.subscribe("chan3", "700003")
            assert reply["ok"] is False
            assert reply["error"]["code"] == "too_many_subscriptions"
            assert (reply["channelName"], reply["chatroomId"]) == ("chan3", "700003")
            await client.sio.emit("subscribe", {"channelName": "chan3", "chatroomId": "700003"})
            error = await client.next_named("error")
            assert error["error"]["code"] == "too_many_subscriptions"
            assert _sim_state(stack) == before
            # A subscription already held is not a new one, and leaving one frees a slot.
            assert (await client.subscribe("chan2", "700002"))["ok"] is True
            await client.call("unsubscribe", {"channelName": "chan1", "chatroomId": "700001"})
            assert (await client.subscribe("chan3", "700003"))["ok"] is True
        finally:
            await client.close()


async def test_subscribe_rate_limit() -> None:
    async with gateway_stack({"limits.subscribe_rate": 3}) as stack:
        client = await PyClient.open(stack.url)
        try:
            for n in (1, 2, 3):
                assert (await client.subscribe(f"chan{n}", str(700000 + n)))["ok"] is True
            before = _sim_state(stack)
            reply = await client.subscribe("chan4", "700004")
            assert reply["ok"] is False
            assert reply["error"]["code"] == "rate_limited"
            assert "try again in" in reply["error"]["message"]
            await client.sio.emit("subscribe", {"channelName": "chan5", "chatroomId": "700005"})
            assert (await client.next_named("error"))["error"]["code"] == "rate_limited"
            gone = await client.call(
                "unsubscribe", {"channelName": "chan1", "chatroomId": "700001"}
            )
            assert gone["error"]["code"] == "rate_limited"
            assert _sim_state(stack) == before
            # Another client has its own budget.
            other = await PyClient.open(stack.url)
            try:
                assert (await other.subscribe("chan1", "700001"))["ok"] is True
            finally:
                await other.close()
        finally:
            await client.close()
