"""``kichat watch``: print a chatroom's live events from a running gateway, in the terminal.

A deliberately small Socket.IO client over one WebSocket (Engine.IO 4 / Socket.IO 5): enough
to connect, subscribe, answer pings and print events. It is what ``kichat demo`` shows, and a
quick check an operator can run against any kichat. Programs should use a real Socket.IO
client library (see the README).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect

from kichat.errors import ClientInputError
from kichat.sio.parser import loads

log = logging.getLogger("kichat.watch")

_COLORS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[91m")
_RESET = "\033[0m"


def websocket_url(base: str, path: str = "/socket.io/") -> str:
    parts = urlsplit(base)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path, "EIO=4&transport=websocket", ""))


def format_event(name: str, data: Any, *, color: bool) -> str:
    """One readable line per event: chat messages as ``[channel] user: text``."""
    channel = data.get("channel_name", "?") if isinstance(data, dict) else "?"
    short = name.rsplit("\\", 1)[-1]
    if short == "ChatMessageEvent" and isinstance(data, dict):
        sender = data.get("sender") or {}
        user = str(sender.get("username", "?"))
        text = str(data.get("content", ""))
        if color:
            tint = _COLORS[sum(map(ord, user)) % len(_COLORS)]
            user = f"{tint}{user}{_RESET}"
        return f"[{channel}] {user}: {text}"
    detail = json.dumps(data, ensure_ascii=False)
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return f"[{channel}] <{short}> {detail}"


async def watch(
    base_url: str,
    channel_name: str,
    chatroom_id: str,
    *,
    out: TextIO = sys.stdout,
    token: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Subscribe to one chatroom and print its events until ``stop`` is set or the gateway
    goes away."""
    session = asyncio.ensure_future(_session(base_url, channel_name, chatroom_id, out, token))
    if stop is None:
        await session
        return
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        session.cancel()
    if session.done() and not session.cancelled():
        session.result()  # re-raise what ended the session


async def _session(
    base_url: str, channel_name: str, chatroom_id: str, out: TextIO, token: str | None
) -> None:
    color = out.isatty()
    auth = json.dumps({"token": token} if token else {})
    subscribe = json.dumps(["subscribe", {"channelName": channel_name, "chatroomId": chatroom_id}])
    async with connect(websocket_url(base_url), compression=None) as ws:
        async for msg in ws:
            if not isinstance(msg, str):
                continue
            if msg == "2":
                await ws.send("3")
            elif msg.startswith("0"):
                await ws.send("40" + auth)  # Engine.IO open: join the main namespace
            elif msg.startswith("40"):
                await ws.send("421" + subscribe)
            elif msg.startswith("44"):
                raise _refusal(loads(msg[2:]), "the gateway refused the connection")
            elif msg.startswith("431"):
                reply = loads(msg[3:])[0]
                if not reply.get("ok"):
                    # Nothing will ever arrive: say why and stop, rather than wait forever.
                    raise _refusal(reply.get("error"), "the gateway refused the subscription")
                print(f"subscribed to {reply.get('channelName')}: ok", file=out, flush=True)
            elif msg.startswith("42"):
                args = loads(msg[2:])
                data = args[1] if len(args) > 1 else None
                print(format_event(args[0], data, color=color), file=out, flush=True)


def _refusal(detail: Any, fallback: str) -> ClientInputError:
    """A refusal from the gateway (``{code, message}``, possibly under ``data``) as an error."""
    if isinstance(detail, dict) and isinstance(detail.get("data"), dict):
        detail = detail["data"]
    if not isinstance(detail, dict):
        return ClientInputError("refused", f"{fallback}: {detail!r}")
    code = str(detail.get("code") or "refused")
    return ClientInputError(code, str(detail.get("message") or fallback))
