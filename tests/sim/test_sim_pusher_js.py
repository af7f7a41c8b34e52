"""The official pusher-js client (npm, tests/js/node_modules) against the simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kichat.sim import KickSimulator

from conftest import UNIT, eventually, node_script
from sim_helpers import CHAT

pytestmark = pytest.mark.node

ROOM = "chatrooms.668.v2"


def is_type(kind: str, **fields: Any) -> Any:
    return lambda m: m["type"] == kind and all(m.get(k) == v for k, v in fields.items())


async def test_pusher_js_subscribes_and_receives_decoded_events() -> None:
    async with KickSimulator(seed=1) as sim:
        async with node_script(
            "sim_pusher_client.mjs", "--port", str(sim.port), "--channels", ROOM
        ) as js:
            connected = await js.until(is_type("connected"))
            assert connected["socket_id"].count(".") == 1
            assert (await js.until(is_type("subscribed", channel=ROOM)))["data"] == {}
            assert sim.subscribers(ROOM) == 1
            sent = await sim.publish_event("ChatMessageEvent", "xqc")
            got = await js.until(is_type("event"))
            assert (got["channel"], got["event"]) == (ROOM, CHAT)
            assert got["data"] == sent  # pusher-js decoded Kick's double-encoded data
            await sim.publish_event("PinnedMessageDeletedEvent", "xqc")
            got = await js.until(is_type("event"))
            assert (got["event"], got["data"]) == ("App\\Events\\PinnedMessageDeletedEvent", [])
            js.send({"cmd": "unsubscribe", "channel": ROOM})
            await eventually(lambda: sim.subscribers(ROOM) == 0, what="pusher-js unsubscribe")


async def test_pusher_js_with_a_wrong_key_gets_4001_and_gives_up() -> None:
    async with KickSimulator() as sim:
        async with node_script(
            "sim_pusher_client.mjs", "--port", str(sim.port), "--key", "nokey"
        ) as js:
            err = await js.until(is_type("error"))
            assert err["error"]["error"]["data"] == {
                "code": 4001,
                "message": "App key nokey does not exist in this cluster",
            }
            state = await js.until(is_type("state"))
            assert state["current"] in {"disconnected", "failed"}
            await asyncio.sleep(0.5 * UNIT)  # 4001 means "do not retry": nothing may come
            assert sim.connections_refused == 1
            assert sim.connections_opened == 0


async def test_pusher_js_keeps_the_heartbeat_and_survives_pings() -> None:
    async with KickSimulator(activity_timeout=0.25 * UNIT, pong_timeout=0.25 * UNIT) as sim:
        async with node_script(
            "sim_pusher_client.mjs", "--port", str(sim.port), "--channels", ROOM
        ) as js:
            await js.until(is_type("subscribed"))
            # Several activity periods pass: both sides ping, both answer, nobody is closed.
            await eventually(lambda: sim.pings_sent >= 3 and sim.pongs_sent >= 1, what="pings")
            assert sim.connections_opened == 1
            assert sim.connection_count == 1
            assert sim.subscribers(ROOM) == 1


async def test_pusher_js_reconnects_after_4200_and_resubscribes() -> None:
    async with KickSimulator() as sim:
        async with node_script(
            "sim_pusher_client.mjs", "--port", str(sim.port), "--channels", ROOM
        ) as js:
            await js.until(is_type("subscribed"))
            await sim.close_connections(4200)
            await js.until(is_type("connected"))
            await js.until(is_type("subscribed", channel=ROOM))
            assert sim.connections_opened == 2
            assert sim.subscribers(ROOM) == 1


async def test_pusher_js_sees_an_injected_subscription_error() -> None:
    async with KickSimulator() as sim:
        sim.fail_subscriptions(ROOM, mode="error", count=1)
        async with node_script(
            "sim_pusher_client.mjs", "--port", str(sim.port), "--channels", ROOM
        ) as js:
            err = await js.until(is_type("subscription_error"))
            assert err["channel"] == ROOM
            assert err["data"]["type"] == "AuthError"
            assert err["data"]["status"] == 401
