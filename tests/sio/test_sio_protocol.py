"""Engine.IO / Socket.IO rules checked at the wire, with raw HTTP and WebSocket clients.

These are the failure modes a library client never produces on purpose: bad handshakes,
malformed packets, oversized payloads, duplicate polls, origins, clients that never connect.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from conftest import UNIT
from sio_harness import Harness, serve_sio


def ws_url(h: Harness, sid: str | None = None) -> str:
    url = f"ws://127.0.0.1:{h.port}/socket.io/?EIO=4&transport=websocket"
    return url + (f"&sid={sid}" if sid else "")


def poll_url(h: Harness, sid: str | None = None) -> str:
    url = f"{h.url}/socket.io/?EIO=4&transport=polling"
    return url + (f"&sid={sid}" if sid else "")


async def recv_json_after(sock: ClientConnection, prefix: str) -> Any:
    msg = await asyncio.wait_for(sock.recv(), 2 * UNIT)
    assert isinstance(msg, str) and msg.startswith(prefix), msg
    return json.loads(msg[len(prefix) :])


async def connected_socket(h: Harness, auth: str = "") -> ClientConnection:
    sock = await connect(ws_url(h))
    await recv_json_after(sock, "0")
    await sock.send("40" + auth)
    await recv_json_after(sock, "40")
    return sock


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("transport=polling", 400, 5),
        ("EIO=3&transport=polling", 400, 5),
        ("EIO=4", 400, 0),
        ("EIO=4&transport=carrier-pigeon", 400, 0),
        ("EIO=4&transport=polling&sid=unknown", 400, 1),
    ],
)
async def test_bad_engine_io_requests_get_400_with_a_json_body(
    query: str, status: int, code: int
) -> None:
    async with serve_sio() as h, httpx.AsyncClient() as http:
        reply = await http.get(f"{h.url}/socket.io/?{query}")
    assert reply.status_code == status
    assert reply.json()["code"] == code
    assert isinstance(reply.json()["message"], str)


async def test_handshake_must_be_a_get() -> None:
    async with serve_sio() as h, httpx.AsyncClient() as http:
        reply = await http.post(poll_url(h), content=b"40")
    assert reply.status_code == 400
    assert reply.json() == {"code": 2, "message": "Bad handshake method"}


async def test_connect_reply_carries_pid_and_events_carry_offsets() -> None:
    async with serve_sio() as h:
        sock = await connect(ws_url(h))
        handshake = await recv_json_after(sock, "0")
        assert handshake["upgrades"] == [] and handshake["maxPayload"] == 1_000_000
        await sock.send("40")
        reply = await recv_json_after(sock, "40")
        assert set(reply) == {"sid", "pid"}
        await sock.send('420["join","r"]')
        assert await recv_json_after(sock, "430") == ["joined", "r"]
        h.sio.of("/").emit(r"App\Events\ChatMessageEvent", {"a": 1}, to="r")
        event = await recv_json_after(sock, "42")
        assert event[0] == "App\\Events\\ChatMessageEvent" and event[1] == {"a": 1}
        assert event[2] == str(h.sio.of("/").log.last_offset)
        await sock.close()


async def test_unknown_namespace_and_refused_connect() -> None:
    async with serve_sio(refuse_token="nope") as h:
        sock = await connect(ws_url(h))
        await recv_json_after(sock, "0")
        await sock.send("40/random,")
        assert (
            await asyncio.wait_for(sock.recv(), 2 * UNIT)
            == '44/random,{"message":"Invalid namespace"}'
        )
        await sock.send('40{"token":"nope"}')
        assert await recv_json_after(sock, "44") == {
            "message": "unauthorized",
            "data": {"hint": "bad token"},
        }
        await sock.close()


@pytest.mark.parametrize(
    "bad",
    ["4abc", "42{}", '42abc["x"]', '42["connect"]', "41{}", "7", '43["not", "yours"]x', "2probe"],
)
async def test_a_malformed_packet_closes_only_its_own_connection(bad: str) -> None:
    async with serve_sio() as h:
        good = await connected_socket(h)
        await good.send('421["join","r"]')
        await recv_json_after(good, "431")
        culprit = await connected_socket(h)
        await culprit.send(bad)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(culprit.recv(), 2 * UNIT)
        h.sio.of("/").emit("still", "here", to="r")
        assert (await recv_json_after(good, "42"))[:2] == ["still", "here"]
        assert h.sio.stats.parse_errors == 1
        await good.close()


async def test_websocket_payload_over_max_payload_is_refused() -> None:
    async with serve_sio(max_payload=1000) as h:
        sock = await connected_socket(h)
        await sock.send('42["echo","' + "x" * 2000 + '"]')
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(sock.recv(), 2 * UNIT)
        assert sock.close_code == 1009


async def test_polling_session_lifecycle_and_its_errors() -> None:
    async with serve_sio(max_payload=1000) as h, httpx.AsyncClient() as http:
        open_ = await http.get(poll_url(h))
        assert open_.headers["content-type"].startswith("text/plain")
        sid = json.loads(open_.text[1:])["sid"]
        assert (await http.post(poll_url(h, sid), content=b'40\x1e42["join","r"]')).text == "ok"
        assert (await http.get(poll_url(h, sid))).text.startswith("40{")
        h.sio.of("/").emit("m", 1, to="r")
        assert (await http.get(poll_url(h, sid))).text.startswith('42["m",1,')
        too_big = await http.post(poll_url(h, sid), content=b"4" + b"x" * 2000)
        assert too_big.status_code == 413
        assert (await http.get(poll_url(h, sid))).status_code == 400  # the session is gone


async def test_duplicate_poll_closes_the_session() -> None:
    async with serve_sio() as h, httpx.AsyncClient() as http:
        sid = json.loads((await http.get(poll_url(h))).text[1:])["sid"]
        first = asyncio.create_task(http.get(poll_url(h, sid)))
        await h.wait_for(lambda: h.sio.sessions[sid].poll is not None, 5 * UNIT)
        second = await http.get(poll_url(h, sid))
        assert second.status_code == 400
        assert (await first).text == "1"  # the pending poll is told the session closed
        assert (await http.get(poll_url(h, sid))).status_code == 400


async def test_a_poll_that_arrives_after_the_probe_returns_at_once() -> None:
    """Regression: the client pauses polling after 3probe; a GET still on its way must not
    hang until the next ping, or the upgrade stalls for a whole ping interval."""
    async with serve_sio() as h, httpx.AsyncClient() as http:
        sid = json.loads((await http.get(poll_url(h))).text[1:])["sid"]
        probe = await connect(ws_url(h, sid))
        await probe.send("2probe")
        assert await asyncio.wait_for(probe.recv(), 2 * UNIT) == "3probe"
        late = await asyncio.wait_for(http.get(poll_url(h, sid)), 2 * UNIT)
        assert late.text == "6"
        await probe.send("5")
        await probe.send("40")
        assert (await recv_json_after(probe, "40")).keys() == {"sid", "pid"}
        assert (await http.get(poll_url(h, sid))).status_code == 400  # polling is over
        second = await connect(ws_url(h, sid))  # a second WebSocket for the same session
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(second.recv(), 2 * UNIT)
        await probe.close()


async def test_session_that_never_connects_a_namespace_is_closed() -> None:
    async with serve_sio(connect_timeout=0.2 * UNIT) as h:
        sock = await connect(ws_url(h))
        await recv_json_after(sock, "0")
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(sock.recv(), 2 * UNIT)
        assert h.sio.stats.connect_timeouts == 1


async def test_unanswered_pings_close_the_session() -> None:
    async with serve_sio(ping_interval=0.1 * UNIT, ping_timeout=0.1 * UNIT) as h:
        sock = await connected_socket(h)
        assert await asyncio.wait_for(sock.recv(), 2 * UNIT) == "2"
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(sock.recv(), 2 * UNIT)
        assert h.sio.stats.ping_timeouts == 1


async def test_origins_outside_the_allowed_list_are_refused() -> None:
    async with (
        serve_sio(cors_origins=["https://overlay.example"]) as h,
        httpx.AsyncClient() as http,
    ):
        ok = await http.get(poll_url(h), headers={"Origin": "https://overlay.example"})
        assert ok.headers["access-control-allow-origin"] == "https://overlay.example"
        assert ok.headers["access-control-allow-credentials"] == "true"
        bad = await http.get(poll_url(h), headers={"Origin": "https://evil.example"})
        assert bad.status_code == 403 and bad.json()["code"] == 4
        preflight = await http.options(
            poll_url(h),
            headers={"Origin": "https://overlay.example", "Access-Control-Request-Headers": "x-a"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-headers"] == "x-a"
        with pytest.raises(websockets.InvalidStatus):
            await connect(ws_url(h), origin="https://evil.example")  # type: ignore[arg-type]
        # Non-browser clients send no Origin and are not affected.
        assert (await http.get(poll_url(h))).status_code == 200
