"""examples/browser/index.html, opened from disk in Chromium as a user would, against the gateway
on the Kick simulator: it loads socket.io-client from the gateway and prints chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from browser_harness import Browser, chromium, closed_port, message, stack
from conftest import UNIT

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "browser" / "index.html"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


async def test_the_browser_example_prints_chat(browser: Browser) -> None:
    async with stack() as s:
        query = urlencode({"gateway": s.url, "channel": "xqc", "chatroomId": "668"})
        await browser.get(f"{EXAMPLE.as_uri()}?{query}")
        await browser.wait(
            "return document.getElementById('status').textContent === 'subscribed to xqc'",
            what="subscribed",
        )
        await s.chat(message("m1", "PixelMoth", "gg <b>not bold</b>"))
        await s.chat(message("m2", "quietfern", "same lol"))
        await browser.wait(
            "return document.querySelectorAll('#chat li').length === 2", what="two lines"
        )
        assert await browser.texts("#chat li") == [
            "xqc | PixelMoth: gg <b>not bold</b>",
            "xqc | quietfern: same lol",
        ]
        await browser.screenshot("example-browser")

        # A gateway restart: the page subscribes again and chat goes on.
        await s.restart()
        await s.subscribed()
        await browser.wait(
            "return document.getElementById('status').textContent === 'subscribed to xqc'",
            what="subscribed again",
            within=20 * UNIT,
        )
        await s.chat(message("m3", "PixelMoth", "back"))
        await browser.wait(
            "return document.querySelectorAll('#chat li').length === 3", what="a third line"
        )
        await browser.reset()


async def test_the_browser_example_says_when_the_gateway_is_not_there(browser: Browser) -> None:
    await browser.get(f"{EXAMPLE.as_uri()}?gateway=http://127.0.0.1:{closed_port()}")
    await browser.wait(
        "return document.getElementById('status').textContent.startsWith('cannot load')",
        what="the error",
    )
