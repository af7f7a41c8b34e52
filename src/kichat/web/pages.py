"""The gateway's own pages, and the Socket.IO client script browsers load from it.

* ``GET /``: a status page (connections, rooms, upstream state, events/s) that polls ``/stats``
  and ``/readyz``, with a form that builds overlay URLs.
* ``GET /overlay/{channelName}``: a chat overlay for OBS browser sources and browsers.
* ``GET /static/{name}``: their CSS and JavaScript.
* ``GET <socketio.path>socket.io.js`` (and ``.min.js``, ``.esm.min.js``, ``.map``s): the npm
  package socket.io-client's ``dist/`` files, as the reference Socket.IO server serves them.

The pages are ordinary clients of the gateway: plain HTML, CSS and JavaScript files shipped in
the package (``kichat/web/static``), no build step. Everything is served from memory with an
``ETag`` (``If-None-Match`` gets 304), ``Cache-Control: no-cache`` (browsers revalidate, so an
upgrade shows at once) and a Content-Security-Policy that allows scripts and styles from the
gateway only: chat is hostile input, and the overlay's script never parses it as HTML.

socket.io-client is third-party code, so it is not in the repository: ``make assets`` runs
``npm ci`` in ``kichat/web/assets`` (a wheel built after that carries the files), or
``pages.socketio_client_dir`` names another copy's ``dist/``. Without either, the script's URL
answers a 404 JSON error that says how to install it, and the overlay page says so too.
"""

from __future__ import annotations

import hashlib
import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import orjson

from kichat import __version__
from kichat.errors import ClientInputError
from kichat.http import Request, Response
from kichat.web.rest import slug_param
from kichat.web.router import Route, RouteHandler, Router

if TYPE_CHECKING:
    from kichat.config import Settings

log = logging.getLogger("kichat.web")

STATIC_DIR: Final = Path(__file__).parent / "static"
PACKAGED_CLIENT_DIR: Final = Path(__file__).parent / "assets/node_modules/socket.io-client/dist"
CLIENT_FILES: Final = ("socket.io.js", "socket.io.min.js", "socket.io.esm.min.js")
INSTALL_HINT: Final = (
    "socket.io-client is not installed on this gateway: run `make assets` in a clone of kichat "
    "(npm ci --prefix src/kichat/web/assets), or `npm install socket.io-client@4` anywhere and "
    "set pages.socketio_client_dir (KICHAT_PAGES_SOCKETIO_CLIENT_DIR) to its "
    "node_modules/socket.io-client/dist"
)

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".map": "application/json; charset=utf-8",
}
_COMMON_HEADERS: Final = (
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    # Overlay URLs may carry an API key (?token=): never leak them to emote image hosts.
    ("Referrer-Policy", "no-referrer"),
)
_CSP_BASE: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> Asset:
        return cls(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class ClientScript:
    """socket.io-client's ``dist/`` files, read on first request and kept in memory. A missing
    install is looked for again on each request, so ``make assets`` works without a restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, Asset] = {}

    def get(self, name: str) -> Asset | None:
        asset = self._cache.get(name)
        if asset is None:
            try:
                body = (self.directory / name).read_bytes()
            except OSError:
                return None
            asset = self._cache[name] = Asset.of(body, _TYPES[Path(name).suffix])
        return asset


class Pages:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        pages = settings.pages
        self.client = ClientScript(
            Path(pages.socketio_client_dir) if pages.socketio_client_dir else PACKAGED_CLIENT_DIR
        )
        self.static = {
            path.name: Asset.of(path.read_bytes(), _TYPES[path.suffix])
            for path in sorted(STATIC_DIR.iterdir())
            if path.suffix in (".css", ".js")
        }
        self.templates = {
            name: (STATIC_DIR / f"{name}.html").read_text("utf-8") for name in ("status", "overlay")
        }
        emote_origin = _origin(pages.emote_url)
        self.csp = {
            "status": f"{_CSP_BASE}; img-src 'self' data:; frame-ancestors 'none'",
            # Embedding is allowed: streaming tools show overlays in frames.
            "overlay": f"{_CSP_BASE}; img-src 'self' data: {emote_origin}".rstrip(),
        }
        sio = settings.socketio.path
        self.client_base = sio.rstrip("/") + "/"

    def install(self, router: Router) -> None:
        router.add(_route("/", "page_status", self.status_page, "Status page (HTML)"))
        router.add(
            _route("/overlay/{channelName}", "page_overlay", self.overlay_page,
                   "Chat overlay for OBS and browsers (HTML; options in the query string)")
        )  # fmt: skip
        router.add(_route("/static/{name}", "static", self.static_file, "Page assets", False))
        for name in CLIENT_FILES:
            for suffix in ("", ".map"):
                listed = name == "socket.io.js" and not suffix
                router.add(
                    _route(self.client_base + name + suffix, "socketio_client",
                           self.client_file, "socket.io-client for browsers", listed)
                )  # fmt: skip

    # -- handlers --------------------------------------------------------------------------------

    async def status_page(self, request: Request, params: dict[str, str]) -> Response:
        return self._page(request, "status", {})

    async def overlay_page(self, request: Request, params: dict[str, str]) -> Response:
        try:
            slug = slug_param(params["channelName"])
        except ClientInputError as exc:
            return _html_error(400, exc.message)
        return self._page(
            request,
            "overlay",
            {
                "channel": slug,
                "emoteUrl": self.settings.pages.emote_url,
                "socketioPath": self.settings.socketio.path,
            },
        )

    async def static_file(self, request: Request, params: dict[str, str]) -> Response:
        asset = self.static.get(params["name"])
        if asset is None:
            return Response.error(404, "not_found", "no such page asset")
        return _serve(request, asset)

    async def client_file(self, request: Request, params: dict[str, str]) -> Response:
        name = request.path[len(self.client_base) :]
        asset = self.client.get(name)
        if asset is None:
            return Response.error(404, "client_not_installed", INSTALL_HINT)
        return _serve(request, asset)

    # -- helpers ---------------------------------------------------------------------------------

    def _page(self, request: Request, name: str, config: dict[str, object]) -> Response:
        # Relative links keep the pages working behind a reverse proxy that adds a path prefix.
        root = "../" * (request.path.count("/") - 1)
        config = {"root": root, "version": __version__, **config}
        # JSON inside <script type="application/json">: "<" escaped so no value can close it.
        blob = orjson.dumps(config).decode().replace("<", "\\u003c").replace(">", "\\u003e")
        client = root + self.client_base.lstrip("/")
        text = (
            self.templates[name]
            .replace("{{root}}", html.escape(root))
            .replace("{{client}}", html.escape(client))
            .replace("{{config}}", blob.replace("&", "\\u0026"))
        )
        asset = Asset.of(text.encode("utf-8"), _TYPES[".html"])
        return _serve(request, asset, [("Content-Security-Policy", self.csp[name])])


def _route(
    pattern: str, name: str, handler: RouteHandler, summary: str, listed: bool = True
) -> Route:
    """Pages and scripts: never rate limited or behind API keys (they are static; the calls
    they make are), listed by /routes when ``listed`` but not API, so not in /openapi.json."""
    return Route("GET", pattern, name, handler, summary, "pages", limited=False,
                 public=listed, openapi=False)  # fmt: skip


def _serve(request: Request, asset: Asset, extra: list[tuple[str, str]] | None = None) -> Response:
    headers = [("ETag", asset.etag), *_COMMON_HEADERS, *(extra or [])]
    if _matches(request.headers.get("if-none-match"), asset.etag):
        return Response(304, b"", headers)
    return Response(200, asset.body, [("Content-Type", asset.content_type), *headers])


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return etag in tags or "*" in tags


def _origin(url_template: str) -> str:
    if not url_template:
        return ""
    parts = urlsplit(url_template.replace("{id}", "0"))
    return f"{parts.scheme}://{parts.netloc}"


def _html_error(status: int, message: str) -> Response:
    body = (
        "<!doctype html><meta charset=utf-8><title>kichat overlay</title>"
        f"<p>{html.escape(message)}</p><p>Overlay URLs look like /overlay/xqc?chatroomId=668</p>"
    ).encode()
    return Response(
        status,
        body,
        [
            ("Content-Type", _TYPES[".html"]),
            ("Content-Security-Policy", "default-src 'none'"),
            *_COMMON_HEADERS,
        ],
    )
