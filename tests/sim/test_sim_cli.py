"""``python -m kichat.sim`` (the ``kichat simulate`` command) as a real process."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys

import httpx

from conftest import UNIT, run_python

READY = re.compile(r"kick simulator ready: pusher_url=(\S+) api_url=(\S+)")


async def test_cli_serves_until_sigterm_with_random_traffic() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kichat.sim", "--port", "0", "--rate", "20", "--slugs", "xqc",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 10 * UNIT)).decode()
            assert line, "the simulator exited before it was ready"
            if m := READY.search(line):
                break
        pusher_url, api_url = m.groups()
        assert pusher_url.startswith("ws://127.0.0.1:")
        assert pusher_url.endswith(
            "/app/32cbd69e4b950bf97679?protocol=7&client=js&version=8.4.0&flash=false"
        )
        async with httpx.AsyncClient(base_url=api_url, timeout=5 * UNIT) as http:
            for _ in range(int(100 * UNIT)):
                stats = (await http.get("/_sim/stats")).json()
                if stats["events_published"] >= 2:
                    break
                await asyncio.sleep(0.05)
            assert stats["events_published"] >= 2
            assert (await http.get("/_sim/traffic")).json() == {"running": True}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10 * UNIT) == 0
        rest = (await proc.stderr.read()).decode()
        assert "kick simulator stopped" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_reports_configuration_problems_in_one_line() -> None:
    code, _, err = await run_python(
        ["-m", "kichat.sim", "--port", "0", "--rate", "1", "--slugs", "nope"]
    )
    assert code == 2
    assert "unknown channel 'nope'" in err
    assert "Traceback" not in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = await run_python(["-m", "kichat.sim", "--port", str(busy.getsockname()[1])])
    assert code == 2
    assert "address already in use" in err.lower()
    assert "Traceback" not in err


async def test_cli_help() -> None:
    code, out, _ = await run_python(["-m", "kichat.sim", "--help"])
    assert code == 0
    for option in (
        "--host",
        "--port",
        "--key",
        "--rate",
        "--slugs",
        "--activity-timeout",
        "--pong-timeout",
    ):
        assert option in out
