"""The whole gateway (``kichat.app.App``) on the Kick simulator, on real loopback ports.

Test modules under tests/e2e import what they need from here (``from gateway_harness import
...``). Nothing is mocked: the gateway's Pusher pool talks to the simulator over WebSocket, its
Kick client over HTTP, and clients reach it through real Socket.IO clients.

::

    async with gateway_stack({"relay.linger": 0.1}) as stack:
        client = await PyClient.open(stack.url)
        reply = await client.subscribe("xqc", "668")
        await stack.sim.publish_event("App\\\\Events\\\\ChatMessageEvent", "xqc")
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx
import socketio

from kichat.app import App
from kichat.config import load_settings
from kichat.relay import RoomKey
from kichat.sim import KickSimulator

from conftest import UNIT, eventually

CHAT = "App\\Events\\ChatMessageEvent"
XQC = RoomKey(668, "xqc")
XQC_V2 = "chatrooms.668.v2"
XQC_LEGACY = "chatrooms.668"
XQC_STREAM = "channel.676"
XQC_PREDICTIONS = "predictions-channel-676"
XQC_CHANNELS = (XQC_V2, XQC_LEGACY, XQC_STREAM, XQC_PREDICTIONS)

# Short timers so that fault tests take a fraction of a second; limits high enough that tests
# with many clients from 127.0.0.1 are not refused.
BASE_SETTINGS: dict[str, object] = {
    "server.host": "127.0.0.1",
    "server.port": 0,
    "server.shutdown_timeout": 1.0,
    "pusher.backoff_initial": 0.05,
    "pusher.backoff_max": 0.2,
    "pusher.subscribe_timeout": 2.0 * UNIT,
    "relay.linger": 0.1 * UNIT,
    "limits.connections_per_ip": 1000,
    "limits.pending_connections_per_ip": 1000,
    "limits.subscribe_rate": 1000,
}


async def holds(predicate: Callable[[], bool], during: float, what: str = "") -> None:
    """Assert that ``predicate`` stays true for ``during`` seconds (checked every 10 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + during
    while loop.time() < deadline:
        assert predicate(), f"no longer true: {what or predicate}"
        await asyncio.sleep(0.01)
    assert predicate(), f"no longer true: {what or predicate}"


@dataclass
class Stack:
    sim: KickSimulator
    app: App

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"

    def upstream(self) -> dict[str, int]:
        """The simulator's view: channel -> number of subscribed connections."""
        subs: dict[str, int] = self.sim.stats()["subscriptions"]
        return subs

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=5 * UNIT) as http:
            return await http.get(path)

    async def metric(self, name: str) -> float:
        """One unlabelled sample of ``/metrics``."""
        text = (await self.get("/metrics")).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert match is not None, f"{name} not in /metrics"
        return float(match.group(1))


class Spy:
    """Records the calls of one method of a live object (loop time, arguments) and calls it
    through unchanged. For counting what the gateway asks of the real Pusher pool."""

    def __init__(self, obj: object, name: str) -> None:
        self.calls: list[tuple[float, tuple[Any, ...]]] = []
        original = getattr(obj, name)
        loop = asyncio.get_running_loop()
        calls = self.calls
        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(original):

            async def wrapper(*args: Any) -> Any:
                calls.append((loop.time(), args))
                return await original(*args)

        else:

            def wrapper(*args: Any) -> Any:
                calls.append((loop.time(), args))
                return original(*args)

        setattr(obj, name, wrapper)

    def count(self, *args: Any) -> int:
        return sum(1 for _, a in self.calls if a == args)

    def times(self, *args: Any) -> list[float]:
        return [t for t, a in self.calls if a == args]


def gateway_settings(sim: KickSimulator, overrides: Mapping[str, object] | None = None) -> Any:
    values = {
        **BASE_SETTINGS,
        "pusher.url": sim.pusher_url,
        "kick_api.url": sim.api_url,
        **(overrides or {}),
    }
    return load_settings(values, env={})


@asynccontextmanager
async def gateway_stack(
    overrides: Mapping[str, object] | None = None,
    *,
    sim: KickSimulator | None = None,
    pusher_url: str | None = None,
    wait_connected: bool = True,
    **sim_options: Any,
) -> AsyncIterator[Stack]:
    """A simulator (unless ``sim`` is given) and a gateway using it, both on port 0."""
    own = sim is None
    if sim is None:
        sim = KickSimulator(port=0, seed=7, **sim_options)
        await sim.start()
    try:
        extra = dict(overrides or {})
        if pusher_url is not None:
            extra["pusher.url"] = pusher_url
        app = App(gateway_settings(sim, extra))
        await app.start()
        try:
            stack = Stack(sim, app)
            if wait_connected:
                await eventually(
                    lambda: app.pool.status().connected == 1, what="upstream connection"
                )
            yield stack
        finally:
            await app.close()
    finally:
        if own:
            await sim.stop()


class PyClient:
    """python-socketio's AsyncClient (a real third-party client) recording every event.

    It opts out of recovery offsets (``auth: {"recovery": false}``): python-socketio passes
    every argument to handlers and never recovers a session.
    """

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()

        @self.sio.on("*")  # type: ignore[misc]
        async def record(event: str, *args: Any) -> None:
            self.events.append((event, args))
            self._changed.set()

    @classmethod
    async def open(cls, url: str, transport: str = "websocket", **auth: Any) -> PyClient:
        client = cls()
        await client.sio.connect(
            url, transports=[transport], auth={"recovery": False, **auth}, wait_timeout=5 * UNIT
        )
        return client

    async def call(self, event: str, *args: Any) -> Any:
        data: Any = args[0] if len(args) == 1 else (args or None)
        return await self.sio.call(event, data, timeout=5 * UNIT)

    async def subscribe(self, channel_name: Any, chatroom_id: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self.call(
            "subscribe", {"channelName": channel_name, "chatroomId": chatroom_id}
        )
        return reply

    def named(self, name: str) -> list[Any]:
        """The first argument of every received event called ``name``."""
        return [args[0] if args else None for ev, args in self.events if ev == name]

    async def wait_for(
        self, predicate: Callable[[list[tuple[str, tuple[Any, ...]]]], bool], within: float
    ) -> None:
        async with asyncio.timeout(within):
            while not predicate(self.events):
                self._changed.clear()
                await self._changed.wait()

    async def next_named(self, name: str, within: float = 5 * UNIT, after: int = 0) -> Any:
        """The first event ``name`` among those received from index ``after`` on."""
        await self.wait_for(lambda evs: any(e == name for e, _ in evs[after:]), within)
        return next(a[0] if a else None for e, a in self.events[after:] if e == name)

    async def close(self) -> None:
        with suppress(Exception):
            await self.sio.disconnect()


def expected_payload(published: Any, slug: str) -> dict[str, Any]:
    """What a client must receive for ``published`` data: Kick's object plus ``channel_name``;
    a non-object (Kick's ``[]``) becomes ``{"channel_name": slug}``."""
    if isinstance(published, dict):
        return {**published, "channel_name": slug}
    return {"channel_name": slug}
