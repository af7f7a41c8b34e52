"""Admission of Socket.IO clients by a real gateway (issue 8, items 4 and 9): API keys at the
Engine.IO handshake, sessions that never join bounded per address, and sessions waiting to be
recovered never locking an address out. Clients: httpx and websockets (raw), python-socketio,
and socket.io-client (npm) processes that are killed like a closed browser tab."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from kichat.relay.registry import RoomKey
from kichat.sim import KickSimulator

from conftest import UNIT, NodeScript, eventually, node_script
from web_harness import Gateway, gateway

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
KEYS = {"limits__api_keys": ["k-alpha-1", "k-beta-2"]}
XQC = {"channelName": "xqc", "chatroomId": "668"}
XQC_KEY = RoomKey(668, "xqc")


@pytest.fixture
async def sim() -> AsyncIterator[KickSimulator]:
    async with KickSimulator(port=0, seed=11) as simulator:
        yield simulator


def ws_url(gw: Gateway, query: str = "") -> str:
    return gw.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket" + query


async def python_client(url: str, **kwargs: Any) -> tuple[socketio.AsyncClient, list[Any]]:
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", errors.append)
    auth = {"recovery": False, **kwargs.pop("auth", {})}
    try:
        await client.connect(url, auth=auth, **kwargs)
    except socketio.exceptions.ConnectionError:
        assert errors, "refused without a connect_error"
    return client, errors


async def js_connect(js: NodeScript, url: str, **opts: Any) -> dict[str, Any]:
    js.send({"cmd": "connect", "url": url, "opts": {"forceNew": True, **opts}})
    return await js.until(lambda m: m["ev"] in ("connect", "connect_error"))


# -- API keys at the handshake -----------------------------------------------------------------


@pytest.mark.node
async def test_a_key_presented_at_the_handshake_is_checked_there(sim: KickSimulator) -> None:
    async with gateway(sim, **KEYS) as gw:
        for query, headers in (
            ("&token=wrong", {}),
            ("", {"X-API-Key": "wrong"}),
            ("", {"Authorization": "Bearer wrong"}),
        ):
            refused = await gw.get(HANDSHAKE + query, headers=headers)
            assert refused.status_code == 401, (query, headers)
            assert refused.json() == {
                "code": 4,
                "message": "unauthorized",
                "data": {
                    "code": "unauthorized",
                    "message": "pass a valid API key as auth: {token}, ?token=, X-API-Key or"
                    " Authorization: Bearer",
                },
            }
            with pytest.raises(InvalidStatus) as ws_refused:
                await connect(ws_url(gw, query), additional_headers=headers)
            assert ws_refused.value.response.status_code == 401
        assert gw.app.sio.sessions == {}

        # A valid key at the handshake is enough: no auth: {token} needed at CONNECT.
        for url, headers in (
            (gw.url + "?token=k-alpha-1", {}),
            (gw.url, {"X-API-Key": "k-beta-2"}),
            (gw.url, {"Authorization": "Bearer k-alpha-1"}),
        ):
            for transport in ("websocket", "polling"):
                client, errors = await python_client(url, headers=headers, transports=[transport])
                assert client.connected, (url, headers, errors)
                await client.disconnect()

        async with node_script("sio_client.mjs") as js:
            await js.until(lambda m: m["ev"] == "ready")
            opts = {"transports": ["websocket"], "reconnection": False}
            accepted = await js_connect(js, gw.url, query={"token": "k-beta-2"}, **opts)
            assert accepted["ev"] == "connect", accepted
            js.send({"cmd": "disconnect"})
            refused = await js_connect(js, gw.url, query={"token": "wrong"}, **opts)
            assert refused["ev"] == "connect_error"
            assert refused["detail"] == "Unexpected server response: 401"
            # Long-polling lets the application read the reason.
            refused = await js_connect(
                js, gw.url, query={"token": "wrong"}, transports=["polling"], reconnection=False
            )
            assert refused["status"] == 401
            assert json.loads(refused["body"])["data"]["code"] == "unauthorized"
        refusals = dict(gw.app.service.stats.refused_connections)
    assert refusals == {"unauthorized": 8}


async def test_sessions_without_a_key_are_bounded_per_address(sim: KickSimulator) -> None:
    async with gateway(sim, **KEYS) as gw:
        sids = []
        for _ in range(10):
            reply = await gw.get(HANDSHAKE)
            assert reply.status_code == 200
            sids.append(json.loads(reply.text[1:])["sid"])
        refused = await gw.get(HANDSHAKE)
        assert refused.status_code == 429
        assert refused.json()["data"] == {"code": "too_many_pending_connections", "limit": 10}
        # Their CONNECT still needs auth: {token}; refused, they stay bounded until they end.
        url = f"{HANDSHAKE}&sid={sids[0]}"
        assert (await gw.http.post(url, content='40{"token":"nope"}')).text == "ok"
        assert (await gw.get(url)).text.startswith('44{"message":"unauthorized"')
        assert (await gw.get(HANDSHAKE)).status_code == 429
        assert len(gw.app.sio.sessions) == 10


async def test_one_address_cannot_open_sessions_without_bound(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        statuses = [(await gw.get(HANDSHAKE)).status_code for _ in range(300)]
        assert statuses == [200] * 10 + [429] * 290
        assert len(gw.app.sio.sessions) == 10
        assert gw.app.sio.stats.refused_handshakes == {"too_many_pending_connections": 290}
        samples = await gw.metrics()
    pending = [v for (name, _), v in samples.items() if name == "kichat_pending_connections"]
    assert pending == [10.0]


# -- sessions waiting to be recovered ----------------------------------------------------------


@pytest.mark.node
async def test_killed_clients_do_not_lock_their_address_out(sim: KickSimulator) -> None:
    """Before: after 3 clients were killed, only 7 of 10 new connections were accepted."""
    async with gateway(sim) as gw:
        service, sio = gw.app.service, gw.app.sio
        for _ in range(3):
            async with node_script("sio_client.mjs") as tab:
                await tab.until(lambda m: m["ev"] == "ready")
                connected = await js_connect(tab, gw.url, transports=["websocket"])
                assert connected["ev"] == "connect", connected
                tab.send({"cmd": "emit", "event": "subscribe", "args": [XQC], "ack": True})
                assert (await tab.until(lambda m: m["ev"] == "ack"))["args"][0]["ok"] is True
                tab.proc.kill()  # like a closed tab: no Socket.IO goodbye
                await tab.proc.wait()
        await eventually(lambda: len(sio.detached) == 3, what="three detached sessions")
        assert service.connections.count("127.0.0.1") == 0
        assert gw.app.registry.count(XQC_KEY) == 3  # still recoverable, still subscribed

        async with node_script("relay_swarm.mjs", gw.url, "10") as swarm:
            ready = await swarm.until(lambda m: m["ev"] in ("ready", "connect_error"), 20 * UNIT)
            assert ready == {"ev": "ready", "connected": 10}
            assert service.connections.count("127.0.0.1") == 10
            assert len(sio.detached) == 3


async def test_a_flood_of_detached_sessions_stays_bounded(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        sio, registry = gw.app.sio, gw.app.registry
        for n in range(1, 26):
            sock = await connect(ws_url(gw))
            await _join_and_subscribe(sock)
            sock.transport.abort()
            await eventually(
                lambda n=n: len(sio.detached) + sio.stats.detached_evicted == n, what="detached"
            )
        assert len(sio.detached) == 10
        assert sio.stats.detached_evicted == 15
        # The sessions ended early released what they held.
        assert registry.count(XQC_KEY) == 10
        assert gw.app.service.connections.count("127.0.0.1") == 0
        assert sio.stats.disconnects == {"transport error": 15}


@pytest.mark.node
async def test_recovery_counts_again_and_is_refused_past_the_limit(sim: KickSimulator) -> None:
    async with (
        gateway(sim, limits__connections_per_ip=2) as gw,
        node_script("sio_client.mjs") as js,
    ):
        service, sio = gw.app.service, gw.app.sio
        await js.until(lambda m: m["ev"] == "ready")
        slow = {"reconnectionDelay": 2000 * UNIT, "randomizationFactor": 0}
        assert (await js_connect(js, gw.url, transports=["websocket"], **slow))["ev"] == "connect"
        # A blip: the socket waits without a slot, and takes one again when it recovers.
        js.send({"cmd": "drop"})
        await eventually(lambda: len(sio.detached) == 1, what="detached")
        assert service.connections.count("127.0.0.1") == 0
        back = await js.until(lambda m: m["ev"] == "connect")
        assert back["recovered"] is True
        assert service.connections.count("127.0.0.1") == 1

        # Another blip, and meanwhile the address fills its two slots: no recovery then.
        js.send({"cmd": "drop"})
        await eventually(lambda: len(sio.detached) == 1, what="detached again")
        others = [(await python_client(gw.url, transports=["websocket"]))[0] for _ in range(2)]
        assert all(c.connected for c in others)
        refused = await js.until(lambda m: m["ev"] == "connect_error", 10 * UNIT)
        assert refused["data"] == {"code": "too_many_connections", "limit": 2}
        assert sio.detached == {}
        assert sio.stats.recovery_failed == 1
        assert service.connections.count("127.0.0.1") == 2
        for client in others:
            await client.disconnect()


async def _join_and_subscribe(sock: ClientConnection) -> None:
    opened = await asyncio.wait_for(sock.recv(), 5 * UNIT)
    assert str(opened).startswith("0{")
    await sock.send("40")
    assert str(await asyncio.wait_for(sock.recv(), 5 * UNIT)).startswith("40")
    await sock.send("421" + json.dumps(["subscribe", XQC]))
    while not str(reply := await asyncio.wait_for(sock.recv(), 5 * UNIT)).startswith("431"):
        pass
    assert json.loads(str(reply)[3:])[0]["ok"] is True
