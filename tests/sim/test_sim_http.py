"""Kick's REST endpoints and the control API of the simulator, over real HTTP (httpx)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from kichat.sim import KickSimulator
from kichat.sim.control import endpoints_markdown

from conftest import UNIT, eventually
from sim_helpers import CHAT, PusherTestClient, fixture, shape


@asynccontextmanager
async def sim_and_http(**kwargs: Any) -> AsyncIterator[tuple[KickSimulator, httpx.AsyncClient]]:
    async with KickSimulator(**kwargs) as sim:
        async with httpx.AsyncClient(base_url=sim.api_url, timeout=5 * UNIT) as http:
            yield sim, http


def top_shape(value: dict[str, Any]) -> dict[str, str]:
    return {
        k: shape(v) if not isinstance(v, dict | list) else type(v).__name__
        for k, v in value.items()
    }


# -- REST ---------------------------------------------------------------------------------------


async def test_channel_endpoint_returns_kicks_channel_object() -> None:
    async with sim_and_http() as (sim, http):
        r = await http.get("/api/v2/channels/xqc")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        want = fixture("rest/channel")
        assert set(body) == set(want)
        assert set(body["chatroom"]) == set(want["chatroom"])
        assert set(body["user"]) == set(want["user"])
        assert (body["id"], body["chatroom"]["id"], body["slug"]) == (676, 668, "xqc")
        assert body["livestream"] is None
        r = await http.get("/api/v2/channels/chan42")
        assert (r.json()["id"], r.json()["chatroom"]["id"]) == (800042, 700042)
        sim.add_channel("onair", live=True)
        stream = (await http.get("/api/v2/channels/onair")).json()["livestream"]
        assert stream["is_live"] is True
        assert stream["channel_id"] == sim.channel("onair").channel_id


async def test_unknown_slug_is_404_with_a_json_body() -> None:
    async with sim_and_http() as (_, http):
        r = await http.get("/api/v2/channels/nobody-here")
        assert r.status_code == 404
        assert "message" in r.json()


async def test_history_after_publishes_is_newest_first_in_kicks_shape() -> None:
    async with sim_and_http(seed=1) as (sim, http):
        sent = [await sim.publish_event("App\\Events\\ChatMessageEvent", "xqc") for _ in range(3)]
        await sim.publish_event("App\\Events\\UserBannedEvent", "xqc")
        r = await http.get("/api/v2/channels/676/messages")
        assert r.status_code == 200
        body = r.json()
        want = fixture("rest/messages")
        assert top_shape(body["data"]) == top_shape(want["data"]) | {"cursor": "str"}
        items = body["data"]["messages"]
        assert [m["id"] for m in items] == [m["id"] for m in reversed(sent)]
        assert top_shape(items[0]) == top_shape(want["data"]["messages"][0])
        assert isinstance(items[0]["metadata"], str)
        assert json.loads(items[0]["metadata"]) == sent[-1]["metadata"]
        assert re.fullmatch(r".*T.*\.\d{6}Z", items[0]["created_at"])
        # The history is keyed by the *channel* id: the chatroom id is a different channel.
        assert (await http.get("/api/v2/channels/668/messages")).status_code == 404


async def test_history_is_bounded() -> None:
    async with sim_and_http(history_size=4) as (sim, http):
        for _ in range(6):
            await sim.publish_event("ChatMessageEvent", "moonlitfox")
        items = (await http.get("/api/v2/channels/4100456/messages")).json()["data"]["messages"]
        assert len(items) == 4


async def test_every_rest_request_is_counted_per_path() -> None:
    async with sim_and_http() as (sim, http):
        for _ in range(3):
            await http.get("/api/v2/channels/xqc")
        await http.get("/api/v2/channels/676/messages?next=123")
        await http.get("/api/v2/channels/nobody")
        await http.get("/_sim/stats")
        assert sim.rest_requests == {
            "/api/v2/channels/xqc": 3,
            "/api/v2/channels/676/messages": 1,
            "/api/v2/channels/nobody": 1,
        }
        assert (await http.get("/_sim/stats")).json()["rest_requests"] == dict(sim.rest_requests)


async def test_rest_403_uses_kicks_edge_body_for_count_requests() -> None:
    async with sim_and_http() as (sim, http):
        sim.fail_rest("xqc", 403, count=2)
        for _ in range(2):
            r = await http.get("/api/v2/channels/xqc")
            assert r.status_code == 403
            body = r.json()
            assert set(body) == set(fixture("rest/blocked-403"))
            assert body["error"] == "Request blocked by security policy."
            assert re.fullmatch(r"[0-9a-f]{8}", body["reference"])
        assert (await http.get("/api/v2/channels/xqc")).status_code == 200
        assert sim.rest_requests["/api/v2/channels/xqc"] == 3


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_rest_error_statuses(status: int) -> None:
    async with sim_and_http() as (sim, http):
        sim.fail_rest("*", status, count=1)
        r = await http.get("/api/v2/channels/676/messages")
        assert r.status_code == status
        assert isinstance(r.json(), dict)
        assert (await http.get("/api/v2/channels/676/messages")).status_code == 200


async def test_a_slug_fault_also_covers_that_channels_history() -> None:
    async with sim_and_http() as (sim, http):
        sim.fail_rest("xqc", 500)
        assert (await http.get("/api/v2/channels/676/messages")).status_code == 500
        assert (await http.get("/api/v2/channels/4100456/messages")).status_code == 200
        sim.clear_faults()
        assert (await http.get("/api/v2/channels/676/messages")).status_code == 200


async def test_rest_delay_answers_normally_after_the_delay() -> None:
    async with sim_and_http() as (sim, http):
        sim.fail_rest("xqc", "delay", count=1, delay=0.3 * UNIT)
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await http.get("/api/v2/channels/xqc")
        assert r.status_code == 200
        assert loop.time() - started >= 0.3 * UNIT * 0.98  # timers have ms granularity


async def test_rest_hang_never_answers_until_the_client_gives_up() -> None:
    async with sim_and_http() as (sim, http):
        sim.fail_rest("xqc", "hang", count=1)
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/api/v2/channels/xqc", timeout=0.3 * UNIT)
        assert (await http.get("/api/v2/channels/xqc")).status_code == 200


async def test_rest_only_answers_get() -> None:
    async with sim_and_http() as (_, http):
        assert (await http.post("/api/v2/channels/xqc", json={})).status_code == 405


# -- control API --------------------------------------------------------------------------------


async def test_the_control_api_lists_itself() -> None:
    async with sim_and_http() as (sim, http):
        listing = (await http.get("/_sim/")).json()
        assert (await http.get("/_sim")).json() == listing
        assert (await http.post("/_sim/", json={})).status_code == 405
    endpoints = listing["endpoints"]
    served = set(sim._control.routes)
    assert {(e["method"], e["path"]) for e in endpoints} == served
    assert len(endpoints) == len(served)
    for e in endpoints:
        assert set(e) == {"method", "path", "summary", "body", "returns"}
        assert e["summary"]
        assert e["returns"]
        # A body is documented exactly for the methods that read one.
        assert (e["body"] is not None) == (e["method"] == "POST"), e
    assert "409" in listing["errors"]


def test_the_readme_shows_the_control_api_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert endpoints_markdown() in readme, (
        "README.md's control API table is stale: paste kichat.sim.control.endpoints_markdown()"
    )


async def test_stats_and_publish_through_the_control_api() -> None:
    async with sim_and_http() as (sim, http):
        async with await PusherTestClient.open(sim.pusher_url) as client:
            await client.subscribe("chatrooms.668.v2")
            stats = (await http.get("/_sim/stats")).json()
            assert stats["connections"] == 1
            assert stats["connections_opened"] == 1
            assert stats["subscriptions"] == {"chatrooms.668.v2": 1}
            assert stats["rest_requests"] == {}
            r = await http.post(
                "/_sim/publish",
                json={"channel": "chatrooms.668.v2", "event": CHAT, "data": {"k": [1]}},
            )
            assert r.json() == {"recipients": 1}
            frame = await client.recv()
            assert (frame["event"], frame["data"]) == (CHAT, '{"k":[1]}')
            r = await http.post("/_sim/event", json={"event": "ChatMessageEvent", "slug": "xqc"})
            body = r.json()
            assert body["channel"] == "chatrooms.668.v2"
            assert json.loads((await client.recv())["data"]) == body["data"]


async def test_bench_through_the_control_api() -> None:
    async with sim_and_http() as (_, http):
        idle = (await http.get("/_sim/bench")).json()
        assert idle == {
            "running": False,
            "published": {},
            "started_at_ns": 0,
            "finished_at_ns": None,
        }
        body = {"chatroom_ids": [700001, 700002], "rate": 20, "duration": 0.5}
        assert (await http.post("/_sim/bench", json=body)).json() == {"started": True}
        again = await http.post("/_sim/bench", json=body)
        assert again.status_code == 409
        assert again.json()["code"] == "bench_running"
        running = (await http.get("/_sim/bench")).json()
        assert running["running"] is True
        assert running["started_at_ns"] > 0
        assert running["finished_at_ns"] is None
        status: dict[str, Any] = {}

        async def finished() -> bool:
            status.update((await http.get("/_sim/bench")).json())
            return not status["running"]

        for _ in range(int(50 * UNIT)):
            if await finished():
                break
            await asyncio.sleep(0.05)
        assert status["published"] == {"700001": 10, "700002": 10}
        assert status["finished_at_ns"] > status["started_at_ns"]


async def test_traffic_through_the_control_api() -> None:
    async with sim_and_http() as (sim, http):
        r = await http.post("/_sim/traffic", json={"rate": 50, "slugs": ["xqc"]})
        assert r.json() == {"started": True}
        assert (await http.get("/_sim/traffic")).json() == {"running": True}
        await eventually(lambda: sim.events_published >= 3)
        assert (await http.delete("/_sim/traffic")).json() == {"stopped": True}
        assert not sim.traffic_running


async def test_faults_through_the_control_api() -> None:
    async with sim_and_http() as (sim, http):
        client = await PusherTestClient.open(sim.pusher_url)
        r = await http.post("/_sim/fault", json={"kind": "close", "code": 4200, "message": "go"})
        assert r.json() == {"ok": True, "connections": 1}
        assert (await client.recv())["data"] == {"code": 4200, "message": "go"}
        client = await PusherTestClient.open(sim.pusher_url)
        assert (await http.post("/_sim/fault", json={"kind": "drop"})).json()["connections"] == 1
        await asyncio.wait_for(client.ws.wait_closed(), 5 * UNIT)
        assert (
            await http.post("/_sim/fault", json={"kind": "ignore_pings", "enabled": True})
        ).json()["ok"]
        assert sim.stats()["ignore_pings"] is True
        await http.post(
            "/_sim/fault",
            json={"kind": "subscribe", "pattern": "x.*", "mode": "swallow", "count": 1},
        )
        assert sim.faults.take_subscribe("x.1") == "swallow"
        await http.post(
            "/_sim/fault",
            json={"kind": "rest", "slug": "xqc", "status": 403, "count": None, "delay": 0},
        )
        assert (await http.get("/api/v2/channels/xqc")).status_code == 403
        await http.post(
            "/_sim/fault", json={"kind": "rest", "slug": "*", "status": "delay", "delay": 0.01}
        )
        await http.post("/_sim/fault", json={"kind": "refuse", "count": 1, "code": 4100})
        refused = await PusherTestClient.open(sim.pusher_url, handshake=False)
        assert (await refused.recv())["data"]["code"] == 4100
        assert (await http.post("/_sim/fault", json={"kind": "clear"})).json() == {"ok": True}
        assert sim.stats()["ignore_pings"] is False
        assert (sim.faults.rest, sim.faults.subscribe, sim.faults.refuse_remaining) == ([], [], 0)


async def test_channels_and_options_through_the_control_api() -> None:
    async with sim_and_http() as (sim, http):
        r = await http.post(
            "/_sim/channels", json={"slug": "newbie", "channel_id": 123, "chatroom_id": 456}
        )
        assert r.json() == {
            "slug": "newbie", "channel_id": 123, "chatroom_id": 456,
            "user_id": sim.channel("newbie").user_id, "username": "newbie", "live": False,
        }  # fmt: skip
        slugs = {c["slug"] for c in (await http.get("/_sim/channels")).json()["channels"]}
        assert {"xqc", "moonlitfox", "newbie"} <= slugs
        assert (await http.get("/api/v2/channels/newbie")).json()["chatroom"]["id"] == 456
        r = await http.post("/_sim/options", json={"duplicate_on_legacy_alias": 0.5})
        assert r.json() == {"duplicate_on_legacy_alias": 0.5}
        assert sim.duplicate_on_legacy_alias == 0.5


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", "/_sim/publish", b"{not json", "bad_json"),
        ("POST", "/_sim/publish", b"[1, 2]", "bad_json"),
        ("POST", "/_sim/publish", {"channel": "c", "event": "e"}, "missing_field"),
        (
            "POST",
            "/_sim/publish",
            {"channel": "c", "event": "e", "data": 1, "x": 1},
            "unknown_field",
        ),
        ("POST", "/_sim/publish", {"channel": 5, "event": "e", "data": 1}, "bad_type"),
        ("POST", "/_sim/publish", {"channel": "", "event": "e", "data": 1}, "bad_type"),
        (
            "POST",
            "/_sim/publish",
            {"channel": "c", "event": "e", "data": "x" * 11000},
            "payload_too_large",
        ),
        ("POST", "/_sim/event", {"event": "NoSuchEvent", "slug": "xqc"}, "unknown_event"),
        ("POST", "/_sim/event", {"event": "ChatMessageEvent", "slug": "nobody"}, "unknown_channel"),
        ("POST", "/_sim/bench", {"chatroom_ids": [], "rate": 1, "duration": 1}, "bad_chatroom_ids"),
        (
            "POST",
            "/_sim/bench",
            {"chatroom_ids": [1, 1], "rate": 1, "duration": 1},
            "bad_chatroom_ids",
        ),
        (
            "POST",
            "/_sim/bench",
            {"chatroom_ids": [True], "rate": 1, "duration": 1},
            "bad_chatroom_ids",
        ),
        ("POST", "/_sim/bench", {"chatroom_ids": "1", "rate": 1, "duration": 1}, "bad_type"),
        ("POST", "/_sim/bench", {"chatroom_ids": [1], "rate": 0, "duration": 1}, "bad_rate"),
        ("POST", "/_sim/bench", {"chatroom_ids": [1], "rate": True, "duration": 1}, "bad_type"),
        ("POST", "/_sim/bench", {"chatroom_ids": [1], "rate": 1, "duration": -1}, "bad_duration"),
        ("POST", "/_sim/bench", {"chatroom_ids": [1], "rate": 1}, "missing_field"),
        ("POST", "/_sim/traffic", {"rate": 1, "slugs": ["nobody"]}, "unknown_channel"),
        ("POST", "/_sim/traffic", {"rate": 1, "slugs": "xqc"}, "bad_type"),
        ("POST", "/_sim/traffic", {"rate": 1, "mix": "cats"}, "bad_mix"),
        ("POST", "/_sim/fault", {"kind": "explode"}, "bad_kind"),
        ("POST", "/_sim/fault", {}, "missing_field"),
        ("POST", "/_sim/fault", {"kind": "close", "code": 1006}, "bad_code"),
        ("POST", "/_sim/fault", {"kind": "close", "code": "4200"}, "bad_type"),
        ("POST", "/_sim/fault", {"kind": "close", "code": 4200, "reason": "x"}, "unknown_field"),
        ("POST", "/_sim/fault", {"kind": "ignore_pings", "enabled": 1}, "bad_type"),
        (
            "POST",
            "/_sim/fault",
            {"kind": "subscribe", "pattern": "x", "mode": "explode"},
            "bad_mode",
        ),
        ("POST", "/_sim/fault", {"kind": "subscribe", "pattern": "x", "count": 0}, "bad_count"),
        ("POST", "/_sim/fault", {"kind": "rest", "slug": "xqc", "status": 200}, "bad_status"),
        ("POST", "/_sim/fault", {"kind": "rest", "slug": "xqc", "status": "sleep"}, "bad_status"),
        ("POST", "/_sim/fault", {"kind": "rest", "slug": "xqc"}, "bad_status"),
        ("POST", "/_sim/fault", {"kind": "refuse", "count": -1}, "bad_count"),
        ("POST", "/_sim/channels", {"slug": "xqc2", "channel_id": 668}, "id_in_use"),
        ("POST", "/_sim/channels", {"slug": "bad slug!"}, "bad_slug"),
        ("POST", "/_sim/options", {"duplicate_on_legacy_alias": 2}, "bad_option"),
        ("POST", "/_sim/script", {"slug": "xqc", "events": [1]}, "bad_events"),
    ],
)
async def test_bad_control_input_is_refused_with_400(
    method: str, path: str, body: Any, code: str
) -> None:
    async with sim_and_http() as (sim, http):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await http.request(
            method, path, content=content, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        assert r.json()["code"] == code
        assert r.json()["error"]
        assert sim.events_published == 0
        assert not sim.bench.running


async def test_control_404_and_405() -> None:
    async with sim_and_http() as (_, http):
        r = await http.get("/_sim/nope")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = await http.get("/_sim/publish")
        assert (r.status_code, r.json()["code"]) == (405, "bad_method")


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5 * UNIT)
    writer.close()
    return data


async def test_bodies_arriving_in_pieces_chunked_and_oversized_bodies() -> None:
    async with KickSimulator() as sim:
        # A body split over several TCP segments is reassembled.
        body = json.dumps({"channel": "c", "event": "e", "data": "x" * 5000}).encode()
        head = f"POST /_sim/publish HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (head[:10], head[10:] + body[:100], body[100:3000], body[3000:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        answer = await asyncio.wait_for(reader.read(), 5 * UNIT)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(b'{"recipients":0}')
        assert sim.events_published == 1
        chunked = (
            b"POST /_sim/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        assert (await raw_request(sim.port, chunked)).startswith(b"HTTP/1.1 411")
        huge = b"POST /_sim/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"
        assert (await raw_request(sim.port, huge)).startswith(b"HTTP/1.1 413")
        bad = b"POST /_sim/publish HTTP/1.1\r\nContent-Length: ten\r\n\r\n"
        assert (await raw_request(sim.port, bad)).startswith(b"HTTP/1.1 400")
