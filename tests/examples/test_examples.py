"""Every example in examples/ (and the README's own snippets) runs against the gateway on the
simulator and prints chat.

Each example runs as its own process, as a user would start it, with the gateway's URL as its
first argument; the test waits for a chat line on its stdout. The Node examples need their
``npm ci`` (the Makefile does it for ``make test``); locally a missing install skips them, in
CI it fails them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from kichat.app import App
from kichat.config import load_settings
from kichat.sim import KickSimulator

from conftest import IN_CI, UNIT

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHAT_LINE = re.compile(r"^xqc \| \S+: .+$")


@asynccontextmanager
async def chatty_gateway() -> AsyncIterator[str]:
    """A gateway on the simulator, with chat flowing on xqc; yields its URL."""
    async with KickSimulator(port=0, seed=11) as sim:
        settings = load_settings(
            {"server.port": 0, "pusher.url": sim.pusher_url, "kick_api.url": sim.api_url},
            env={},
        )
        async with App(settings) as app:
            sim.start_traffic(20, slugs=["xqc"], mix="chat")
            try:
                yield f"http://127.0.0.1:{app.port}"
            finally:
                await sim.stop_traffic()


async def first_chat_line(command: list[str], cwd: Path, within: float = 30 * UNIT) -> str:
    """Run ``command``; return its first stdout line that is a chat line, then stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICHAT_")}
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(within):
            while raw := await proc.stdout.readline():
                line = raw.decode().rstrip("\n")
                seen.append(line)
                if CHAT_LINE.match(line):
                    return line
    except TimeoutError:
        pass
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10 * UNIT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    err = (await proc.stderr.read()).decode()
    raise AssertionError(f"{command}: no chat line; stdout: {seen}\nstderr:\n{err}")


def node_example(folder: str) -> Path:
    path = EXAMPLES / folder
    if shutil.which("node") is None or not (path / "node_modules" / "socket.io-client").is_dir():
        if IN_CI:
            pytest.fail(f"CI: {path}/node_modules is missing; the Makefile must run npm ci there")
        pytest.skip(f"node or {path}/node_modules missing (run: npm ci --prefix {path})")
    return path


async def test_node_esm_example() -> None:
    folder = node_example("node-esm")
    async with chatty_gateway() as url:
        await first_chat_line(["node", "chat.mjs", url], folder)


async def test_node_commonjs_example() -> None:
    folder = node_example("node-cjs")
    async with chatty_gateway() as url:
        await first_chat_line(["node", "chat.js", url], folder)


async def test_python_example_with_kichat_client() -> None:
    async with chatty_gateway() as url:
        await first_chat_line([sys.executable, "chat.py", url], EXAMPLES / "python-kichat")


async def test_python_example_with_python_socketio() -> None:
    async with chatty_gateway() as url:
        await first_chat_line([sys.executable, "chat.py", url], EXAMPLES / "python-socketio")


def readme_snippet(language: str, after: str) -> str:
    """The first ``language`` code block of README.md after the text ``after``."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(after)
    match = re.search(rf"```{language}\n(.*?)```", readme[start:], re.S)
    assert match is not None, f"no {language} block after {after!r} in README.md"
    return match.group(1)


async def test_the_readme_python_snippet_runs_as_printed(tmp_path: Path) -> None:
    code = readme_snippet("python", "From Python, with python-socketio")
    async with chatty_gateway() as url:
        script = tmp_path / "client.py"
        script.write_text(code.replace("http://127.0.0.1:3000", url))
        line = await first_chat_line([sys.executable, str(script)], tmp_path)
    assert line.startswith("xqc | ")


async def test_the_readme_javascript_snippet_runs_saved_as_a_file() -> None:
    folder = node_example("node-esm")  # where `npm install socket.io-client` was done
    code = readme_snippet("js", "## Using the stream")
    async with chatty_gateway() as url:
        script = folder / "readme-snippet.mjs"
        script.write_text(code.replace("http://127.0.0.1:3000", url))
        try:
            await first_chat_line(["node", script.name], folder)
        finally:
            script.unlink()
