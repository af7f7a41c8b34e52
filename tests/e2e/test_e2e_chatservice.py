"""The contract's own client, end to end: the "Complete Example" ChatService of
kichat-chatroom-stream.md (tests/js/chatservice.mjs, real socket.io-client) against the gateway,
with the Kick simulator publishing every event; and every other event type the simulator can
produce, through python-socketio."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import UNIT, eventually, node_script
from gateway_harness import (
    CHAT,
    XQC,
    XQC_LEGACY,
    XQC_PREDICTIONS,
    XQC_STREAM,
    XQC_V2,
    PyClient,
    expected_payload,
    gateway_stack,
)

# The "Chat Events" table of the contract, in its order, spelled as Kick spells them.
CONTRACT_EVENTS = (
    "App\\Events\\ChatMessageEvent",
    "App\\Events\\MessageDeletedEvent",
    "App\\Events\\UserBannedEvent",
    "App\\Events\\UserUnbannedEvent",
    "App\\Events\\ChatroomClearEvent",
    "App\\Events\\ChatroomUpdatedEvent",
    "App\\Events\\PollUpdateEvent",
    "App\\Events\\PollDeleteEvent",
    "App\\Events\\PinnedMessageCreatedEvent",
    "App\\Events\\PinnedMessageDeletedEvent",
    "App\\Events\\SubscriptionEvent",
    "App\\Events\\LivestreamUpdated",
)

# The page's own order, ['websocket', 'polling'], means WebSocket first; polling-then-upgrade
# is what a client that starts with long-polling does.
TRANSPORTS = {
    "websocket": ["websocket", "polling"],
    "polling": ["polling"],
    "polling-then-upgrade": ["polling", "websocket"],
}


@pytest.mark.node
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_contract_chatservice_receives_each_event_once_and_intact(transport: str) -> None:
    async with (
        gateway_stack() as stack,
        node_script("chatservice.mjs", stack.url, json.dumps(TRANSPORTS[transport])) as client,
    ):
        app = stack.app
        # The page subscribes without an acknowledgement: wait for the gateway to have done it.
        await eventually(
            lambda: app.nsp.room_size(XQC.room) == 1, 10 * UNIT, "the example's subscription"
        )
        # LivestreamUpdated needs channel.676, subscribed in the background once chat flows.
        await eventually(
            lambda: (info := app.gateway.info(XQC)) is not None and info.stream_events,
            10 * UNIT,
            "stream events",
        )

        published = [(name, await stack.sim.publish_event(name, "xqc")) for name in CONTRACT_EVENTS]
        marker = await stack.sim.publish_event(CHAT, "xqc")  # arrives after everything above
        await client.until(
            lambda m: m["ev"] == "event" and m["name"] == CHAT and m["data"]["id"] == marker["id"]
        )

        received = [(m["name"], m["data"]) for m in client.lines if m["ev"] == "event"]
        expected = [(name, expected_payload(data, "xqc")) for name, data in published]
        assert received == [*expected, (CHAT, expected_payload(marker, "xqc"))]
        # `[]` payloads (PollDeleteEvent, PinnedMessageDeletedEvent) arrive as {channel_name}.
        empties = [name for name, data in published if data == []]
        assert empties, "the simulator sent no [] payload"
        for name in empties:
            assert dict(received)[name] == {"channel_name": "xqc"}
        # The page's own log line for a chat message.
        first_chat = published[0][1]
        line = f"xqc | {first_chat['sender']['username']}: {first_chat['content']}"
        assert any(m.get("text") == line for m in client.lines if m["ev"] == "log")
        assert not [m for m in client.lines if m["ev"] in ("error", "warning", "connect_error")]

        opened = next(m for m in client.lines if m["ev"] == "open")
        if transport == "polling-then-upgrade":
            assert opened["transport"] == "polling"
            upgrade = await client.first(lambda m: m["ev"] == "upgrade")
            assert upgrade["transport"] == "websocket"
            assert app.sio.stats.upgrades == 1
        else:
            assert opened["transport"] == TRANSPORTS[transport][0]
            assert not [m for m in client.lines if m["ev"] == "upgrade"]
        assert stack.upstream()[XQC_V2] == 1


@pytest.mark.parametrize("duplicates", [False, True], ids=["plain", "duplicate-on-legacy-alias"])
async def test_every_simulated_event_type_reaches_a_subscriber_once(duplicates: bool) -> None:
    async with gateway_stack(duplicate_on_legacy_alias=duplicates) as stack:
        client = await PyClient.open(stack.url)
        try:
            reply = await client.subscribe("xqc", "668")
            assert reply == {"ok": True, "channelName": "xqc", "chatroomId": "668",
                             "streamEvents": True}  # fmt: skip
            script = await stack.sim.run_script("xqc")
            marker = await stack.sim.publish_event(CHAT, "xqc")
            await client.wait_for(
                lambda evs: any(e == CHAT and a and a[0].get("id") == marker["id"] for e, a in evs),
                5 * UNIT,
            )
            received: list[tuple[str, Any]] = [(e, a[0]) for e, a in client.events]
            expected = [(p.event, expected_payload(p.data, "xqc")) for p in script]
            assert received == [*expected, (CHAT, expected_payload(marker, "xqc"))]
            # Every route Kick uses was exercised: stream events, predictions, the legacy alias.
            routes = {p.channel for p in script}
            assert routes == {XQC_V2, XQC_LEGACY, XQC_STREAM, XQC_PREDICTIONS}
            assert [p.event for p in script if p.channel == XQC_LEGACY] == [
                "App\\Events\\StreamHostedEvent"
            ]
            assert len({p.event for p in script}) == len(script)
            stats = stack.app.feeds.stats
            copies = sum(1 for p in script if p.channel == XQC_V2) + 1 if duplicates else 0
            # The marker's own copy may still be on its way when the marker has arrived.
            await eventually(lambda: stats.duplicates_dropped >= copies, what="the last copy")
            assert stats.duplicates_dropped == copies
        finally:
            await client.close()


@pytest.mark.node
async def test_socketio_client_without_acks_gets_error_and_warning_events() -> None:
    async with gateway_stack() as stack, node_script("sio_client.mjs") as client:
        await client.until(lambda m: m["ev"] == "ready")
        client.send({"cmd": "connect", "url": stack.url, "opts": {"transports": ["websocket"]}})
        await client.until(lambda m: m["ev"] == "connect")
        stack.sim.fail_rest("xqc", status=404)
        bad = {"channelName": "xqc/..", "chatroomId": "668"}
        client.send({"cmd": "emit", "event": "subscribe", "args": [bad]})
        error = await client.until(lambda m: m["ev"] == "event")
        assert error["name"] == "error"
        (reply,) = error["args"]  # a direct event: no recovery offset
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_channel_name"
        good = {"channelName": "xqc", "chatroomId": "668"}
        client.send({"cmd": "emit", "event": "subscribe", "args": [good]})
        warning = await client.until(lambda m: m["ev"] == "event")
        assert warning["name"] == "warning"
        assert warning["args"][0]["ok"] is True
        assert warning["args"][0]["warning"]["code"] == "stream_events_unavailable"
        data = await stack.sim.publish_event(CHAT, "xqc")
        chat = await client.until(lambda m: m["ev"] == "event")
        assert chat["name"] == CHAT
        assert chat["args"][0] == expected_payload(data, "xqc")
