"""Debian's headless Chromium, driven by Selenium through chromedriver, against a real gateway on
the Kick simulator. For the tests of the pages the gateway serves and of examples/browser.

Selenium blocks, so each of its calls runs in a worker thread: the gateway and the simulator go
on serving on the test's event loop meanwhile. Nothing is downloaded at run time: the browser
and its driver are Debian's (/usr/bin/chromium, /usr/bin/chromedriver), given to Selenium by
path, so Selenium Manager never runs.

Chromium runs as root in CI, hence ``--no-sandbox``; the background-networking flags keep it
from calling Google's services, which the closed network refuses.

Screenshots go to ``test-artifacts/`` at the repository root (gitignored); their paths are
listed at the end of the pytest run.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from kichat.app import App
from kichat.config import load_settings
from kichat.sim import KickSimulator

from conftest import UNIT, eventually

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SAVED: list[Path] = []  # screenshots of this run, listed by tests/conftest.py at the end
CHAT = "App\\Events\\ChatMessageEvent"
XQC_CHAT = "chatrooms.668.v2"  # the simulator's xqc has chatroom 668
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,800",
)
T = TypeVar("T")


class Browser:
    """One Chromium; async methods run Selenium's blocking calls in a worker thread."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        await self._call(self.driver.get, url)

    async def js(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body: ``return ...``) in the page."""
        return await self._call(self.driver.execute_script, script, *args)

    async def wait(self, script: str, *args: Any, what: str = "", within: float = 10 * UNIT) -> Any:
        """Run ``script`` every 50 ms until it returns something truthy; return that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            value = await self.js(script, *args)
            if value:
                return value
            if loop.time() > deadline:
                logs = "\n".join(str(e) for e in await self.console())
                raise AssertionError(
                    f"timed out after {within:g} s waiting for {what or script}\n"
                    f"page state: {await self.state()}\nconsole:\n{logs}"
                )
            await asyncio.sleep(0.05)

    async def state(self) -> str | None:
        value = await self.js("return document.documentElement.dataset.state || null")
        return str(value) if value is not None else None

    async def wait_state(self, state: str, within: float = 10 * UNIT) -> None:
        await self.wait(
            "return document.documentElement.dataset.state === arguments[0]",
            state,
            what=f"page state {state!r}",
            within=within,
        )

    async def texts(self, selector: str) -> list[str]:
        result = await self.js(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)",
            selector,
        )
        return [str(t) for t in result]

    async def console(self) -> list[dict[str, Any]]:
        """Browser console entries since the last call (errors, CSP violations, ...)."""
        entries: list[dict[str, Any]] = await self._call(self.driver.get_log, "browser")
        return entries

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        assert await self._call(self.driver.save_screenshot, str(path)), "no screenshot"
        SAVED.append(path)
        print(f"screenshot: {path}")  # shown with -s and on failure
        return path

    async def reset(self) -> None:
        """Leave the page (closing its sockets) and forget its console output."""
        await self.get("about:blank")
        await self.console()


@contextmanager
def chromium() -> Iterator[Browser]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="kichat-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30 * UNIT)
    driver.set_script_timeout(30 * UNIT)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- the gateway on the simulator ----------------------------------------------------------------

BASE_SETTINGS: dict[str, object] = {
    "server.host": "127.0.0.1",
    "server.port": 0,
    "server.shutdown_timeout": 1.0,
    "pusher.backoff_initial": 0.05,
    "pusher.backoff_max": 0.2,
    "kick_api.retries": 0,
    "relay.linger": 0.1 * UNIT,
    "limits.connections_per_ip": 1000,
    "limits.subscribe_rate": 1000,
}


@dataclass
class Stack:
    sim: KickSimulator
    overrides: dict[str, object]
    app: App = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"

    def settings(self, port: int = 0) -> Any:
        values = {
            **BASE_SETTINGS,
            "pusher.url": self.sim.pusher_url,
            "kick_api.url": self.sim.api_url,
            **self.overrides,
            "server.port": port,
        }
        return load_settings(values, env={})

    async def start(self, port: int = 0) -> None:
        self.app = App(self.settings(port))
        await self.app.start()
        await eventually(lambda: self.app.pool.status().connected == 1, what="upstream")

    async def restart(self) -> None:
        """Stop the gateway (clients see their connection close) and start a new one on the
        same port: nothing of the old one's sessions survives."""
        port = self.app.port
        await self.app.close()
        await self.start(port)

    async def subscribed(self, count: int = 1) -> None:
        """Wait until this gateway has acknowledged ``count`` subscriptions (after a restart,
        a page's state may still say live from before: this is the gateway's own word)."""
        await eventually(
            lambda: self.app.service.stats.subscribes["ok"] >= count,
            within=20 * UNIT,
            what=f"{count} subscription(s) acknowledged",
        )

    async def chat(self, data: dict[str, Any]) -> None:
        """Publish a ChatMessageEvent on xqc's chatroom and check the gateway has a subscriber."""
        assert await self.sim.publish(XQC_CHAT, CHAT, data) >= 1, "nobody subscribed upstream"

    async def publish(self, event: str, data: Any) -> None:
        assert await self.sim.publish(XQC_CHAT, event, data) >= 1, "nobody subscribed upstream"

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10 * UNIT, trust_env=False) as c:
            return await c.get(path, **kwargs)


@asynccontextmanager
async def stack(overrides: dict[str, object] | None = None) -> AsyncIterator[Stack]:
    async with KickSimulator(port=0, seed=11) as sim:
        s = Stack(sim, dict(overrides or {}))
        await s.start()
        try:
            yield s
        finally:
            await s.app.close()


def message(
    msg_id: str,
    username: str,
    content: str,
    *,
    user_id: int = 1,
    color: str = "#75FD46",
    badges: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ChatMessageEvent payload in Kick's shape (see src/kichat/sim/data/ChatMessageEvent.json)."""
    return {
        "id": msg_id,
        "chatroom_id": 668,
        "content": content,
        "type": "message",
        "created_at": "2026-03-02T19:04:11+00:00",
        "sender": {
            "id": user_id,
            "username": username,
            "slug": username.lower(),
            "identity": {"color": color, "badges": badges or []},
        },
        "metadata": {"message_ref": "1772478251093"},
        **extra,
    }


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
