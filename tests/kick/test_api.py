"""KickApi against real HTTP peers on loopback: the Kick simulator, and a scripted HTTP server for
the answers the simulator does not produce (odd bodies, Cloudflare pages, Set-Cookie, headers)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from kichat.errors import (
    ChannelNotFound,
    ClientInputError,
    KickBadResponse,
    KickBlocked,
    KickTimeout,
)
from kichat.kick.api import DEFAULT_HEADERS, KickApi, KickChannel
from kichat.kick.events import CHAT_MESSAGE_EVENT
from kichat.sim import KickSimulator

from conftest import UNIT

XQC = "/api/v2/channels/xqc"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05, "blocked_retry_delay": 0.01}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(predicate: Callable[[], bool], within: float = 5 * UNIT) -> None:
    """Wait for a condition another task or process makes true (no event to await for it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.fixture
async def sim() -> AsyncIterator[KickSimulator]:
    async with KickSimulator(port=0) as simulator:
        yield simulator


def make_api(url: str, **kwargs: Any) -> KickApi:
    options: dict[str, Any] = {"timeout": 5 * UNIT, **FAST}
    options.update(kwargs)
    return KickApi(url, **options)


# --- channel lookup against the simulator -------------------------------------------------------


async def test_channel_ids_and_body_passed_through(sim: KickSimulator) -> None:
    async with make_api(sim.api_url) as api:
        ch = await api.channel("XQC")
        async with httpx.AsyncClient() as plain:
            raw = (await plain.get(sim.api_url + XQC)).content
    assert isinstance(ch, KickChannel)
    assert (ch.slug, ch.id, ch.chatroom_id) == ("xqc", 676, 668)
    assert (ch.id, ch.chatroom_id) == (
        sim.channel("xqc").channel_id,
        sim.channel("xqc").chatroom_id,
    )
    assert ch.body == raw
    assert ch.data == orjson.loads(raw)
    assert ch.data["chatroom"]["id"] == 668
    assert api.stats.requests["ok"] == 1
    assert api.stats.upstream_state == "ok"


async def test_invalid_slug_is_refused_before_any_request(sim: KickSimulator) -> None:
    async with make_api(sim.api_url) as api:
        for bad in ["../admin", "xqc/messages", "x%2Fq", "", "a" * 65]:
            with pytest.raises(ClientInputError) as exc:
                await api.channel(bad)
            assert exc.value.code == "invalid_channel_name"
        with pytest.raises(ClientInputError):
            await api.messages(-1)
    assert sum(sim.rest_requests.values()) == 0


async def test_cache_20_lookups_1_request(sim: KickSimulator) -> None:
    async with make_api(sim.api_url) as api:
        results = [await api.channel("xqc") for _ in range(20)]
    assert sim.rest_requests[XQC] == 1
    assert all(r is results[0] for r in results)
    assert (api.stats.cache_hits, api.stats.cache_misses) == (19, 1)


async def test_cache_expires_after_its_ttl(sim: KickSimulator) -> None:
    clock = FakeClock()
    async with make_api(sim.api_url, cache_ttl=60.0, clock=clock) as api:
        await api.channel("xqc")
        clock.now += 59.9
        await api.channel("xqc")
        assert sim.rest_requests[XQC] == 1
        clock.now += 0.2
        await api.channel("xqc")
        assert sim.rest_requests[XQC] == 2


async def test_cache_is_bounded_and_evicts_the_oldest(sim: KickSimulator) -> None:
    async with make_api(sim.api_url, max_cache_entries=2) as api:
        for slug in ("xqc", "moonlitfox", "chan1"):
            await api.channel(slug)
        assert api.cache_size == 2
        await api.channel("chan1")
        await api.channel("moonlitfox")
        assert sim.rest_requests[XQC] == 1
        await api.channel("xqc")  # evicted: fetched again
        assert sim.rest_requests[XQC] == 2
        assert sim.rest_requests["/api/v2/channels/chan1"] == 1


async def test_invalidate_forces_a_new_lookup(sim: KickSimulator) -> None:
    async with make_api(sim.api_url) as api:
        await api.channel("xqc")
        api.invalidate("XQC")
        await api.channel("xqc")
    assert sim.rest_requests[XQC] == 2


async def test_single_flight_20_concurrent_1_request(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", "delay", count=1, delay=0.2 * UNIT)
    async with make_api(sim.api_url) as api:
        results = await asyncio.gather(*(api.channel("xqc") for _ in range(20)))
    assert sim.rest_requests[XQC] == 1
    assert all(r is results[0] for r in results)
    assert results[0].chatroom_id == 668
    assert api.stats.inflight_joined == 19


async def test_single_flight_survives_the_first_caller_being_cancelled(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", "delay", count=1, delay=1.0 * UNIT)
    async with make_api(sim.api_url) as api:
        first = asyncio.create_task(api.channel("xqc"))
        await until(lambda: sim.rest_requests[XQC] == 1)  # the request is in flight
        others = [asyncio.create_task(api.channel("xqc")) for _ in range(19)]
        await asyncio.sleep(0)  # let them join
        first.cancel()
        results = await asyncio.gather(*others)
        with pytest.raises(asyncio.CancelledError):
            await first
    assert first.cancelled()
    assert all(r.chatroom_id == 668 for r in results)
    assert sim.rest_requests[XQC] == 1
    assert api.stats.inflight_joined == 19


async def test_request_finishes_and_fills_the_cache_when_every_caller_left(
    sim: KickSimulator,
) -> None:
    sim.fail_rest("xqc", "delay", count=1, delay=0.2 * UNIT)
    async with make_api(sim.api_url) as api:
        only = asyncio.create_task(api.channel("xqc"))
        await until(lambda: sim.rest_requests[XQC] == 1)
        only.cancel()
        await until(lambda: api.cache_size == 1)
        ch = await api.channel("xqc")
    assert ch.chatroom_id == 668
    assert sim.rest_requests[XQC] == 1
    assert api.stats.cache_hits == 1


async def test_404_is_cached_for_the_shorter_ttl_and_never_retried(sim: KickSimulator) -> None:
    clock = FakeClock()
    path = "/api/v2/channels/nosuchchannel"
    async with make_api(
        sim.api_url, retries=2, cache_ttl=300.0, not_found_ttl=30.0, clock=clock
    ) as api:
        await api.channel("xqc")
        with pytest.raises(ChannelNotFound) as exc:
            await api.channel("nosuchchannel")
        assert sim.rest_requests[path] == 1  # no retry
        assert exc.value.status == 404
        assert exc.value.upstream_status == 404
        assert isinstance(exc.value.body, dict)
        assert "message" in exc.value.body
        with pytest.raises(ChannelNotFound):
            await api.channel("NoSuchChannel")
        assert sim.rest_requests[path] == 1  # cached
        clock.now += 30.5
        with pytest.raises(ChannelNotFound):
            await api.channel("nosuchchannel")
        assert sim.rest_requests[path] == 2  # the 404 expired...
        await api.channel("xqc")
        assert sim.rest_requests[XQC] == 1  # ...the channel did not
    assert api.stats.requests["not_found"] == 2
    assert api.stats.retries == 0


async def test_403_edge_block_retried_once_then_kick_blocked(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", 403)
    async with make_api(sim.api_url, retries=2) as api:
        with pytest.raises(KickBlocked) as exc:
            await api.channel("xqc")
        assert sim.rest_requests[XQC] == 2
        assert exc.value.upstream_status == 403
        assert exc.value.code == "upstream_blocked"
        assert "blocked" in exc.value.message
        assert "kick_api.proxy" in exc.value.message
        assert api.stats.requests["blocked"] == 2
        assert api.stats.retries == 1
        assert api.stats.upstream_state == "blocked"
        sim.clear_faults()
        ch = await api.channel("xqc")  # errors are not cached
        assert ch.chatroom_id == 668
        assert api.stats.upstream_state == "ok"


async def test_a_passing_403_is_survived_by_its_retry(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", 403, count=1)
    async with make_api(sim.api_url) as api:
        ch = await api.channel("xqc")
    assert ch.chatroom_id == 668
    assert sim.rest_requests[XQC] == 2


async def test_no_retries_means_no_403_retry(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", 403)
    async with make_api(sim.api_url, retries=0) as api:
        with pytest.raises(KickBlocked):
            await api.channel("xqc")
    assert sim.rest_requests[XQC] == 1


async def test_500_retried_then_bad_response(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", 500)
    async with make_api(sim.api_url, retries=2) as api:
        with pytest.raises(KickBadResponse) as exc:
            await api.channel("xqc")
    assert sim.rest_requests[XQC] == 3
    assert exc.value.upstream_status == 500
    assert api.stats.retries == 2
    assert api.stats.requests["error"] == 3


async def test_a_passing_500_is_survived(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", 503, count=2)
    async with make_api(sim.api_url, retries=2) as api:
        ch = await api.channel("xqc")
    assert ch.id == 676
    assert sim.rest_requests[XQC] == 3


async def test_hang_is_a_timeout(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", "hang")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with make_api(sim.api_url, timeout=0.3 * UNIT, retries=1) as api:
        with pytest.raises(KickTimeout) as exc:
            await api.channel("xqc")
    elapsed = loop.time() - started
    assert exc.value.status == 504
    assert api.stats.requests["timeout"] == 2
    assert sim.rest_requests[XQC] == 2
    assert 0.6 * UNIT * 0.98 <= elapsed < 5 * UNIT  # timers have ms granularity


async def test_unreachable_kick_is_a_bad_response() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with make_api(f"http://127.0.0.1:{port}", retries=1) as api:
        with pytest.raises(KickBadResponse) as exc:
            await api.channel("xqc")
    assert exc.value.upstream_status is None
    assert isinstance(exc.value.__cause__, httpx.ConnectError)
    assert api.stats.requests["error"] == 2
    assert api.stats.upstream_state == "error"


async def test_one_info_line_per_failure_class_change(
    sim: KickSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kichat.kick.api")
    sim.fail_rest("xqc", 403)
    async with make_api(sim.api_url) as api:
        for _ in range(3):
            with pytest.raises(KickBlocked):
                await api.channel("xqc")
        sim.clear_faults()
        await api.channel("xqc")
        await api.channel("moonlitfox")
    lines = [r.getMessage() for r in caplog.records if r.name == "kichat.kick.api"]
    assert len(lines) == 2, lines
    assert "blocked" in lines[0]
    assert "succeed again" in lines[1]


async def test_closed_api_refuses_calls(sim: KickSimulator) -> None:
    api = make_api(sim.api_url)
    await api.aclose()
    await api.aclose()  # idempotent
    with pytest.raises(RuntimeError):
        await api.channel("xqc")


async def test_aclose_cancels_lookups_in_flight(sim: KickSimulator) -> None:
    sim.fail_rest("xqc", "hang")
    api = make_api(sim.api_url)
    waiting = asyncio.create_task(api.channel("xqc"))
    await until(lambda: sim.rest_requests[XQC] == 1)
    await asyncio.wait_for(api.aclose(), 5 * UNIT)
    with pytest.raises(asyncio.CancelledError):
        await waiting


# --- chat history -------------------------------------------------------------------------------


async def test_history_in_the_live_shape(sim: KickSimulator) -> None:
    published = [await sim.publish_event(CHAT_MESSAGE_EVENT, "xqc") for _ in range(3)]
    async with make_api(sim.api_url) as api:
        messages = await api.messages(676)
    assert [m["id"] for m in messages] == [p["id"] for p in reversed(published)]  # newest first
    for message, live in zip(messages, reversed(published), strict=True):
        assert "chat_id" not in message
        assert message["chatroom_id"] == live["chatroom_id"] == 668
        assert message["content"] == live["content"]
        assert message["sender"] == live["sender"]
        if live.get("metadata") is None:
            assert "metadata" not in message
        else:
            assert isinstance(message["metadata"], dict)
            assert message["metadata"] == live["metadata"]


async def test_history_of_unknown_channel(sim: KickSimulator) -> None:
    async with make_api(sim.api_url) as api:
        assert await api.messages(4100456) == []  # known channel, nothing said yet
        with pytest.raises(ChannelNotFound):
            await api.messages(123)


# --- answers the simulator does not give: a scripted HTTP peer ------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, list[str]]


@dataclass
class ScriptedKick:
    """A minimal HTTP/1.1 server on loopback that answers from a script and records requests."""

    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, list[str]] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.setdefault(name.strip().lower(), []).append(value.strip())
            await reader.readexactly(int(headers.get("content-length", ["0"])[0]))
            self.seen.append(Seen(method, target, headers))
            status, extra, body = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            out = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
            out += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedKick]:
    peer = ScriptedKick()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    peer.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield peer


JSON = {"Content-Type": "application/json"}
CHANNEL = orjson.dumps({"id": 11, "slug": "abc", "chatroom": {"id": 22}})


async def test_channel_in_a_data_wrapper(scripted: ScriptedKick) -> None:
    body = orjson.dumps({"data": {"id": 11, "chatroom": {"id": 22}}})
    scripted.script = [(200, JSON, body)]
    async with make_api(scripted.url) as api:
        ch = await api.channel("abc")
    assert (ch.id, ch.chatroom_id, ch.body) == (11, 22, body)
    assert ch.data == {"id": 11, "chatroom": {"id": 22}}


@pytest.mark.parametrize(
    "body",
    [
        b"<html>kick.com</html>",
        b"[]",
        b'{"id": 11}',
        b'{"id": 11, "chatroom": {"id": "x"}}',
        b'{"id": true, "chatroom": {"id": 22}}',
        b'{"data": []}',
    ],
)
async def test_unexpected_channel_bodies(scripted: ScriptedKick, body: bytes) -> None:
    scripted.script = [(200, JSON, body)]
    async with make_api(scripted.url, retries=2) as api:
        with pytest.raises(KickBadResponse) as exc:
            await api.channel("abc")
    assert exc.value.upstream_status == 200
    assert len(scripted.seen) == 1  # a 200 is never retried


async def test_cloudflare_challenge_is_blocked(scripted: ScriptedKick) -> None:
    page = b"<!DOCTYPE html><title>Just a moment...</title>"
    scripted.script = [(403, {"Content-Type": "text/html; charset=UTF-8"}, page)]
    async with make_api(scripted.url) as api:
        with pytest.raises(KickBlocked):
            await api.channel("abc")
    assert len(scripted.seen) == 2


async def test_other_403_is_a_bad_response(scripted: ScriptedKick) -> None:
    scripted.script = [(403, JSON, b'{"message": "This action is unauthorized."}')]
    async with make_api(scripted.url) as api:
        with pytest.raises(KickBadResponse) as exc:
            await api.channel("abc")
    assert exc.value.upstream_status == 403
    assert api.stats.requests["error"] == 2


async def test_429_retried_after_retry_after(scripted: ScriptedKick) -> None:
    scripted.script = [(429, {"Retry-After": "0"}, b""), (200, JSON, CHANNEL)]
    async with make_api(scripted.url) as api:
        ch = await api.channel("abc")
    assert ch.chatroom_id == 22
    assert len(scripted.seen) == 2
    assert api.stats.retries == 1


async def test_persistent_429(scripted: ScriptedKick) -> None:
    scripted.script = [(429, {}, b"slow down")]
    async with make_api(scripted.url, retries=1) as api:
        with pytest.raises(KickBadResponse) as exc:
            await api.channel("abc")
    assert exc.value.upstream_status == 429
    assert len(scripted.seen) == 2


async def test_oversized_answer_is_refused(scripted: ScriptedKick) -> None:
    scripted.script = [(200, JSON, b" " * (9 * 1024 * 1024))]
    async with make_api(scripted.url, retries=0) as api:
        with pytest.raises(KickBadResponse, match="larger than"):
            await api.channel("abc")


async def test_request_headers(scripted: ScriptedKick) -> None:
    scripted.script = [(200, JSON, CHANNEL)]
    async with make_api(scripted.url, headers={"Cookie": "cf_clearance=op", "X-Extra": "1"}) as api:
        await api.channel("abc")
    [seen] = scripted.seen
    assert (seen.method, seen.target) == ("GET", "/api/v2/channels/abc")
    assert seen.headers["user-agent"] == [DEFAULT_HEADERS["User-Agent"]]
    assert seen.headers["accept"] == ["application/json"]
    assert seen.headers["cookie"] == ["cf_clearance=op"]
    assert seen.headers["x-extra"] == ["1"]


async def test_history_metadata_variants(scripted: ScriptedKick) -> None:
    items = [
        {"id": "a", "chat_id": 22, "user_id": 5, "metadata": '{"message_ref": "1"}', "sender": {}},
        {"id": "b", "chat_id": 22, "metadata": None},
        {"id": "c", "chat_id": 22, "metadata": "not json"},
        {"id": "d", "chat_id": 22, "metadata": {"already": "decoded"}},
        "junk",
    ]
    body = orjson.dumps({"status": {"error": False}, "data": {"messages": items, "cursor": "1"}})
    scripted.script = [(200, JSON, body)]
    async with make_api(scripted.url) as api:
        messages = await api.messages(11)
    assert scripted.seen[0].target == "/api/v2/channels/11/messages"
    assert messages == [
        {
            "id": "a",
            "chatroom_id": 22,
            "user_id": 5,
            "metadata": {"message_ref": "1"},
            "sender": {},
        },
        {"id": "b", "chatroom_id": 22},
        {"id": "c", "chatroom_id": 22},
        {"id": "d", "chatroom_id": 22, "metadata": {"already": "decoded"}},
    ]


async def test_history_with_an_unexpected_body(scripted: ScriptedKick) -> None:
    scripted.script = [(200, JSON, b'{"data": null}')]
    async with make_api(scripted.url) as api:
        with pytest.raises(KickBadResponse):
            await api.messages(11)


# --- forward() ----------------------------------------------------------------------------------


async def test_forward_sends_only_the_two_user_headers(
    scripted: ScriptedKick, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kichat")
    answer = b'{"followed": []}'
    scripted.script = [
        (200, {**JSON, "Set-Cookie": "kick_session=victim; Path=/", "X-Secret": "no"}, answer),
        (401, JSON, b'{"message": "Unauthenticated."}'),
    ]
    caller = {
        "X-Kick-Cookie": "kick_session=userA; XSRF-TOKEN=t",
        "authorization": "Bearer tokenA",
        "Cookie": "gateway_cookie=1",
        "X-Api-Key": "gateway-key",
        "X-Forwarded-For": "203.0.113.9",
        "Content-Type": "text/plain",
    }
    operator = {"Cookie": "cf_clearance=operator", "Authorization": "Bearer operator"}
    async with make_api(scripted.url, headers=operator) as api:
        status, headers, body = await api.forward("POST", "/api/v2/channels/followed", caller)
        second = await api.forward("put", "/api/v2/user/livestreams", {})
    assert (status, headers, body) == (200, {"content-type": "application/json"}, answer)
    first_seen, second_seen = scripted.seen
    assert (first_seen.method, first_seen.target) == ("POST", "/api/v2/channels/followed")
    assert first_seen.headers["cookie"] == ["kick_session=userA; XSRF-TOKEN=t"]
    assert first_seen.headers["authorization"] == ["Bearer tokenA"]
    for name in ("x-api-key", "x-forwarded-for", "x-kick-cookie", "content-type"):
        assert name not in first_seen.headers
    assert first_seen.headers["user-agent"] == [DEFAULT_HEADERS["User-Agent"]]
    # No credentials of the operator, and no cookie remembered from the first user's answer.
    assert second_seen.method == "PUT"
    assert "cookie" not in second_seen.headers
    assert "authorization" not in second_seen.headers
    assert second.status == 401
    logged = caplog.text
    for secret in ("userA", "tokenA", "operator", "victim"):
        assert secret not in logged


async def test_forward_does_not_retry_non_get(scripted: ScriptedKick) -> None:
    scripted.script = [(503, JSON, b'{"message": "down"}')]
    async with make_api(scripted.url, retries=2) as api:
        answer = await api.forward("POST", "/api/v2/channels/followed", {})
    assert answer.status == 503
    assert len(scripted.seen) == 1


async def test_forward_to_the_simulator_passes_its_status_through(sim: KickSimulator) -> None:
    async with make_api(sim.api_url, retries=2) as api:
        answer = await api.forward("POST", "/api/v2/channels/followed", {"X-Kick-Cookie": "c=1"})
    assert answer.status == 405
    assert answer.headers == {"content-type": "application/json"}
    assert b"POST" in answer.body
    assert sim.rest_requests["/api/v2/channels/followed"] == 1


async def test_forward_refuses_what_it_must_not_send(scripted: ScriptedKick) -> None:
    scripted.script = [(200, JSON, b"{}")]
    async with make_api(scripted.url) as api:
        with pytest.raises(ClientInputError) as exc:
            await api.forward("POST", "/api/v2/channels/followed", {"Authorization": "a\r\nX: 1"})
        assert exc.value.code == "invalid_header"
        for method, path in [
            ("POST", "//evil.example/api/v2/x"),
            ("POST", "/api/v2/../admin"),
            ("POST", "https://evil.example/api/v2/x"),
            ("TRACE", "/api/v2/channels/followed"),
            ("POST", "/api/v2/channels/followed#frag"),
        ]:
            with pytest.raises(ValueError, match="refusing"):
                await api.forward(method, path, {})
    assert scripted.seen == []
