"""The deployment examples in deploy/ work as documented.

* ``kichat.service`` passes ``systemd-analyze verify`` without a single warning (skipped where
  systemd's tools are absent) and keeps its hardening.
* ``kichat.env`` is a valid configuration.
* ``nginx.conf`` runs in a real nginx (Debian's package, which .ci/run installs; skipped locally
  when absent), templated to free ports in front of the gateway on the simulator, and the real
  socket.io-client works through it over WebSocket, long-polling, and polling upgraded to
  WebSocket; per-address limits see the client's address from X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from kichat.app import App
from kichat.config import load_settings
from kichat.sim import KickSimulator

from conftest import UNIT, node_script
from nginx_support import require_nginx, run_nginx

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHAT = "App\\Events\\ChatMessageEvent"


def env_file() -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in (DEPLOY / "kichat.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


# -- systemd ----------------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "kichat.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_systemd_unit_is_hardened_and_restarts_on_failure() -> None:
    unit = unit_settings()
    for key, value in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "/etc/kichat/kichat.env"),
        ("ExecStart", "/opt/kichat/bin/kichat serve"),
        ("KillSignal", "SIGTERM"),
        ("CapabilityBoundingSet", ""),
    ]:
        assert unit.get(key) == [value], key
    assert int(unit["LimitNOFILE"][0]) >= 65536
    # The graceful shutdown (server.shutdown_timeout, 10 s by default) fits in the stop timeout.
    assert int(unit["TimeoutStopSec"][0].removesuffix("s")) > 10


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit as installed, with the paths of this checkout (verify checks that they exist).
    kichat = Path(sys.executable).with_name("kichat")
    assert kichat.exists()
    text = (DEPLOY / "kichat.service").read_text()
    text = text.replace("/opt/kichat/bin/kichat", str(kichat))
    text = text.replace("/etc/kichat/kichat.env", str(DEPLOY / "kichat.env"))
    unit = tmp_path / "kichat.service"
    unit.write_text(text)

    result = subprocess.run(
        [analyze, "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_environment_file_is_a_valid_configuration() -> None:
    settings = load_settings(env=env_file())
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 3000)
    assert settings.server.trusted_proxies == ("127.0.0.1", "::1")
    assert settings.log.format == "json"


# -- nginx ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def nginx_in_front_of(gateway_port: int, tmp: Path) -> AsyncIterator[str]:
    """deploy/nginx.conf in a real nginx on a free port, proxying to ``gateway_port``."""
    require_nginx()
    port = free_port()
    site = (DEPLOY / "nginx.conf").read_text()
    site = site.replace("server 127.0.0.1:3000;", f"server 127.0.0.1:{gateway_port};")
    site = site.replace("    listen 80;\n", f"    listen 127.0.0.1:{port};\n")
    site = site.replace("    listen [::]:80;\n", "")
    assert f"127.0.0.1:{port}" in site and f"127.0.0.1:{gateway_port}" in site
    async with run_nginx(site, port, tmp) as url:
        yield url


@asynccontextmanager
async def gateway_behind_nginx(
    tmp: Path, **overrides: object
) -> AsyncIterator[tuple[KickSimulator, str]]:
    async with KickSimulator(port=0, seed=5) as sim:
        values = {
            "server.port": 0,
            "pusher.url": sim.pusher_url,
            "kick_api.url": sim.api_url,
            "server.trusted_proxies": ["127.0.0.1"],  # as in deploy/kichat.env
            **overrides,
        }
        async with (
            App(load_settings(values, env={})) as app,
            nginx_in_front_of(app.port, tmp) as url,
        ):
            yield sim, url


TRANSPORTS = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "polling-then-websocket": ["polling", "websocket"],
}


@pytest.mark.node
@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_socket_io_through_the_nginx_example(transport: str, tmp_path: Path) -> None:
    async with (
        gateway_behind_nginx(tmp_path) as (sim, url),
        node_script("chatservice.mjs", url, json.dumps(TRANSPORTS[transport])) as client,
    ):
        opened = await client.first(lambda m: m["ev"] == "open")
        assert opened["transport"] == TRANSPORTS[transport][0]
        if transport == "polling-then-websocket":
            upgraded = await client.first(lambda m: m["ev"] == "upgrade")
            assert upgraded["transport"] == "websocket"
        # The chatservice subscribes without an acknowledgement: publish until its chat arrives.
        published: list[str] = []

        async def publish_until_received() -> dict[str, object]:
            while True:
                data = await sim.publish_event(CHAT, "xqc")
                published.append(data["id"])
                try:
                    return await client.first(
                        lambda m: m["ev"] == "event" and m["name"] == CHAT, timeout=0.5 * UNIT
                    )
                except AssertionError:
                    continue

        async with asyncio.timeout(15 * UNIT):
            got = await publish_until_received()
        data = got["data"]
        assert isinstance(data, dict)
        assert data["channel_name"] == "xqc"
        assert data["id"] in published


async def test_per_address_limits_see_clients_behind_the_nginx_example(tmp_path: Path) -> None:
    async with (
        gateway_behind_nginx(tmp_path, **{"limits.rest_per_minute": 1}) as (_, url),
        httpx.AsyncClient(base_url=url, timeout=5 * UNIT) as http,
    ):
        first = await http.get("/api/v2/channels/xqc", headers={"X-Forwarded-For": "198.51.100.7"})
        again = await http.get("/api/v2/channels/xqc", headers={"X-Forwarded-For": "198.51.100.7"})
        other = await http.get("/api/v2/channels/xqc", headers={"X-Forwarded-For": "198.51.100.8"})
        assert [first.status_code, again.status_code, other.status_code] == [200, 429, 200]
        assert re.fullmatch(r"\d+", again.headers["retry-after"])
