"""``Server.close()`` drains at the wire: what is queued leaves first, then the transport closes
the way that makes clients reconnect (WebSocket 1001, long-polling's close packet in a response
of its own), new sessions are refused meanwhile, and the drain is bounded.

``flush_interval`` is long here, so packets are still queued when the drain starts.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets
from websockets.asyncio.client import connect

from conftest import UNIT
from sio_harness import Harness, serve_sio

LONG_FLUSH = {"flush_interval": 0.2}  # packets queued just before the drain are still queued


def ws_url(h: Harness) -> str:
    return f"ws://127.0.0.1:{h.port}/socket.io/?EIO=4&transport=websocket"


def poll_url(h: Harness, sid: str | None = None) -> str:
    return f"{h.url}/socket.io/?EIO=4&transport=polling" + (f"&sid={sid}" if sid else "")


async def polling_in_room(h: Harness, http: httpx.AsyncClient) -> str:
    sid: str = json.loads((await http.get(poll_url(h))).text[1:])["sid"]
    assert (await http.post(poll_url(h, sid), content=b"40")).text == "ok"
    assert (await http.get(poll_url(h, sid))).text.startswith("40{")
    assert (await http.post(poll_url(h, sid), content=b'421["join","r"]')).text == "ok"
    assert (await http.get(poll_url(h, sid))).text.startswith('431["joined"')
    return sid


def emit_three(h: Harness) -> None:
    for n in range(3):
        assert h.sio.of("/").emit("m", n, to="r") == 1


async def test_websocket_gets_the_queued_packets_then_close_1001() -> None:
    async with serve_sio(**LONG_FLUSH) as h, connect(ws_url(h)) as ws:
        await asyncio.wait_for(ws.recv(), 2 * UNIT)  # the open packet
        await ws.send("40")
        await ws.send('421["join","r"]')
        assert (await asyncio.wait_for(ws.recv(), 5 * UNIT)).startswith("40{")
        assert (await asyncio.wait_for(ws.recv(), 5 * UNIT)).startswith('431["joined"')
        emit_three(h)
        await h.sio.close(grace=2 * UNIT)
        got = []
        try:
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 5 * UNIT))
        except websockets.ConnectionClosed:
            pass
        assert [m.split(",")[1] for m in got] == ["0", "1", "2"]
        assert ws.close_code == 1001
        assert h.disconnects[0][1] == "server shutting down"


async def test_a_pending_poll_gets_the_queue_and_the_next_one_the_close() -> None:
    async with serve_sio(**LONG_FLUSH) as h, httpx.AsyncClient(timeout=5 * UNIT) as http:
        sid = await polling_in_room(h, http)
        pending = asyncio.ensure_future(http.get(poll_url(h, sid)))
        await h.wait_for(lambda: h.sio.sessions[sid].poll is not None, 5 * UNIT)
        emit_three(h)
        drain = asyncio.ensure_future(h.sio.close(grace=5 * UNIT))
        # socket.io-client handles packets that share a payload with the close packet only
        # after its disconnect: the queue and the close come in two responses.
        assert [p.split(",")[1] for p in (await pending).text.split("\x1e")] == ["0", "1", "2"]
        assert not drain.done()
        assert (await http.get(poll_url(h, sid))).text == "1"
        await asyncio.wait_for(drain, 2 * UNIT)
        assert (await http.get(poll_url(h, sid))).status_code == 400  # gone for good


async def test_a_client_between_two_polls_gets_them_on_its_next_gets() -> None:
    async with serve_sio(**LONG_FLUSH) as h, httpx.AsyncClient(timeout=5 * UNIT) as http:
        sid = await polling_in_room(h, http)
        emit_three(h)
        drain = asyncio.ensure_future(h.sio.close(grace=5 * UNIT))
        await h.wait_for(lambda: h.sio.closing, 5 * UNIT)
        # A packet the client sends meanwhile is moot, and not an error.
        assert (await http.post(poll_url(h, sid), content=b"3")).text == "ok"
        assert [p.split(",")[1] for p in (await http.get(poll_url(h, sid))).text.split("\x1e")] == [
            "0", "1", "2",
        ]  # fmt: skip
        assert (await http.get(poll_url(h, sid))).text == "1"
        await asyncio.wait_for(drain, 2 * UNIT)


async def test_new_sessions_are_refused_while_draining_and_the_drain_is_bounded() -> None:
    async with serve_sio() as h, httpx.AsyncClient(timeout=5 * UNIT) as http:
        await polling_in_room(h, http)  # never polls again: holds the drain until its timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        drain = asyncio.ensure_future(h.sio.close(grace=0.5 * UNIT))
        await h.wait_for(lambda: h.sio.closing, 5 * UNIT)
        refused = await http.get(poll_url(h))
        assert refused.status_code == 503
        assert refused.json()["message"] == "server shutting down"
        with_ws = await http.get(
            f"{h.url}/socket.io/?EIO=4&transport=websocket",
            headers={"Upgrade": "websocket", "Connection": "Upgrade",
                     "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        )  # fmt: skip
        assert with_ws.status_code == 503
        await asyncio.wait_for(drain, 5 * UNIT)
        assert loop.time() - started >= 0.5 * UNIT * 0.9
