"""Shared test conventions.

* Every wait is a multiple of ``UNIT`` (seconds). Slow machines set ``KICHAT_TEST_UNIT=2`` (or
  more) to stretch every timeout at once instead of editing numbers in tests.
* Servers bind to port 0 on loopback; nothing talks to the outside world.
* The event loop is uvloop, as in production; ``KICHAT_TEST_LOOP=asyncio`` runs the same tests
  on the standard library's loop (``.ci/run`` does both for the core server tests).
* Real JavaScript clients (socket.io-client, pusher-js) live in ``tests/js``; ``.ci/run`` installs
  them with ``npm ci``. Locally, a missing install skips those tests; under ``CI`` it fails them,
  so a broken install can never turn into a silently green run.
* Browser tests (marker ``browser``) drive Debian's headless Chromium; ``.ci/run`` installs it.
  Like the JS clients, a missing install skips them locally and fails them under ``CI``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

UNIT = float(os.environ.get("KICHAT_TEST_UNIT", "1"))
LOOP = os.environ.get("KICHAT_TEST_LOOP", "uvloop")
JS_DIR = Path(__file__).parent / "js"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    if LOOP == "uvloop":
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def js_clients_available() -> bool:
    return (
        shutil.which("node") is not None and (JS_DIR / "node_modules" / "socket.io-client").is_dir()
    )


def browser_missing() -> str | None:
    """What the ``browser`` tests lack (chromium, chromedriver, selenium, the socket.io-client
    the gateway serves), or None."""
    from kichat.web.pages import PACKAGED_CLIENT_DIR

    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (PACKAGED_CLIENT_DIR / "socket.io.min.js").is_file():
        return "socket.io-client for the pages is not installed (make assets)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = browser_missing()
    if missing is not None and any("browser" in item.keywords for item in items):
        if IN_CI:
            raise pytest.UsageError(f"CI: the browser tests cannot run: {missing}")
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=missing))
    if js_clients_available():
        return
    if IN_CI:
        raise pytest.UsageError("CI: tests/js/node_modules is missing; .ci/run must run `npm ci`")
    skip = pytest.mark.skip(
        reason="node or tests/js/node_modules missing (run: npm ci --prefix tests/js)"
    )
    for item in items:
        if "node" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List the screenshots the browser tests saved (tests/pages/browser_harness.py)."""
    harness = sys.modules.get("browser_harness")
    saved = getattr(harness, "SAVED", [])
    if saved:
        terminalreporter.section("screenshots (test artifacts)")
        for path in saved:
            terminalreporter.write_line(str(path))


async def eventually(
    predicate: Callable[[], bool], within: float = 5 * UNIT, what: str = ""
) -> None:
    """Poll ``predicate`` for state with no event to await (counters, the simulator's tables,
    another task's work), every 10 ms, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


class NodeScript:
    """A Node.js script from tests/js running as a child process.

    Scripts print one JSON object per line on stdout; :meth:`next` returns them in order.
    Stderr is kept for failure messages.
    """

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[dict[str, Any]] = []

    async def next(self, timeout: float = 10 * UNIT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no output within {timeout}s{await self._stderr()}"
            ) from None
        if not raw:
            raise AssertionError(
                f"{self.name}: exited ({self.proc.returncode}){await self._stderr()}"
            )
        msg: dict[str, Any] = json.loads(raw)
        self.lines.append(msg)
        return msg

    async def until(self, predicate: Any, timeout: float = 10 * UNIT) -> dict[str, Any]:
        """Read lines until ``predicate(line)`` is true; return that line."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.next(max(0.01, deadline - loop.time()))
            if predicate(msg):
                return msg

    async def first(self, predicate: Any, timeout: float = 10 * UNIT) -> dict[str, Any]:
        """The first line (already read or still to come) for which ``predicate`` is true."""
        for msg in self.lines:
            if predicate(msg):
                return msg
        return await self.until(predicate, timeout)

    def send(self, obj: dict[str, Any]) -> None:
        """Write one JSON command line to the script's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())

    async def _stderr(self) -> str:
        if self.proc.stderr is None:
            return ""
        try:
            # What is there already, up to 64 KiB: a script still running never reaches EOF.
            err = await asyncio.wait_for(self.proc.stderr.read(65536), 1)
        except TimeoutError:
            return ""
        return f"\n--- stderr ---\n{err.decode(errors='replace')}" if err else ""


@asynccontextmanager
async def node_script(
    script: str, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[NodeScript]:
    """Run ``tests/js/<script>`` with ``args``; kill it on exit."""
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(JS_DIR / script),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(JS_DIR),
        env={**os.environ, **(env or {})},
    )
    try:
        yield NodeScript(proc, script)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def run_python(args: Sequence[str], timeout: float = 30 * UNIT) -> tuple[int, str, str]:
    """Run ``python <args>`` with this interpreter; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()
