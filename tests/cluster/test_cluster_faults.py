"""Faults on purpose, with several kichat processes on one redis-server: a node killed (the owner
of a feed or not), stopped gracefully, clients moved to another node, long-polling on the wrong
node, and Redis restarted, partitioned or cutting the subscriber off. After each: per client, no
gap and no repeat beyond what the README states for that fault, and one Kick subscription."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster_harness import (
    CHAT,
    XQC,
    all_received,
    check_once_in_order,
    cluster,
    publish_steadily,
    report,
    single_upstream,
)
from conftest import UNIT, eventually
from redis_support import tcp_proxy

pytestmark = [pytest.mark.node, pytest.mark.cluster]


async def test_owner_killed_is_replaced_within_3_s_and_its_gap_is_backfilled(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path, nodes=3) as c, tcp_proxy(c.nodes["a"].port) as lb:
        a, b, n3 = c.nodes["a"], c.nodes["b"], c.nodes["c"]
        async with c.clients(lb.http_url, 5) as on_a:
            assert await c.owner() == "a"
            async with c.clients(b.url, 5) as on_b, c.clients(n3.url, 5, "polling") as on_c:
                ids = await c.chat(10)
                await all_received(on_b, ids)
                stop = asyncio.Event()
                publisher = asyncio.ensure_future(publish_steadily(c, stop, ids, 0.02))
                await eventually(lambda: len(ids) > 30, what="traffic")
                a.kill()
                killed_at, mark = time.monotonic(), len(ids)
                lb.retarget(b.port)  # a's clients reconnect to b and recover there
                await eventually(lambda: len(ids) > mark, what="a message after the kill")
                after_kill = ids[mark]
                await all_received(on_b, [after_kill], 10 * UNIT)
                await all_received(on_c, [after_kill], 10 * UNIT)
                resumed = time.monotonic() - killed_at
                await asyncio.sleep(0.5)
                stop.set()
                await publisher
                for group in (on_a, on_b, on_c):
                    await all_received(group, ids, 15 * UNIT)
                    for state in await report(group):
                        check_once_in_order(state, ids)
                assert all(s["recovered"] == 1 for s in await report(on_a))
                assert resumed < 3 * UNIT, f"stream resumed {resumed:.2f} s after the kill"
                assert await c.owner() in {"b", "c"}
                await single_upstream(c)
                stats = (await c.nodes[await c.owner() or "b"].stats())["cluster"]
                assert stats["takeovers"] >= 1
                print(f"owner kill -9: stream resumed on every node after {resumed:.2f} s; "
                      f"{len(ids)} messages, none lost or repeated")  # fmt: skip


async def test_an_owner_restarted_under_its_node_id_at_once_is_still_taken_over(
    tmp_path: Path,
) -> None:
    """A supervisor (``--workers``, systemd) restarts a killed process under the same node id
    within a second. The dead process's lease must not look alive because its node id beats
    again: another reader takes it over as from a dead owner, at the node timeout rather than
    when the lease runs out, and backfills the gap (before: taken at the lease's end, as if
    released cleanly, and the gap's messages were lost)."""
    lease_ttl = 6.0  # long enough to tell the node timeout (0.6 s) from the lease's end
    env = {"KICHAT_CLUSTER_LEASE_TTL": str(lease_ttl)}
    async with cluster(tmp_path) as c:
        a = await c.start_node("a", **env)
        async with tcp_proxy(a.port) as lb, c.clients(lb.http_url, 3) as on_a:
            assert await c.owner() == "a"
            b = await c.start_node("b", **env)
            async with c.clients(b.url, 5) as on_b:
                ids: list[str] = []
                stop = asyncio.Event()
                publisher = asyncio.ensure_future(publish_steadily(c, stop, ids, 0.02))
                await eventually(lambda: len(ids) > 20, what="traffic")
                await all_received(on_b, ids[:20])
                lb.retarget(b.port)  # a's clients recover on b: the restarted a reads nothing
                a.kill()
                killed_at = time.monotonic()
                assert a.proc is not None
                await a.proc.wait()
                await c.start_node("a", **env)  # back at once, under the same node id
                await eventually(lambda: "its feeder is gone" in b.log_text(), 10 * UNIT,
                                 what="b to take the chatroom over from the dead owner")  # fmt: skip
                taken_after = time.monotonic() - killed_at
                await asyncio.sleep(0.3)
                stop.set()
                await publisher
                for group in (on_a, on_b):
                    await all_received(group, ids, 15 * UNIT)
                    for state in await report(group):
                        check_once_in_order(state, ids)
                assert await c.owner() == "b"
                assert taken_after < lease_ttl * 0.75, f"taken over after {taken_after:.2f} s"
                await single_upstream(c)
                print(f"owner killed and restarted under its id: taken over after "
                      f"{taken_after:.2f} s (lease {lease_ttl:g} s); {len(ids)} messages, "
                      "none lost or repeated")  # fmt: skip


async def test_owner_stopped_gracefully_hands_over_without_a_gap(tmp_path: Path) -> None:
    async with cluster(tmp_path, nodes=2) as c, tcp_proxy(c.nodes["a"].port) as lb:
        a, b = c.nodes["a"], c.nodes["b"]
        async with c.clients(lb.http_url, 5) as on_a:
            assert await c.owner() == "a"
            async with c.clients(b.url, 5) as on_b:
                ids: list[str] = []
                stop = asyncio.Event()
                publisher = asyncio.ensure_future(publish_steadily(c, stop, ids, 0.01))
                await eventually(lambda: len(ids) > 30, what="traffic")
                lb.retarget(b.port)  # a load balancer stops sending new connections to a
                assert await a.terminate() == 0
                mark = len(ids)
                await eventually(lambda: len(ids) > mark + 30, what="traffic after the stop")
                stop.set()
                await publisher
                assert await c.owner() == "b"
                for group in (on_a, on_b):
                    await all_received(group, ids, 15 * UNIT)
                    for state in await report(group):
                        check_once_in_order(state, ids)
                assert "handed 2 of 2 feeds over" in a.log_text()
                assert (await b.stats())["relay"]["backfilled"] == 0, "no gap to fill"
                await single_upstream(c)


async def test_a_client_recovers_on_another_node(tmp_path: Path) -> None:
    async with cluster(tmp_path, nodes=2) as c:
        a, b = c.nodes["a"], c.nodes["b"]
        for transports in ("websocket", "polling"):
            async with tcp_proxy(a.port) as lb, c.clients(lb.http_url, 3, transports) as moving:
                first = await c.chat(5)
                await all_received(moving, first)
                lb.pause()  # the connection hangs, then the client gives up on it
                missed = await c.chat(20)
                lb.retarget(b.port)
                lb.restore()
                await all_received(moving, missed, 20 * UNIT)
                for state in await report(moving):
                    check_once_in_order(state, first + missed)
                    assert state["recovered"] >= 1 and state["connects"] == 1 + state["recovered"]


async def test_a_killed_node_s_clients_recover_on_another(tmp_path: Path) -> None:
    async with cluster(tmp_path, nodes=2) as c:
        a, b = c.nodes["a"], c.nodes["b"]
        async with c.clients(a.url, 3):  # makes a the owner
            async with tcp_proxy(b.port) as lb, c.clients(lb.http_url, 5) as on_b:
                assert await c.owner() == "a"
                before = await c.chat(5)
                await all_received(on_b, before)
                b.kill()
                lb.retarget(a.port)
                missed = await c.chat(15)
                await all_received(on_b, missed, 20 * UNIT)
                for state in await report(on_b):
                    check_once_in_order(state, before + missed)
                    assert state["recovered"] == 1


async def test_a_poll_on_the_wrong_node_is_refused_clearly_and_the_session_recovers(
    tmp_path: Path,
) -> None:
    """Engine.IO long-polling by hand: a session opened on node a, polled on node b (what a load
    balancer without sid routing does), then resumed on b with its pid and offset."""
    async with cluster(tmp_path, nodes=2) as c, httpx.AsyncClient(timeout=10 * UNIT) as http:
        a, b = c.nodes["a"], c.nodes["b"]
        path = "/socket.io/?EIO=4&transport=polling"
        opened = json.loads((await http.get(a.url + path)).text[1:])
        sid = opened["sid"]
        assert sid.startswith("a_"), "a session id names its node"
        await http.post(f"{a.url}{path}&sid={sid}", content=b"40")
        connected = json.loads((await http.get(f"{a.url}{path}&sid={sid}")).text[2:])
        subscribe = b'421["subscribe",' + json.dumps(XQC).encode() + b"]"
        await http.post(f"{a.url}{path}&sid={sid}", content=subscribe)
        [ack] = await _poll_packets(http, f"{a.url}{path}&sid={sid}", 1)
        assert ack.startswith("431") and json.loads(ack[3:])[0]["ok"] is True
        ids = await c.chat(2)
        got = await _poll_chat(http, f"{a.url}{path}&sid={sid}", 2)
        assert [e[1]["id"] for e in got] == ids
        offset = got[-1][2]

        wrong = await http.get(f"{b.url}{path}&sid={sid}")
        assert wrong.status_code == 400
        assert wrong.json() == {"code": 1, "message": (
            "Session ID unknown: it belongs to node 'a', not this one; route requests by the "
            "sid's prefix (the client reconnects and recovers its session)")}  # fmt: skip

        missed = await c.chat(3)
        sid_b = json.loads((await http.get(b.url + path)).text[1:])["sid"]
        assert sid_b.startswith("b_")
        auth = json.dumps({"pid": connected["pid"], "offset": offset}).encode()
        await http.post(f"{b.url}{path}&sid={sid_b}", content=b"40" + auth)
        resumed = await _poll_packets(http, f"{b.url}{path}&sid={sid_b}", 4)
        assert json.loads(resumed[0][2:])["sid"] == connected["sid"], "the same socket: recovered"
        assert [json.loads(p[2:])[1]["id"] for p in resumed[1:]] == missed


async def _poll_packets(http: httpx.AsyncClient, url: str, count: int) -> list[str]:
    """Poll until ``count`` Socket.IO packets came (pings are answered, as a client does)."""
    packets: list[str] = []
    async with asyncio.timeout(20 * UNIT):
        while len(packets) < count:
            reply = await http.get(url)
            assert reply.status_code == 200, reply.text
            for packet in reply.text.split("\x1e"):
                if packet == "2":
                    await http.post(url, content=b"3")
                elif packet.startswith("4"):
                    packets.append(packet)
    return packets


async def _poll_chat(http: httpx.AsyncClient, url: str, count: int) -> list[Any]:
    events = []
    while len(events) < count:
        for packet in await _poll_packets(http, url, 1):
            if packet.startswith("42"):
                event = json.loads(packet[2:])
                if event[0] == CHAT:
                    events.append(event)
    return events


async def test_a_killed_pubsub_connection_loses_nothing(tmp_path: Path) -> None:
    async with cluster(tmp_path, nodes=2) as c:
        a, b = c.nodes["a"], c.nodes["b"]
        async with c.clients(a.url, 3) as on_a, c.clients(b.url, 3) as on_b:
            ids: list[str] = []
            stop = asyncio.Event()
            publisher = asyncio.ensure_future(publish_steadily(c, stop, ids, 0.01))
            await eventually(lambda: len(ids) > 20, what="traffic")
            for _ in range(3):
                killed = c.redis.command("CLIENT", "KILL", "TYPE", "pubsub")
                assert killed.startswith(b":") and int(killed[1:].split(b"\r")[0]) >= 2
                mark = len(ids)
                await eventually(lambda m=mark: len(ids) > m + 20, what="traffic after the kill")
            stop.set()
            await publisher
            for group in (on_a, on_b):
                await all_received(group, ids)
                for state in await report(group):
                    check_once_in_order(state, ids)
            resyncs = [(await n.stats())["cluster"]["resyncs"] for n in (a, b)]
            assert all(r >= 3 for r in resyncs), resyncs


async def test_redis_restarted_without_data(tmp_path: Path) -> None:
    async with cluster(tmp_path, nodes=2) as c:
        a, b = c.nodes["a"], c.nodes["b"]
        async with c.clients(a.url, 3) as on_a, c.clients(b.url, 3) as on_b:
            before = await c.chat(5)
            await all_received(on_b, before)
            epoch = (await a.stats())["cluster"]["epoch"]
            c.redis.restart()
            await eventually(lambda: c.upstream() == 1, 10 * UNIT, what="a feed again")
            for node in (a, b):
                await c.ready(node)
            assert (await b.stats())["cluster"]["epoch"] != epoch
            assert (await b.stats())["cluster"]["resets"] == 1
            after = await c.chat(10)
            # Live clients carry on: nothing to reconnect for.
            await all_received(on_a, after, 15 * UNIT)
            await all_received(on_b, after, 15 * UNIT)
            for state in await report(on_b):
                check_once_in_order(state, before + after)
            # The owner took its feeds back in the new epoch: they never stopped (a feed
            # started afresh elsewhere would miss what Kick sent until it was subscribed).
            for node in (a, b):
                assert (await node.stats())["relay"]["feeds_stopped"] == 0, node.log_text()
            await single_upstream(c)


async def test_redis_unreachable_for_a_while(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c, tcp_proxy(c.redis.port) as link:
        a = await c.start_node("a", redis_url=link.url)
        b = await c.start_node("b", redis_url=link.url)
        async with c.clients(a.url, 3) as on_a, c.clients(b.url, 3) as on_b:
            await all_received(on_b, await c.chat(3))
            link.pause()
            async with httpx.AsyncClient() as http:

                async def not_ready() -> bool:
                    reply = await http.get(f"{b.url}/readyz", timeout=5)
                    return reply.status_code == 503 and "cluster" in reply.text

                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10 * UNIT
                while not await not_ready():
                    assert loop.time() < deadline, "readyz never said Redis is unreachable"
                    await asyncio.sleep(0.1)
                metrics = await b.metrics()
                assert "kichat_cluster_connected 0.0" in metrics
                link.restore()
                await c.ready(a)
                await c.ready(b)
            after = await c.chat(10)
            await all_received(on_a, after, 20 * UNIT)
            await all_received(on_b, after, 20 * UNIT)
            await single_upstream(c)
        for node in (a, b):
            assert "Traceback" not in node.log_text()


async def test_a_restore_after_the_history_was_trimmed_is_refused(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        a = await c.start_node("a", KICHAT_CLUSTER_HISTORY_SIZE="100")
        b = await c.start_node("b", KICHAT_CLUSTER_HISTORY_SIZE="100")
        async with (
            c.clients(b.url, 2),
            tcp_proxy(a.port) as lb,
            c.clients(lb.http_url, 2) as moving,
        ):
            await all_received(moving, await c.chat(3))
            lb.pause()
            await c.chat(400)  # far more than the 100 a node keeps per feed
            lb.restore()
            lb.retarget(a.port)

            async def reconnected() -> bool:
                return all(s["connects"] == 2 for s in await report(moving))

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20 * UNIT
            while not await reconnected():
                assert loop.time() < deadline, "the clients did not reconnect"
                await asyncio.sleep(0.1)
            last = await c.chat(3)
            await all_received(moving, last, 20 * UNIT)
            for state in await report(moving):
                assert state["recovered"] == 0, "a gap must never be recovered silently"
                assert state["connects"] == 2
