"""deploy/nginx-cluster.conf in a real nginx in front of two cluster nodes: long-polling sessions
(and polling upgraded to WebSocket) always reach the node that owns them, handshakes spread over
the nodes, and every client gets every message once, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster_harness import all_received, check_once_in_order, cluster, report
from nginx_support import run_nginx
from redis_support import free_port

pytestmark = [pytest.mark.node, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]


def cluster_site(port: int, nodes: dict[str, int]) -> str:
    site = (ROOT / "deploy" / "nginx-cluster.conf").read_text()
    site = site.replace("    listen 80;\n", f"    listen 127.0.0.1:{port};\n")
    site = site.replace("    listen [::]:80;\n", "")
    for name, default in (("a", 3001), ("b", 3002), ("c", 3003)):
        if name in nodes:
            site = site.replace(f"127.0.0.1:{default};", f"127.0.0.1:{nodes[name]};")
        else:  # the example's third node is not running here
            site = site.replace(f"    server 127.0.0.1:{default};\n", "")
            site = site.replace(
                f"upstream kichat_{name} {{ server 127.0.0.1:{default}; keepalive 8; }}\n", ""
            )
            site = site.replace(f'    "~^{name}(w[0-9]+)?_"  kichat_{name};\n', "")
    return site


@pytest.mark.parametrize("transports", ["polling", "polling,websocket"])
async def test_the_nginx_example_routes_every_session_to_its_node(
    transports: str, tmp_path: Path
) -> None:
    async with cluster(tmp_path, nodes=2) as c:
        port = free_port()
        site = cluster_site(port, {n: node.port for n, node in c.nodes.items()})
        async with (
            run_nginx(site, port, tmp_path) as url,
            c.clients(url, 16, transports) as clients,
        ):
            ids = await c.chat(30)
            await all_received(clients, ids)
            for state in await report(clients):
                check_once_in_order(state, ids)
                assert state["connects"] == 1, "no session was ever refused by a wrong node"
            # Both nodes hold sessions, so routing by the sid was exercised. How evenly nginx's
            # least_conn spreads 16 handshakes depends on timing (13 and 3 seen once): not ours.
            sessions = [(await node.stats())["clients"]["sockets"] for node in c.nodes.values()]
            assert sum(sessions) == 16 and min(sessions) >= 1, f"spread over the nodes: {sessions}"
