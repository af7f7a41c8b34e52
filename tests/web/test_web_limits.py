"""Per-IP limits, API keys and CORS through a real gateway: httpx for REST and Engine.IO
polling, python-socketio and socket.io-client (npm) for Socket.IO, a websockets client for a
raw WebSocket handshake."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import socketio
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from kichat.limits import RateLimiter
from kichat.sim import KickSimulator

from conftest import UNIT, eventually, node_script
from web_harness import Gateway, gateway, recording_kick

XQC = "/api/v2/channels/xqc"
PROBES = ("/healthz", "/readyz", "/metrics")


@pytest.fixture
async def sim() -> AsyncIterator[KickSimulator]:
    async with KickSimulator(port=0, seed=9) as simulator:
        yield simulator


class FrozenClock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def freeze_rest_limiter(gw: Gateway) -> FrozenClock:
    """Give the gateway's REST limiter a clock the test moves, keeping its configured rate:
    "the 101st request within a minute" must not depend on how fast this machine is."""
    clock = FrozenClock()
    real = gw.app.frontend.limiter
    gw.app.frontend.limiter = RateLimiter(real.rate, real.per, clock=clock)
    return clock


def assert_429(resp: httpx.Response) -> int:
    assert resp.status_code == 429, resp.text
    retry_after = int(resp.headers["retry-after"])
    assert retry_after >= 1
    error = resp.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["retry_after"] == retry_after
    assert "per minute" in error["message"]
    return retry_after


# --- the REST rate limit ----------------------------------------------------------------------


async def test_101st_rest_request_in_a_minute_is_429_with_retry_after(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        assert (gw.app.frontend.limiter.rate, gw.app.frontend.limiter.per) == (100, 60.0)
        clock = freeze_rest_limiter(gw)
        paths = [XQC, XQC + "/messages", "/routes", "/stats", "/openapi.json"]
        statuses = [(await gw.get(paths[i % len(paths)])).status_code for i in range(100)]
        assert statuses == [200] * 100
        assert assert_429(await gw.get(XQC)) == 1  # 100 a minute: a token every 0.6 s
        # Probes and scrapers are never limited.
        for _ in range(3):
            for path in PROBES:
                assert (await gw.get(path)).status_code == 200, path
        # Refused requests do not reach Kick either.
        upstream = sum(sim.rest_requests.values())
        assert_429(await gw.get("/api/v2/channels/someoneelse"))
        assert sum(sim.rest_requests.values()) == upstream
        clock.now += 0.6
        assert (await gw.get(XQC)).status_code == 200
        assert_429(await gw.get(XQC))
        clock.now += 60.0
        assert [(await gw.get(XQC)).status_code for _ in range(100)] == [200] * 100
        assert_429(await gw.get(XQC))
        refused = gw.app.web_stats.rate_limited["rest"]
    assert refused == 4


async def test_probes_are_never_limited_even_at_the_lowest_limit(sim: KickSimulator) -> None:
    async with gateway(sim, limits__rest_per_minute=1) as gw:
        assert (await gw.get("/routes")).status_code == 200
        assert_429(await gw.get("/routes"))
        for _ in range(20):
            for path in PROBES:
                assert (await gw.get(path)).status_code == 200, path


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(sim: KickSimulator) -> None:
    a = {"X-Forwarded-For": "203.0.113.10"}
    b = {"X-Forwarded-For": "203.0.113.20"}
    # 127.0.0.1 is a trusted proxy: each forwarded client has its own bucket.
    async with gateway(sim, limits__rest_per_minute=2, server__trusted_proxies=["127.0.0.1"]) as gw:
        assert [(await gw.get("/routes", headers=a)).status_code for _ in range(2)] == [200] * 2
        assert_429(await gw.get("/routes", headers=a))
        assert (await gw.get("/routes", headers=b)).status_code == 200
        # The address the proxy appended is the client, whatever the client wrote before it.
        spoofed = {"X-Forwarded-For": "203.0.113.99, 203.0.113.10"}
        assert_429(await gw.get("/routes", headers=spoofed))
        # The proxy itself (no header) has its own bucket too.
        assert (await gw.get("/routes")).status_code == 200
    # Nobody trusted: the header is ignored and every request counts against 127.0.0.1.
    async with gateway(sim, limits__rest_per_minute=2) as gw:
        assert (await gw.get("/routes", headers=a)).status_code == 200
        assert (await gw.get("/routes", headers=b)).status_code == 200
        assert_429(await gw.get("/routes", headers={"X-Forwarded-For": "203.0.113.30"}))
        assert_429(await gw.get("/routes"))


# --- the Socket.IO connection cap -------------------------------------------------------------


async def connect_python(url: str, **kwargs: Any) -> tuple[socketio.AsyncClient, list[Any]]:
    """A python-socketio client; its connect_error payloads are collected (not raised)."""
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", errors.append)
    auth = {"recovery": False, **kwargs.pop("auth", {})}
    try:
        await client.connect(url, transports=["websocket"], auth=auth, **kwargs)
    except socketio.exceptions.ConnectionError:
        assert errors, "refused without a connect_error"
    return client, errors


@pytest.mark.node
async def test_11th_concurrent_socket_io_connection_is_refused_with_a_reason(
    sim: KickSimulator,
) -> None:
    async with gateway(sim) as gw:
        service = gw.app.service
        clients = []
        for _ in range(10):
            client, errors = await connect_python(gw.url)
            assert client.connected and not errors
            clients.append(client)
        assert service.connections.count("127.0.0.1") == 10

        # The 11th, from python-socketio ...
        extra, errors = await connect_python(gw.url)
        assert not extra.connected
        assert errors == [
            {
                "message": "too many connections from your address (limit 10)",
                "data": {"code": "too_many_connections", "limit": 10},
            }
        ]
        # ... and from socket.io-client (npm).
        opts = {"transports": ["websocket"], "forceNew": True, "reconnection": False}
        async with node_script("sio_client.mjs") as js:
            await js.until(lambda m: m["ev"] == "ready")
            js.send({"cmd": "connect", "url": gw.url, "opts": opts})
            refused = await js.until(lambda m: m["ev"] in ("connect", "connect_error"))
            assert refused == {
                "ev": "connect_error",
                "message": "too many connections from your address (limit 10)",
                "data": {"code": "too_many_connections", "limit": 10},
                "status": None,
                "detail": None,
                "body": None,
            }
            # One leaves; a new connection is accepted again.
            await clients.pop().disconnect()
            await eventually(lambda: service.connections.count("127.0.0.1") == 9, what="release")
            js.send({"cmd": "connect", "url": gw.url, "opts": opts})
            accepted = await js.until(lambda m: m["ev"] in ("connect", "connect_error"))
            assert accepted["ev"] == "connect", accepted
            assert service.connections.count("127.0.0.1") == 10
            js.send({"cmd": "disconnect"})
            await eventually(lambda: service.connections.count("127.0.0.1") == 9, what="release")
        refusals = dict(service.stats.refused_connections)
        for client in clients:
            await client.disconnect()
        await eventually(lambda: service.connections.count("127.0.0.1") == 0, what="all released")
    assert refusals == {"too_many_connections": 2}


async def test_connection_cap_uses_forwarded_for_from_a_trusted_proxy(
    sim: KickSimulator,
) -> None:
    async with gateway(
        sim, limits__connections_per_ip=1, server__trusted_proxies=["127.0.0.1"]
    ) as gw:
        first, _ = await connect_python(gw.url, headers={"X-Forwarded-For": "203.0.113.1"})
        same, same_errors = await connect_python(gw.url, headers={"X-Forwarded-For": "203.0.113.1"})
        other, other_errors = await connect_python(
            gw.url, headers={"X-Forwarded-For": "203.0.113.2"}
        )
        assert first.connected
        assert not same.connected
        assert same_errors[0]["data"]["code"] == "too_many_connections"
        assert other.connected, other_errors
        await first.disconnect()
        await other.disconnect()


# --- API keys ---------------------------------------------------------------------------------

KEYS = {"limits__api_keys": ["k-alpha-1", "k-beta-2"]}


@pytest.mark.node
async def test_socket_io_needs_a_valid_token_when_api_keys_are_set(sim: KickSimulator) -> None:
    async with gateway(sim, **KEYS) as gw:
        for auth in ({}, {"token": "wrong"}, {"token": ""}, {"token": ["k-alpha-1"]}):
            client, errors = await connect_python(gw.url, auth=auth)
            assert not client.connected, auth
            assert errors[0]["message"] == "unauthorized"
            assert errors[0]["data"]["code"] == "unauthorized"
        client, errors = await connect_python(gw.url, auth={"token": "k-beta-2"})
        assert client.connected, errors
        await client.disconnect()

        async with node_script("sio_client.mjs") as js:
            await js.until(lambda m: m["ev"] == "ready")
            opts: dict[str, Any] = {"transports": ["websocket"], "forceNew": True}
            js.send({"cmd": "connect", "url": gw.url, "opts": {**opts, "reconnection": False}})
            refused = await js.until(lambda m: m["ev"] in ("connect", "connect_error"))
            assert refused["ev"] == "connect_error"
            assert refused["message"] == "unauthorized"
            assert refused["data"]["code"] == "unauthorized"
            js.send(
                {"cmd": "connect", "url": gw.url, "opts": {**opts, "auth": {"token": "k-alpha-1"}}}
            )
            accepted = await js.until(lambda m: m["ev"] in ("connect", "connect_error"))
            assert accepted["ev"] == "connect", accepted
            js.send({"cmd": "disconnect"})
        refusals = dict(gw.app.service.stats.refused_connections)
    assert refusals == {"unauthorized": 5}


async def test_rest_needs_a_key_when_api_keys_are_set(sim: KickSimulator) -> None:
    async with gateway(sim, **KEYS) as gw:
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"X-API-Key": "nope"},
            {"Authorization": "Basic k-alpha-1"},
            {"Authorization": "k-alpha-1"},
        ):
            resp = await gw.get(XQC, headers=headers)
            assert resp.status_code == 401, headers
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["www-authenticate"].startswith("Bearer")
        assert (await gw.get(XQC, headers={"Authorization": "Bearer k-alpha-1"})).status_code == 200
        assert (await gw.get(XQC, headers={"authorization": "bearer k-beta-2"})).status_code == 200
        assert (await gw.get(XQC, headers={"X-API-Key": "k-beta-2"})).status_code == 200
        for path in ("/routes", "/stats", "/openapi.json"):
            assert (await gw.get(path)).status_code == 401, path
        for path in PROBES:
            assert (await gw.get(path)).status_code == 200, path
        unauthorized = gw.app.web_stats.unauthorized
    assert unauthorized == 8
    assert sim.rest_requests[XQC] == 1


async def test_user_endpoints_take_the_key_only_in_x_api_key(sim: KickSimulator) -> None:
    kick_session = {"X-Kick-Cookie": "kick=session", "Authorization": "Bearer kick-token"}
    async with recording_kick() as kick, gateway(sim, api_url=kick.url, **KEYS) as gw:
        # Authorization is the Kick session here, so it cannot double as the gateway's key.
        resp = await gw.http.post(
            "/api/v2/channels/followed", headers={"Authorization": "Bearer k-alpha-1"}
        )
        assert resp.status_code == 401
        assert "X-API-Key" in resp.json()["error"]["message"]
        resp = await gw.http.put("/api/v2/user/livestreams", headers=kick_session)
        assert resp.status_code == 401
        assert kick.requests == []
        resp = await gw.http.put(
            "/api/v2/user/livestreams", headers={**kick_session, "X-API-Key": "k-alpha-1"}
        )
        assert resp.status_code == 200
    [seen] = kick.requests
    assert seen.headers["authorization"] == "Bearer kick-token"
    assert seen.headers["cookie"] == "kick=session"
    assert "x-api-key" not in seen.headers


# --- CORS -------------------------------------------------------------------------------------

GOOD = "https://good.example"
BAD = "https://evil.example"
CORS = {"server__cors_origins": [GOOD]}


async def test_cors_on_rest_responses_and_preflights(sim: KickSimulator) -> None:
    async with gateway(sim, limits__rest_per_minute=4, **CORS) as gw:
        resp = await gw.get(XQC, headers={"Origin": GOOD})
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == GOOD
        assert "Origin" in resp.headers["vary"]
        resp = await gw.get(XQC, headers={"Origin": BAD})
        assert resp.status_code == 200  # the server answers; the browser withholds it
        assert "access-control-allow-origin" not in resp.headers

        preflight = {
            "Origin": GOOD,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "x-kick-cookie, authorization",
        }
        resp = await gw.http.options("/api/v2/user/livestreams", headers=preflight)
        assert resp.status_code == 204
        assert resp.headers["access-control-allow-origin"] == GOOD
        assert "PUT" in resp.headers["access-control-allow-methods"]
        assert resp.headers["access-control-allow-headers"] == "x-kick-cookie, authorization"
        resp = await gw.http.options(
            "/api/v2/user/livestreams", headers={**preflight, "Origin": BAD}
        )
        assert resp.status_code == 403
        assert "access-control-allow-origin" not in resp.headers

        # Errors are readable by an allowed page too (a 404 and a 429).
        resp = await gw.get("/api/v2/channels/nosuchchannel", headers={"Origin": GOOD})
        assert resp.status_code == 404
        assert resp.headers["access-control-allow-origin"] == GOOD
        while (resp := await gw.get(XQC, headers={"Origin": GOOD})).status_code != 429:
            pass
        assert resp.headers["access-control-allow-origin"] == GOOD


async def test_cors_on_socket_io_polling_and_websocket(sim: KickSimulator) -> None:
    handshake = "/socket.io/?EIO=4&transport=polling"
    async with gateway(sim, **CORS) as gw:
        resp = await gw.get(handshake, headers={"Origin": GOOD})
        assert resp.status_code == 200
        assert resp.text.startswith("0{")
        assert resp.headers["access-control-allow-origin"] == GOOD
        resp = await gw.get(handshake, headers={"Origin": BAD})
        assert resp.status_code == 403
        assert "access-control-allow-origin" not in resp.headers
        preflight = {"Origin": GOOD, "Access-Control-Request-Method": "POST"}
        resp = await gw.http.options(handshake, headers=preflight)
        assert resp.status_code in (200, 204)
        assert resp.headers["access-control-allow-origin"] == GOOD
        resp = await gw.http.options(handshake, headers={**preflight, "Origin": BAD})
        assert resp.status_code == 403

        ws_url = gw.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        async with ws_connect(ws_url, origin=GOOD) as ws:  # type: ignore[arg-type]
            assert str(await asyncio.wait_for(ws.recv(), 5 * UNIT)).startswith("0{")
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(ws_url, origin=BAD):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403


async def test_cors_star_echoes_any_origin(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:  # the default: cors_origins = ["*"]
        resp = await gw.get(XQC, headers={"Origin": BAD})
        assert resp.headers["access-control-allow-origin"] == BAD
        resp = await gw.get(XQC)
        assert "access-control-allow-origin" not in resp.headers


# --- what a client that stops reading can hold ------------------------------------------------


async def test_by_default_the_kernel_part_of_a_slow_client_is_bounded(sim: KickSimulator) -> None:
    """The README's bound: outbound_buffer_limit in the gateway, plus the socket's send buffer,
    which the gateway caps (server.socket_send_buffer) instead of letting the kernel autotune it
    up to 4 MiB."""
    async with gateway(sim) as gw:
        settings = gw.app.settings
        assert settings.server.socket_send_buffer == 256 * 1024
        assert settings.socketio.outbound_buffer_limit == 4 * 1024 * 1024
        ws_url = gw.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        async with ws_connect(ws_url) as client:
            await asyncio.wait_for(client.recv(), 5 * UNIT)
            [conn] = gw.app.sio.sessions.values()
            assert conn.ws is not None
            server_socket = conn.ws.transport.get_extra_info("socket")
            kernel = server_socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            assert 256 * 1024 <= kernel <= 2 * 256 * 1024  # Linux doubles what it is given
