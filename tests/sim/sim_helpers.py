"""Helpers for the simulator's tests: a thin Pusher client over ``websockets``, waits, fixtures.

Not a conftest.py: the test tree has no packages, so a second conftest module would clash with
tests/conftest.py. Test modules import what they need from here.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from conftest import UNIT

CHAT = "App\\Events\\ChatMessageEvent"
FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    """A copy of /work/shared/kick/fixtures/<name>.json kept with the tests (the reference)."""
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return doc


def event_fixtures() -> dict[str, dict[str, Any]]:
    """Wire event name -> fixture frame, for every event fixture."""
    out = {}
    for path in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[doc["event"]] = doc
    return out


def shape(value: Any) -> Any:
    """The structure of a JSON value: dict keys and value types, recursively; lists by their
    first element. Two payloads with equal shapes have the same fields of the same JSON types."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


class PusherTestClient:
    """A raw Pusher protocol client: frames are JSON-decoded once (``data`` stays a string where
    the server sent a string), nothing is answered automatically."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, *, handshake: bool = True, **kwargs: Any) -> PusherTestClient:
        ws = await connect(url, open_timeout=5 * UNIT, **kwargs)
        client = cls(ws)
        if handshake:
            frame = await client.recv()
            assert frame["event"] == "pusher:connection_established", frame
        return client

    async def recv(self, within: float = 5 * UNIT) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), within)
        except TimeoutError:
            raise AssertionError(f"no frame within {within:g} s") from None
        assert isinstance(raw, str), "Pusher frames are text frames"
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def expect_silence(self, within: float) -> None:
        """Assert that no frame arrives for ``within`` seconds."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {raw!r}")

    async def send(self, event: str, data: Any) -> None:
        await self.ws.send(json.dumps({"event": event, "data": data}))

    async def subscribe(
        self, channel: str, auth: str | None = "", *, ack: bool = True
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": channel}
        if auth is not None:
            data["auth"] = auth
        await self.send("pusher:subscribe", data)
        if not ack:
            return {}
        frame = await self.recv()
        assert frame["event"] == "pusher_internal:subscription_succeeded", frame
        assert frame["channel"] == channel
        return frame

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> PusherTestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
