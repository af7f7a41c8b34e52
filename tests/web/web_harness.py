"""A real kichat gateway on port 0 with the Kick simulator as its upstream, for the web tests.

Not a conftest.py (the test tree has no packages; a second conftest module would clash with
tests/conftest.py): test modules import what they need from here.

* :func:`gateway`: :class:`~kichat.app.App` built from :func:`~kichat.config.load_settings`
  (so every override is checked like an operator's), with an ``httpx.AsyncClient`` on it.
* :class:`RecordingKick`: a tiny real HTTP/1.1 server that records every request (method,
  target, headers, body) and answers with a configurable status and body. It stands in for
  Kick where the simulator cannot tell what reached it (the forwarded user endpoints).
* :func:`in_thread`: any of that on its own event loop in a thread, for blocking clients.
* :func:`metric_samples`: ``/metrics`` text parsed by ``prometheus_client.parser``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kichat.app import App
from kichat.config import load_settings
from kichat.sim import KickSimulator

from conftest import LOOP, UNIT

CHAT = "App\\Events\\ChatMessageEvent"
T = TypeVar("T")


@dataclass
class Gateway:
    app: App
    url: str
    http: httpx.AsyncClient

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, **kwargs)

    async def raw_get(self, raw_path: str, **kwargs: Any) -> httpx.Response:
        """GET with the path sent byte for byte: httpx would otherwise normalise ``..`` and
        re-encode characters, and the point of some tests is what the gateway does with them."""
        request = self.http.build_request("GET", "/", **kwargs)
        request.url = request.url.copy_with(raw_path=raw_path.encode("ascii"))
        return await self.http.send(request)

    async def raw_request(self, head: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send ``head`` (a request line and headers, no body) over a plain socket exactly as
        given, for what no HTTP client library sends (``..`` segments, odd header bytes).
        Returns (status, lower-case headers, body)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.app.port)
        try:
            writer.write(head)
            await writer.drain()
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = 0 if head.startswith(b"HEAD ") else int(headers.get("content-length", "0"))
            body = await reader.readexactly(length)
        finally:
            writer.close()
        return int(status_line.split()[1]), headers, body

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        resp = await self.get("/metrics")
        assert resp.status_code == 200, resp.text
        return metric_samples(resp.text)


def settings_for(upstream_pusher: str, upstream_api: str, **overrides: Any) -> dict[str, Any]:
    """Dotted setting names for a test gateway: port 0, the given upstreams, fast failures."""
    base: dict[str, Any] = {
        "server.port": 0,
        "server.shutdown_timeout": 1.0,
        "pusher.url": upstream_pusher,
        "kick_api.url": upstream_api,
        "kick_api.timeout": 5 * UNIT,
        # Retries are tested in tests/kick/test_api.py; here they would only add backoff time.
        "kick_api.retries": 0,
    }
    base.update({name.replace("__", "."): value for name, value in overrides.items()})
    return base


@asynccontextmanager
async def gateway(
    sim: KickSimulator, *, api_url: str | None = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    """A running gateway on ``sim``. Overrides use dotted names with ``__`` for the dot
    (``limits__rest_per_minute=5``); ``api_url`` replaces the simulator as Kick's REST API."""
    flags = settings_for(sim.pusher_url, api_url or sim.api_url, **overrides)
    settings = load_settings(flags, env={})
    async with App(settings) as app:
        url = f"http://127.0.0.1:{app.port}"
        async with httpx.AsyncClient(base_url=url, timeout=10 * UNIT, trust_env=False) as http:
            yield Gateway(app, url, http)


@contextmanager
def in_thread(factory: Callable[[], AbstractAsyncContextManager[T]]) -> Iterator[T]:
    """Enter ``factory()`` on a new event loop in a daemon thread and yield what it yields, for
    blocking clients (schemathesis calls the API with ``requests``). Objects it yields belong
    to that loop: from the test thread, only read their counters."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["stop"], state["loop"] = stop, asyncio.get_running_loop()
        try:
            async with factory() as value:
                state["value"] = value
                ready.set()
                await stop.wait()
        except BaseException as exc:  # reported to the test thread, not lost in this one
            state["error"] = exc
        finally:
            ready.set()

    def run() -> None:
        if LOOP == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())

    thread = threading.Thread(target=run, name="kichat-test-loop", daemon=True)
    thread.start()
    try:
        assert ready.wait(20 * UNIT), "the event loop thread did not start"
        if "error" in state:
            raise state["error"]
        yield state["value"]
    finally:
        if "loop" in state:
            with suppress(RuntimeError):  # the loop already ended (start-up failed)
                state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(20 * UNIT)
    # Not in the finally clause: a failure of the test itself must not be replaced by this.
    assert not thread.is_alive(), "the event loop thread did not stop"
    if "error" in state:
        raise state["error"]


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- a recording HTTP server standing in for Kick ---------------------------------------------


@dataclass
class Recorded:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class RecordingKick:
    """Answers every request with ``status`` and ``body`` and records it. HTTP/1.1 with
    Content-Length only (what httpx sends for these requests); one request per connection."""

    status: int = 200
    body: bytes = b'{"data":[]}'
    content_type: str = "application/json"
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Recorded(method, target, headers, body))
            extra = "".join(f"{name}: {value}\r\n" for name, value in self.extra_headers)
            writer.write(
                f"HTTP/1.1 {self.status} X\r\nContent-Type: {self.content_type}\r\n{extra}"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def recording_kick(**options: Any) -> AsyncIterator[RecordingKick]:
    kick = RecordingKick(**options)
    kick.server = await asyncio.start_server(kick._handle, "127.0.0.1", 0)
    try:
        yield kick
    finally:
        kick.server.close()
        await kick.server.wait_closed()
