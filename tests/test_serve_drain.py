"""Graceful drain: ``kichat serve`` receiving SIGTERM while real clients are connected and chat
is flowing (issue 8, "Also build").

What must hold, checked against a real process, real socket.io-client clients on both
transports and raw clients:

* ``/readyz`` answers 503 while the drain runs (on a connection opened before it: the listening
  socket is closed, so new connections are refused);
* every client sees the close as a transport close (WebSocket: close code 1001; long-polling:
  the close packet, also for a session between two polls), so socket.io-client reconnects;
* events already queued for a client reach it before the close (``socketio.flush_interval`` is
  0.5 s here, so the last events are still queued when SIGTERM arrives);
* the process exits 0 within ``server.shutdown_timeout``, even with a client that never
  answers the WebSocket close;
* after a restart the clients come back as new sessions (``recovered`` false) and subscribe
  again, as the README says.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
from typing import Any

import httpx
import orjson
import pytest

from kichat.sim import KickSimulator

from conftest import UNIT, NodeScript, eventually, node_script
from process_harness import LISTENING, Process, kichat_process

pytestmark = [pytest.mark.node, pytest.mark.slow]

CHAT = "App\\Events\\ChatMessageEvent"
XQC_V2 = "chatrooms.668.v2"
CLIENTS = 4  # per transport
QUEUED = 30  # chat messages published just before SIGTERM


def gateway_args(sim: KickSimulator, port: int, grace: float) -> list[str]:
    return [
        "serve", "--port", str(port), "--pusher-url", sim.pusher_url,
        "--kick-api-url", sim.api_url,
        "--set", f"server.shutdown_timeout={grace}",
        "--set", "socketio.flush_interval=0.5",
        "--set", "limits.connections_per_ip=100",
    ]  # fmt: skip


async def listening(proc: Process) -> str:
    line = await proc.line("err", LISTENING.search, 20 * UNIT)
    match = LISTENING.search(line)
    assert match is not None
    return match.group(1)


async def publish(sim: KickSimulator, n: int) -> None:
    data = {"id": f"drain-{n}", "chatroom_id": 668, "content": str(n), "type": "message"}
    await sim.publish(XQC_V2, CHAT, data)


def polling(sid: str | None = None) -> str:
    return "/socket.io/?EIO=4&transport=polling" + (f"&sid={sid}" if sid else "")


async def polling_session(http: httpx.AsyncClient) -> str:
    """A raw long-polling Socket.IO session subscribed to xqc, that then stops polling: it is
    between two GETs when the drain starts."""
    opened = await http.get(polling())
    sid: str = orjson.loads(opened.text[1:])["sid"]
    assert (await http.post(polling(sid), content=b"40")).text == "ok"
    assert (await http.get(polling(sid))).text.startswith("40{")
    subscribe = b'421["subscribe",{"channelName":"xqc","chatroomId":"668"}]'
    assert (await http.post(polling(sid), content=subscribe)).text == "ok"
    packets = (await http.get(polling(sid))).text.split("\x1e")
    acks = [orjson.loads(p[3:]) for p in packets if p.startswith("431[")]
    assert acks and acks[0][0]["ok"] is True, packets
    return sid


async def silent_websocket(port: int) -> socket.socket:
    """A raw WebSocket Socket.IO client that connects, then never reads nor answers a close."""
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    await loop.sock_sendall(
        sock,
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key
        + b"\r\n\r\n",
    )  # fmt: skip
    assert (await asyncio.wait_for(loop.sock_recv(sock, 4096), 5 * UNIT)).startswith(
        b"HTTP/1.1 101"
    )
    mask = os.urandom(4)
    await loop.sock_sendall(
        sock, bytes([0x81, 0x82]) + mask + bytes([0x34 ^ mask[0], 0x30 ^ mask[1]])
    )
    return sock


def chat_numbers(payload: str) -> list[int]:
    """The chat message numbers in a long-polling payload, in order."""
    numbers = []
    for packet in payload.split("\x1e"):
        if packet.startswith("42["):
            name, data, *_ = orjson.loads(packet[2:])
            if name == CHAT:
                numbers.append(int(data["content"]))
    return numbers


async def until_all(clients: NodeScript, ev: str, count: int, **match: Any) -> list[dict[str, Any]]:
    """The lines ``ev`` (with ``match``'s values), once ``count`` of them have been printed."""

    def matching() -> list[dict[str, Any]]:
        return [
            m for m in clients.lines
            if m["ev"] == ev and all(m.get(k) == v for k, v in match.items())
        ]  # fmt: skip

    while len(matching()) < count:
        await clients.next(15 * UNIT)
    return matching()


async def test_sigterm_drains_every_client_and_exits_in_time() -> None:
    grace = 2.0 * UNIT  # a client that never answers the close holds the drain this long
    loop = asyncio.get_running_loop()
    async with KickSimulator(port=0) as sim:
        async with kichat_process(*gateway_args(sim, 0, grace)) as gw:
            url = await listening(gw)
            port = int(url.rsplit(":", 1)[1])
            async with (
                node_script(
                    "drain_clients.mjs", url, str(CLIENTS), "websocket", "xqc", "668"
                ) as ws_clients,
                node_script(
                    "drain_clients.mjs", url, str(CLIENTS), "polling", "xqc", "668"
                ) as poll_clients,
                httpx.AsyncClient(base_url=url, timeout=5 * UNIT) as ops,
                httpx.AsyncClient(base_url=url, timeout=5 * UNIT) as poller,
            ):
                for clients in (ws_clients, poll_clients):
                    await clients.until(lambda m: m["ev"] == "ready", 30 * UNIT)
                    assert all(m["reply"]["ok"] for m in clients.lines if m["ev"] == "subscribed")
                sid = await polling_session(poller)
                silent = await silent_websocket(port)
                assert (await ops.get("/readyz")).status_code == 200  # opens ops' connection

                sigterm_at = loop.time()
                for n in range(1, QUEUED + 1):
                    await publish(sim, n)

                async def relayed() -> bool:
                    text = (await ops.get("/metrics")).text
                    return f"kichat_upstream_events_total {QUEUED}.0" in text

                while not await relayed():  # the gateway has them all (queued, not yet flushed)
                    assert loop.time() - sigterm_at < 10 * UNIT, "the gateway never got them"
                    await asyncio.sleep(0.01)
                sigterm_at = loop.time()
                gw.proc.send_signal(signal.SIGTERM)

                # Not ready while draining, on the connection opened before.
                while (ready := await ops.get("/readyz")).status_code == 200:
                    assert loop.time() - sigterm_at < 5 * UNIT, "/readyz never went 503"
                assert ready.status_code == 503
                assert "shutting down" in ready.json()["reasons"]
                # The long-polling session between two GETs: its next GET gets what was queued,
                # then the close packet.
                payload = ""
                while not payload.endswith("\x1e1"):
                    got = await poller.get(polling(sid))
                    assert got.status_code == 200, got.text
                    payload += ("\x1e" if payload else "") + got.text
                assert chat_numbers(payload) == list(range(1, QUEUED + 1))

                # Every socket.io-client saw a transport close, after every queued event.
                expected = list(range(1, QUEUED + 1))
                for clients, transport in ((ws_clients, "websocket"), (poll_clients, "polling")):
                    closes = await until_all(clients, "disconnect", CLIENTS)
                    assert sorted(c["i"] for c in closes) == list(range(CLIENTS))
                    for close in closes:
                        assert close["reason"] == "transport close", close
                        assert close["seqs"] == expected, (transport, close["i"])
                        if transport == "websocket":
                            assert close["code"] == 1001
                        else:
                            assert close["description"] == "transport closed by the server"

                # Exit 0 within the grace period, although one client never answers the close.
                code = await asyncio.wait_for(gw.proc.wait(), grace + 10 * UNIT)
                took = loop.time() - sigterm_at
                assert code == 0
                assert took < grace + 2.0 * UNIT, took
                silent.close()
                await eventually(lambda: any(" stopped after " in line for line in gw.err))
                assert any("shutting down: draining" in line for line in gw.err)
                assert not [line for line in gw.err if "Traceback" in line or "ERROR" in line]

                # A restart on the same port: new sessions (nothing to recover), which subscribe
                # again in their connect handler and receive chat.
                async with kichat_process(*gateway_args(sim, port, grace)) as again:
                    assert await listening(again) == url
                    for clients in (ws_clients, poll_clients):
                        back = await until_all(clients, "connect", CLIENTS, session=2)
                        assert all(m["recovered"] is False for m in back)
                        replies = await until_all(clients, "subscribed", CLIENTS, session=2)
                        assert all(m["reply"]["ok"] for m in replies)
                    await publish(sim, QUEUED + 1)
                    for clients in (ws_clients, poll_clients):
                        await until_all(clients, "chat", CLIENTS, n=QUEUED + 1, session=2)
                    assert await again.terminate() == 0
