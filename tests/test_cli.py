"""The ``kichat`` command as real processes: check-config, serve, demo, watch, --help.

The gateway processes talk to an in-process Kick simulator on loopback; ``watch`` runs against
an in-process gateway. Every process is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import socketio

from kichat.app import App
from kichat.config import describe_settings, load_settings
from kichat.sim import KickSimulator
from kichat.sim.cli import build_parser as build_simulate_parser

from conftest import UNIT, eventually
from process_harness import LISTENING, kichat_env, kichat_process, run_kichat

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
        env = ", ".join((doc.env, *doc.aliases))
        assert re.search(rf"^{re.escape(doc.name)}\s+{re.escape(env)}\s+default ", out, re.M), (
            doc.name
        )
    assert re.search(r"^server\.port\s+KICHAT_SERVER_PORT, KICHAT_PORT\s+default 3000 ", out, re.M)
    assert re.search(r'^server\.cors_origins\s+\S+\s+default \["\*"\] ', out, re.M)
    code, out, _ = await run_kichat("check-config", "--list", "--markdown")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Setting |")
    assert len(rows) == len(docs) + 1  # the header (the separator row starts with "|-")


async def test_help_and_version() -> None:
    code, out, _ = await run_kichat("--help")
    assert code == 0
    assert "kichat: a self-hostable gateway that turns kick.com's live chat into a" in out
    assert "``" not in out
    for command in ("serve", "demo", "simulate", "check-config", "watch"):
        assert command in out
    code, out, _ = await run_kichat("--version")
    assert code == 0
    assert re.fullmatch(r"kichat \d+\.\d+\.\d+\S*\n", out)
    code, _, err = await run_kichat("frobnicate")
    assert code == 2
    assert "invalid choice" in err


async def test_a_mistake_is_reported_by_the_command_it_belongs_to() -> None:
    code, _, err = await run_kichat("--bogus")
    assert (code, err.splitlines()[-1]) == (2, "kichat: error: unrecognized arguments: --bogus")
    code, _, err = await run_kichat("serve", "--bogus")
    assert code == 2
    assert err.startswith("usage: kichat serve ")
    assert err.splitlines()[-1] == "kichat serve: error: unrecognized arguments: --bogus"
    code, _, err = await run_kichat("watch", "http://127.0.0.1:1", "xqc")
    assert code == 2
    assert err.startswith("usage: kichat watch ")
    assert "required: chatroom_id" in err
    code, _, err = await run_kichat()
    assert code == 2
    assert err.splitlines()[-1] == (
        "kichat: error: a command is required: serve, demo, simulate, check-config or watch"
    )


async def test_simulate_takes_log_levels_in_any_case_and_documents_every_option() -> None:
    parser = build_simulate_parser()
    for action in parser._actions:
        assert action.help, f"kichat simulate {action.option_strings} has no help text"
    async with kichat_process("simulate", "--port", "0", "--log-level", "debug") as proc:
        await proc.line("err", lambda s: "kick simulator ready" in s, 20 * UNIT)
        assert await proc.terminate() == 0
    code, _, err = await run_kichat("simulate", "--log-level", "loud")
    assert code == 2
    assert "invalid choice: 'loud'" in err


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
        demo_code, _, demo_err = await run_kichat("demo", "--port", port)
    # One line that says what to do, and nothing before it: the port is bound before the
    # upstream connection starts, so there is nothing to shut down.
    line = (
        f"127.0.0.1:{port} is already in use (another kichat, or another program);"
        f" choose another port with --port, e.g. --port {int(port) + 1}"
    )
    assert (code, err) == (2, f"kichat serve: {line}\n")
    assert (demo_code, demo_err) == (2, f"kichat demo: {line}\n")


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
        # The banner's watch command works from the shell that ran the demo.
        command = re.compile(r"^    (\S+) watch http://127\.0\.0\.1:\d+ moonlitfox 4100123$")
        match = command.search(await proc.line("err", command.search, 20 * UNIT))
        assert match is not None
        assert match.group(1) == "kichat" or os.access(match.group(1), os.X_OK), match.group(1)
        first = await proc.line("out", lambda s: s.startswith("subscribed"), 20 * UNIT)
        assert first == "subscribed to xqc (chatroom 668): ok"
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
            "subscribed to xqc (chatroom 668): ok"
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
    assert (code, err) == (
        2,
        f"kichat watch: cannot connect to {url}: connection refused"
        " (is the gateway running, on this port?)\n",
    )


async def test_watch_into_a_pipe_that_closes_ends_quietly() -> None:
    # `kichat watch ... | head -1`: the reader leaves after one line.
    async with gateway() as (sim, url):
        read, write = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kichat", "watch", url, "xqc", "668",
            stdout=write, stderr=asyncio.subprocess.PIPE, env=kichat_env(),
        )  # fmt: skip
        os.close(write)
        with os.fdopen(read, "rb") as reader:
            first = await asyncio.to_thread(reader.readline)
        assert first == b"subscribed to xqc (chatroom 668): ok\n"
        # The next line written hits the closed pipe.
        await sim.publish_event(CHAT, "xqc")
        _, err = await asyncio.wait_for(proc.communicate(), 20 * UNIT)
        assert (proc.returncode, err.decode()) == (0, "")


async def test_watch_takes_host_and_port_without_a_scheme_and_explains_bad_urls() -> None:
    async with (
        gateway() as (_, url),
        kichat_process("watch", url.removeprefix("http://"), "xqc", "668") as proc,
    ):
        line = await proc.line("out", lambda s: s.startswith("subscribed"), 20 * UNIT)
        assert line == "subscribed to xqc (chatroom 668): ok"
        assert await proc.terminate() == 0
    code, _, err = await run_kichat("watch", "ftp://127.0.0.1:3000", "xqc", "668")
    assert (code, err) == (
        2,
        "kichat watch: 'ftp://127.0.0.1:3000' is not a gateway URL: use http://host:port or"
        " https://host (for example http://127.0.0.1:3000)\n",
    )


async def test_watch_shows_the_warning_of_a_wrong_chatroom_id() -> None:
    # 4100123 is moonlitfox's chatroom: the chat shown under "xqc" is moonlitfox's, and the
    # gateway's warning is what says so. watch must show it rather than "ok".
    async with gateway() as (_, url), kichat_process("watch", url, "xqc", "4100123") as proc:
        line = await proc.line("out", lambda s: s.startswith("subscribed"), 20 * UNIT)
        assert line == (
            "subscribed to xqc (chatroom 4100123) with a warning: stream_events_unavailable:"
            " Kick says channel 'xqc' has chatroom 668, not 4100123; chat flows, but stream"
            " events would belong to another room"
        )
        assert await proc.terminate() == 0


async def test_watch_reports_a_refused_connection_or_subscription() -> None:
    async with gateway(**{"limits.api_keys": ["right-key"]}) as (_, url):
        code, _, err = await run_kichat("watch", url, "xqc", "668", "--token", "wrong")
        assert (code, "Traceback" in err) == (2, False)
        assert "unauthorized" in err
        code, _, err = await run_kichat("watch", url, "xqc", "x1", "--token", "right-key")
        assert (code, "Traceback" in err) == (2, False)
        assert "invalid_chatroom_id" in err
