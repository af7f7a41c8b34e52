"""Admission at the Engine.IO handshake (issue 8, item 4) and the budget of sockets waiting to
be recovered (item 9), at the wire: raw HTTP and WebSocket clients, socket.io-client (npm).

Before: every handshake made a session, whatever the client had already; one client opened
204,500 sessions (578 MiB) in 12 s. A session that never joined a namespace lived 45 s, and
forever after a refused CONNECT (any CONNECT stopped its timer)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kichat.http import Request
from kichat.sio.admission import Budgets

from conftest import UNIT, node_script
from sio_harness import Harness, serve_sio

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


def ws_url(h: Harness) -> str:
    return f"ws://127.0.0.1:{h.port}/socket.io/?EIO=4&transport=websocket"


async def ws_session(h: Harness, **kwargs: Any) -> ClientConnection:
    sock = await connect(ws_url(h), **kwargs)
    opened = await asyncio.wait_for(sock.recv(), 5 * UNIT)
    assert isinstance(opened, str) and opened.startswith("0{"), opened
    return sock


async def joined(h: Harness, room: str = "r") -> tuple[ClientConnection, str]:
    sock = await ws_session(h)
    await sock.send("40")
    reply = await asyncio.wait_for(sock.recv(), 5 * UNIT)
    assert isinstance(reply, str) and reply.startswith("40")
    await sock.send(f'421["join","{room}"]')
    assert await asyncio.wait_for(sock.recv(), 5 * UNIT) == f'431["joined","{room}"]'
    return sock, json.loads(reply[2:])["sid"]


async def until_closed(sock: ClientConnection, within: float) -> None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(sock.recv(), within)


# -- pending sessions --------------------------------------------------------------------------


async def test_pending_sessions_are_bounded_per_client_on_both_transports() -> None:
    async with serve_sio(pending_per_client=3) as h, httpx.AsyncClient(base_url=h.url) as http:
        first = await http.get(HANDSHAKE)
        assert first.status_code == 200
        assert (await http.get(HANDSHAKE)).status_code == 200
        pending_ws = await ws_session(h)
        refused = await http.get(HANDSHAKE)
        assert refused.status_code == 429
        assert refused.json() == {
            "code": 4,
            "message": "too many connections in progress from your address (limit 3)",
            "data": {"code": "too_many_pending_connections", "limit": 3},
        }
        with pytest.raises(InvalidStatus) as ws_refused:
            await ws_session(h)
        assert ws_refused.value.response.status_code == 429
        assert len(h.sio.sessions) == 3
        assert h.sio.stats.refused_handshakes == {"too_many_pending_connections": 2}

        # A session that joins the namespace is no longer pending: room for one more.
        sid = json.loads(first.text[1:])["sid"]
        assert (await http.post(f"{HANDSHAKE}&sid={sid}", content="40")).text == "ok"
        assert (await http.get(f"{HANDSHAKE}&sid={sid}")).text.startswith("40")
        assert h.sio.budgets.total_pending == 2
        assert (await http.get(HANDSHAKE)).status_code == 200
        await pending_ws.close()


async def test_a_session_that_never_joins_ends_after_the_connect_timeout() -> None:
    timeout = 0.5 * UNIT
    async with (
        serve_sio(connect_timeout=timeout, pending_per_client=2) as h,
        httpx.AsyncClient(base_url=h.url, timeout=10 * UNIT) as http,
    ):
        sock = await ws_session(h)
        sid = json.loads((await http.get(HANDSHAKE)).text[1:])["sid"]
        # The pending long-poll is answered with a close packet, the WebSocket is closed.
        assert (await http.get(f"{HANDSHAKE}&sid={sid}")).text == "1"
        await until_closed(sock, 5 * UNIT)
        assert h.sio.stats.connect_timeouts == 2
        assert h.sio.budgets.total_pending == 0
        assert h.sio.sessions == {}
        assert (await http.get(HANDSHAKE)).status_code == 200


async def test_a_refused_connect_does_not_stop_the_connect_timeout() -> None:
    async with serve_sio(refuse_token="bad", connect_timeout=0.5 * UNIT, pending_per_client=1) as h:
        sock = await ws_session(h)
        for _ in range(3):  # retrying CONNECT does not keep the session either
            await sock.send('40{"token":"bad"}')
            reply = await asyncio.wait_for(sock.recv(), 5 * UNIT)
            assert isinstance(reply, str) and reply.startswith("44")
        with pytest.raises(InvalidStatus):
            await ws_session(h)  # still pending, so the client's one slot is taken
        await until_closed(sock, 5 * UNIT)
        assert h.sio.stats.connect_timeouts == 1
        await (await ws_session(h)).close()


async def test_leaving_the_last_namespace_makes_the_session_pending_again() -> None:
    async with serve_sio(connect_timeout=0.5 * UNIT) as h:
        sock, _ = await joined(h)
        assert h.sio.budgets.total_pending == 0
        await sock.send("41")  # DISCONNECT from "/", the Engine.IO session stays open
        await h.wait_for(lambda: h.sio.budgets.total_pending == 1, 5 * UNIT)
        await until_closed(sock, 5 * UNIT)
        assert h.sio.stats.connect_timeouts == 1
        assert h.sio.budgets.total_pending == 0


async def test_the_total_of_pending_sessions_is_capped_whoever_opens_them() -> None:
    def client_key(request: Request) -> str:
        return request.headers.get("x-client", request.peer)

    async with (
        serve_sio(max_pending=2, client_key=client_key) as h,
        httpx.AsyncClient(base_url=h.url) as http,
    ):
        for client in ("a", "b"):
            assert (await http.get(HANDSHAKE, headers={"X-Client": client})).status_code == 200
        busy = await http.get(HANDSHAKE, headers={"X-Client": "c"})
        assert busy.status_code == 503
        assert busy.json()["data"] == {"code": "server_busy"}


@pytest.mark.node
@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_what_socket_io_client_sees_of_a_refused_handshake(transport: str) -> None:
    async with serve_sio(pending_per_client=1) as h, node_script("sio_client.mjs") as client:
        hog = await ws_session(h)  # the one pending slot of 127.0.0.1
        await client.until(lambda m: m["ev"] == "ready")
        opts = {"transports": [transport], "reconnection": False}
        client.send({"cmd": "connect", "url": h.url, "opts": opts})
        refused = await client.until(lambda m: m["ev"] in ("connect", "connect_error"))
        assert refused["ev"] == "connect_error"
        if transport == "polling":
            # A transport error whose status, and body, the application can read.
            assert refused["message"] == "xhr poll error"
            assert refused["status"] == 429
            assert json.loads(refused["body"])["data"]["code"] == "too_many_pending_connections"
        else:
            # Browsers and ws expose no body for a refused WebSocket, only that it was refused.
            assert refused["message"] == "websocket error"
            assert refused["detail"] == "Unexpected server response: 429"
        await hog.close()


# -- detached sockets --------------------------------------------------------------------------


async def test_detached_sockets_are_bounded_per_client_oldest_ended_first() -> None:
    async with serve_sio(detached_per_client=2) as h:
        sids = []
        for _ in range(3):
            sock, sid = await joined(h)
            sids.append(sid)
            sock.transport.abort()  # the network goes: the socket waits to be recovered
            await h.wait_for(
                lambda: len(h.sio.detached) + len(h.disconnects) == len(sids), 5 * UNIT
            )
        assert len(h.sio.detached) == 2
        assert h.disconnects == [(sids[0], "transport error")]
        assert h.sio.stats.detached_evicted == 1
        assert h.sio.of("/").room_size("r") == 2
        assert h.sio.budgets.detached_count("127.0.0.1") == 2


# -- the budgets themselves --------------------------------------------------------------------


def test_budgets_count_and_refuse_without_io() -> None:
    budgets = Budgets(pending_per_client=2, max_pending=3, detached_per_client=2)
    for key in ("a", "a", "b"):
        assert budgets.check_pending(key) is None
        budgets.add_pending(key)
    refusal = budgets.check_pending("a")
    assert refusal is not None and refusal.status == 429
    refusal = budgets.check_pending("c")
    assert refusal is not None and refusal.status == 503
    budgets.remove_pending("a")
    budgets.remove_pending("b")
    assert budgets.pending == {"a": 1} and budgets.total_pending == 1

    socks: list[Any] = [object(), object(), object()]
    assert budgets.add_detached("a", socks[0]) == []
    assert budgets.add_detached("a", socks[1]) == []
    assert budgets.add_detached("a", socks[2]) == [socks[0]]
    budgets.remove_detached("a", socks[1])
    budgets.remove_detached("a", socks[2])
    assert budgets.detached == {}
    with pytest.raises(ValueError):
        Budgets(pending_per_client=0, max_pending=1, detached_per_client=1)
