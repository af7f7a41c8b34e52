"""Operations endpoints through a real gateway on the simulator: /routes, /openapi.json,
/healthz, /readyz, /metrics (parsed by prometheus_client's own parser) and /stats, with a real
Socket.IO client (python-socketio) making the figures move."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import jsonschema_rs  # installed with schemathesis
import pytest
import schemathesis
import socketio
from prometheus_client.parser import text_string_to_metric_families

from kichat.errors import ClientInputError
from kichat.kick.names import parse_slug
from kichat.sim import KickSimulator

from conftest import UNIT, eventually
from web_harness import CHAT, Gateway, gateway, sample

ROUTES = {
    ("GET", "/api/v2/channels/{channelName}"),
    ("GET", "/api/v2/channels/{channelName}/messages"),
    ("POST", "/api/v2/channels/followed"),
    ("PUT", "/api/v2/user/livestreams"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/stats"),
    ("GET", "/routes"),
    ("GET", "/openapi.json"),
}
# HTML pages and the browser client script: listed by /routes, not API (not in /openapi.json).
PAGES = {
    ("GET", "/"),
    ("GET", "/overlay/{channelName}"),
    ("GET", "/socket.io/socket.io.js"),
}


@pytest.fixture
async def sim() -> AsyncIterator[KickSimulator]:
    async with KickSimulator(port=0, seed=5) as simulator:
        yield simulator


# --- /routes and /openapi.json --------------------------------------------------------------


async def test_routes_lists_every_endpoint(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        routes = (await gw.get("/routes")).json()
        registered = {(r.method, r.pattern) for r in gw.app.router.routes if r.public}
    assert {(r["method"], r["path"]) for r in routes} == ROUTES | PAGES == registered
    assert len(routes) == len(ROUTES | PAGES)
    for route in routes:
        assert set(route) == {"path", "method", "description", "category"}
        assert route["description"]
        assert route["category"]


def _openapi_problems(doc: dict[str, Any]) -> str | None:
    """None if ``doc`` is valid OpenAPI 3.1 (schemathesis checks it against the official
    OpenAPI 3.1 JSON Schema it ships), else the validation error."""
    try:
        schemathesis.openapi.from_dict(doc).validate()
    except Exception as exc:  # any validation error is the answer
        return f"{type(exc).__name__}: {exc}"
    return None


async def test_openapi_is_valid_3_1_and_covers_every_route(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        resp = await gw.get("/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    assert _openapi_problems(doc) is None
    # The validator does reject an invalid document (so the check above means something).
    broken = {**doc, "paths": {"/x": {"get": {"responses": "none"}}}}
    assert _openapi_problems(broken) is not None
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert documented == ROUTES
    for path, item in doc["paths"].items():
        for method, op in item.items():
            schemas = [
                media["schema"]
                for response in op["responses"].values()
                for media in response.get("content", {}).values()
            ]
            assert schemas, f"{method} {path} documents no response schema"
            if (method.upper(), path) not in {
                ("POST", "/api/v2/channels/followed"),
                ("PUT", "/api/v2/user/livestreams"),
            }:
                assert "200" in op["responses"], (method, path)
            if "{channelName}" in path:
                assert {"400", "404", "502", "504"} <= set(op["responses"])


async def test_openapi_describes_the_socket_io_events_in_prose(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        text = (await gw.get("/openapi.json")).json()["info"]["description"]
    for phrase in (
        "Socket.IO", "/socket.io/", "subscribe", "unsubscribe", "channelName", "chatroomId",
        "App\\Events\\ChatMessageEvent", "channel_name", "error",
    ):  # fmt: skip
        assert phrase in text, phrase


SLUG_CANDIDATES = [
    "xqc", "XQC", "a", "0", "a-b_c", "a" * 64, "a" * 65, "", "-a", "_a", "a.b", "a b", "a/b",
    "été", "\u212a", "a\n", "9" * 64, "a%2F",
]  # fmt: skip


async def test_documented_channel_name_pattern_is_the_validators_rule(
    sim: KickSimulator,
) -> None:
    async with gateway(sim) as gw:
        doc = (await gw.get("/openapi.json")).json()
    param = doc["paths"]["/api/v2/channels/{channelName}"]["get"]["parameters"][0]
    # A JSON Schema validator, not Python's re: "pattern" has ECMA-262 semantics, where "$"
    # does not match before a trailing newline.
    validator = jsonschema_rs.validator_for(param["schema"])
    for candidate in SLUG_CANDIDATES:
        documented = validator.is_valid(candidate)
        try:
            parse_slug(candidate)
            accepted = True
        except ClientInputError:
            accepted = False
        assert documented == accepted, candidate


async def test_openapi_with_api_keys_marks_what_needs_a_key(sim: KickSimulator) -> None:
    async with gateway(sim, limits__api_keys=["k-doc"]) as gw:
        doc = (await gw.get("/openapi.json", headers={"X-API-Key": "k-doc"})).json()
    assert _openapi_problems(doc) is None
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}

    def security(path: str, method: str) -> list[dict[str, list[str]]]:
        return list(doc["paths"][path][method].get("security", doc["security"]))

    # Probes and scrapers need no key.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert security(path, "get") == [], path
    # On the user endpoints Authorization is the caller's Kick session: only X-API-Key works.
    assert security("/api/v2/channels/followed", "post") == [{"apiKey": []}]
    assert security("/api/v2/user/livestreams", "put") == [{"apiKey": []}]
    assert {"bearer": []} in security("/api/v2/channels/{channelName}", "get")
    assert "401" in doc["paths"]["/api/v2/channels/{channelName}"]["get"]["responses"]


# --- /healthz and /readyz ---------------------------------------------------------------------


async def test_healthz_and_readyz_when_healthy(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        health = await gw.get("/healthz")
        ready = await gw.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def _wait_not_ready(gw: Gateway) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * UNIT
    while (resp := await gw.get("/readyz")).status_code == 200:
        assert loop.time() < deadline, "/readyz never said not ready"
        await asyncio.sleep(0.02)
    assert resp.status_code == 503
    body: dict[str, Any] = resp.json()
    return body


async def test_readyz_is_503_with_reasons_when_kick_closes_with_4001(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        await eventually(lambda: gw.app.pool.status().connected == 1, what="upstream connected")
        assert (await gw.get("/readyz")).status_code == 200
        await sim.close_connections(4001)
        body = await _wait_not_ready(gw)
        assert body["status"] == "not_ready"
        assert any("4001" in reason for reason in body["reasons"]), body
        # Alive all the same: a restart would not help, so liveness stays green.
        assert (await gw.get("/healthz")).status_code == 200
        samples = await gw.metrics()
        stats = (await gw.get("/stats")).json()
    assert sample(samples, "kichat_upstream_fatal") == 1
    assert sample(samples, "kichat_upstream_connections", state="fatal") == 1
    assert stats["ready"] is False
    assert stats["upstream"]["fatal"] is True


async def test_readyz_is_503_with_a_wrong_pusher_key(sim: KickSimulator) -> None:
    wrong = sim.pusher_url.replace(f"/app/{sim.app_key}", "/app/0123456789abcdef0123")
    assert wrong != sim.pusher_url
    async with gateway(sim, pusher__url=wrong) as gw:
        body = await _wait_not_ready(gw)
    assert any("4001" in reason for reason in body["reasons"]), body
    assert sim.connections_refused >= 1


async def test_readyz_recovers_when_kick_accepts_again(sim: KickSimulator) -> None:
    async with gateway(sim, pusher__fatal_retry_interval=1.0) as gw:
        await eventually(lambda: gw.app.pool.status().connected == 1, what="upstream connected")
        await sim.close_connections(4001)
        await eventually(
            lambda: gw.app.pool.status().reconnects_by_code.get("4001", 0) >= 1,
            what="the 4001 close counted",
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10 * UNIT
        while (resp := await gw.get("/readyz")).status_code != 200:
            assert loop.time() < deadline, f"/readyz stayed {resp.status_code}: {resp.text}"
            await asyncio.sleep(0.05)


# --- /metrics and /stats ----------------------------------------------------------------------

FAMILIES = {
    "kichat_connected_clients": "gauge",  # by transport
    "kichat_sockets": "gauge",
    "kichat_rooms": "gauge",
    "kichat_subscribed_rooms": "gauge",
    "kichat_upstream_connections": "gauge",  # by state
    "kichat_upstream_subscriptions": "gauge",
    "kichat_upstream_events": "counter",
    "kichat_events_relayed": "counter",
    "kichat_broadcasts": "counter",
    "kichat_deliveries": "counter",
    "kichat_slow_clients": "counter",
    "kichat_upstream_reconnects": "counter",  # by code
    "kichat_rest_requests": "counter",  # by route and status
    "kichat_rate_limited": "counter",  # by kind
    "kichat_unauthorized": "counter",
    "kichat_kick_api_cache_hits": "counter",
    "kichat_kick_api_requests": "counter",
    "kichat_subscribe_requests": "counter",
    "kichat_upstream_fatal": "gauge",
    "kichat_event_loop_lag_seconds": "gauge",
}


async def test_metrics_parse_and_have_the_documented_families(sim: KickSimulator) -> None:
    async with gateway(sim) as gw:
        resp = await gw.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(resp.text)}
    for name, kind in FAMILIES.items():
        assert families.get(name) == kind, name
    assert all(name.startswith(("kichat_", "process_")) for name in families)


class Watcher:
    """A python-socketio client subscribed to one chatroom, counting the chat it receives."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.chat: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.client.on(CHAT, self.chat.put)

    async def subscribe(self, url: str, slug: str, chatroom_id: int) -> dict[str, Any]:
        await self.client.connect(url, transports=["websocket"], auth={"recovery": False})
        reply: dict[str, Any] = await self.client.call(
            "subscribe", {"channelName": slug, "chatroomId": str(chatroom_id)}, timeout=5 * UNIT
        )
        return reply


async def test_metrics_move_when_you_act_and_never_carry_client_values(
    sim: KickSimulator,
) -> None:
    slug = "zq7metricsprobe"
    ch = sim.add_channel(slug)
    # The rate-limited client comes through a trusted proxy, so the test's own requests (from
    # 127.0.0.1 itself) keep their own budget.
    limited = {"X-Forwarded-For": "198.51.100.23"}
    async with gateway(
        sim, limits__rest_per_minute=30, server__trusted_proxies=["127.0.0.1"]
    ) as gw:
        await eventually(lambda: gw.app.pool.status().connected == 1, what="upstream connected")
        m0 = await gw.metrics()
        assert (await gw.get(f"/api/v2/channels/{slug}")).status_code == 200
        assert (await gw.get(f"/api/v2/channels/{slug.upper()}")).status_code == 200
        assert (await gw.get(f"/no/such/{slug}")).status_code == 404
        m1 = await gw.metrics()
        rest = ("kichat_rest_requests_total", {"route": "channel", "status": "200"})
        assert sample(m1, rest[0], **rest[1]) == sample(m0, rest[0], **rest[1]) + 2
        assert sample(m1, "kichat_kick_api_cache_hits_total") == (
            sample(m0, "kichat_kick_api_cache_hits_total") + 1
        )

        watcher = Watcher()
        reply = await watcher.subscribe(gw.url, slug, ch.chatroom_id)
        assert reply["ok"] is True, reply
        m2 = await gw.metrics()
        assert sample(m2, "kichat_connected_clients", transport="websocket") == 1
        assert sample(m2, "kichat_sockets") == 1
        assert sample(m2, "kichat_rooms") >= 1
        assert sample(m2, "kichat_subscribed_rooms") == 1
        assert sample(m2, "kichat_upstream_subscriptions") > sample(
            m0, "kichat_upstream_subscriptions"
        )
        assert sample(m2, "kichat_subscribe_requests_total", outcome="ok") == 1

        for _ in range(5):
            await sim.publish_event(CHAT, slug)
        for _ in range(5):
            await asyncio.wait_for(watcher.chat.get(), 5 * UNIT)
        m3 = await gw.metrics()
        for name in (
            "kichat_upstream_events_total", "kichat_events_relayed_total",
            "kichat_broadcasts_total", "kichat_deliveries_total",
        ):  # fmt: skip
            assert sample(m3, name) == sample(m2, name) + 5, name

        await sim.close_connections(4200)
        await eventually(
            lambda: gw.app.pool.status().reconnects_by_code.get("4200", 0) == 1,
            what="the 4200 reconnect",
        )
        m4 = await gw.metrics()
        assert sample(m4, "kichat_upstream_reconnects_total", code="4200") == 1

        while (await gw.get("/routes", headers=limited)).status_code != 429:
            pass
        m5 = await gw.metrics()
        assert sample(m5, "kichat_rate_limited_total", kind="rest") == 1
        assert sample(m5, "kichat_rest_requests_total", route="routes", status="429") == 1

        sid = watcher.client.get_sid("/")
        engine_sid = watcher.client.eio.sid
        text = (await gw.get("/metrics")).text
        stats = (await gw.get("/stats")).json()
        metrics_after_stats = await gw.metrics()
        await watcher.client.disconnect()

    forbidden = {
        slug,
        slug.upper(),
        f"{ch.chatroom_id}:{slug}",
        sid,
        engine_sid,
        limited["X-Forwarded-For"],
        "127.0.0.1",
    }
    assert all(forbidden)
    for (_name, labels), _value in m5.items():
        for _key, value in labels:
            assert value not in forbidden
    for value in forbidden:
        assert value not in text

    # /stats: the same figures, plus the top chatrooms (where a slug does belong).
    m = metrics_after_stats
    assert stats["clients"]["connections_by_transport"]["websocket"] == sample(
        m, "kichat_connected_clients", transport="websocket"
    )
    assert stats["clients"]["rooms"] == sample(m, "kichat_rooms")
    assert stats["relay"]["active_rooms"] == sample(m, "kichat_subscribed_rooms")
    assert stats["relay"]["upstream_channels"] == sample(m, "kichat_upstream_subscriptions")
    assert stats["relay"]["events_in"] == sample(m, "kichat_upstream_events_total")
    assert stats["relay"]["events_out"] == sample(m, "kichat_events_relayed_total")
    assert stats["sio"]["deliveries"] == sample(m, "kichat_deliveries_total")
    assert stats["sio"]["slow_clients"] == sample(m, "kichat_slow_clients_total")
    assert stats["kick_api"]["cache_hits"] == sample(m, "kichat_kick_api_cache_hits_total")
    assert stats["subscribes"] == {"ok": 1}
    assert stats["upstream"]["reconnects"] == {"4200": 1}
    assert stats["rest"]["rate_limited"] == {"rest": 1}
    assert stats["rest"]["unauthorized"] == sample(m, "kichat_unauthorized_total")
    for route, by_status in stats["rest"]["requests"].items():
        for status, count in by_status.items():
            if route not in ("stats", "metrics"):  # each counts itself after answering
                assert count == sample(m, "kichat_rest_requests_total", route=route, status=status)
    assert stats["rest"]["requests"]["channel"]["200"] == 2
    assert stats["top_chatrooms"] == [
        {"chatroomId": ch.chatroom_id, "channelName": slug, "clients": 1}
    ]
