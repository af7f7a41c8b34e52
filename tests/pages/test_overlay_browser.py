"""The chat overlay (/overlay/{channelName}) in a real Chromium, against the gateway on the Kick
simulator: the page loads socket.io-client from the gateway, subscribes, and renders what Kick
sends, including what Kick sends to take messages away."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kichat.web.pages import ClientScript

from browser_harness import Browser, chromium, closed_port, message, stack
from conftest import UNIT

pytestmark = pytest.mark.browser

DELETED = "App\\Events\\MessageDeletedEvent"
BANNED = "App\\Events\\UserBannedEvent"
CLEARED = "App\\Events\\ChatroomClearEvent"
PINNED = "App\\Events\\PinnedMessageCreatedEvent"
UNPINNED = "App\\Events\\PinnedMessageDeletedEvent"
ALL_BADGES = [
    {"type": "broadcaster", "text": "Broadcaster"},
    {"type": "moderator", "text": "Moderator"},
    {"type": "vip", "text": "VIP"},
    {"type": "og", "text": "OG"},
    {"type": "founder", "text": "Founder"},
    {"type": "subscriber", "text": "Subscriber", "count": 12},
    {"type": "verified", "text": "Verified channel"},
    {"type": "new_kind", "text": "Something new"},
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Browser]:
    yield browser
    await browser.reset()


def refused_emotes() -> dict[str, object]:
    """Emote images from a port that refuses connections: how an offline machine sees Kick."""
    return {"pages.emote_url": f"http://127.0.0.1:{closed_port()}/emotes/{{id}}"}


async def open_live(page: Browser, url: str) -> None:
    await page.get(url)
    await page.wait_state("live")


def ids_script() -> str:
    return "return [...document.querySelectorAll('#chat .msg')].map(e => e.dataset.id)"


async def wait_ids(page: Browser, expected: list[str]) -> None:
    await page.wait(
        f"const ids = (function () {{ {ids_script()} }})();"
        "return JSON.stringify(ids) === JSON.stringify(arguments[0]);",
        expected,
        what=f"messages {expected}",
    )


async def test_messages_show_colours_badges_and_emote_names_when_images_fail(
    page: Browser,
) -> None:
    async with stack(refused_emotes()) as s:
        await open_live(page, f"{s.url}/overlay/xqc?chatroomId=668&theme=dark")
        await s.chat(
            message(
                "m1",
                "PixelMoth",
                "gg [emote:37226:KEKW] nice",
                badges=ALL_BADGES,
                color="#75FD46",
            )
        )
        await page.wait(
            "return document.querySelector('#chat .msg .emote-text')", what="emote fallback"
        )
        row = await page.js(
            """const m = document.querySelector('#chat .msg');
            const user = m.querySelector('.user');
            return {
              user: user.textContent,
              colour: getComputedStyle(user).color,
              badges: [...m.querySelectorAll('.badge')].map(b => [b.textContent, b.title, b.className]),
              content: m.querySelector('.content').textContent,
              images: m.querySelectorAll('img').length,
            };"""
        )
        assert row["user"] == "PixelMoth"
        assert row["colour"] == "rgb(117, 253, 70)"
        assert [b[0] for b in row["badges"]] == [
            "HOST", "MOD", "VIP", "OG", "FOUNDER", "SUB 12", "\u2713", "Something new",
        ]  # fmt: skip
        assert row["badges"][5][1] == "Subscriber (12)"
        assert "badge-subscriber" in row["badges"][5][2]
        assert row["content"] == "gg KEKW nice"
        assert row["images"] == 0  # the broken image was replaced by the name

        # A reply shows what it answers, emotes as names.
        await s.chat(
            message(
                "m2",
                "quietfern",
                "same lol",
                user_id=2,
                type="reply",
                metadata={
                    "original_sender": {"id": 1, "username": "PixelMoth"},
                    "original_message": {"id": "m1", "content": "gg [emote:37226:KEKW] nice"},
                },
            )
        )
        await wait_ids(page, ["m1", "m2"])
        assert await page.texts("#chat .msg .reply") == ["\u21aa @PixelMoth: gg KEKW nice"]
        await page.screenshot("overlay-dark")
        problems = [
            e for e in await page.console() if "Content Security Policy" in e.get("message", "")
        ]
        assert problems == []


async def test_hostile_chat_stays_text(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        await open_live(page, f"{s.url}/overlay/xqc?chatroomId=668")
        hostile = (
            '<img src=x onerror="document.title=\'pwned\'"><script>document.title="x"</script>'
        )
        await s.chat(
            message(
                "h1",
                "<b>bold</b>",
                hostile + " [emote:1:<i>x</i>] [emote:abc:n]",
                color="red; background: url(http://127.0.0.1:9/)",
                badges=[{"type": "<script>", "text": "<b>t</b>"}],
            )
        )
        await wait_ids(page, ["h1"])
        row = await page.js(
            """const m = document.querySelector('#chat .msg');
            return {
              html: m.innerHTML.includes('<img src="x"') || m.innerHTML.includes('<script'),
              elements: [...m.querySelectorAll('*')].map(e => e.tagName),
              user: m.querySelector('.user').textContent,
              colour: m.querySelector('.user').style.color,
              content: m.querySelector('.content').textContent,
              title: document.title,
            };"""
        )
        assert row["html"] is False
        assert set(row["elements"]) <= {"SPAN", "DIV"}
        assert row["user"] == "<b>bold</b>"
        assert row["colour"] == ""  # not a #rrggbb colour: not applied
        assert row["content"].startswith(hostile)
        assert row["content"].endswith(" [emote:abc:n]")  # not an emote: kept as text
        assert row["title"] == "kichat chat overlay"


async def test_emote_images_load_from_the_configured_url(page: Browser) -> None:
    async with image_server() as images, stack({"pages.emote_url": images.url + "/e/{id}"}) as s:
        await open_live(page, f"{s.url}/overlay/xqc?chatroomId=668&token=secret")
        await s.chat(message("m1", "PixelMoth", "[emote:37226:KEKW]"))
        size = await page.wait(
            "const i = document.querySelector('#chat img.emote');"
            "return i && i.complete && i.naturalWidth",
            what="emote image",
        )
        assert size == 1
        assert await page.js("return document.querySelector('#chat img.emote').alt") == "KEKW"
        assert images.requests == [("/e/37226", None)]  # no Referer: the token never leaks


async def test_deletions_bans_and_clears_remove_messages(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        await open_live(page, f"{s.url}/overlay/xqc?chatroomId=668")
        await s.chat(message("a1", "alice", "hello", user_id=10))
        await s.chat(message("b1", "bob", "spam", user_id=20))
        await s.chat(message("a2", "alice", "again", user_id=10))
        await s.chat(message("c1", "carol", "hi", user_id=30))
        await wait_ids(page, ["a1", "b1", "a2", "c1"])

        await s.publish(DELETED, {"id": "ev1", "message": {"id": "b1"}, "aiModerated": False})
        await wait_ids(page, ["a1", "a2", "c1"])

        ban = {
            "id": "ev2",
            "user": {"id": 10, "username": "alice", "slug": "alice"},
            "banned_by": {"id": 0, "username": "ModAria", "slug": "modaria"},
            "permanent": False,
            "duration": 10,
        }
        await s.publish(BANNED, ban)
        await wait_ids(page, ["c1"])

        # The 2023 shape names the user without an id: matched by username, any case.
        await s.chat(message("d1", "Dave", "yo", user_id=40))
        await wait_ids(page, ["c1", "d1"])
        await s.publish(BANNED, {"id": "ev3", "user": {"username": "dave"}})
        await wait_ids(page, ["c1"])

        await s.chat(message("e1", "erin", "hey", user_id=50))
        await wait_ids(page, ["c1", "e1"])
        await page.screenshot("overlay-before-clear")
        await s.publish(CLEARED, {"id": "ev4"})
        await wait_ids(page, [])
        await s.chat(message("f1", "frank", "after the clear", user_id=60))
        await wait_ids(page, ["f1"])


async def test_pinned_message_shows_and_goes(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        await open_live(page, f"{s.url}/overlay/xqc?chatroomId=668")
        pinned = {
            "message": message(
                "p1",
                "HostName",
                "giveaway at 9pm [emote:1:PogU]",
                badges=[{"type": "broadcaster", "text": "Broadcaster"}],
            ),
            "duration": "1200",
            "pinnedBy": {"id": 8123456, "username": "ModAria", "slug": "modaria"},
        }
        await s.publish(PINNED, pinned)
        await page.wait("return !document.getElementById('pinned').hidden", what="pinned shown")
        text = await page.js("return document.getElementById('pinned').textContent")
        assert "by ModAria" in text
        assert "HostName" in text
        await page.wait(
            "return document.getElementById('pinned').textContent.includes('giveaway at 9pm PogU')",
            what="pinned emote as its name",
        )
        await page.screenshot("overlay-pinned")
        await s.publish(UNPINNED, [])
        await page.wait("return document.getElementById('pinned').hidden", what="pinned gone")


async def test_options_hide_commands_and_bots_and_keep_the_last_messages(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        url = (
            f"{s.url}/overlay/xqc?chatroomId=668&theme=light&fontSize=30&limit=3"
            "&hideCommands=1&hideBots=1&bots=Annoying,%20other"
        )
        await open_live(page, url)
        await s.chat(message("cmd", "viewer", "  !uptime", user_id=1))
        await s.chat(message("bot", "BotRix", "Follow the channel!", user_id=2))
        await s.chat(message("ann", "annoying", "hello", user_id=3))
        for n in range(5):
            await s.chat(message(f"n{n}", "viewer", f"message {n}", user_id=1))
        await wait_ids(page, ["n2", "n3", "n4"])
        style = await page.js(
            "const s = getComputedStyle(document.documentElement);"
            "return [s.fontSize, getComputedStyle(document.body).backgroundColor]"
        )
        assert style == ["30px", "rgb(255, 255, 255)"]
        await page.screenshot("overlay-light-options")


async def test_transparent_by_default_and_fade_out(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        await open_live(page, f"{s.url}/overlay/xqc?chatroomId=668&fade=1&badges=0")
        background = await page.js("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgba(0, 0, 0, 0)"
        # Record each message as it is added: it may be gone before a poll would see it.
        await page.js(
            """window.added = [];
            new MutationObserver((changes) => {
              for (const c of changes) for (const n of c.addedNodes) {
                window.added.push([n.dataset.id, getComputedStyle(n.querySelector('.badges')).display]);
              }
            }).observe(document.getElementById('chat'), { childList: true });"""
        )
        await s.chat(message("f1", "viewer", "soon gone", badges=ALL_BADGES))
        added = await page.wait("return window.added.length && window.added", what="added")
        assert added == [["f1", "none"]]  # shown, without its badges
        await wait_ids(page, [])  # then faded out after 1 s


async def test_chatroom_id_is_looked_up_and_a_failed_lookup_is_shown(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        await open_live(page, f"{s.url}/overlay/xqc")
        await s.chat(message("m1", "viewer", "found by slug"))
        await wait_ids(page, ["m1"])

        await page.get(f"{s.url}/overlay/nosuchchannel")
        await page.wait_state("lookup-failed")
        notice = await page.js("return document.getElementById('notice').textContent")
        assert 'Kick has no channel named "nosuchchannel"' in notice
        assert "?chatroomId=" in notice
        await page.screenshot("overlay-lookup-failed")

        s.sim.fail_rest("xqcow", 500, None, 0.0)
        s.sim.add_channel("xqcow", None, None, False)
        await page.get(f"{s.url}/overlay/xqcow")
        await page.wait_state("lookup-failed")
        notice = await page.js("return document.getElementById('notice').textContent")
        assert "HTTP 502" in notice, notice


async def test_with_api_keys_the_token_in_the_url_is_used(page: Browser) -> None:
    async with stack({**refused_emotes(), "limits.api_keys": ["k1"]}) as s:
        # The lookup (X-API-Key) and the Socket.IO connection (auth.token) both use it.
        await open_live(page, f"{s.url}/overlay/xqc?token=k1")
        await s.chat(message("m1", "viewer", "with a key"))
        await wait_ids(page, ["m1"])

        await page.get(f"{s.url}/overlay/xqc?chatroomId=668&token=wrong")
        await page.wait_state("refused")
        notice = await page.js("return document.getElementById('notice').textContent")
        assert notice.startswith("The gateway refused the connection"), notice


async def test_a_refused_subscription_is_shown(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        s.sim.fail_subscriptions("chatrooms.668*", "error", None)
        await page.get(f"{s.url}/overlay/xqc?chatroomId=668")
        await page.wait_state("refused", within=20 * UNIT)
        notice = await page.js("return document.getElementById('notice').textContent")
        assert notice.startswith('The gateway refused chat of "xqc"'), notice


async def test_the_overlay_survives_a_gateway_restart(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        await open_live(page, f"{s.url}/overlay/xqc?chatroomId=668")
        await s.chat(message("before", "viewer", "before the restart"))
        await wait_ids(page, ["before"])
        await s.restart()  # a new process: no session to recover, the page subscribes again
        await s.subscribed()
        await page.wait_state("live", within=20 * UNIT)
        assert await page.js("return window.kichatSocket.recovered") is False
        await s.chat(message("after", "viewer", "after the restart"))
        await wait_ids(page, ["before", "after"])


async def test_the_overlay_recovers_what_it_missed_in_a_blip(page: Browser) -> None:
    async with stack(refused_emotes()) as s:
        await open_live(page, f"{s.url}/overlay/xqc?chatroomId=668")
        await s.chat(message("m1", "viewer", "one"))
        await wait_ids(page, ["m1"])
        # The transport drops; events published meanwhile are replayed on reconnection.
        await page.js("window.kichatSocket.io.engine.close()")
        await s.chat(message("m2", "viewer", "two"))
        await s.chat(message("m3", "viewer", "three"))
        await wait_ids(page, ["m1", "m2", "m3"])
        await page.wait("return window.kichatSocket.recovered === true", what="recovered")


async def test_without_the_client_script_the_page_says_how_to_install_it(
    page: Browser, tmp_path: Path
) -> None:
    async with stack() as s:
        s.app.pages.client = ClientScript(tmp_path)  # as if `make assets` never ran
        await page.get(f"{s.url}/overlay/xqc?chatroomId=668")
        await page.wait_state("no-client")
        notice = await page.js("return document.getElementById('notice').textContent")
        assert "make assets" in notice


# -- an emote image server -------------------------------------------------------------------------


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    pixels = zlib.compress(b"\x00\x53\xfc\x18\xff")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


class _Images:
    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        self.requests.append((head[0].split(" ")[1], headers.get("referer")))
        body = _png_1x1()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()


@asynccontextmanager
async def image_server() -> AsyncIterator[_Images]:
    images = _Images()
    server = await asyncio.start_server(images.handle, "127.0.0.1", 0)
    images.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield images
    finally:
        server.close()
        await server.wait_closed()
