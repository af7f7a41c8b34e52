"""The ``kichat`` command as real processes: check-config, serve, demo, watch, --help.

The gateway processes talk to an in-process Kick simulator on loopback; ``watch`` runs against
an in-process gateway. Every process is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import socketio

from kichat.app import App
from kichat.config import describe_settings, load_settings
from kichat.sim import KickSimulator

from conftest import UNIT, eventually
from process_harness import LISTENING, kichat_process, run_kichat

DEMO_URL = re.compile(r"serving Socket.IO and REST at (http://127\.0\.0\.1:\d+)")
CHAT = "App\\Events\\ChatMessageEvent"


# -- check-config ---------------------------------------------------------------------------------


async def test_check_config_prints_every_problem_and_exits_2() -> None:
    code, out, err = await run_kichat(
        "check-config", "--port", "70000", "--pusher-url", "http://example.com/app/x",
        "--set", "relay.linger=-1", "--set", "limits.subscribe_rate=many",
        "--set", "relay.lingr=1",
        env={"KICHAT_LOG_LEVEL": "loud"},
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    for name in ("server.port", "pusher.url", "relay.linger", "limits.subscribe_rate",
                 "log.level"):  # fmt: skip
        assert sum(p.startswith(f"  - {name} (") for p in problems) == 1, (name, err)
    assert "  - command line: unknown setting relay.lingr (did you mean relay.linger?)" in problems
    assert len(problems) == 6


async def test_check_config_ok_prints_the_settings_with_secrets_hidden() -> None:
    code, out, err = await run_kichat(
        "check-config", "--port", "0", "--set", "limits.api_keys=s3cret-key"
    )
    assert code == 0
    assert "configuration OK" in err
    shown = json.loads(out)
    assert shown["server"]["port"] == 0
    assert "s3cret-key" not in out
    assert shown["limits"]["api_keys"] == [shown["limits"]["api_keys"][0]] != ["s3cret-key"]


async def test_check_config_list() -> None:
    code, out, _ = await run_kichat("check-config", "--list")
    assert code == 0
    docs = describe_settings()
    for doc in docs:
        assert re.search(rf"^{re.escape(doc.name)}\s+{re.escape(doc.env)}\s", out, re.M), doc.name
    code, out, _ = await run_kichat("check-config", "--list", "--markdown")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Setting |")
    assert len(rows) == len(docs) + 1  # the header (the separator row starts with "|-")


async def test_help_and_version() -> None:
    code, out, _ = await run_kichat("--help")
    assert code == 0
    for command in ("serve", "demo", "simulate", "check-config", "watch"):
        assert command in out
    code, out, _ = await run_kichat("--version")
    assert code == 0
    assert re.fullmatch(r"kichat \d+\.\d+\.\d+\S*\n", out)
    code, _, err = await run_kichat("frobnicate")
    assert code == 2
    assert "invalid choice" in err


# -- serve and demo -------------------------------------------------------------------------------


async def test_serve_answers_health_and_exits_cleanly_on_sigterm() -> None:
    async with KickSimulator(port=0) as sim:
        async with kichat_process(
            "serve", "--port", "0", "--pusher-url", sim.pusher_url, "--kick-api-url", sim.api_url
        ) as proc:
            line = await proc.line("err", LISTENING.search, 20 * UNIT)
            match = LISTENING.search(line)
            assert match is not None
            url = match.group(1)
            async with httpx.AsyncClient(base_url=url, timeout=5 * UNIT) as http:
                health = await http.get("/healthz")
                assert (health.status_code, health.json()) == (200, {"status": "ok"})
                await eventually(lambda: sim.connection_count == 1, 10 * UNIT)
                assert (await http.get("/readyz")).json() == {"status": "ready"}
            assert await proc.terminate() == 0
            await eventually(lambda: sim.connection_count == 0, 5 * UNIT)
            assert any(" stopped after " in line for line in proc.err)
            assert not [line for line in proc.err if "Traceback" in line or "ERROR" in line]


async def test_serve_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code, _, err = await run_kichat(
            "serve", "--port", port, "--pusher-url", "ws://127.0.0.1:9/app/k?protocol=7",
            "--kick-api-url", "http://127.0.0.1:9",
        )  # fmt: skip
    assert code == 2
    assert "address already in use" in err.lower()
    assert "Traceback" not in err


async def test_demo_serves_the_simulated_chat() -> None:
    async with kichat_process("demo", "--quiet", "--port", "0", "--rate", "20") as proc:
        line = await proc.line("err", DEMO_URL.search, 20 * UNIT)
        match = DEMO_URL.search(line)
        assert match is not None
        url = match.group(1)
        async with httpx.AsyncClient(base_url=url, timeout=5 * UNIT) as http:
            channel = (await http.get("/api/v2/channels/xqc")).json()
            assert channel["chatroom"]["id"] == 668
        client = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        @client.on(CHAT)  # type: ignore[misc]
        async def on_chat(data: dict[str, Any]) -> None:
            await got.put(data)

        await client.connect(url, transports=["websocket"], auth={"recovery": False})
        try:
            reply = await client.call(
                "subscribe", {"channelName": "xqc", "chatroomId": "668"}, timeout=5 * UNIT
            )
            assert reply["ok"] is True
            chat = await asyncio.wait_for(got.get(), 10 * UNIT)
            assert chat["channel_name"] == "xqc"
            assert chat["chatroom_id"] == 668
        finally:
            await client.disconnect()
        assert await proc.terminate() == 0
        assert proc.out == []  # --quiet


async def test_demo_prints_the_live_chat() -> None:
    async with kichat_process("demo", "--port", "0", "--rate", "20") as proc:
        first = await proc.line("out", lambda s: s.startswith("subscribed"), 20 * UNIT)
        assert first == "subscribed to xqc: ok"
        chat = await proc.line("out", lambda s: s.startswith("[xqc] "), 10 * UNIT)
        assert re.fullmatch(r"\[xqc\] (\S+: .*|<\w+> \{.*)", chat)
        assert await proc.terminate() == 0


# -- watch ----------------------------------------------------------------------------------------


@asynccontextmanager
async def gateway(**overrides: object) -> AsyncIterator[tuple[KickSimulator, str]]:
    async with KickSimulator(port=0) as sim:
        settings = load_settings(
            {"server.port": 0, "pusher.url": sim.pusher_url, "kick_api.url": sim.api_url,
             "relay.linger": 0.0, **overrides},
            env={},
        )  # fmt: skip
        async with App(settings) as app:
            yield sim, f"http://127.0.0.1:{app.port}"


async def test_watch_prints_chat_lines_from_a_running_gateway() -> None:
    async with (
        gateway() as (sim, url),
        kichat_process("watch", url, "xqc", "668") as proc,
    ):
        assert await proc.line("out", lambda s: s.startswith("subscribed"), 20 * UNIT) == (
            "subscribed to xqc: ok"
        )
        data = await sim.publish_event(CHAT, "xqc")
        expected = f"[xqc] {data['sender']['username']}: {data['content']}"
        await proc.line("out", lambda s: s == expected, 10 * UNIT)
        await sim.publish_event("App\\Events\\UserBannedEvent", "xqc")
        banned = await proc.line("out", lambda s: "<UserBannedEvent>" in s, 10 * UNIT)
        assert banned.startswith("[xqc] <UserBannedEvent> {")
        assert "\033[" not in "".join(proc.out)  # no colours when stdout is not a terminal
        assert await proc.terminate() == 0


async def test_watch_reports_an_unreachable_gateway_in_one_line() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        code, _, err = await run_kichat("watch", url, "xqc", "668")
    assert code == 2
    assert "Traceback" not in err
    assert "refused" in err.lower()


async def test_watch_reports_a_refused_connection_or_subscription() -> None:
    async with gateway(**{"limits.api_keys": ["right-key"]}) as (_, url):
        code, _, err = await run_kichat("watch", url, "xqc", "668", "--token", "wrong")
        assert (code, "Traceback" in err) == (2, False)
        assert "unauthorized" in err
        code, _, err = await run_kichat("watch", url, "xqc", "x1", "--token", "right-key")
        assert (code, "Traceback" in err) == (2, False)
        assert "invalid_chatroom_id" in err
