"""``python -m kichat ...`` as real processes, for the tests of the command and of shutdown.

::

    async with kichat_process("serve", "--port", "0", ...) as proc:
        line = await proc.line("err", LISTENING.search, 20 * UNIT)
        assert await proc.terminate() == 0
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from conftest import UNIT

LISTENING = re.compile(r"kichat listening on (http://127\.0\.0\.1:\d+)")


def kichat_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # KICHAT_* from the developer's shell must not change what the tests see.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICHAT_")}
    env.update(extra or {})
    return env


async def run_kichat(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30 * UNIT
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kichat", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=kichat_env(env),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Process:
    """A long-running ``python -m kichat ...``; its output lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = asyncio.Event()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._read(proc.stdout, self.out)),
            asyncio.ensure_future(self._read(proc.stderr, self.err)),
        ]

    async def _read(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        while raw := await stream.readline():
            lines.append(raw.decode().rstrip("\n"))
            self._changed.set()
        self._changed.set()

    async def line(self, where: str, predicate: Callable[[str], bool], within: float) -> str:
        lines = self.out if where == "out" else self.err
        try:
            async with asyncio.timeout(within):
                while True:
                    for text in lines:
                        if predicate(text):
                            return text
                    if self.proc.returncode is not None and all(r.done() for r in self._readers):
                        break
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        raise AssertionError(f"no matching line on std{where}; stderr:\n" + "\n".join(self.err))

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 15 * UNIT)
        await asyncio.wait(self._readers, timeout=5 * UNIT)
        return code


@asynccontextmanager
async def kichat_process(*args: str) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kichat", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=kichat_env(),
    )  # fmt: skip
    process = Process(proc)
    try:
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for reader in process._readers:
            reader.cancel()
