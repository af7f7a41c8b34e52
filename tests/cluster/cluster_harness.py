"""Several ``kichat serve`` processes sharing one redis-server, on the Kick simulator.

Every node is a real process (``python -m kichat serve``) with its own port and node id, started
with the cluster's timings scaled down (lease 1 s, owner checks every 0.2 s, a 20 s recovery
window); the simulator runs in the test's process, so tests read its subscription table and
publish chat directly. Clients reach nodes through :class:`~redis_support.TcpProxy` when a test
needs to move them from one node to another (what a load balancer does after a node dies).

::

    async with cluster(nodes=3) as c:
        async with c.clients(c.nodes["a"].url, 20, "websocket") as clients:
            ids = await c.chat(50)
            ...
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kichat.sim import KickSimulator

from conftest import UNIT, NodeScript, eventually, node_script
from redis_support import RedisServer, free_port, redis_server, unique_prefix

CHAT = "App\\Events\\ChatMessageEvent"
XQC = {"channelName": "xqc", "chatroomId": "668"}
XQC_CHANNELS = ("chatrooms.668.v2", "chatrooms.668", "channel.676", "predictions-channel-676")

TIMINGS = {
    "KICHAT_CLUSTER_LEASE_TTL": "1",
    "KICHAT_CLUSTER_NODE_TIMEOUT": "0.6",
    "KICHAT_CLUSTER_OWNER_CHECK_INTERVAL": "0.2",
    "KICHAT_CLUSTER_COMMAND_TIMEOUT": "1",
    "KICHAT_SOCKETIO_RECOVERY_WINDOW": "20",
    "KICHAT_SOCKETIO_PING_INTERVAL": "2",
    "KICHAT_SOCKETIO_PING_TIMEOUT": "2",
    "KICHAT_RELAY_LINGER": "0.3",
    "KICHAT_PUSHER_BACKOFF_INITIAL": "0.05",
    "KICHAT_PUSHER_BACKOFF_MAX": "0.2",
    "KICHAT_LIMITS_CONNECTIONS_PER_IP": "10000",
    "KICHAT_LIMITS_SUBSCRIBE_RATE": "10000",
    "KICHAT_LIMITS_REST_PER_MINUTE": "100000",
    "KICHAT_SERVER_SHUTDOWN_TIMEOUT": "3",
}


@dataclass
class Node:
    name: str
    port: int
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"{self.url}/stats", timeout=5 * UNIT)
            result: dict[str, Any] = reply.json()
            return result

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{self.url}/metrics", timeout=5 * UNIT)).text

    def kill(self) -> None:
        """kill -9: nothing is released, nothing is said."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def terminate(self) -> int:
        """SIGTERM, then wait for the exit (the graceful path)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 15 * UNIT)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Cluster:
    redis: RedisServer
    sim: KickSimulator
    prefix: str
    tmp: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def start_node(self, name: str, redis_url: str | None = None, **env: str) -> Node:
        node = self.nodes.get(name) or Node(name, free_port(), self.tmp / f"{name}.log")
        self.nodes[name] = node
        environment = {
            **os.environ,
            **TIMINGS,
            "KICHAT_CLUSTER_REDIS_URL": redis_url or self.redis.url,
            "KICHAT_CLUSTER_NODE_ID": name,
            "KICHAT_CLUSTER_KEY_PREFIX": self.prefix,
            "KICHAT_PUSHER_URL": self.sim.pusher_url,
            "KICHAT_KICK_API_URL": self.sim.api_url,
            "KICHAT_SERVER_PORT": str(node.port),
            **env,
        }
        log = node.log.open("ab")
        node.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kichat", "serve", env=environment, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        await self.ready(node)
        return node

    async def ready(self, node: Node) -> None:
        async with httpx.AsyncClient() as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20 * UNIT
            while True:
                assert node.proc is not None
                if node.proc.returncode is not None:
                    raise AssertionError(f"node {node.name} exited:\n{node.log_text()[-3000:]}")
                try:
                    if (await http.get(f"{node.url}/readyz", timeout=1)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if loop.time() > deadline:
                    raise AssertionError(f"node {node.name} not ready:\n{node.log_text()[-3000:]}")
                await asyncio.sleep(0.05)

    def upstream(self, channel: str = XQC_CHANNELS[0]) -> int:
        """How many upstream connections subscribe ``channel`` (the simulator's count)."""
        return self.sim.subscribers(channel)

    async def owner(self, topic: str = "chatroom:668") -> str | None:
        """The node that holds ``topic``'s lease, from Redis (whose value is "<node id>/<process
        nonce>:<token>")."""
        raw = self.redis.command("GET", f"{self.prefix}own:{topic}")
        if raw.startswith(b"$-1"):
            return None
        return raw.split(b"\r\n")[1].decode().rsplit(":", 1)[0].rsplit("/", 1)[0]

    async def chat(self, count: int, slug: str = "xqc", interval: float = 0.0) -> list[str]:
        """Publish ``count`` chat messages on ``slug``'s chatroom; their ids, in order."""
        ids = []
        for _ in range(count):
            data = await self.sim.publish_event(CHAT, slug)
            ids.append(data["id"])
            if interval:
                await asyncio.sleep(interval)
        return ids

    @asynccontextmanager
    async def clients(
        self, url: str, count: int, transports: str = "websocket", rooms: list[Any] | None = None
    ) -> AsyncIterator[NodeScript]:
        async with node_script(
            "cluster_clients.mjs", url, str(count), transports, json.dumps(rooms or [XQC])
        ) as script:
            await script.until(lambda m: m.get("ev") == "ready", 30 * UNIT)
            yield script
            if script.proc.returncode is None:  # leave cleanly: no session waits for recovery
                script.send({"cmd": "close"})
                await script.until(lambda m: m.get("ev") == "closed", 10 * UNIT)

    async def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
            if node.proc is not None:
                await node.proc.wait()
        await self.stack.aclose()


async def report(clients: NodeScript) -> list[dict[str, Any]]:
    clients.send({"cmd": "report"})
    line = await clients.until(lambda m: m.get("ev") == "report", 20 * UNIT)
    result: list[dict[str, Any]] = line["clients"]
    return result


async def all_received(clients: NodeScript, ids: list[str], within: float = 15 * UNIT) -> None:
    """Wait until every client has received the last of ``ids``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        states = await report(clients)
        if all(ids[-1] in s["ids"] for s in states):
            return
        if loop.time() > deadline:
            missing = sum(1 for s in states if ids[-1] not in s["ids"])
            # Enough to tell a stalled feed from clients that never came back.
            seen = [{k: v for k, v in s.items() if k != "ids"}
                    | {"received": len(s["ids"]), "last": ranks(s["ids"][-1:], ids)}
                    for s in states]  # fmt: skip
            raise AssertionError(
                f"{missing} of {len(states)} clients never got the last message (of "
                f"{len(ids)}): {seen}"
            )
        await asyncio.sleep(0.1)


def ranks(received: list[str], published: list[str]) -> list[int | str]:
    """``received`` as indexes into ``published`` (for failure messages)."""
    rank = {mid: n for n, mid in enumerate(published)}
    return [rank.get(i, "?") for i in received]


def check_once_in_order(state: dict[str, Any], published: list[str]) -> None:
    """One client's report: every published message, once, in order (else a readable failure)."""
    counts = once_in_order(state["ids"], published)
    assert counts == (0, 0, 0), (
        f"missing, duplicated, out of order = {counts}; received {ranks(state['ids'], published)};"
        f" connects {state['connects']}, recovered {state['recovered']}, errors {state['errors']}"
    )


def once_in_order(received: list[str], published: list[str]) -> tuple[int, int, int]:
    """(missing, duplicated, out of order) of ``published`` in one client's ``received``."""
    wanted = set(published)
    mine = [i for i in received if i in wanted]
    duplicated = len(mine) - len(set(mine))
    missing = len(wanted - set(mine))
    rank = {mid: n for n, mid in enumerate(published)}
    order = [rank[i] for i in dict.fromkeys(mine)]
    out_of_order = sum(1 for a, b in itertools.pairwise(order) if b < a)
    return missing, duplicated, out_of_order


@asynccontextmanager
async def cluster(tmp: Path, nodes: int = 0) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        server = stack.enter_context(redis_server())
        sim = await stack.enter_async_context(KickSimulator(port=0))
        c = Cluster(server, sim, unique_prefix(), tmp)
        stack.push_async_callback(c.close)
        for name in "abcdefgh"[:nodes]:
            await c.start_node(name)
        try:
            yield c
        except BaseException:
            # The nodes' side of a failure: pytest shows what was printed with the report.
            for node in c.nodes.values():
                print(f"---- node {node.name}, end of its log:\n{node.log_text()[-4000:]}")
            raise


async def publish_steadily(c: Cluster, stop: asyncio.Event, ids: list[str], every: float) -> None:
    """Chat on xqc every ``every`` seconds until ``stop``, appending each id to ``ids``."""
    while not stop.is_set():
        ids.extend(await c.chat(1))
        await asyncio.sleep(every)


async def single_upstream(c: Cluster, what: str = "") -> None:
    """Exactly one upstream subscription per channel of xqc, in the end."""
    await eventually(
        lambda: all(c.upstream(ch) == 1 for ch in XQC_CHANNELS), 10 * UNIT,
        what or "one upstream subscription per channel",
    )  # fmt: skip
