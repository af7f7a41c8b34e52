"""Three nodes, one Redis: one Kick subscription per chatroom, every client gets every event once
and in order, whatever node and transport it uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import socketio

from cluster_harness import (
    CHAT,
    XQC,
    XQC_CHANNELS,
    all_received,
    cluster,
    once_in_order,
    report,
    single_upstream,
)
from conftest import UNIT, eventually

pytestmark = [pytest.mark.node, pytest.mark.cluster]


async def test_three_nodes_share_one_upstream_and_deliver_everything_once(tmp_path: Path) -> None:
    async with cluster(tmp_path, nodes=3) as c:
        a, b, n3 = c.nodes["a"], c.nodes["b"], c.nodes["c"]
        py = socketio.AsyncClient()
        got: list[dict[str, object]] = []
        py.on(CHAT, got.append)
        await py.connect(n3.url, auth={"recovery": False}, transports=["websocket"])
        try:
            async with (
                c.clients(a.url, 10, "websocket") as ws_clients,
                c.clients(b.url, 10, "polling") as poll_clients,
            ):
                assert (await py.call("subscribe", XQC))["ok"] is True
                await single_upstream(c)
                owner = await c.owner()
                assert owner in {"a", "b", "c"}
                ids = await c.chat(60)
                await all_received(ws_clients, ids)
                await all_received(poll_clients, ids)
                await eventually(lambda: len(got) >= 60, 10 * UNIT, what="python client")
                for state in [*await report(ws_clients), *await report(poll_clients)]:
                    assert once_in_order(state["ids"], ids) == (0, 0, 0)
                    assert state["names"] == ["xqc"] and state["errors"] == []
                assert once_in_order([str(d["id"]) for d in got], ids) == (0, 0, 0)
                assert all(d["channel_name"] == "xqc" for d in got)
                for ch in XQC_CHANNELS:
                    assert c.upstream(ch) == 1, f"{ch}: one Kick subscription for three nodes"
                stats = {n: (await c.nodes[n].stats())["cluster"] for n in "abc"}
                assert sum(len(s["owned"]) for s in stats.values()) == 2  # chatroom + channel
                assert all(s["node_id"] == n and s["backend"] == "redis" for n, s in stats.items())
        finally:
            await py.disconnect()
        # The last client leaving anywhere releases Kick's subscription (after the linger).
        await eventually(lambda: all(c.upstream(ch) == 0 for ch in XQC_CHANNELS), 10 * UNIT,
                         what="released after the last client left")  # fmt: skip
        assert await c.owner() is None
