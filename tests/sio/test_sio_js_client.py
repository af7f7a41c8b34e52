"""kichat.sio against the real socket.io-client 4.8 from npm (Node), on every transport."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import UNIT, NodeScript, node_script
from sio_harness import Harness, b64, serve_sio

pytestmark = pytest.mark.node

TRANSPORTS = {
    "websocket": {"transports": ["websocket"]},
    "polling": {"transports": ["polling"]},
    "polling-then-upgrade": {"transports": ["polling", "websocket"]},
}


async def start(client: NodeScript, h: Harness, opts: dict[str, Any]) -> dict[str, Any]:
    await client.until(lambda m: m["ev"] == "ready")
    client.send({"cmd": "connect", "url": h.url, "opts": {"reconnectionDelay": 100, **opts}})
    return await client.until(lambda m: m["ev"] in ("connect", "connect_error"))


async def emit_ack(client: NodeScript, event: str, *args: Any, ident: int = 1) -> list[Any]:
    client.send({"cmd": "emit", "event": event, "args": list(args), "ack": True, "id": ident})
    reply = await client.until(lambda m: m["ev"] == "ack" and m["id"] == ident)
    return list(reply["args"])


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_events_acks_rooms_and_binary(transport: str) -> None:
    async with serve_sio() as h, node_script("sio_client.mjs") as client:
        connected = await start(client, h, TRANSPORTS[transport])
        assert connected["ev"] == "connect"
        opened = next(m for m in client.lines if m["ev"] == "open")
        if transport == "polling-then-upgrade":
            assert opened["transport"] == "polling"
            assert (await client.first(lambda m: m["ev"] == "upgrade"))["transport"] == "websocket"
        else:
            assert opened["transport"] == connected["transport"] == transport
        # client -> server with ack
        assert await emit_ack(client, "join", "room-1") == ["joined", "room-1"]
        assert await emit_ack(client, "echo", 1, "two", {"3": [True]}, ident=2) == [
            1, "two", {"3": [True]},
        ]  # fmt: skip
        # binary both ways, attachments nested in objects
        blob = b64(bytes(range(256)))
        client.send({"cmd": "emit", "event": "echo-event", "args": [blob, {"nested": blob}]})
        echo = await client.until(lambda m: m["ev"] == "event" and m["name"] == "echo")
        assert echo["args"] == [blob, {"nested": blob}]
        # a broadcast to the room, with its recovery offset as the last argument
        sent = h.sio.of("/").emit(
            r"App\Events\ChatMessageEvent", {"content": "héllo 🎉"}, to="room-1"
        )
        assert sent == 1
        event = await client.until(lambda m: m["ev"] == "event" and m["name"].startswith("App"))
        assert event["name"] == "App\\Events\\ChatMessageEvent"
        assert event["args"][0] == {"content": "héllo 🎉"}
        assert isinstance(event["args"][1], str)  # the offset
        # server -> client with ack
        client.send({"cmd": "emit", "event": "ask", "args": ["ready?"]})
        await h.wait_for(lambda: h.answers, 5 * UNIT)
        assert h.answers == [["ready?"]]


# What sio_client.mjs reports besides message and data when the handshake itself succeeded.
NOT_A_TRANSPORT_ERROR = {"status": None, "detail": None, "body": None}


async def test_connect_error_reaches_the_client_with_message_and_data() -> None:
    async with serve_sio(refuse_token="bad") as h, node_script("sio_client.mjs") as client:
        result = await start(client, h, {"transports": ["websocket"], "auth": {"token": "bad"}})
        assert result == {
            "ev": "connect_error",
            "message": "unauthorized",
            "data": {"hint": "bad token"},
            **NOT_A_TRANSPORT_ERROR,
        }
        assert h.connects == []


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_recovery_after_a_network_blip_delivers_the_gap_once_in_order(transport: str) -> None:
    async with serve_sio() as h, node_script("sio_client.mjs") as client:
        nsp = h.sio.of("/")
        first = await start(client, h, TRANSPORTS[transport])
        assert first["recovered"] is False
        await emit_ack(client, "join", "chat")
        nsp.emit("msg", {"n": 0}, to="chat")
        await client.until(lambda m: m["ev"] == "event" and m["args"][0] == {"n": 0})

        client.send({"cmd": "drop"})
        await h.wait_for(lambda: len(h.sio.detached) == 1, 5 * UNIT)
        assert nsp.room_size("chat") == 1  # a recoverable socket keeps its room occupied
        for n in (1, 2, 3):
            assert nsp.emit("msg", {"n": n}, to="chat") == 0  # nobody attached right now

        again = await client.until(lambda m: m["ev"] == "connect", timeout=10 * UNIT)
        assert again["recovered"] is True
        assert again["id"] == first["id"]
        nsp.emit("msg", {"n": 4}, to="chat")
        await client.until(lambda m: m["ev"] == "event" and m["args"][0] == {"n": 4})
        seen = [
            m["args"][0]["n"] for m in client.lines if m["ev"] == "event" and m["name"] == "msg"
        ]
        assert seen == [0, 1, 2, 3, 4]
        assert h.disconnects == []
        assert h.sio.stats.recovered == 1


async def test_recovery_window_expiry_ends_the_socket_and_frees_its_rooms() -> None:
    async with serve_sio(recovery_window=0.3 * UNIT) as h, node_script("sio_client.mjs") as client:
        await start(client, h, {"transports": ["websocket"], "reconnection": False})
        await emit_ack(client, "join", "chat")
        client.send({"cmd": "drop"})
        await h.wait_for(lambda: h.disconnects, 5 * UNIT)
        assert h.disconnects[0][1] in ("transport close", "transport error")
        assert h.sio.of("/").room_size("chat") == 0
        assert not h.sio.detached


async def test_client_that_opts_out_of_recovery_gets_no_offsets() -> None:
    async with serve_sio() as h, node_script("sio_client.mjs") as client:
        await start(client, h, {"transports": ["websocket"], "auth": {"recovery": False}})
        await emit_ack(client, "join", "chat")
        h.sio.of("/").emit("msg", {"n": 1}, to="chat")
        event = await client.until(lambda m: m["ev"] == "event" and m["name"] == "msg")
        assert event["args"] == [{"n": 1}]
        assert h.connects[0][1] == {"recovery": False}
