"""``kichat serve --workers 2``: two worker processes on one port, nodes of one cluster.

Long-polling sessions reach the worker that owns them (connections are passed between workers
by file descriptor), WebSocket connections spread over the workers, a killed worker is restarted
and its clients recover on the other, SIGTERM drains everything, and /stats and /metrics answer
for the whole server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster_harness import (
    Cluster,
    Node,
    all_received,
    check_once_in_order,
    cluster,
    report,
    single_upstream,
)
from conftest import UNIT, eventually, run_python

pytestmark = [pytest.mark.node, pytest.mark.cluster]


async def start_workers(c: Cluster, count: int = 2) -> Node:
    node = await c.start_node("k", KICHAT_SERVER_WORKERS=str(count))
    await all_workers_ready(node, count)
    return node


async def all_workers_ready(node: Node, count: int) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20 * UNIT
    while True:
        stats = await node.stats()
        workers = stats.get("workers", {})
        if len(workers) == count and stats.get("ready"):
            return stats
        assert loop.time() < deadline, f"workers not ready: {stats}"
        await asyncio.sleep(0.1)


async def test_polling_sessions_reach_their_worker_and_websockets_spread(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        node = await start_workers(c)
        async with (
            c.clients(node.url, 16, "polling") as polling,
            c.clients(node.url, 40, "websocket") as ws,
        ):
            ids = await c.chat(30)
            for group in (polling, ws):
                await all_received(group, ids)
                for state in await report(group):
                    check_once_in_order(state, ids)
                    assert state["connects"] == 1, "no session met a worker that did not own it"
            stats = await node.stats()
            per_worker = {w: s["clients"]["sockets"] for w, s in stats["workers"].items()}
            assert stats["total"]["clients"]["sockets"] == 56
            assert min(per_worker.values()) >= 10, f"connections spread: {per_worker}"
            handed = sum(s["worker"]["handed_over"] for s in stats["workers"].values())
            assert handed > 0, "polling requests landed on the other worker and were passed on"
            await single_upstream(c)
            metrics = await node.metrics()
            families = {f.name: f for f in text_string_to_metric_families(metrics)}
            rooms = families["kichat_subscribed_rooms"].samples
            assert sorted(s.labels["worker"] for s in rooms) == ["kw0", "kw1"]
            assert 'kichat_subscribed_rooms{worker="kw0"}' in metrics
            assert 'kichat_subscribed_rooms{worker="kw1"}' in metrics
            assert 'kichat_connected_clients{worker="kw0",transport=' in metrics


async def test_a_killed_worker_is_restarted_and_its_clients_recover(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        node = await start_workers(c)
        async with c.clients(node.url, 30, "websocket") as clients:
            before = await c.chat(5)
            await all_received(clients, before)
            stats = await node.stats()
            victim, pid = next(
                (w, s["worker"]["pid"]) for w, s in stats["workers"].items()
                if s["clients"]["sockets"] > 0
            )  # fmt: skip
            os.kill(pid, signal.SIGKILL)
            missed = await c.chat(20)
            await all_received(clients, missed, 20 * UNIT)
            for state in await report(clients):
                check_once_in_order(state, before + missed)
            recovered = sum(s["recovered"] for s in await report(clients))
            assert recovered > 0, "the killed worker's clients recovered their sessions"
            again = await all_workers_ready(node, 2)
            assert again["workers"][victim]["worker"]["pid"] != pid, "restarted"
            assert "restarting it" in node.log_text()


async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        node = await start_workers(c)
        async with c.clients(node.url, 10, "websocket") as clients:
            await all_received(clients, await c.chat(3))
            assert await node.terminate() == 0
            await eventually(lambda: clients.proc.returncode is None, what="clients still running")
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{node.url}/healthz", timeout=2)


async def test_workers_without_redis_are_refused_with_what_to_configure() -> None:
    code, _, err = await run_python(["-m", "kichat", "serve", "--workers", "2", "--port", "0"])
    assert code == 2
    assert "server.workers" in err and "need cluster.redis_url" in err
    assert "--redis-url" in err


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for whoever adopted it counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return True


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        node = await start_workers(c)
        stats = await node.stats()
        pids = [s["worker"]["pid"] for s in stats["workers"].values()]
        node.kill()  # kill -9 the supervisor: nothing may be left serving unsupervised
        await eventually(lambda: all(gone(pid) for pid in pids), 15 * UNIT,
                         what="the orphaned workers to stop")  # fmt: skip
