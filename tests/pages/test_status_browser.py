"""The status page (/) in a real Chromium against the gateway on the Kick simulator: live
numbers from /stats and /readyz, the events/s chart, and the overlay URL builder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import socketio

from browser_harness import Browser, chromium, message, stack
from conftest import UNIT

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Browser]:
    yield browser
    await browser.reset()


async def text(page: Browser, element_id: str) -> str:
    return str(
        await page.js("return document.getElementById(arguments[0]).textContent", element_id)
    )


async def subscriber(url: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, transports=["websocket"], auth={"recovery": False})
    reply = await client.call(
        "subscribe", {"channelName": "xqc", "chatroomId": "668"}, timeout=10 * UNIT
    )
    assert reply["ok"], reply
    return client


async def test_status_page_shows_live_numbers_and_a_chart(page: Browser) -> None:
    async with stack() as s:
        client = await subscriber(s.url)
        try:
            await page.get(s.url + "/")
            await page.wait_state("live")
            await page.wait(
                "return document.getElementById('connections').textContent === '1'",
                what="one connection",
            )
            assert await text(page, "chatrooms") == "1"
            assert await text(page, "ready") == "ready"
            assert await text(page, "upstream") == "1/1 up"
            assert await text(page, "version") == "v0.1.0"
            assert await page.js("return document.getElementById('cluster').hidden") is True
            top = await page.js(
                "return [...document.querySelectorAll('#top-rows td')].map(t => t.textContent)"
            )
            assert top[:3] == ["xqc", "668", "1"]

            # Events flow: the rate goes above zero and the chart draws it.
            s.sim.start_traffic(20, ["xqc"], "chat")
            await page.wait(
                "return parseFloat(document.getElementById('events-rate').textContent) > 0",
                what="a non-zero event rate",
                within=15 * UNIT,
            )
            points = await page.wait(
                "const p = document.querySelector('#chart polyline.line-in').getAttribute('points');"
                "return p.split(' ').length >= 3 && p",
                what="three points on the chart",
                within=20 * UNIT,
            )
            ys = [float(point.split(",")[1]) for point in points.split()]
            assert min(ys) < 140 - 10  # above the zero line (y=130): a rate was drawn
            await s.sim.stop_traffic()
            await page.screenshot("status-page")
        finally:
            await client.disconnect()


async def test_not_ready_and_unreachable_are_shown(page: Browser) -> None:
    async with stack() as s:
        await page.get(s.url + "/")
        await page.wait_state("live")
        await s.sim.close_connections(4001, "App key not in this cluster")
        await page.wait(
            "return document.getElementById('ready').textContent.startsWith('not ready: upstream')",
            what="not ready",
            within=15 * UNIT,
        )
        await s.app.close()
        await page.wait_state("unreachable", within=15 * UNIT)
        assert "does not answer" in await text(page, "banner")


async def test_a_cluster_section_appears_only_when_stats_has_one(page: Browser) -> None:
    async with stack() as s:
        plain = s.app.ops.snapshot
        s.app.ops.snapshot = lambda: {**plain(), "cluster": {"redis": "connected", "nodes": 3}}  # type: ignore[method-assign]
        await page.get(s.url + "/")
        await page.wait("return !document.getElementById('cluster').hidden", what="cluster shown")
        items = await page.js(
            "return [...document.querySelectorAll('#cluster-items > *')].map(e => e.textContent)"
        )
        assert items == ["redis", "connected", "nodes", "3"]


async def fill(page: Browser, values: dict[str, Any]) -> None:
    await page.js(
        """const form = document.getElementById('overlay-form');
        for (const [name, value] of Object.entries(arguments[0])) {
          const field = form.elements[name];
          if (field.type === 'checkbox') field.checked = value; else field.value = value;
        }
        form.dispatchEvent(new Event('input'));""",
        values,
    )


async def test_the_overlay_url_form_builds_a_url_that_works(page: Browser) -> None:
    async with stack() as s:
        await page.get(s.url + "/")
        await fill(page, {"channel": "x q"})
        assert "channel name" in await text(page, "form-error")
        assert await page.js("return document.getElementById('preview').hidden") is True

        await fill(page, {"channel": "xQc"})
        await page.js("document.getElementById('lookup').click()")
        await page.wait(
            "return document.querySelector('[name=chatroomId]').value === '668'",
            what="the chatroom id looked up",
        )
        await fill(
            page,
            {"theme": "dark", "fontSize": "24", "hideCommands": True, "bots": "a, b ,"},
        )
        url = await page.js("return document.getElementById('overlay-url').value")
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == s.url + "/overlay/xqc"
        assert parse_qs(parts.query) == {
            "chatroomId": ["668"],
            "theme": ["dark"],
            "fontSize": ["24"],
            "hideCommands": ["1"],
            "bots": ["a,b"],
        }
        assert await page.js("return document.getElementById('preview').href") == url
        await page.screenshot("status-overlay-form")

        await page.get(url)  # the preview link's target
        await page.wait_state("live")
        await s.chat(message("m1", "viewer", "via the built URL"))
        await page.wait(
            "return document.querySelector('#chat .msg') !== null", what="chat in the overlay"
        )

        await page.get(s.url + "/")
        await fill(page, {"channel": "nosuchchannel"})
        await page.js("document.getElementById('lookup').click()")
        await page.wait(
            "return document.getElementById('form-error').textContent.includes('no channel named')",
            what="lookup failure shown",
        )
