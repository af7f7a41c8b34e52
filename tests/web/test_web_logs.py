"""Structured logs of the real ``kichat serve`` process (its CLI sets logging up, as in
production), with the Kick simulator as upstream and python-socketio as the client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import socketio
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from kichat.observability import MAX_LOG_MESSAGE, MAX_LOG_TRACEBACK, JsonFormatter, TextFormatter
from kichat.sim import KickSimulator

from conftest import UNIT
from web_harness import CHAT, recording_kick

SECRET = "s3cr3t-5ession"


@dataclass
class CliGateway:
    proc: asyncio.subprocess.Process
    url: str = ""
    lines: list[bytes] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def stop(self) -> list[dict[str, Any]]:
        """SIGTERM, wait for a clean exit; every stderr line, each parsed as one JSON object."""
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 15 * UNIT)
        assert self.reader is not None
        await asyncio.wait_for(self.reader, 5 * UNIT)
        assert code == 0, b"".join(self.lines).decode(errors="replace")
        entries = []
        for raw in self.lines:
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise AssertionError(f"not a JSON log line: {raw!r}") from None
            assert isinstance(entry, dict), raw
            assert isinstance(entry["ts"], float | int), raw
            assert entry["level"] in ("debug", "info", "warning", "error", "critical"), raw
            assert isinstance(entry["logger"], str), raw
            assert isinstance(entry["msg"], str), raw
            entries.append(entry)
        return entries


@asynccontextmanager
async def kichat_serve(*args: str) -> AsyncIterator[CliGateway]:
    """``python -m kichat serve --port 0 --log-format json ARGS``; its URL is read from the
    "listening" log line. Stderr is drained all along, so a chatty DEBUG run cannot block."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICHAT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kichat", "serve", "--port", "0", "--log-format", "json",
        "--set", "server.shutdown_timeout=1", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    gw = CliGateway(proc)
    listening = asyncio.get_running_loop().create_future()

    async def drain() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            gw.lines.append(line)
            if not listening.done() and b"kichat listening on http://" in line:
                listening.set_result(line)
        if not listening.done():
            listening.set_exception(AssertionError(b"".join(gw.lines).decode(errors="replace")))

    gw.reader = asyncio.get_running_loop().create_task(drain())
    try:
        line = await asyncio.wait_for(listening, 20 * UNIT)
        address = orjson.loads(line)["msg"].split("http://", 1)[1].split(" ", 1)[0]
        gw.url = f"http://{address}"
        yield gw
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        gw.reader.cancel()


async def test_json_logs_one_object_per_line_and_no_line_per_message_at_info() -> None:
    async with (
        KickSimulator(port=0, seed=3) as sim,
        kichat_serve(
            "--pusher-url", sim.pusher_url, "--kick-api-url", sim.api_url, "--log-level", "info"
        ) as gw,
    ):
        client = socketio.AsyncClient(reconnection=False)
        received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        client.on(CHAT, received.put)
        await client.connect(gw.url, transports=["websocket"], auth={"recovery": False})
        reply = await client.call(
            "subscribe", {"channelName": "xqc", "chatroomId": "668"}, timeout=5 * UNIT
        )
        assert reply["ok"] is True, reply
        sent = [await sim.publish_event(CHAT, "xqc") for _ in range(50)]
        got = [await asyncio.wait_for(received.get(), 5 * UNIT) for _ in sent]
        assert [m["id"] for m in got] == [m["id"] for m in sent]
        async with httpx.AsyncClient(base_url=gw.url, trust_env=False) as http:
            for path in ("/api/v2/channels/xqc", "/api/v2/channels/xqc/messages", "/nope"):
                await http.get(path)
        await client.disconnect()
        entries = await gw.stop()
    # Lifecycle lines only: listening, upstream connected, room active, shutdown...
    assert len(entries) < 20, [e["msg"] for e in entries]
    assert {e["level"] for e in entries} <= {"info", "warning"}
    assert all(e["logger"].startswith("kichat") for e in entries)
    text = "\n".join(e["msg"] for e in entries)
    for message in sent:
        assert message["id"] not in text
        assert message["content"] not in text
    assert "kichat listening" in text
    assert "stopped" in text


async def test_debug_logs_are_json_and_carry_no_session_secret() -> None:
    async with (
        KickSimulator(port=0, seed=3) as sim,
        recording_kick(
            body=b'{"data":[]}',
            extra_headers=[("Set-Cookie", f"kick_session={SECRET}-cookie; Path=/; HttpOnly")],
        ) as kick,
        kichat_serve(
            "--pusher-url", sim.pusher_url, "--kick-api-url", kick.url, "--log-level", "debug"
        ) as gw,
    ):
        async with httpx.AsyncClient(base_url=gw.url, trust_env=False) as http:
            headers = {"X-Kick-Cookie": f"session={SECRET}-in", "Authorization": f"Bearer {SECRET}"}
            assert (
                await http.post("/api/v2/channels/followed", headers=headers)
            ).status_code == 200
            assert (await http.put("/api/v2/user/livestreams", headers=headers)).status_code == 200
        entries = await gw.stop()
    assert len(kick.requests) == 2
    assert any(e["level"] == "debug" for e in entries)
    for entry in entries:
        assert SECRET not in orjson.dumps(entry).decode(), entry


async def test_hostile_packets_cost_one_short_log_line_each() -> None:
    """Issue 8, item 3: before, one 2 KB nested packet wrote a 164 KB traceback."""
    deep = '42["x",' + "[" * 3000 + "]" * 3000 + "]"
    long_namespace = "42/" + "n" * 200_000 + ',["x"]'
    async with (
        KickSimulator(port=0, seed=3) as sim,
        kichat_serve("--pusher-url", sim.pusher_url, "--kick-api-url", sim.api_url) as gw,
    ):
        ws_url = gw.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        for packet in (deep, long_namespace):
            async with ws_connect(ws_url) as ws:
                assert str(await asyncio.wait_for(ws.recv(), 5 * UNIT)).startswith("0{")
                await ws.send("40")
                assert str(await asyncio.wait_for(ws.recv(), 5 * UNIT)).startswith("40")
                await ws.send(packet)
                with contextlib.suppress(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5 * UNIT)
                assert ws.close_code == 1002
        async with httpx.AsyncClient(base_url=gw.url, trust_env=False) as http:
            handshake = await http.get("/socket.io/?EIO=4&transport=polling")
            sid = orjson.loads(handshake.text[1:])["sid"]
            url = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
            assert (await http.post(url, content="40")).status_code == 200
            assert (await http.post(url, content=deep)).status_code == 400
        entries = await gw.stop()
    closing = [e for e in entries if e["logger"] == "kichat.sio"]
    assert len(closing) == 3, closing
    assert all("exc" not in e for e in entries)
    assert max(len(orjson.dumps(e)) for e in entries) < 400
    assert sum(len(line) for line in gw.lines) < 8000


def test_log_lines_are_bounded_whatever_they_quote() -> None:
    def deep(n: int) -> None:
        deep(n + 1)

    try:
        deep(0)
    except RecursionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "kichat.test", logging.ERROR, __file__, 1, "bad %s", ("x" * 1_000_000,), exc_info
    )
    text = TextFormatter("%(levelname)s %(message)s").format(record)
    assert len(text) < MAX_LOG_MESSAGE + MAX_LOG_TRACEBACK + 200
    assert text.startswith("ERROR bad xxx") and "characters cut" in text
    assert "RecursionError" in text  # the end of a traceback is kept
    entry = orjson.loads(JsonFormatter().format(record))
    assert len(entry["msg"]) < MAX_LOG_MESSAGE + 100
    assert len(entry["exc"]) < MAX_LOG_TRACEBACK + 100
    assert entry["exc"].rstrip().endswith("maximum recursion depth exceeded")
