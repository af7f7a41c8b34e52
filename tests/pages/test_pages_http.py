"""The pages and the client script over plain HTTP: content types, caching, CSP, where the
script comes from, and the errors when something is missing or wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from kichat.config import load_settings
from kichat.errors import ConfigError
from kichat.http import Request
from kichat.web.pages import PACKAGED_CLIENT_DIR, ClientScript, Pages

from browser_harness import stack
from conftest import UNIT

needs_client = pytest.mark.skipif(
    not (PACKAGED_CLIENT_DIR / "socket.io.min.js").is_file(),
    reason="socket.io-client for the pages is not installed (make assets)",
)


def config_of(page: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="kichat-config">(.*?)</script>', page)
    assert match is not None
    loaded: dict[str, object] = json.loads(match.group(1))
    return loaded


async def test_pages_are_html_with_a_csp_and_revalidated_by_etag() -> None:
    async with stack({"pages.emote_url": "https://cdn.example/e/{id}.png"}) as s:
        for path, csp_extra in (
            ("/", "frame-ancestors 'none'"),
            ("/overlay/xqc?chatroomId=668", "img-src 'self' data: https://cdn.example"),
        ):
            resp = await s.get(path)
            assert resp.status_code == 200, path
            assert resp.headers["content-type"] == "text/html; charset=utf-8"
            csp = resp.headers["content-security-policy"]
            assert "default-src 'none'" in csp
            assert "script-src 'self'" in csp
            assert "connect-src 'self'" in csp
            assert csp_extra in csp
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["referrer-policy"] == "no-referrer"
            assert resp.headers["cache-control"] == "no-cache"
            etag = resp.headers["etag"]
            again = await s.get(path, headers={"If-None-Match": f'W/{etag}, "other"'})
            assert again.status_code == 304
            assert again.content == b""
            assert again.headers["etag"] == etag
            assert "content-length" not in again.headers


async def test_overlay_page_carries_its_channel_and_settings() -> None:
    async with stack() as s:
        page = (await s.get("/overlay/xQc")).text
        assert config_of(page) == {
            "root": "../",
            "version": "0.1.0",
            "channel": "xqc",  # validated and lower-cased like a subscribe
            "emoteUrl": "https://files.kick.com/emotes/{id}/fullsize",
            "socketioPath": "/socket.io/",
        }
        assert '<script src="../socket.io/socket.io.min.js" defer>' in page
        # Links stay relative, so a reverse proxy may serve the gateway under a path prefix.
        slash = (await s.get("/overlay/xqc/")).text
        assert config_of(slash)["root"] == "../../"
        assert '<link rel="stylesheet" href="../../static/overlay.css">' in slash
        status = (await s.get("/")).text
        assert config_of(status)["root"] == ""
        assert 'href="socket.io/socket.io.js"' in status


async def test_a_bad_channel_name_gets_a_400_page_that_echoes_nothing_as_html() -> None:
    async with stack() as s:
        resp = await s.get("/overlay/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        assert resp.status_code == 400
        assert resp.headers["content-type"] == "text/html; charset=utf-8"
        assert resp.headers["content-security-policy"] == "default-src 'none'"
        assert "<script" not in resp.text
        assert "channelName" in resp.text


def test_the_config_block_cannot_be_closed_by_a_value() -> None:
    pages = Pages(load_settings({}, env={}))
    request = Request("GET", "/overlay/x", {}, b"", "127.0.0.1")
    body = pages._page(request, "overlay", {"channel": "</script><script>alert(1)//&"}).body
    page = body.decode()
    assert page.count("</script>") == 4  # the config block's and the three scripts'
    assert config_of(page)["channel"] == "</script><script>alert(1)//&"


async def test_static_assets_and_unknown_names() -> None:
    async with stack() as s:
        for name, kind in (
            ("overlay.js", "text/javascript"),
            ("overlay-core.js", "text/javascript"),
            ("status.js", "text/javascript"),
            ("overlay.css", "text/css"),
            ("status.css", "text/css"),
        ):
            resp = await s.get(f"/static/{name}")
            assert resp.status_code == 200
            assert resp.headers["content-type"] == f"{kind}; charset=utf-8"
            assert resp.headers["etag"]
        for bad in ("/static/nope.js", "/static/..%2Fpages.py", "/static/overlay.html"):
            resp = await s.get(bad)
            assert resp.status_code == 404, bad
            assert resp.json()["error"]["code"] == "not_found"


@needs_client
async def test_the_client_script_is_served_before_engine_io_sees_the_path() -> None:
    async with stack() as s:
        for name, kind in (
            ("socket.io.js", "text/javascript"),
            ("socket.io.min.js", "text/javascript"),
            ("socket.io.esm.min.js", "text/javascript"),
            ("socket.io.min.js.map", "application/json"),
        ):
            resp = await s.get(f"/socket.io/{name}")
            assert resp.status_code == 200, name
            assert resp.headers["content-type"] == f"{kind}; charset=utf-8"
            assert resp.content == (PACKAGED_CLIENT_DIR / name).read_bytes()
        head = await s.get("/socket.io/socket.io.js")
        assert b"Socket.IO v4" in head.content[:200]
        cached = await s.get(
            "/socket.io/socket.io.js", headers={"If-None-Match": head.headers["etag"]}
        )
        assert cached.status_code == 304
        async with httpx.AsyncClient(base_url=s.url, timeout=10 * UNIT) as http:
            headed = await http.head("/socket.io/socket.io.js")
        assert headed.status_code == 200
        assert headed.headers["content-length"] == str(len(head.content))
        # Everything else under the path is still Engine.IO's.
        handshake = await s.get("/socket.io/?EIO=4&transport=polling")
        assert handshake.status_code == 200
        assert handshake.text.startswith('0{"sid"')
        assert (await s.get("/socket.io/socket.io.msgpack.min.js")).status_code == 400


@needs_client
async def test_the_client_script_follows_a_custom_socket_io_path() -> None:
    async with stack({"socketio.path": "/chat/"}) as s:
        assert (await s.get("/chat/socket.io.js")).status_code == 200
        assert (await s.get("/socket.io/socket.io.js")).status_code == 404
        page = (await s.get("/overlay/xqc")).text
        assert '<script src="../chat/socket.io.min.js" defer>' in page
        assert config_of(page)["socketioPath"] == "/chat/"


async def test_without_the_client_script_a_404_says_how_to_install_it(tmp_path: Path) -> None:
    async with stack() as s:
        s.app.pages.client = ClientScript(tmp_path)
        resp = await s.get("/socket.io/socket.io.js")
        assert resp.status_code == 404
        error = resp.json()["error"]
        assert error["code"] == "client_not_installed"
        assert "make assets" in error["message"]
        assert "pages.socketio_client_dir" in error["message"]
        # Installed later (npm while the gateway runs): served without a restart.
        (tmp_path / "socket.io.js").write_bytes(b"/* a client */")
        resp = await s.get("/socket.io/socket.io.js")
        assert resp.status_code == 200
        assert resp.content == b"/* a client */"


async def test_the_client_directory_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must be a directory holding socket\.io\.min\.js"):
        load_settings({"pages.socketio_client_dir": str(tmp_path)}, env={})
    (tmp_path / "socket.io.min.js").write_bytes(b"/* min */")
    async with stack({"pages.socketio_client_dir": str(tmp_path)}) as s:
        resp = await s.get("/socket.io/socket.io.min.js")
        assert resp.content == b"/* min */"


async def test_an_empty_emote_url_allows_no_image_host() -> None:
    async with stack({"pages.emote_url": ""}) as s:
        resp = await s.get("/overlay/xqc")
        assert resp.headers["content-security-policy"].endswith("img-src 'self' data:")
        assert config_of(resp.text)["emoteUrl"] == ""


async def test_pages_need_no_api_key_and_are_not_rate_limited() -> None:
    async with stack({"limits.api_keys": ["k1"], "limits.rest_per_minute": 2}) as s:
        for _ in range(5):
            assert (await s.get("/")).status_code == 200
            assert (await s.get("/overlay/xqc")).status_code == 200
            assert (await s.get("/static/status.js")).status_code == 200
        assert (await s.get("/stats")).status_code == 401  # what the pages call is guarded
        assert (await s.get("/stats", headers={"X-API-Key": "k1"})).status_code == 200


async def test_stats_has_version_and_uptime() -> None:
    async with stack() as s:
        stats = (await s.get("/stats")).json()
    assert stats["version"] == "0.1.0"
    assert 0 <= stats["uptime_seconds"] < 600
    assert stats["relay"]["events_in"] >= 0
    assert "cluster" not in stats  # the status page shows a cluster section only if present
