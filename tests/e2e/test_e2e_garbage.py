"""A session that ends is freed by reference counting, on every path a session can end.

Why it matters: objects that refer to each other in a cycle are freed only by Python's cyclic
collector, whose full passes come rarely in a process with many live objects. The 15-minute
soak (bench/SOAK.md) showed the cost: the WebSocket and its Engine.IO connection referred to
each other, each closed connection left about 2 KiB in a cycle, and under churn (1,400
connections a minute) RSS grew by 20 MiB before a full pass freed them at once.

The test turns the collector off, runs sessions that end in each way, waits until the gateway
holds none of them, then asks the collector what it finds in cycles: nothing of the gateway's.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx

from kichat.client import Client

from conftest import UNIT, eventually
from gateway_harness import Stack, gateway_stack
from tcp_proxy import TcpProxy

SUBSCRIBE = b'421["subscribe",{"channelName":"xqc","chatroomId":"668"}]'
# Server-side code only: a client in this process may keep cycles of its own.
SERVER_MODULES = ("kichat.http", "kichat.sio", "kichat.relay", "kichat.broker", "kichat.web")
SHORT = {
    "socketio.recovery_window": 1,  # a dropped session that is not recovered ends soon
    "socketio.ping_interval": 1,  # an abandoned long-polling session ends soon
    "socketio.ping_timeout": 1,
    "limits.subscribe_rate": 10_000,
    "limits.connections_per_ip": 10_000,
    "limits.detached_per_ip": 10_000,
}


@contextmanager
def collector_off() -> Iterator[list[object]]:
    """Turn the cyclic collector off; on leaving, what it finds in cycles goes in the list."""
    gc.collect()
    gc.disable()
    found: list[object] = []
    try:
        yield found
    finally:
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(gc.garbage)
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


def servers_objects(objects: list[object]) -> Counter[str]:
    return Counter(
        f"{type(o).__module__}.{type(o).__qualname__}"
        for o in objects
        if type(o).__module__.startswith(SERVER_MODULES)
    )


async def websocket_session(port: int, *, ending: str) -> None:
    """A raw Socket.IO client over WebSocket that subscribes, then leaves or drops."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        .encode()
    )  # fmt: skip
    await reader.readuntil(b"\r\n\r\n")
    received = b""

    async def until(marker: bytes) -> None:
        nonlocal received
        while marker not in received:
            chunk = await asyncio.wait_for(reader.read(4096), 10 * UNIT)
            assert chunk, f"closed before {marker!r}"
            received += chunk

    def send(payload: bytes) -> None:  # masked with a zero key, which is allowed
        assert len(payload) < 126
        writer.write(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    await until(b'"sid"')
    send(b"40")
    await until(b'40{"sid"')
    send(SUBSCRIBE)
    await until(b"431[")
    if ending == "leave":
        send(b"41")
        writer.close()
        await writer.wait_closed()
    else:  # the network dies: the session waits, detached, for the recovery window
        writer.transport.abort()


async def polling_session(port: int, *, ending: str) -> None:
    base = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    async with httpx.AsyncClient(timeout=10 * UNIT) as http:
        sid = json.loads((await http.get(base)).text[1:])["sid"]
        url = f"{base}&sid={sid}"
        await http.post(url, content=b"40")
        assert (await http.get(url)).text.startswith("40")
        await http.post(url, content=SUBSCRIBE)
        assert "431[" in (await http.get(url)).text
        if ending == "leave":
            await http.post(url, content=b"1")
        # else: the client stops polling and the session ends after the ping timeout


async def recovered_session(stack: Stack) -> None:
    """kichat.client through a relay that cuts the connection: the session is restored."""
    async with TcpProxy(stack.app.port) as proxy, Client(
        proxy.url, backoff_initial=0.02, backoff_max=0.1
    ) as client:  # fmt: skip
        await client.subscribe("xqc", 668)
        proxy.cut()
        await eventually(lambda: client.stats.recovered == 1, 10 * UNIT, "a recovered session")


@asynccontextmanager
async def quiet_when_done(stack: Stack) -> AsyncIterator[None]:
    yield
    sio = stack.app.sio

    def nothing_held() -> bool:
        snap = sio.snapshot()
        return snap["connections"] == 0 and snap["detached_sockets"] == 0

    await eventually(nothing_held, 15 * UNIT, "every session ended")


async def test_ended_sessions_leave_nothing_for_the_cycle_collector() -> None:
    async with gateway_stack(SHORT) as stack:
        port = stack.app.port
        async with quiet_when_done(stack):  # warm-up: first-use caches, the room's feed
            await websocket_session(port, ending="leave")
        with collector_off() as in_cycles:
            async with quiet_when_done(stack):
                for _ in range(20):
                    await websocket_session(port, ending="leave")
                    await websocket_session(port, ending="drop")
                    await polling_session(port, ending="leave")
                    await polling_session(port, ending="abandon")
                for _ in range(3):
                    await recovered_session(stack)
        stats = stack.app.sio.stats
        assert stats.recovered == 3 and stats.ping_timeouts >= 20  # every path was taken
        assert servers_objects(in_cycles) == Counter(), "sessions left to the cycle collector"
