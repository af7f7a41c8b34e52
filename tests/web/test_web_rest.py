"""The REST API through a real gateway: httpx as the client, the Kick simulator (or a recording
HTTP server) as Kick. What reached "Kick" is read from the simulator's ``rest_requests``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from kichat.sim import KickSimulator

from conftest import UNIT
from web_harness import CHAT, gateway, recording_kick

XQC = "/api/v2/channels/xqc"


@pytest.fixture
async def sim() -> AsyncIterator[KickSimulator]:
    async with KickSimulator(port=0, seed=7) as simulator:
        yield simulator


def upstream_calls(sim: KickSimulator) -> int:
    return sum(sim.rest_requests.values())


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> str:
    """The gateway's JSON error shape; returns the message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return str(error["message"])


# --- GET /api/v2/channels/{channelName} ---------------------------------------------------------


async def test_channel_is_kicks_body_byte_for_byte(sim: KickSimulator) -> None:
    async with gateway(sim) as gw, httpx.AsyncClient() as plain:
        direct = await plain.get(sim.api_url + XQC)
        resp = await gw.get(XQC)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.content == direct.content
    assert resp.json()["chatroom"]["id"] == sim.channel("xqc").chatroom_id == 668


async def test_unknown_channel_is_404_with_kicks_body(sim: KickSimulator) -> None:
    async with gateway(sim) as gw, httpx.AsyncClient() as plain:
        direct = await plain.get(sim.api_url + "/api/v2/channels/nosuchchannel")
        resp = await gw.get("/api/v2/channels/nosuchchannel")
    assert direct.status_code == 404
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == direct.json()


BAD_SLUGS = [
    "-leading-dash",  # must start with a letter or digit
    "a" * 65,  # one over the slug limit
    "a" * 300,  # over the raw segment limit
    "xqc%2Fmessages",  # an encoded slash
    "xqc%2fmessages",  # lower-case hex
    "%2E%2E",  # an encoded ..
    "%2e",  # an encoded .
    "xqc%5Cadmin",  # an encoded backslash
    "x%25qc",  # an encoded %
    "xqc%00",  # NUL
    "xqc%0D%0AX-Injected:%201",  # CR LF
    "xqc%7F",  # DEL
    "xqc%20",  # a space
    "%C3%A9t%C3%A9",  # unicode (été)
    "%E2%84%AA",  # the Kelvin sign, which lower-cases to ASCII k
    "%FF%FE",  # not UTF-8 at all
    "xqc%3Fx%3D1",  # an encoded ?
    "xqc%23frag",  # an encoded #
    "x.q.c",
]


async def test_malformed_names_are_400_and_never_reach_kick(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        for bad in BAD_SLUGS:
            for suffix in ("", "/messages"):
                resp = await gw.raw_get(f"/api/v2/channels/{bad}{suffix}")
                assert_error(resp, 400, "invalid_channel_name")
        # The same check for what httpx itself would send from an ordinary string.
        resp = await gw.get("/api/v2/channels/été")
        assert_error(resp, 400, "invalid_channel_name")
        # Dot segments, which HTTP client libraries normalise away before sending.
        for raw in ("..", ".", "../../_sim/stats", "..%2F..%2F_sim%2Fstats"):
            status, headers, body = await gw.raw_request(
                f"GET /api/v2/channels/{raw}/messages HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert status in (400, 404), (raw, status, body)
            assert headers["content-type"].startswith("application/json")
            assert "error" in orjson.loads(body)
    assert upstream_calls(sim) == 0, sim.rest_requests


async def test_upper_case_is_accepted_and_sent_to_kick_in_lower_case(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        resp = await gw.get("/api/v2/channels/XqC")
    assert resp.status_code == 200
    assert dict(sim.rest_requests) == {XQC: 1}


async def test_cache_20_sequential_lookups_make_at_most_1_upstream_call(
    sim: KickSimulator,
) -> None:
    async with gateway(sim) as gw:
        bodies = [(await gw.get(XQC)).content for _ in range(20)]
        hits = gw.app.kick.stats.cache_hits
    assert len(set(bodies)) == 1
    assert sim.rest_requests[XQC] == 1
    assert hits == 19


async def test_single_flight_20_concurrent_lookups_make_1_upstream_call(
    sim: KickSimulator,
) -> None:
    # Kick answers slowly, so all 20 requests are in flight together; the cache is off, so
    # only single-flight can explain a single upstream call.
    sim.fail_rest("xqc", status="delay", count=1, delay=1 * UNIT)
    async with gateway(sim, kick_api__channel_cache_ttl=0) as gw:
        responses = await asyncio.gather(*(gw.get(XQC) for _ in range(20)))
        joined = gw.app.kick.stats.inflight_joined
    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.content for r in responses}) == 1
    assert sim.rest_requests[XQC] == 1
    assert joined == 19


async def test_user_endpoint_with_a_non_ascii_header_value_is_400_not_500(
    sim: KickSimulator,
) -> None:
    async with recording_kick() as kick, gateway(sim, api_url=kick.url) as gw:
        # RFC 9110 obs-text: legal on the wire (httptools accepts it); no client library sends it.
        status, _, body = await gw.raw_request(
            b"POST /api/v2/channels/followed HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            b"X-Kick-Cookie: session=caf\xe9\r\n\r\n"
        )
    assert kick.requests == []
    assert status == 400, body
    assert orjson.loads(body)["error"]["code"] == "invalid_header"


async def test_edge_block_403_is_502_saying_kicks_edge_blocked_it(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", status=403)
    async with gateway(sim) as gw:
        message = assert_error(await gw.get(XQC), 502, "upstream_blocked")
    assert "edge" in message
    assert "blocked" in message
    assert "403" in message


async def test_kick_500_is_502(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", status=500)
    async with gateway(sim) as gw:
        message = assert_error(await gw.get(XQC), 502, "upstream_bad_response")
        messages = assert_error(await gw.get(XQC + "/messages"), 502)
    assert "500" in message
    assert "500" in messages


async def test_kick_500_is_retried_then_502(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", status=500)
    async with gateway(sim, kick_api__retries=1) as gw:
        assert_error(await gw.get(XQC), 502)
    assert sim.rest_requests[XQC] == 2


async def test_kick_hang_is_504(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", status="hang")
    loop = asyncio.get_running_loop()
    async with gateway(sim, kick_api__timeout=0.3 * UNIT) as gw:
        started = loop.time()
        message = assert_error(await gw.get(XQC), 504, "upstream_timeout")
        elapsed = loop.time() - started
    assert "did not answer" in message
    assert 0.3 * UNIT * 0.98 <= elapsed < 5 * UNIT  # timers have ms granularity


async def test_404_is_cached_for_not_found_ttl(sim: KickSimulator) -> None:
    path = "/api/v2/channels/newcomer"
    async with gateway(sim, kick_api__not_found_ttl=0.5 * UNIT) as gw:
        assert (await gw.get(path)).status_code == 404
        sim.add_channel("newcomer")
        # Kick now knows the channel, but the 404 is still cached.
        assert (await gw.get(path)).status_code == 404
        assert sim.rest_requests[path] == 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5 * UNIT
        while (resp := await gw.get(path)).status_code == 404:
            assert loop.time() < deadline, "the cached 404 never expired"
            await asyncio.sleep(0.05 * UNIT)
    assert resp.json()["slug"] == "newcomer"
    assert sim.rest_requests[path] == 2


async def test_wrong_method_is_405_with_allow_and_head_is_get_without_body(
    sim: KickSimulator,
) -> None:
    async with gateway(sim) as gw:
        cases = [
            ("DELETE", XQC, "GET, HEAD, OPTIONS"),
            ("POST", "/healthz", "GET, HEAD, OPTIONS"),
            ("GET", "/api/v2/user/livestreams", "OPTIONS, PUT"),
            # "followed" is also a channel name, so GET is allowed there too.
            ("PATCH", "/api/v2/channels/followed", "GET, HEAD, OPTIONS, POST"),
        ]
        for method, path, allow in cases:
            resp = await gw.http.request(method, path)
            assert_error(resp, 405, "method_not_allowed")
            assert resp.headers["allow"] == allow, (method, path)
        head = await gw.http.head(XQC)
        get = await gw.get(XQC)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert sim.rest_requests[XQC] == 1


# --- GET /api/v2/channels/{channelName}/messages ------------------------------------------------


async def test_messages_come_back_in_the_live_event_shape_newest_first(
    sim: KickSimulator,
) -> None:
    ch = sim.channel("moonlitfox")
    sent = []
    for i in range(3):
        payload = {
            "id": f"00000000-0000-4000-8000-00000000000{i}",
            "chatroom_id": ch.chatroom_id,
            "content": f"message {i}",
            "type": "message",
            "created_at": f"2026-03-02T19:04:1{i}+00:00",
            "sender": {"id": 55012345, "username": "PixelMoth", "slug": "pixelmoth"},
            "metadata": {"message_ref": f"17724782510{i}"},
        }
        await sim.publish(ch.chatroom_channel, CHAT, payload)
        sent.append(payload)
    async with gateway(sim) as gw:
        resp = await gw.get("/api/v2/channels/MoonlitFox/messages")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["channelName"] == "moonlitfox"
    assert body["chatroomId"] == ch.chatroom_id
    got = body["messages"]
    assert [m["id"] for m in got] == [p["id"] for p in reversed(sent)]
    for msg, payload in zip(got, reversed(sent), strict=True):
        assert msg["chatroom_id"] == ch.chatroom_id
        assert "chat_id" not in msg
        assert msg["metadata"] == payload["metadata"]  # an object, not Kick's JSON string
        assert msg["channel_name"] == "moonlitfox"
        assert msg["content"] == payload["content"]
        assert msg["sender"]["username"] == "PixelMoth"


async def test_messages_of_an_unknown_channel_is_404(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        resp = await gw.get("/api/v2/channels/nosuchchannel/messages")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/json")
    assert sim.rest_requests["/api/v2/channels/nosuchchannel"] == 1


# --- user endpoints: forwarded to Kick ----------------------------------------------------------

USER_ENDPOINTS = [("POST", "/api/v2/channels/followed"), ("PUT", "/api/v2/user/livestreams")]
COOKIE = "kick_session=s3cr3t-cookie-value-8c1f"
BEARER = "Bearer s3cr3t-bearer-token-77ad"


@pytest.mark.parametrize(("method", "path"), USER_ENDPOINTS)
async def test_user_endpoint_without_kick_session_is_401(
    sim: KickSimulator, method: str, path: str
) -> None:
    async with recording_kick() as kick, gateway(sim, api_url=kick.url) as gw:
        resp = await gw.http.request(method, path, headers={"X-Other": "1"})
        assert_error(resp, 401, "unauthenticated")
    assert kick.requests == []


@pytest.mark.parametrize(("method", "path"), USER_ENDPOINTS)
async def test_user_endpoint_forwards_only_the_kick_session(
    sim: KickSimulator, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = b'{"channels":[{"slug":"xqc"}]}'
    async with (
        recording_kick(status=201, body=answer) as kick,
        gateway(sim, api_url=kick.url) as gw,
    ):
        resp = await gw.http.request(
            method,
            path,
            headers={
                "X-Kick-Cookie": COOKIE,
                "Authorization": BEARER,
                "Cookie": "gateway_cookie=must-not-pass",
                "X-Forwarded-For": "198.51.100.7",
                "X-Custom": "must-not-pass",
                "Referer": "https://evil.example/",
            },
            content=b'{"ignored": true}',
        )
    assert resp.status_code == 201
    assert resp.content == answer
    assert resp.headers["content-type"] == "application/json"
    [seen] = kick.requests
    assert (seen.method, seen.target) == (method, path)
    assert seen.headers["cookie"] == COOKIE
    assert seen.headers["authorization"] == BEARER
    for name in ("x-kick-cookie", "x-forwarded-for", "x-custom", "referer"):
        assert name not in seen.headers, name
    # The gateway's own fixed headers (and nothing the caller chose) make up the rest.
    assert set(seen.headers) <= {
        "host", "accept", "accept-encoding", "accept-language", "user-agent", "connection",
        "cookie", "authorization", "content-length",
    }  # fmt: skip
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("kichat") for r in caplog.records)
    for secret in ("s3cr3t", "must-not-pass"):
        assert secret not in logged


async def test_user_endpoint_passes_kicks_status_and_retry_after(sim: KickSimulator) -> None:
    async with (
        recording_kick(status=429, body=b'{"message":"slow down"}') as kick,
        gateway(sim, api_url=kick.url) as gw,
    ):
        resp = await gw.http.put("/api/v2/user/livestreams", headers={"Authorization": BEARER})
    assert resp.status_code == 429
    assert resp.json() == {"message": "slow down"}
    assert len(kick.requests) == 1


async def test_user_endpoint_when_kick_is_unreachable_is_502(sim: KickSimulator) -> None:
    async with recording_kick() as kick:
        dead = kick.url
    async with gateway(sim, api_url=dead) as gw:
        resp = await gw.http.post("/api/v2/channels/followed", headers={"Authorization": BEARER})
    message = assert_error(resp, 502)
    assert "s3cr3t" not in message
